"""Consumer group APIs for standard Kafka clients: FindCoordinator (10), JoinGroup (11),
Heartbeat (12), LeaveGroup (13), SyncGroup (14), DescribeGroups (15), ListGroups (16),
DeleteGroups (42), OffsetCommit (8), OffsetFetch (9) and OffsetDelete (47).

Membership is the worker's GroupCoordinator (pybroker.server.groups), created on first
use by coordinator_for(). Committed offsets are the ZooKeeper offset registry
(pybroker.coord.offsets) that the paper's consumer shares. Every ZooKeeper call runs on
the coordinator's one offset-registry thread, in arrival order (so two commits of a
partition, or a commit and the fetch pipelined behind it, cannot overtake each other),
and the answer is a Future completed after it: an OffsetCommit is acknowledged only
once ZooKeeper has the offsets.

The pre-0.9 versions write and read that same store. OffsetCommit v0 (which old Kafka
wrote to ZooKeeper, outside any group) carries no generation or member id: it is the
assign()-mode commit of v2+ (generation -1, no member), accepted while the group has no
members. v1's per-partition commit timestamp, like v2-v4's retention time, is read
and not kept: the registry keeps offsets until they are overwritten or deleted. OffsetFetch
v0 is answered as v1 (no group-level error code: every partition carries it).
"""
from __future__ import annotations

import asyncio
import logging

from pybroker.coord import offsets as registry
from pybroker.protocol import ErrorCode
from pybroker.server.groups import GroupCoordinator, coordinator_node
from pybroker.server.handlers.admin import topic_name_error

log = logging.getLogger("pybroker.groups")

MAX_METADATA_CHARS = 4096   # Kafka's offset.metadata.max.bytes default
NO_AUTHORIZED_OPERATIONS = -2147483648
_FAILED = object()          # what an executor call resolves to when ZooKeeper failed


def coordinator_for(worker) -> GroupCoordinator:
    """The worker's group coordinator, created on first use (on the worker's loop)."""
    coordinator = getattr(worker, "group_coordinator", None)
    if coordinator is None:
        coordinator = GroupCoordinator(worker, worker.config["group.max.size"])
        worker.group_coordinator = coordinator
    return coordinator


def _then(result, fn):
    """fn(result) now, or a Future of fn(result) when result is a Future."""
    if not isinstance(result, asyncio.Future):
        return fn(result)
    out = result.get_loop().create_future()
    result.add_done_callback(lambda f: out.done() or out.set_result(fn(f.result())))
    # the answer's connection closed: the coordinator stops waiting to answer it (a
    # member whose join nobody awaits expires on its session timeout)
    out.add_done_callback(lambda o: o.cancelled() and not result.done() and result.cancel())
    return out


def _in_executor(worker, what: str, fn, *args):
    """A Future of fn(*args) run on the coordinator's offset-registry thread, or of
    _FAILED if it raised (logged), so the client gets an error code, not a dropped
    connection."""
    out = worker.loop.create_future()

    def done(f):
        if out.done():
            return
        if f.exception() is not None:
            log.error("node=%d %s failed: %r", worker.node_id, what, f.exception())
            out.set_result(_FAILED)
        else:
            out.set_result(f.result())
    executor = coordinator_for(worker).executor
    worker.loop.run_in_executor(executor, fn, *args).add_done_callback(done)
    return out


def _client_host(ctx) -> str:
    return "/" + ctx.connection.peer.rsplit(":", 1)[0]


# --- FindCoordinator ---------------------------------------------------------------------

def handle_find_coordinator(ctx, request) -> dict:
    """v0-v3 ask for one key, v4+ for a batch (coordinator_keys), answered one by one."""
    key_type = request.get("key_type", 0)
    if ctx.api_version >= 4:
        return {"throttle_time_ms": 0, "coordinators": [
            {"key": key, **_coordinator(ctx.worker, key_type, key)}
            for key in request["coordinator_keys"]]}
    return {"throttle_time_ms": 0, **_coordinator(ctx.worker, key_type, request["key"])}


