"""The Kafka group coordinator of one worker (the classic consumer group protocol).

Which node coordinates a group: `coordinator_node(group, live node ids)` =
sorted(ids)[crc32(group) % len(ids)], computed from the ZooKeeper view of live nodes,
so every node that shares a view agrees, and when a node joins or dies the groups it
gains or loses follow from the same rule. A node asked about a group it does not
coordinate answers NOT_COORDINATOR; the client then asks FindCoordinator again.

State kept here is membership only, in memory, owned by the worker's event loop (not
thread-safe). Committed offsets live in ZooKeeper (pybroker.coord.offsets), so a group
that moves to this node (its coordinator died, or the node set changed) starts Empty
and loses no committed offset; its members rejoin after UNKNOWN_MEMBER_ID or
ILLEGAL_GENERATION.

Per group, the states of Kafka's GroupCoordinator:
  Empty               no members (offsets may still be committed with generation -1)
  PreparingRebalance  waiting until every known member has (re)joined, or until the
                      largest rebalance timeout; members that did not rejoin are dropped
  CompletingRebalance joined: generation+1, a protocol chosen, leader told all members'
                      metadata; waiting for the leader's SyncGroup with the assignment
  Stable              assignment handed out; heartbeats keep members alive
  Dead                the group left this node (only ever reported, never stored)
A member that misses its session timeout (no heartbeat, commit, join or sync) is
removed; a member waiting for its JoinGroup or SyncGroup answer is kept alive.
"""
from __future__ import annotations

import enum
import logging
import struct
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pybroker.coord.offsets import group_id_error
from pybroker.protocol import ErrorCode

log = logging.getLogger("pybroker.groups")

# Session timeout bounds (Kafka: group.min/max.session.timeout.ms = 6 s / 30 min).
# The floor is lower than Kafka's so tests can expire members in about a second; the
# ceiling is 300 s: far above librdkafka's 45 s default, and a dead member still goes
# within five minutes.
MIN_SESSION_TIMEOUT_MS = 1_000
MAX_SESSION_TIMEOUT_MS = 300_000
# A group rebalancing out of Empty waits this long before it may complete, so members
# started together join one generation instead of causing one rebalance each (Kafka's
# group.initial.rebalance.delay.ms, 3 s there; shorter here for quick tests).
INITIAL_REBALANCE_DELAY_S = 0.5
WATCH_S = 0.25      # how often the coordinator checks for shutdown and cluster changes


class GroupState(enum.Enum):
    EMPTY = "Empty"
    PREPARING = "PreparingRebalance"
    COMPLETING = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


class _Everything(frozenset):
    """Every topic (a member whose subscription cannot be read subscribes to all)."""

    def __contains__(self, item) -> bool:
        return True

    def __bool__(self) -> bool:
        return True


ALL_TOPICS = _Everything()
_SUBSCRIPTION_HEAD = struct.Struct(">hi")   # version, topic count
_SHORT = struct.Struct(">h")


def consumer_subscription(metadata: bytes) -> set[str] | None:
    """The topics of a consumer protocol Subscription (ConsumerProtocolSubscription: a
    version, then its topics in every version), or None if metadata is not one."""
    try:
        _version, count = _SUBSCRIPTION_HEAD.unpack_from(metadata, 0)
        if count < 0 or count > len(metadata):
            return None
        pos, topics = _SUBSCRIPTION_HEAD.size, set()
        for _ in range(count):
            (n,) = _SHORT.unpack_from(metadata, pos)
            if n < 0 or pos + 2 + n > len(metadata):
                return None
            topics.add(bytes(metadata[pos + 2:pos + 2 + n]).decode())
            pos += 2 + n
        return topics
    except (struct.error, UnicodeDecodeError):
        return None


def coordinator_node(group_id: str, node_ids) -> int | None:
    """The node that coordinates group_id among node_ids (None if there are none)."""
    nodes = sorted(node_ids)
    if not nodes:
        return None
    return nodes[zlib.crc32(group_id.encode("utf-8", "surrogatepass")) % len(nodes)]