def _coordinator(worker, key_type: int, key: str) -> dict:
    answer = {"error_code": ErrorCode.NONE, "error_message": None,
              "node_id": -1, "host": "", "port": -1}
    if key_type != 0:
        code, problem = ErrorCode.INVALID_REQUEST, "only group coordinators (key type 0)"
    elif (bad_id := registry.group_id_error(key)):
        code, problem = ErrorCode.INVALID_GROUP_ID, bad_id
    elif (node := coordinator_node(key, worker.cluster.nodes)) is None:
        code, problem = ErrorCode.COORDINATOR_NOT_AVAILABLE, "no live nodes known yet"
    else:
        host, port = worker.cluster.nodes[node]
        answer.update(node_id=node, host=host, port=port)
        code, problem = ErrorCode.NONE, None
    answer.update(error_code=code, error_message=problem)
    return answer


# --- JoinGroup, SyncGroup, Heartbeat, LeaveGroup -----------------------------------------

def handle_join_group(ctx, request):
    protocols = [(p["name"], bytes(p["metadata"])) for p in request["protocols"]]
    if request.get("reason"):   # v8+ (KIP-800)
        log.info("node=%d group=%s member %r joins: %s", ctx.worker.node_id,
                 request["group_id"], request["member_id"], request["reason"][:200])
    result = coordinator_for(ctx.worker).join(
        request["group_id"], request["member_id"], request.get("group_instance_id"),
        ctx.client_id or "", _client_host(ctx), request["session_timeout_ms"],
        request.get("rebalance_timeout_ms", -1), request["protocol_type"], protocols,
        require_member_id=ctx.api_version >= 4)
    nullable_name = ctx.api_version >= 7   # v7+: no protocol chosen is null, not ""

    def answer(body):
        if nullable_name and body["error_code"]:
            body = {**body, "protocol_name": None}
        return {"throttle_time_ms": 0, "skip_assignment": False, **body}
    return _then(result, answer)


def handle_sync_group(ctx, request):
    """v5+ carries the protocol type and name: checked against the group's, and the
    group's are answered (null on an error, as Kafka)."""
    coordinator = coordinator_for(ctx.worker)
    group_id = request["group_id"]
    result = coordinator.sync(
        group_id, request["generation_id"], request["member_id"],
        request.get("group_instance_id"), request["assignments"],
        request.get("protocol_type"), request.get("protocol_name"))

    def answer(body):
        kind, name = coordinator.protocol(group_id) if not body["error_code"] else (None, None)
        return {"throttle_time_ms": 0, "protocol_type": kind, "protocol_name": name, **body}
    return _then(result, answer)


def handle_heartbeat(ctx, request) -> dict:
    code = coordinator_for(ctx.worker).heartbeat(
        request["group_id"], request["generation_id"], request["member_id"],
        request.get("group_instance_id"))
    return {"throttle_time_ms": 0, "error_code": code}


def handle_leave_group(ctx, request) -> dict:
    if ctx.api_version < 3:
        leaving = [(request["member_id"], None)]
    else:
        leaving = [(m["member_id"], m["group_instance_id"]) for m in request["members"]]
        for m in request["members"]:
            if m.get("reason"):   # v5+ (KIP-800)
                log.info("node=%d group=%s member %r leaves: %s", ctx.worker.node_id,
                         request["group_id"], m["member_id"], m["reason"][:200])
    code, per_member = coordinator_for(ctx.worker).leave(request["group_id"], leaving)
    if ctx.api_version < 3:
        return {"throttle_time_ms": 0, "error_code": code or per_member[0], "members": []}
    return {"throttle_time_ms": 0, "error_code": code, "members": [
        {"member_id": mid, "group_instance_id": iid, "error_code": c}
        for (mid, iid), c in zip(leaving, per_member)]}


# --- OffsetCommit, OffsetFetch -----------------------------------------------------------