@dataclass(eq=False)
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_s: float
    rebalance_timeout_s: float
    protocol_type: str
    protocols: list          # [(name, metadata bytes)] in the member's preference order
    assignment: bytes = b""
    join_future: object = None   # asyncio.Future of a JoinGroup waiting for the rebalance
    sync_future: object = None   # asyncio.Future of a SyncGroup waiting for the leader
    expiry: object = None        # asyncio.TimerHandle of the session timeout

    def protocol_names(self) -> list[str]:
        return [name for name, _ in self.protocols]

    def metadata(self, protocol: str | None) -> bytes:
        for name, metadata in self.protocols:
            if name == protocol:
                return metadata
        return b""

    def awaiting(self) -> bool:
        return any(f is not None and not f.done() for f in (self.join_future,
                                                             self.sync_future))


@dataclass(eq=False)
class Group:
    group_id: str
    state: GroupState = GroupState.EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str | None = None
    members: dict = field(default_factory=dict)   # member id -> Member, in join order
    pending: dict = field(default_factory=dict)   # member id handed out -> TimerHandle
    static: dict = field(default_factory=dict)    # group instance id -> member id
    rebalance_timer: object = None
    join_not_before: float = 0.0                  # loop time; see INITIAL_REBALANCE_DELAY_S

    def supports(self, protocol_type: str, names: list[str], excluding: str = "") -> bool:
        """A member offering `names` may join: same protocol type, and at least one of
        its protocols is listed by every other member."""
        others = [m for mid, m in self.members.items() if mid != excluding]
        if not others:
            return True
        if protocol_type != others[0].protocol_type:
            return False
        common = set(names)
        for m in others:
            common &= set(m.protocol_names())
        return bool(common)


def _join_answer(code: ErrorCode, member_id: str = "") -> dict:
    return {"error_code": code, "generation_id": -1, "protocol_name": "", "leader": "",
            "member_id": member_id, "members": []}