def handle_offset_commit(ctx, request):
    worker = ctx.worker
    group = request["group_id"]
    check = coordinator_for(worker).commit_check(
        group, request.get("generation_id_or_member_epoch", -1),
        request.get("member_id", ""), request.get("group_instance_id"))
    answers, writes = [], {}
    for topic in request["topics"]:
        name = topic["name"]
        partitions = []
        for p in topic["partitions"]:
            index = p["partition_index"]
            metadata = p["committed_metadata"]
            if check:
                code = check
            elif worker.cluster.leader(name, index) is None:
                code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            elif metadata is not None and len(metadata) > MAX_METADATA_CHARS:
                code = ErrorCode.OFFSET_METADATA_TOO_LARGE
            elif p["committed_offset"] < 0:
                # a negative offset would read as "no commit" to the paper's consumer
                code = ErrorCode.INVALID_COMMIT_OFFSET_SIZE
            else:
                code = ErrorCode.NONE
                writes[(name, index)] = (p["committed_offset"], metadata,
                                         p.get("committed_leader_epoch", -1))
            partitions.append({"partition_index": index, "error_code": code})
        answers.append({"name": name, "partitions": partitions})
    response = {"throttle_time_ms": 0, "topics": answers}
    if not writes:
        return response

    def failed():
        for t in answers:
            for p in t["partitions"]:
                if (t["name"], p["partition_index"]) in writes:
                    p["error_code"] = ErrorCode.COORDINATOR_NOT_AVAILABLE
        return response
    fut = _in_executor(worker, f"group={group} offset commit", registry.commit_offsets,
                       worker.registry.zk, group, writes)
    return _then(fut, lambda result: failed() if result is _FAILED else response)


def handle_offset_fetch(ctx, request):
    """v0-v7 ask for one group, v8+ for several (each answered as v7 would be, in a
    `groups` entry). require_stable (v7+) needs nothing: no transaction is ever pending
    here, so every committed offset is stable."""
    if ctx.api_version < 8:
        return _offset_fetch_group(ctx.worker, request["group_id"], request["topics"],
                                   ctx.api_version < 2)
    asked = request["groups"]
    answers = [_offset_fetch_group(ctx.worker, g["group_id"], g["topics"], False)
               for g in asked]

    def combine(results):
        return {"throttle_time_ms": 0, "groups": [
            {"group_id": g["group_id"], "topics": r["topics"], "error_code": r["error_code"]}
            for g, r in zip(asked, results)]}
    return _then(_gathered(ctx.worker, answers), combine)


def _gathered(worker, results: list):
    """results (dicts, or Futures of them) as one list, or a Future of one."""
    pending = [r for r in results if isinstance(r, asyncio.Future)]
    if not pending:
        return results
    out = worker.loop.create_future()
    left = [len(pending)]

    def one_done(_):
        left[0] -= 1
        if left[0] == 0 and not out.done():
            out.set_result([r.result() if isinstance(r, asyncio.Future) else r
                            for r in results])
    for fut in pending:
        fut.add_done_callback(one_done)
    out.add_done_callback(lambda o: o.cancelled() and [f.cancel() for f in pending])
    return out


def _offset_fetch_group(worker, group: str, topics, v1: bool):
    """One group's OffsetFetch answer ({"topics", "error_code"}, or a Future of it);
    v1: v0-v1, which have no group-level error code (every partition carries it)."""
    code = coordinator_for(worker).status(group)
    if code:   # v0-v1 have no group-level error: every partition carries it
        if v1:
            return _fetch_response([(t["name"], t["partition_indexes"], code)
                                    for t in (topics or [])], {}, ErrorCode.NONE)
        return _fetch_response([], {}, code)
    if topics is None:
        wanted = None
    else:
        # only partitions that exist can have offsets read: a client-declared list of
        # any length must not become as many ZooKeeper reads (answered -1 otherwise)
        known = worker.cluster.topics
        wanted = sorted({(t["name"], p) for t in topics if not topic_name_error(t["name"])
                         for p in t["partition_indexes"] if p in known.get(t["name"], ())})
    if wanted == []:
        return _fetch_response([(t["name"], t["partition_indexes"], ErrorCode.NONE)
                                for t in topics], {}, ErrorCode.NONE)
    fut = _in_executor(worker, f"group={group} offset fetch", registry.fetch_offsets,
                       worker.registry.zk, group, wanted)

    def answer(found):
        if found is _FAILED:
            failure = ErrorCode.COORDINATOR_NOT_AVAILABLE
            return _fetch_response([(t["name"], t["partition_indexes"], failure)
                                    for t in (topics or [])], {},
                                   ErrorCode.NONE if v1 else failure)
        if topics is None:
            by_topic: dict[str, list[int]] = {}
            for name, index in sorted(found):
                by_topic.setdefault(name, []).append(index)
            asked = [(name, indexes, ErrorCode.NONE) for name, indexes in by_topic.items()]
        else:
            asked = [(t["name"], t["partition_indexes"], ErrorCode.NONE) for t in topics]
        return _fetch_response(asked, found, ErrorCode.NONE)
    return _then(fut, answer)


def _fetch_response(asked, found: dict, top_code: ErrorCode) -> dict:
    """asked = [(topic, [partition], error)]; found = {(topic, p): (offset, meta, epoch)}."""
    topics = []
    for name, indexes, code in asked:
        partitions = []
        for index in indexes:
            offset, metadata, epoch = found.get((name, index), (registry.NO_OFFSET, "", -1))
            partitions.append({"partition_index": index, "committed_offset": offset,
                               "committed_leader_epoch": epoch, "metadata": metadata,
                               "error_code": code})
        topics.append({"name": name, "partitions": partitions})
    return {"throttle_time_ms": 0, "topics": topics, "error_code": top_code}


# --- DescribeGroups, ListGroups ----------------------------------------------------------

def _described_error(group_id: str, code: ErrorCode, state: str = "",
                     message: str | None = None) -> dict:
    return {"error_code": code, "error_message": message, "group_id": group_id,
            "group_state": state, "protocol_type": "", "protocol_data": "", "members": [],
            "authorized_operations": NO_AUTHORIZED_OPERATIONS}


def _described_absent(group_id: str, version: int) -> dict:
    """A group with no members and no offsets: Dead before v6, GROUP_ID_NOT_FOUND in
    v6+ (KIP-1043)."""
    if version >= 6:
        return _described_error(group_id, ErrorCode.GROUP_ID_NOT_FOUND, "Dead",
                                f"Group {group_id} not found.")
    return _described_error(group_id, ErrorCode.NONE, "Dead")


def handle_describe_groups(ctx, request):
    worker = ctx.worker
    coordinator = coordinator_for(worker)
    described, unknown = [], []
    for group_id in request["groups"]:
        code = coordinator.status(group_id)
        held = None if code else coordinator.describe(group_id)
        if code:
            described.append(_described_error(group_id, code))
        elif held is not None:
            described.append({**held, "authorized_operations": NO_AUTHORIZED_OPERATIONS})
        else:
            described.append(None)   # Empty or Dead: ask ZooKeeper for committed offsets
            unknown.append(group_id)
    response = {"throttle_time_ms": 0, "groups": described}
    if not unknown:
        return response

    def lookup():
        return {g: registry.group_exists(worker.registry.zk, g) for g in unknown}
    fut = _in_executor(worker, "describe groups", lookup)

    def answer(exists):
        for i, group_id in enumerate(request["groups"]):
            if described[i] is not None:
                continue
            if exists is _FAILED:
                described[i] = _described_error(group_id, ErrorCode.COORDINATOR_NOT_AVAILABLE)
            elif exists[group_id]:
                described[i] = _described_error(group_id, ErrorCode.NONE, "Empty")
            else:
                described[i] = _described_absent(group_id, ctx.api_version)
        return response
    return _then(fut, answer)


def handle_list_groups(ctx, request):
    """v4+ filters by state, v5+ by type (case-insensitive, as Kafka); every group
    here is a classic one."""
    worker = ctx.worker
    states = {s.lower() for s in request.get("states_filter") or ()}
    types = {t.lower() for t in request.get("types_filter") or ()}
    coordinator = coordinator_for(worker)
    if worker.node_id not in worker.cluster.nodes:
        return {"throttle_time_ms": 0, "error_code": ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
                "groups": []}
    fut = _in_executor(worker, "list groups", registry.list_groups, worker.registry.zk)

    def answer(stored):
        if stored is _FAILED:
            return {"throttle_time_ms": 0, "error_code": ErrorCode.COORDINATOR_NOT_AVAILABLE,
                    "groups": []}
        groups = {g: ("", "Empty") for g in stored   # offsets only: no members here
                  if not registry.group_id_error(g) and coordinator.status(g) == 0}
        groups.update(coordinator.listed())
        if types and "classic" not in types:
            groups = {}
        return {"throttle_time_ms": 0, "error_code": ErrorCode.NONE, "groups": [
            {"group_id": g, "protocol_type": kind, "group_state": state,
             "group_type": "classic"}
            for g, (kind, state) in sorted(groups.items())
            if not states or state.lower() in states]}
    return _then(fut, answer)