class GroupCoordinator:
    """Groups coordinated by one worker. Methods answer a response dict (or an error
    code) at once, or an asyncio.Future that the rebalance completes."""

    def __init__(self, worker, max_group_size: int | None = None):
        self.worker = worker
        self.loop = worker.loop
        self.max_group_size = max_group_size  # members + handed-out ids; None: unbounded
        self.groups: dict[str, Group] = {}
        # ZooKeeper I/O of the offset registry, off the loop, one call at a time in
        # arrival order (kazoo pipelines the requests inside each call)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"offsets-{worker.node_id}")
        self._cluster = None
        self._watch()

    # --- who coordinates ------------------------------------------------------------

    def coordinator_of(self, group_id: str) -> int | None:
        return coordinator_node(group_id, self.worker.cluster.nodes)

    def status(self, group_id) -> ErrorCode:
        """NONE if this node serves group_id now; else the error to answer."""
        if group_id_error(group_id):
            return ErrorCode.INVALID_GROUP_ID
        if self.worker.stopping:
            return ErrorCode.NOT_COORDINATOR
        nodes = self.worker.cluster.nodes
        if self.worker.node_id not in nodes:
            # no view of the cluster yet (or our registration is being renewed)
            return ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
        self._sync_cluster()
        if self.coordinator_of(group_id) != self.worker.node_id:
            return ErrorCode.NOT_COORDINATOR
        return ErrorCode.NONE

    def _sync_cluster(self) -> None:
        """After a change of the node set, give up the groups that moved elsewhere."""
        cluster = self.worker.cluster
        if cluster is self._cluster:
            return
        self._cluster = cluster
        me = self.worker.node_id
        for group_id in [g for g in self.groups if self.coordinator_of(g) != me]:
            log.info("node=%d group=%s moved to node %s; dropping its members", me,
                     group_id, self.coordinator_of(group_id))
            self._drop(self.groups[group_id], ErrorCode.NOT_COORDINATOR)

    def cluster_changed(self) -> None:
        """The worker's view of ZooKeeper changed (a hook for Worker._on_cluster; until
        the worker calls it, _watch notices within WATCH_S)."""
        if self.worker.cluster.nodes:
            self._sync_cluster()

    def shutdown(self) -> None:
        """Answer every waiting JoinGroup/SyncGroup with NOT_COORDINATOR and forget all
        groups, so a stopping worker is not held up by rebalances (a hook for
        Worker.stop; until the worker calls it, _watch does it within WATCH_S)."""
        for group in list(self.groups.values()):
            self._drop(group, ErrorCode.NOT_COORDINATOR)

    def _watch(self) -> None:
        if self.worker.stopping:
            self.shutdown()
            return
        self.cluster_changed()
        self.loop.call_later(WATCH_S, self._watch)

    def _drop(self, group: Group, code: ErrorCode) -> None:
        """Forget a group, answering every waiting request with `code`."""
        for member in list(group.members.values()):
            self._cancel(member, code)
        for timer in group.pending.values():
            timer.cancel()
        if group.rebalance_timer is not None:
            group.rebalance_timer.cancel()
        self.groups.pop(group.group_id, None)

    # --- JoinGroup --------------------------------------------------------------------

    def join(self, group_id: str, member_id: str, instance_id: str | None, client_id: str,
             client_host: str, session_timeout_ms: int, rebalance_timeout_ms: int,
             protocol_type: str, protocols: list, require_member_id: bool):
        """JoinGroup: a response body (without throttle time), or a Future of one."""
        code = self.status(group_id)
        if code:
            return _join_answer(code, member_id)
        if not MIN_SESSION_TIMEOUT_MS <= session_timeout_ms <= MAX_SESSION_TIMEOUT_MS:
            return _join_answer(ErrorCode.INVALID_SESSION_TIMEOUT, member_id)
        if rebalance_timeout_ms < 0:   # JoinGroup v0: the session timeout serves as both
            rebalance_timeout_ms = session_timeout_ms
        if not protocol_type or not protocols:
            return _join_answer(ErrorCode.INCONSISTENT_GROUP_PROTOCOL, member_id)
        group = self.groups.get(group_id)
        if group is None:
            if member_id:
                return _join_answer(ErrorCode.UNKNOWN_MEMBER_ID, member_id)
            group = self.groups[group_id] = Group(group_id)
        names = [name for name, _ in protocols]
        if not group.supports(protocol_type, names, excluding=member_id):
            self._forget_if_unused(group)
            return _join_answer(ErrorCode.INCONSISTENT_GROUP_PROTOCOL, member_id)
        params = dict(client_id=client_id or "", client_host=client_host,
                      session_timeout_s=session_timeout_ms / 1000,
                      rebalance_timeout_s=rebalance_timeout_ms / 1000,
                      protocol_type=protocol_type, protocols=protocols)
        if not member_id:
            if (self.max_group_size is not None and
                    len(group.members) + len(group.pending) >= self.max_group_size):
                self._forget_if_unused(group)
                return _join_answer(ErrorCode.GROUP_MAX_SIZE_REACHED, member_id)
            new_id = f"{instance_id or client_id or 'member'}-{uuid.uuid4()}"
            if instance_id is not None and instance_id in group.static:
                return self._static_rejoin(group, instance_id, new_id, params)
            if require_member_id and instance_id is None:
                # JoinGroup v4+ (KIP-394): hand out the id; the member joins again with it
                group.pending[new_id] = self.loop.call_later(
                    params["session_timeout_s"], self._expire_pending, group, new_id)
                return _join_answer(ErrorCode.MEMBER_ID_REQUIRED, new_id)
            return self._add_member(group, Member(new_id, instance_id, **params))
        if member_id in group.pending:
            group.pending.pop(member_id).cancel()
            if instance_id is not None and instance_id in group.static:
                return _join_answer(ErrorCode.FENCED_INSTANCE_ID, member_id)
            return self._add_member(group, Member(member_id, instance_id, **params))
        member = group.members.get(member_id)
        if member is None:
            return _join_answer(ErrorCode.UNKNOWN_MEMBER_ID, member_id)
        if instance_id is not None and group.static.get(instance_id) != member_id:
            return _join_answer(ErrorCode.FENCED_INSTANCE_ID, member_id)
        return self._rejoin(group, member, params)

    def _add_member(self, group: Group, member: Member):
        group.members[member.member_id] = member
        if member.instance_id is not None:
            group.static[member.instance_id] = member.member_id
        fut = member.join_future = self.loop.create_future()
        self._arm(group, member)
        log.info("node=%d group=%s member %s joins (%d members)", self.worker.node_id,
                 group.group_id, member.member_id, len(group.members))
        if group.state == GroupState.PREPARING:
            self._maybe_complete_join(group)
        else:
            self._prepare(group, f"member {member.member_id} joined")
        return fut   # may be answered already: the join completed the rebalance

    def _rejoin(self, group: Group, member: Member, params: dict):
        changed = member.protocols != params["protocols"]
        for key, value in params.items():
            setattr(member, key, value)
        self._arm(group, member)
        if group.state == GroupState.COMPLETING and not changed:
            return self._join_result(group, member)   # a retried join: same generation
        if group.state == GroupState.STABLE and not changed and member.member_id != group.leader:
            return self._join_result(group, member)
        if member.join_future is not None and not member.join_future.done():
            member.join_future.set_result(_join_answer(ErrorCode.REBALANCE_IN_PROGRESS,
                                                       member.member_id))
        fut = member.join_future = self.loop.create_future()
        if group.state == GroupState.PREPARING:
            self._maybe_complete_join(group)
        else:
            self._prepare(group, f"member {member.member_id} rejoined")
        return fut

    def _static_rejoin(self, group: Group, instance_id: str, new_id: str, params: dict):
        """A static member (KIP-345) came back with an empty member id: it takes over its
        instance's place under a new member id; the old id is fenced."""
        old_id = group.static[instance_id]
        old = group.members.pop(old_id, None)
        if old is None:
            del group.static[instance_id]
            return self._add_member(group, Member(new_id, instance_id, **params))
        self._cancel(old, ErrorCode.FENCED_INSTANCE_ID)
        old.member_id = new_id
        group.members[new_id] = old
        group.static[instance_id] = new_id
        if group.leader == old_id:
            group.leader = new_id
        log.info("node=%d group=%s static member %s now %s", self.worker.node_id,
                 group.group_id, instance_id, new_id)
        return self._rejoin(group, old, params)

    def _join_result(self, group: Group, member: Member) -> dict:
        leader = member.member_id == group.leader
        members = [{"member_id": m.member_id, "group_instance_id": m.instance_id,
                    "metadata": m.metadata(group.protocol_name)}
                   for m in group.members.values()] if leader else []
        return {"error_code": ErrorCode.NONE, "generation_id": group.generation,
                "protocol_type": group.protocol_type,
                "protocol_name": group.protocol_name or "", "leader": group.leader or "",
                "member_id": member.member_id, "members": members}

    # --- rebalancing ------------------------------------------------------------------

    def _prepare(self, group: Group, reason: str) -> None:
        if group.state == GroupState.COMPLETING:
            for m in group.members.values():
                m.assignment = b""
                self._answer_sync(m, {"error_code": ErrorCode.REBALANCE_IN_PROGRESS,
                                      "assignment": b""})
        if group.state == GroupState.EMPTY:
            group.join_not_before = self.loop.time() + INITIAL_REBALANCE_DELAY_S
            self.loop.call_later(INITIAL_REBALANCE_DELAY_S, self._maybe_complete_join, group)
        group.state = GroupState.PREPARING
        if group.rebalance_timer is not None:
            group.rebalance_timer.cancel()
        timeout = max((m.rebalance_timeout_s for m in group.members.values()), default=0)
        group.rebalance_timer = self.loop.call_later(
            max(timeout, INITIAL_REBALANCE_DELAY_S), self._complete_join, group)
        log.info("node=%d group=%s generation=%d preparing rebalance: %s",
                 self.worker.node_id, group.group_id, group.generation, reason)
        self._maybe_complete_join(group)

    def _maybe_complete_join(self, group: Group) -> None:
        if group.state != GroupState.PREPARING or self.groups.get(group.group_id) is not group:
            return
        if self.loop.time() < group.join_not_before or group.pending:
            return
        if all(m.join_future is not None and not m.join_future.done()
               for m in group.members.values()):
            self._complete_join(group)

    def _complete_join(self, group: Group) -> None:
        if group.state != GroupState.PREPARING or self.groups.get(group.group_id) is not group:
            return
        if group.rebalance_timer is not None:
            group.rebalance_timer.cancel()
            group.rebalance_timer = None
        for m in list(group.members.values()):
            if m.join_future is None or m.join_future.done():
                log.info("node=%d group=%s member %s did not rejoin in time; removed",
                         self.worker.node_id, group.group_id, m.member_id)
                self._remove(group, m, ErrorCode.UNKNOWN_MEMBER_ID)
        group.generation += 1
        if not group.members:
            group.state = GroupState.EMPTY
            group.protocol_name = group.leader = None
            log.info("node=%d group=%s generation=%d empty", self.worker.node_id,
                     group.group_id, group.generation)
            self._forget_if_unused(group)
            return
        group.state = GroupState.COMPLETING
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        leader = group.members[group.leader]
        group.protocol_type = leader.protocol_type
        group.protocol_name = self._select_protocol(group, leader)
        log.info("node=%d group=%s generation=%d protocol=%s leader=%s members=%d",
                 self.worker.node_id, group.group_id, group.generation, group.protocol_name,
                 group.leader, len(group.members))
        for m in group.members.values():
            fut, m.join_future = m.join_future, None
            if not fut.done():
                fut.set_result(self._join_result(group, m))
            self._arm(group, m)

    @staticmethod
    def _select_protocol(group: Group, leader: Member) -> str:
        """The first protocol, in the leader's order, that every member lists (one set
        intersection: members may offer many protocols)."""
        common = set.intersection(*(set(m.protocol_names()) for m in group.members.values()))
        for name in leader.protocol_names():
            if name in common:
                return name
        return leader.protocols[0][0]   # unreachable: joins are checked with supports()

    # --- SyncGroup --------------------------------------------------------------------

    def sync(self, group_id: str, generation: int, member_id: str, instance_id: str | None,
             assignments: list, protocol_type: str | None = None,
             protocol_name: str | None = None):
        """SyncGroup: {"error_code", "assignment"} at once, or a Future of it. The
        protocol type and name (v5+, None before) must be the group's if given."""
        code, group, member = self._member(group_id, member_id, instance_id)
        if code:
            return {"error_code": code, "assignment": b""}
        if generation != group.generation:
            return {"error_code": ErrorCode.ILLEGAL_GENERATION, "assignment": b""}
        if protocol_type not in (None, group.protocol_type) or \
                protocol_name not in (None, group.protocol_name):
            return {"error_code": ErrorCode.INCONSISTENT_GROUP_PROTOCOL, "assignment": b""}
        if group.state == GroupState.PREPARING:
            return {"error_code": ErrorCode.REBALANCE_IN_PROGRESS, "assignment": b""}
        self._arm(group, member)
        if group.state == GroupState.STABLE:
            return {"error_code": ErrorCode.NONE, "assignment": member.assignment}
        self._answer_sync(member, {"error_code": ErrorCode.REBALANCE_IN_PROGRESS,
                                   "assignment": b""})   # a duplicate SyncGroup
        member.sync_future = self.loop.create_future()
        fut = member.sync_future
        if member_id == group.leader:
            table = {a["member_id"]: bytes(a["assignment"]) for a in assignments}
            for m in group.members.values():
                m.assignment = table.get(m.member_id, b"")
            group.state = GroupState.STABLE
            log.info("node=%d group=%s generation=%d stable", self.worker.node_id,
                     group_id, group.generation)
            for m in group.members.values():
                self._answer_sync(m, {"error_code": ErrorCode.NONE,
                                      "assignment": m.assignment})
        return fut

    @staticmethod
    def _answer_sync(member: Member, answer: dict) -> None:
        fut, member.sync_future = member.sync_future, None
        if fut is not None and not fut.done():
            fut.set_result(answer)

    # --- Heartbeat, LeaveGroup, commits -----------------------------------------------

    def _member(self, group_id: str, member_id: str, instance_id: str | None):
        """(error, group, member) for a request from an existing member."""
        code = self.status(group_id)
        if code:
            return code, None, None
        group = self.groups.get(group_id)
        if group is None:
            return ErrorCode.UNKNOWN_MEMBER_ID, None, None
        if instance_id is not None and group.static.get(instance_id, member_id) != member_id:
            return ErrorCode.FENCED_INSTANCE_ID, group, None
        member = group.members.get(member_id)
        if member is None:
            return ErrorCode.UNKNOWN_MEMBER_ID, group, None
        return ErrorCode.NONE, group, member

    def heartbeat(self, group_id: str, generation: int, member_id: str,
                  instance_id: str | None) -> ErrorCode:
        code, group, member = self._member(group_id, member_id, instance_id)
        if code:
            return code
        if generation != group.generation:
            return ErrorCode.ILLEGAL_GENERATION
        self._arm(group, member)
        if group.state == GroupState.PREPARING:
            return ErrorCode.REBALANCE_IN_PROGRESS
        return ErrorCode.NONE

    def leave(self, group_id: str, leaving: list) -> tuple[ErrorCode, list]:
        """LeaveGroup for [(member_id, instance_id)]: (error, [error per member])."""
        code = self.status(group_id)
        if code:
            return code, [code for _ in leaving]
        group = self.groups.get(group_id)
        if group is None:
            return ErrorCode.NONE, [ErrorCode.UNKNOWN_MEMBER_ID for _ in leaving]
        answers, removed = [], 0
        for member_id, instance_id in leaving:
            if instance_id is not None:
                known = group.static.get(instance_id)
                if known is None:
                    answers.append(ErrorCode.UNKNOWN_MEMBER_ID)
                    continue
                if member_id and member_id != known:
                    answers.append(ErrorCode.FENCED_INSTANCE_ID)
                    continue
                member_id = known
            if member_id in group.pending:
                group.pending.pop(member_id).cancel()
                answers.append(ErrorCode.NONE)
                continue
            member = group.members.get(member_id)
            if member is None:
                answers.append(ErrorCode.UNKNOWN_MEMBER_ID)
                continue
            self._remove(group, member, ErrorCode.UNKNOWN_MEMBER_ID)
            answers.append(ErrorCode.NONE)
            removed += 1
        if removed:
            self._after_removal(group, f"{removed} member(s) left")
        else:
            self._maybe_complete_join(group)
            self._forget_if_unused(group)
        return ErrorCode.NONE, answers

    def commit_check(self, group_id: str, generation: int, member_id: str,
                     instance_id: str | None) -> ErrorCode:
        """May this OffsetCommit be written? Generation -1 with no member id is a
        client managing its own partitions (assign()), accepted while the group has no
        members; otherwise the member must be current (Kafka's rules)."""
        code = self.status(group_id)
        if code:
            return code
        group = self.groups.get(group_id)
        if group is None or group.state == GroupState.EMPTY:
            if generation < 0:
                return ErrorCode.NONE
            return ErrorCode.ILLEGAL_GENERATION if group is None else \
                ErrorCode.UNKNOWN_MEMBER_ID
        code, group, member = self._member(group_id, member_id, instance_id)
        if code:
            return code
        if generation != group.generation:
            return ErrorCode.ILLEGAL_GENERATION
        if group.state == GroupState.COMPLETING:
            return ErrorCode.REBALANCE_IN_PROGRESS
        self._arm(group, member)
        return ErrorCode.NONE

    # --- members leaving ----------------------------------------------------------------

    def _arm(self, group: Group, member: Member) -> None:
        """(Re)start member's session timeout."""
        if member.expiry is not None:
            member.expiry.cancel()
        member.expiry = self.loop.call_later(member.session_timeout_s, self._expire, group,
                                             member)

    def _expire(self, group: Group, member: Member) -> None:
        if group.members.get(member.member_id) is not member or \
                self.groups.get(group.group_id) is not group:
            return
        if member.awaiting():
            self._arm(group, member)   # its answer is what it waits for: keep it
            return
        log.info("node=%d group=%s member %s session timed out after %.1f s",
                 self.worker.node_id, group.group_id, member.member_id,
                 member.session_timeout_s)
        self._remove(group, member, ErrorCode.UNKNOWN_MEMBER_ID)
        self._after_removal(group, f"member {member.member_id} timed out")

    def _expire_pending(self, group: Group, member_id: str) -> None:
        if group.pending.pop(member_id, None) is not None:
            self._maybe_complete_join(group)
            self._forget_if_unused(group)

    def _cancel(self, member: Member, code: ErrorCode) -> None:
        if member.expiry is not None:
            member.expiry.cancel()
            member.expiry = None
        fut, member.join_future = member.join_future, None
        if fut is not None and not fut.done():
            fut.set_result(_join_answer(code, member.member_id))
        self._answer_sync(member, {"error_code": code, "assignment": b""})

    def _remove(self, group: Group, member: Member, code: ErrorCode) -> None:
        self._cancel(member, code)
        group.members.pop(member.member_id, None)
        if member.instance_id is not None and \
                group.static.get(member.instance_id) == member.member_id:
            del group.static[member.instance_id]

    def _after_removal(self, group: Group, reason: str) -> None:
        if group.state in (GroupState.STABLE, GroupState.COMPLETING):
            self._prepare(group, reason)
        elif group.state == GroupState.PREPARING:
            self._maybe_complete_join(group)
        self._forget_if_unused(group)

    def _forget_if_unused(self, group: Group) -> None:
        """An Empty group with nobody joining holds nothing worth keeping: its offsets
        are in ZooKeeper."""
        if group.state == GroupState.EMPTY and not group.members and not group.pending \
                and self.groups.get(group.group_id) is group:
            if group.rebalance_timer is not None:
                group.rebalance_timer.cancel()
            del self.groups[group.group_id]

    # --- describing -------------------------------------------------------------------

    def describe(self, group_id: str) -> dict | None:
        """DescribeGroups entry of a group held here, or None if there is none."""
        group = self.groups.get(group_id)
        if group is None:
            return None
        members = [{"member_id": m.member_id, "group_instance_id": m.instance_id,
                    "client_id": m.client_id, "client_host": m.client_host,
                    "member_metadata": m.metadata(group.protocol_name),
                    "member_assignment": m.assignment}
                   for m in group.members.values()]
        return {"error_code": ErrorCode.NONE, "group_id": group_id,
                "group_state": group.state.value, "protocol_type": group.protocol_type or "",
                "protocol_data": group.protocol_name or "", "members": members}

    def listed(self) -> dict[str, tuple[str, str]]:
        """{group id: (protocol type, state)} of the groups held here."""
        return {g.group_id: (g.protocol_type or "", g.state.value)
                for g in self.groups.values()}

    def subscribed_topics(self, group_id: str) -> set[str]:
        """The topics the members of a group held here subscribe to (the consumer
        protocol's subscriptions in their join metadata; a member whose metadata is not
        one subscribes to everything, so nothing of the group may be deleted)."""
        group = self.groups.get(group_id)
        if group is None or not group.members:
            return set()
        topics: set[str] = set()
        for member in group.members.values():
            for _name, metadata in member.protocols:
                parsed = consumer_subscription(metadata)
                if parsed is None:
                    return ALL_TOPICS
                topics |= parsed
        return topics

    def has_members(self, group_id: str) -> bool:
        """The group held here has members, or members joining."""
        group = self.groups.get(group_id)
        return group is not None and bool(group.members or group.pending)

    def protocol(self, group_id: str) -> tuple[str | None, str | None]:
        """(protocol type, protocol name) of a group held here, or (None, None)."""
        group = self.groups.get(group_id)
        return (None, None) if group is None else (group.protocol_type, group.protocol_name)