# --- DeleteGroups ------------------------------------------------------------------------

_DELETED = {"deleted": ErrorCode.NONE, "absent": ErrorCode.GROUP_ID_NOT_FOUND,
            "members": ErrorCode.NON_EMPTY_GROUP}


def handle_delete_groups(ctx, request):
    """Each group: answered by its coordinator only (NOT_COORDINATOR elsewhere);
    NON_EMPTY_GROUP while it has members (Kafka-protocol ones here, or paper consumers
    registered in ZooKeeper); else its committed offsets are deleted from the registry,
    GROUP_ID_NOT_FOUND when it had none."""
    worker = ctx.worker
    coordinator = coordinator_for(worker)
    results, deleting = [], []
    for group_id in request["groups_names"]:
        code = coordinator.status(group_id)
        if not code and coordinator.has_members(group_id):
            code = ErrorCode.NON_EMPTY_GROUP
        results.append({"group_id": group_id, "error_code": code})
        if not code:
            deleting.append(results[-1])
    response = {"throttle_time_ms": 0, "results": results}
    if not deleting:
        return response

    def delete_all():
        return [registry.delete_group(worker.registry.zk, r["group_id"]) for r in deleting]
    fut = _in_executor(worker, "delete groups", delete_all)

    def answer(outcomes):
        for r, outcome in zip(deleting, [None] * len(deleting) if outcomes is _FAILED
                              else outcomes):
            r["error_code"] = (ErrorCode.COORDINATOR_NOT_AVAILABLE if outcome is None
                               else _DELETED[outcome])
            if r["error_code"] == ErrorCode.NONE:
                log.info("node=%d group=%s deleted (its committed offsets)",
                         worker.node_id, r["group_id"])
        return response
    return _then(fut, answer)


# --- OffsetDelete ------------------------------------------------------------------------

def handle_offset_delete(ctx, request):
    """A group's committed offsets of some partitions, deleted (Kafka's
    handleDeleteOffsets): group errors as for a commit, GROUP_ID_NOT_FOUND for a group
    with no offsets; while the group has members, a partition of a topic one of them
    subscribes to is GROUP_SUBSCRIBED_TO_TOPIC; a partition that does not exist is
    UNKNOWN_TOPIC_OR_PARTITION."""
    worker = ctx.worker
    group = request["group_id"]
    coordinator = coordinator_for(worker)
    code = coordinator.status(group)
    if code:
        return {"error_code": code, "throttle_time_ms": 0, "topics": []}
    subscribed = coordinator.subscribed_topics(group)
    known = worker.cluster.topics
    answers, deleting = [], []
    for t in request["topics"]:
        parts = []
        for p in t["partitions"]:
            index = p["partition_index"]
            if t["name"] in subscribed:
                code = ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC
            elif index not in known.get(t["name"], ()):
                code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            else:
                code = ErrorCode.NONE
                deleting.append((t["name"], index))
            parts.append({"partition_index": index, "error_code": code})
        answers.append({"name": t["name"], "partitions": parts})
    response = {"error_code": ErrorCode.NONE, "throttle_time_ms": 0, "topics": answers}

    def delete():
        if not registry.group_exists(worker.registry.zk, group):
            return False
        registry.delete_offsets(worker.registry.zk, group, deleting)
        return True
    fut = _in_executor(worker, f"group={group} offset delete", delete)

    def answer(existed):
        if existed is _FAILED:
            return {**response, "error_code": ErrorCode.COORDINATOR_NOT_AVAILABLE,
                    "topics": []}
        if not existed and not subscribed:
            return {**response, "error_code": ErrorCode.GROUP_ID_NOT_FOUND, "topics": []}
        return response
    return _then(fut, answer)
