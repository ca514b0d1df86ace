"""The group coordinator at the protocol level: hand-built requests through
pybroker.protocol over a plain socket, against one real 2-worker broker (and its real
ZooKeeper) shared by the module; every test uses its own group names.

Covers every advertised version of FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
LeaveGroup, OffsetCommit, OffsetFetch, ListGroups and DescribeGroups, and the errors:
NOT_COORDINATOR, INVALID_GROUP_ID, INCONSISTENT_GROUP_PROTOCOL, UNKNOWN_MEMBER_ID,
ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS, MEMBER_ID_REQUIRED, INVALID_SESSION_TIMEOUT,
FENCED_INSTANCE_ID, UNKNOWN_TOPIC_OR_PARTITION. Offsets are checked in ZooKeeper at
the offset registry's paths. Waits are bounded polls, never sleeps with assertions on
time.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import struct
import time

import pytest
from kazoo.client import KazooClient

from pybroker.coord.registry import ClusterState
from pybroker.protocol import ApiKey, ErrorCode
from pybroker.server.groups import WATCH_S, GroupCoordinator, coordinator_node
from pybroker.testing.broker_plugin import Broker
from pybroker.testing import poll

TOPIC = "gp-topic"
PARTITIONS = 3
WAIT_S = 20.0
SESSION_MS = 30_000
CONSUMER = "consumer"


# --- fixtures: one broker for the module -------------------------------------------------

@pytest.fixture(scope="module")
def chroot(zk_root):
    path = f"/t-groups-protocol-{secrets.token_hex(4)}"
    zk_root.create(path)
    yield path
    zk_root.delete(path, recursive=True)


@pytest.fixture(scope="module")
def gbroker(tmp_path_factory, zk_server, chroot):
    tmp = tmp_path_factory.mktemp("groups-protocol")
    b = Broker(tmp / "data", tmp / "broker.log", zk_server.connect_string + chroot, workers=2)
    b.start()
    try:
        with b.client() as c:
            body = c.request(ApiKey.CREATE_TOPICS, 4, {
                "topics": [{"name": TOPIC, "num_partitions": PARTITIONS,
                            "replication_factor": 1, "assignments": [], "configs": []}],
                "timeout_ms": 10_000, "validate_only": False})
        assert body["topics"][0]["error_code"] == 0, body
        _wait_topic_everywhere(b)
        yield b
    except BaseException:
        print(b.log_tail())
        raise
    finally:
        b.stop()
    # no request, good or bad, may have broken a handler (a closed connection)
    failures = [line for line in b.log_text().splitlines() if "handler failed" in line]
    assert failures == [], "\n".join(failures) + "\n" + b.log_tail()


@pytest.fixture(scope="module")
def zkc(zk_server, chroot):
    client = KazooClient(hosts=zk_server.connect_string + chroot)
    client.start(15)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def group(request) -> str:
    return f"g-{request.node.name[:40]}-{secrets.token_hex(3)}".replace("[", "-").replace(
        "]", "")


def _wait_topic_everywhere(b: Broker) -> None:
    deadline = time.monotonic() + WAIT_S
    for worker in range(b.workers):
        while True:
            with b.client(worker) as c:
                md = c.request(ApiKey.METADATA, 1, {"topics": [{"name": TOPIC}]})
            if md["topics"][0]["error_code"] == 0 and len(md["topics"][0]["partitions"]) \
                    == PARTITIONS:
                break
            assert time.monotonic() < deadline, f"topic not in worker {worker}'s view"
            time.sleep(0.05)


# --- helpers -----------------------------------------------------------------------------

def find_coordinator(c, key: str, version: int = 2, key_type: int = 0) -> dict:
    """FindCoordinator for one key: v4+ asks in a batch of one and answers its entry."""
    if version >= 4:
        body = c.request(ApiKey.FIND_COORDINATOR, version, {"key_type": key_type,
                                                            "coordinator_keys": [key]})
        [entry] = body["coordinators"]
        assert entry["key"] == key
        return entry
    return c.request(ApiKey.FIND_COORDINATOR, version, {"key": key, "key_type": key_type})


def coordinator(b: Broker, group: str, version: int = 2) -> int:
    """Index of the worker that coordinates group (asked of worker 0)."""
    with b.client(0) as c:
        body = find_coordinator(c, group, version)
    assert body["error_code"] == 0, body
    return b.node_ids.index(body["node_id"])


def other(b: Broker, worker: int) -> int:
    return (worker + 1) % b.workers


def join_body(group: str, version: int, member_id: str = "", protocols=None,
              session_ms: int = SESSION_MS, instance_id: str | None = None,
              protocol_type: str = CONSUMER) -> dict:
    protocols = protocols if protocols is not None else [("range", b"meta-range")]
    return {"group_id": group, "session_timeout_ms": session_ms,
            "rebalance_timeout_ms": 10_000 if version >= 1 else -1, "member_id": member_id,
            "group_instance_id": instance_id if version >= 5 else None,
            "protocol_type": protocol_type,
            "protocols": [{"name": n, "metadata": m} for n, m in protocols]}


def join(c, group: str, version: int = 5, **kw) -> dict:
    """JoinGroup; for v4+ follows MEMBER_ID_REQUIRED with the assigned id."""
    body = c.request(ApiKey.JOIN_GROUP, version, join_body(group, version, **kw))
    if body["error_code"] == ErrorCode.MEMBER_ID_REQUIRED and not kw.get("member_id"):
        kw["member_id"] = body["member_id"]
        body = c.request(ApiKey.JOIN_GROUP, version, join_body(group, version, **kw))
    return body


def sync(c, group: str, generation: int, member_id: str, assignments=(), version: int = 3,
         instance_id: str | None = None, protocol: tuple = (None, None)) -> dict:
    return c.request(ApiKey.SYNC_GROUP, version, {
        "group_id": group, "generation_id": generation, "member_id": member_id,
        "group_instance_id": instance_id if version >= 3 else None,
        "protocol_type": protocol[0], "protocol_name": protocol[1],
        "assignments": [{"member_id": m, "assignment": a} for m, a in assignments]})


def heartbeat(c, group: str, generation: int, member_id: str, version: int = 3,
              instance_id: str | None = None) -> int:
    return c.request(ApiKey.HEARTBEAT, version, {
        "group_id": group, "generation_id": generation, "member_id": member_id,
        "group_instance_id": instance_id if version >= 3 else None})["error_code"]


def commit(c, group: str, offsets: dict, version: int = 7, generation: int = -1,
           member_id: str = "", metadata: str | None = "") -> dict:
    """OffsetCommit {(topic, p): offset}; returns {(topic, p): error code}."""
    topics: dict = {}
    for (topic, p), off in offsets.items():
        topics.setdefault(topic, []).append({
            "partition_index": p, "committed_offset": off,
            "committed_leader_epoch": 7 if version >= 6 else -1,
            "committed_metadata": metadata})
    body = c.request(ApiKey.OFFSET_COMMIT, version, {
        "group_id": group, "generation_id_or_member_epoch": generation,
        "member_id": member_id, "group_instance_id": None,
        "retention_time_ms": -1,
        "topics": [{"name": t, "partitions": ps} for t, ps in topics.items()]})
    return {(t["name"], p["partition_index"]): p["error_code"]
            for t in body["topics"] for p in t["partitions"]}


def fetch(c, group: str, partitions, version: int = 5) -> tuple[int, dict]:
    """OffsetFetch; partitions None = all. (top error, {(t, p): (offset, meta, err)});
    v8+ asks in a batch of one group and reads its entry."""
    if partitions is None:
        topics = None
    else:
        by_topic: dict = {}
        for t, p in partitions:
            by_topic.setdefault(t, []).append(p)
        topics = [{"name": t, "partition_indexes": ps} for t, ps in by_topic.items()]
    if version >= 8:
        body = c.request(ApiKey.OFFSET_FETCH, version, {
            "groups": [{"group_id": group, "topics": topics}], "require_stable": True})
        [body] = body["groups"]
        assert body["group_id"] == group
    else:
        body = c.request(ApiKey.OFFSET_FETCH, version, {"group_id": group, "topics": topics,
                                                        "require_stable": version >= 7})
    return body["error_code"], {
        (t["name"], p["partition_index"]): (p["committed_offset"], p["metadata"],
                                            p["error_code"])
        for t in body["topics"] for p in t["partitions"]}


def describe(c, group: str, version: int = 4) -> dict:
    body = c.request(ApiKey.DESCRIBE_GROUPS, version, {
        "groups": [group], "include_authorized_operations": False})
    return body["groups"][0]


def eventually(predicate, what: str):
    return poll.wait_for(predicate, what, WAIT_S, 0.1)


# --- FindCoordinator, ApiVersions ----------------------------------------------------------

def test_api_versions_advertise_the_group_apis(gbroker):
    with gbroker.client() as c:
        body = c.request(ApiKey.API_VERSIONS, 3, {"client_software_name": "t",
                                                  "client_software_version": "1"})
    ranges = {k["api_key"]: (k["min_version"], k["max_version"]) for k in body["api_keys"]}
    assert {k: ranges.get(k) for k in (8, 9, 10, 11, 12, 13, 14, 15, 16)} == {
        8: (0, 9), 9: (0, 9), 10: (0, 6), 11: (0, 9), 12: (0, 4), 13: (0, 5), 14: (0, 5),
        15: (0, 6), 16: (0, 5)}


@pytest.mark.parametrize("version", range(7))
def test_find_coordinator_every_node_agrees(gbroker, version):
    answers = set()
    for name in [f"agree-{i}" for i in range(20)]:
        per_node = []
        for worker in range(gbroker.workers):
            with gbroker.client(worker) as c:
                body = find_coordinator(c, name, version)
            assert body["error_code"] == 0, body
            assert body["host"] == "127.0.0.1"
            assert body["port"] == gbroker.port_of_node(body["node_id"])
            per_node.append(body["node_id"])
        assert len(set(per_node)) == 1, f"nodes disagree about {name}: {per_node}"
        answers.add(per_node[0])
    assert answers == set(gbroker.node_ids), "20 groups should land on both nodes"


def test_find_coordinator_batch_answers_each_key(gbroker):
    """v4+ (KIP-699): one answer per key, in order, each with its own error."""
    keys = ["batch-a", "", "batch-b"]
    with gbroker.client(0) as c:
        body = c.request(ApiKey.FIND_COORDINATOR, 4, {"key_type": 0, "coordinator_keys": keys})
        txn = c.request(ApiKey.FIND_COORDINATOR, 6, {"key_type": 1,
                                                     "coordinator_keys": ["tx-1"]})
    assert [e["key"] for e in body["coordinators"]] == keys
    a, empty, b = body["coordinators"]
    assert a["error_code"] == b["error_code"] == 0
    assert {a["node_id"], b["node_id"]} <= set(gbroker.node_ids)
    assert empty["error_code"] == ErrorCode.INVALID_GROUP_ID and empty["error_message"]
    [t] = txn["coordinators"]
    assert (t["key"], t["error_code"], t["node_id"]) == ("tx-1", ErrorCode.INVALID_REQUEST, -1)


# --- one member through every version --------------------------------------------------------

@pytest.mark.parametrize("version", range(10))
def test_single_member_lifecycle_every_join_version(gbroker, zkc, group, version):
    # SyncGroup and LeaveGroup go to v5, Heartbeat to v4; v0-v2 of LeaveGroup name one
    # member, v3+ a batch
    sync_v, beat_v, leave_v = min(version, 5), min(version, 4), min(version, 5)
    with gbroker.client(coordinator(gbroker, group, min(version, 6))) as c:
        first = c.request(ApiKey.JOIN_GROUP, version, join_body(group, version))
        if version >= 4:
            assert first["error_code"] == ErrorCode.MEMBER_ID_REQUIRED
            assert first["member_id"].startswith("pybroker-tests-")
            if version >= 7:   # no protocol chosen: null, not ""
                assert first["protocol_name"] is None and first["protocol_type"] is None
            first = c.request(ApiKey.JOIN_GROUP, version,
                              {**join_body(group, version, member_id=first["member_id"]),
                               "reason": "test rejoin" if version >= 8 else None})
        assert first["error_code"] == 0, first
        me = first["member_id"]
        assert first["generation_id"] == 1
        assert first["leader"] == me
        assert first["protocol_name"] == "range"
        assert first["protocol_type"] == (CONSUMER if version >= 7 else None)
        assert first["skip_assignment"] is False
        assert [(m["member_id"], m["metadata"]) for m in first["members"]] == \
            [(me, b"meta-range")]

        if sync_v >= 5:   # the group's protocol is checked, and answered
            wrong = sync(c, group, 1, me, [], version=5, protocol=(CONSUMER, "roundrobin"))
            assert wrong["error_code"] == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
            assert (wrong["protocol_type"], wrong["protocol_name"]) == (None, None)
        answer = sync(c, group, 1, me, [(me, b"assigned-to-me")], version=sync_v,
                      protocol=(CONSUMER, "range") if sync_v >= 5 else (None, None))
        assert (answer["error_code"], answer["assignment"]) == (0, b"assigned-to-me")
        if sync_v >= 5:
            assert (answer["protocol_type"], answer["protocol_name"]) == (CONSUMER, "range")
        assert heartbeat(c, group, 1, me, version=beat_v) == 0

        errors = commit(c, group, {(TOPIC, 0): 10 + version}, generation=1, member_id=me)
        assert errors == {(TOPIC, 0): 0}
        _top, got = fetch(c, group, [(TOPIC, 0)])
        assert got[(TOPIC, 0)][0] == 10 + version
        assert zkc.get(f"/consumers/{group}/offsets/{TOPIC}/0")[0] == b"%d" % (10 + version)

        described = describe(c, group)
        assert described["group_state"] == "Stable"
        assert described["protocol_type"] == CONSUMER
        assert described["protocol_data"] == "range"
        [m] = described["members"]
        assert (m["member_id"], m["client_id"], m["client_host"], m["member_assignment"]) \
            == (me, "pybroker-tests", "/127.0.0.1", b"assigned-to-me")

        if leave_v < 3:
            body = c.request(ApiKey.LEAVE_GROUP, leave_v, {"group_id": group, "member_id": me})
            assert body["error_code"] == 0
        else:
            body = c.request(ApiKey.LEAVE_GROUP, leave_v, {
                "group_id": group, "members": [{"member_id": me, "group_instance_id": None,
                                                "reason": "done" if leave_v >= 5 else None}]})
            assert body["error_code"] == 0
            assert [(m["member_id"], m["error_code"]) for m in body["members"]] == [(me, 0)]
        assert heartbeat(c, group, 1, me, version=beat_v) == ErrorCode.UNKNOWN_MEMBER_ID
        # gone from memory, but its committed offset keeps it in the registry
        assert describe(c, group)["group_state"] == "Empty"


def test_join_v4_hands_out_a_member_id_first(gbroker, group):
    with gbroker.client(coordinator(gbroker, group)) as c:
        body = c.request(ApiKey.JOIN_GROUP, 4, join_body(group, 4))
        assert body["error_code"] == ErrorCode.MEMBER_ID_REQUIRED
        assigned = body["member_id"]
        assert assigned and body["generation_id"] == -1
        # an id the coordinator never handed out is refused
        bogus = c.request(ApiKey.JOIN_GROUP, 4, join_body(group, 4, member_id="made-up"))
        assert bogus["error_code"] == ErrorCode.UNKNOWN_MEMBER_ID
        body = c.request(ApiKey.JOIN_GROUP, 4, join_body(group, 4, member_id=assigned))
        assert (body["error_code"], body["member_id"]) == (0, assigned)


# --- several members -------------------------------------------------------------------------

def test_protocol_chosen_in_leader_order_and_followers_get_empty_assignment(gbroker, group):
    worker = coordinator(gbroker, group)
    protocols = {"a": [("range", b"A-range"), ("roundrobin", b"A-rr"), ("x", b"A-x")],
                 "b": [("roundrobin", b"B-rr"), ("sticky", b"B-s"), ("range", b"B-range")]}
    with gbroker.client(worker) as ca, gbroker.client(worker) as cb:
        ids = {}
        for name, c in (("a", ca), ("b", cb)):
            body = c.request(ApiKey.JOIN_GROUP, 5, join_body(group, 5, protocols=protocols[name]))
            ids[name] = body["member_id"]
        # both join in one request each, sent back to back: one generation for both
        _, data_a = ca.encode(ApiKey.JOIN_GROUP, 5, join_body(
            group, 5, member_id=ids["a"], protocols=protocols["a"]))
        _, data_b = cb.encode(ApiKey.JOIN_GROUP, 5, join_body(
            group, 5, member_id=ids["b"], protocols=protocols["b"]))
        ca.send(data_a)
        cb.send(data_b)
        answers = {"a": ca.recv_response(ApiKey.JOIN_GROUP, 5)[1],
                   "b": cb.recv_response(ApiKey.JOIN_GROUP, 5)[1]}
        assert {a["error_code"] for a in answers.values()} == {0}, answers
        leader = answers["a"]["leader"]
        assert leader in ids.values() and answers["b"]["leader"] == leader
        leader_name = "a" if leader == ids["a"] else "b"
        follower_name = "b" if leader_name == "a" else "a"
        expected = "range" if leader_name == "a" else "roundrobin"   # leader's order
        assert {a["protocol_name"] for a in answers.values()} == {expected}
        generation = answers["a"]["generation_id"]
        assert answers["b"]["generation_id"] == generation
        meta = {n: dict(protocols[n])[expected] for n in ids}
        assert sorted((m["member_id"], m["metadata"]) for m in answers[leader_name]["members"]) \
            == sorted((ids[n], meta[n]) for n in ids)
        assert answers[follower_name]["members"] == []

        # the follower's SyncGroup waits for the leader's; the leader assigns only itself
        conns = {"a": ca, "b": cb}
        _, data = conns[follower_name].encode(ApiKey.SYNC_GROUP, 3, {
            "group_id": group, "generation_id": generation, "member_id": ids[follower_name],
            "group_instance_id": None, "assignments": []})
        conns[follower_name].send(data)
        mine = sync(conns[leader_name], group, generation, leader,
                    [(leader, b"everything"), ("not-a-member", b"ignored")])
        assert (mine["error_code"], mine["assignment"]) == (0, b"everything")
        theirs = conns[follower_name].recv_response(ApiKey.SYNC_GROUP, 3)[1]
        assert (theirs["error_code"], theirs["assignment"]) == (0, b"")

        # a third member joining starts a rebalance: heartbeats say so
        with gbroker.client(worker) as cc:
            _, data_c = cc.encode(ApiKey.JOIN_GROUP, 3, join_body(
                group, 3, protocols=[("range", b"C")]))
            cc.send(data_c)
            eventually(lambda: heartbeat(ca, group, generation, ids["a"]) ==
                       ErrorCode.REBALANCE_IN_PROGRESS, "REBALANCE_IN_PROGRESS")
            assert describe(ca, group)["group_state"] == "PreparingRebalance"
            assert sync(ca, group, generation, ids["a"])["error_code"] == \
                ErrorCode.REBALANCE_IN_PROGRESS
            # a and b rejoin; c's pending join completes with them
            ca.send(ca.encode(ApiKey.JOIN_GROUP, 5, join_body(
                group, 5, member_id=ids["a"], protocols=protocols["a"]))[1])
            cb.send(cb.encode(ApiKey.JOIN_GROUP, 5, join_body(
                group, 5, member_id=ids["b"], protocols=protocols["b"]))[1])
            results = [conn.recv_response(ApiKey.JOIN_GROUP, v)[1]
                       for conn, v in ((ca, 5), (cb, 5), (cc, 3))]
        assert {r["error_code"] for r in results} == {0}, results
        assert {r["generation_id"] for r in results} == {generation + 1}
        assert {r["protocol_name"] for r in results} == {"range"}   # c lists only range
        # the old generation is now stale
        assert heartbeat(ca, group, generation, ids["a"]) == ErrorCode.ILLEGAL_GENERATION


def test_inconsistent_protocols_are_refused(gbroker, group):
    with gbroker.client(coordinator(gbroker, group)) as c:
        first = join(c, group, protocols=[("range", b"")])
        assert first["error_code"] == 0
        assert join(c, group, protocols=[("roundrobin", b"")])["error_code"] == \
            ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        assert join(c, group, protocols=[("range", b"")], protocol_type="connect")[
            "error_code"] == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        assert join(c, group + "-new", protocols=[])["error_code"] in (
            ErrorCode.INCONSISTENT_GROUP_PROTOCOL, ErrorCode.NOT_COORDINATOR)
        # the group still works for its member
        me = first["member_id"]
        assert sync(c, group, first["generation_id"], me, [(me, b"x")])["error_code"] == 0
        assert heartbeat(c, group, first["generation_id"], me) == 0


# --- errors ------------------------------------------------------------------------------------

def test_heartbeat_and_sync_from_unknown_or_stale_members(gbroker, group):
    with gbroker.client(coordinator(gbroker, group)) as c:
        assert heartbeat(c, group, 1, "nobody") == ErrorCode.UNKNOWN_MEMBER_ID  # no group
        assert sync(c, group, 1, "nobody")["error_code"] == ErrorCode.UNKNOWN_MEMBER_ID
        body = join(c, group)
        me, gen = body["member_id"], body["generation_id"]
        assert heartbeat(c, group, gen, "nobody") == ErrorCode.UNKNOWN_MEMBER_ID
        assert sync(c, group, gen + 5, me)["error_code"] == ErrorCode.ILLEGAL_GENERATION
        assert sync(c, group, gen, me, [(me, b"a")])["assignment"] == b"a"
        assert heartbeat(c, group, gen - 1, me) == ErrorCode.ILLEGAL_GENERATION
        assert heartbeat(c, group, gen, me) == 0       # the group keeps working


def test_offset_commit_errors(gbroker, group):
    with gbroker.client(coordinator(gbroker, group)) as c:
        # a stale generation for a group without members
        assert commit(c, group, {(TOPIC, 0): 1}, generation=3, member_id="gone") == \
            {(TOPIC, 0): ErrorCode.ILLEGAL_GENERATION}
        body = join(c, group)
        me, gen = body["member_id"], body["generation_id"]
        sync(c, group, gen, me, [(me, b"")])
        assert commit(c, group, {(TOPIC, 0): 1}, generation=gen - 1, member_id=me) == \
            {(TOPIC, 0): ErrorCode.ILLEGAL_GENERATION}
        assert commit(c, group, {(TOPIC, 0): 1}, generation=gen, member_id="other") == \
            {(TOPIC, 0): ErrorCode.UNKNOWN_MEMBER_ID}
        # an assign()-mode commit while the group has members is not from a member
        assert commit(c, group, {(TOPIC, 0): 1}) == {(TOPIC, 0): ErrorCode.UNKNOWN_MEMBER_ID}
        # partitions that do not exist fail alone; the rest is committed
        errors = commit(c, group, {(TOPIC, 1): 5, (TOPIC, 99): 5, ("no-such-topic", 0): 5},
                        generation=gen, member_id=me)
        assert errors == {(TOPIC, 1): 0, (TOPIC, 99): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                          ("no-such-topic", 0): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}
        _top, got = fetch(c, group, [(TOPIC, 1), (TOPIC, 99), ("no-such-topic", 0)])
        assert got == {(TOPIC, 1): (5, "", 0), (TOPIC, 99): (-1, "", 0),
                       ("no-such-topic", 0): (-1, "", 0)}
        assert heartbeat(c, group, gen, me) == 0


@pytest.mark.parametrize("bad", ["", "a/b", ".", "..", "tab\there", "nul\x00"],
                         ids=["empty", "slash", "dot", "dotdot", "control", "nul"])
def test_invalid_group_names(gbroker, bad):
    with gbroker.client() as c:
        for v in (0, 1, 2):
            assert c.request(ApiKey.FIND_COORDINATOR, v, {"key": bad, "key_type": 0})[
                "error_code"] == ErrorCode.INVALID_GROUP_ID
        for v in (0, 5):
            assert c.request(ApiKey.JOIN_GROUP, v, join_body(bad, v))["error_code"] == \
                ErrorCode.INVALID_GROUP_ID
        assert sync(c, bad, 1, "m")["error_code"] == ErrorCode.INVALID_GROUP_ID
        assert heartbeat(c, bad, 1, "m") == ErrorCode.INVALID_GROUP_ID
        for v in (2, 7):
            assert commit(c, bad, {(TOPIC, 0): 1}, version=v) == \
                {(TOPIC, 0): ErrorCode.INVALID_GROUP_ID}
        assert fetch(c, bad, [(TOPIC, 0)], version=1)[1] == \
            {(TOPIC, 0): (-1, "", ErrorCode.INVALID_GROUP_ID)}
        assert fetch(c, bad, [(TOPIC, 0)], version=5)[0] == ErrorCode.INVALID_GROUP_ID
        assert describe(c, bad)["error_code"] == ErrorCode.INVALID_GROUP_ID
        # the connection and the broker go on serving
        assert c.request(ApiKey.API_VERSIONS, 0, {})["error_code"] == 0


def test_other_node_answers_not_coordinator(gbroker, group):
    wrong = other(gbroker, coordinator(gbroker, group))
    with gbroker.client(wrong) as c:
        assert join(c, group)["error_code"] == ErrorCode.NOT_COORDINATOR
        assert sync(c, group, 1, "m")["error_code"] == ErrorCode.NOT_COORDINATOR
        assert heartbeat(c, group, 1, "m") == ErrorCode.NOT_COORDINATOR
        body = c.request(ApiKey.LEAVE_GROUP, 0, {"group_id": group, "member_id": "m"})
        assert body["error_code"] == ErrorCode.NOT_COORDINATOR
        assert commit(c, group, {(TOPIC, 0): 1}) == {(TOPIC, 0): ErrorCode.NOT_COORDINATOR}
        assert fetch(c, group, [(TOPIC, 0)], version=3)[0] == ErrorCode.NOT_COORDINATOR
        assert fetch(c, group, [(TOPIC, 0)], version=1)[1][(TOPIC, 0)][2] == \
            ErrorCode.NOT_COORDINATOR
        assert describe(c, group)["error_code"] == ErrorCode.NOT_COORDINATOR


def test_session_timeout_bounds(gbroker, group):
    with gbroker.client(coordinator(gbroker, group)) as c:
        for ms in (0, 999, 300_001):
            assert join(c, group, session_ms=ms)["error_code"] == \
                ErrorCode.INVALID_SESSION_TIMEOUT, ms
        body = join(c, group, session_ms=45_000)
        assert body["error_code"] == 0
        me = body["member_id"]
        assert sync(c, group, body["generation_id"], me, [(me, b"")])["error_code"] == 0
        body = join(c, group, member_id=me, session_ms=300_000)   # rejoin, longer session
        assert body["error_code"] == 0


def test_member_without_heartbeats_is_removed(gbroker, group):
    with gbroker.client(coordinator(gbroker, group)) as c:
        body = join(c, group, session_ms=1_000)
        me, gen = body["member_id"], body["generation_id"]
        assert sync(c, group, gen, me, [(me, b"p")])["error_code"] == 0
        eventually(lambda: describe(c, group)["members"] == [], "session expiry")
        assert heartbeat(c, group, gen, me) == ErrorCode.UNKNOWN_MEMBER_ID
        assert join(c, group)["error_code"] == 0   # the group takes new members afterwards


def test_static_member_rejoin_fences_the_old_id(gbroker, group):
    with gbroker.client(coordinator(gbroker, group)) as c:
        first = join(c, group, instance_id="instance-1")
        assert first["error_code"] == 0      # static members skip MEMBER_ID_REQUIRED
        old = first["member_id"]
        assert old.startswith("instance-1-")
        assert sync(c, group, first["generation_id"], old, [(old, b"p0")],
                    instance_id="instance-1")["error_code"] == 0
        again = join(c, group, instance_id="instance-1")   # restarted: no member id
        assert again["error_code"] == 0
        new = again["member_id"]
        assert new != old
        assert heartbeat(c, group, again["generation_id"], old, instance_id="instance-1") == \
            ErrorCode.FENCED_INSTANCE_ID
        [m] = describe(c, group)["members"]
        assert (m["member_id"], m["group_instance_id"]) == (new, "instance-1")
        body = c.request(ApiKey.LEAVE_GROUP, 3, {"group_id": group, "members": [
            {"member_id": "", "group_instance_id": "instance-1"},
            {"member_id": "", "group_instance_id": "instance-unknown"}]})
        assert [m["error_code"] for m in body["members"]] == [0, ErrorCode.UNKNOWN_MEMBER_ID]


# --- offsets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("commit_version", [2, 3, 4, 5, 6, 7, 8, 9])
def test_offset_commit_and_fetch_every_version(gbroker, zkc, group, commit_version):
    with gbroker.client(coordinator(gbroker, group)) as c:
        offsets = {(TOPIC, p): 100 * commit_version + p for p in range(PARTITIONS)}
        errors = commit(c, group, offsets, version=commit_version,
                        metadata=f"meta v{commit_version} ü")
        assert errors == {tp: 0 for tp in offsets}
        for fetch_version in range(1, 10):
            top, got = fetch(c, group, [(TOPIC, p) for p in range(PARTITIONS)] + [(TOPIC, 50)],
                             version=fetch_version)
            assert top == 0
            assert got == {**{tp: (off, f"meta v{commit_version} ü", 0)
                              for tp, off in offsets.items()}, (TOPIC, 50): (-1, "", 0)}
        body = c.request(ApiKey.OFFSET_FETCH, 5, {"group_id": group, "topics": [
            {"name": TOPIC, "partition_indexes": [0]}]})
        epoch = body["topics"][0]["partitions"][0]["committed_leader_epoch"]
        assert epoch == (7 if commit_version >= 6 else -1)
        for fetch_version in range(2, 10):   # null topics: everything committed
            top, got = fetch(c, group, None, version=fetch_version)
            assert (top, set(got)) == (0, set(offsets))
    for (topic, p), off in offsets.items():
        assert zkc.get(f"/consumers/{group}/offsets/{topic}/{p}")[0] == str(off).encode()
        meta = json.loads(zkc.get(f"/consumers/{group}/offset-metadata/{topic}/{p}")[0])
        assert (meta["offset"], meta["metadata"]) == (off, f"meta v{commit_version} ü")


def test_offset_fetch_v8_answers_each_group_of_a_batch(gbroker, group):
    """v8+ (KIP-709): one entry per group, each with its own error; a group another
    node coordinates is NOT_COORDINATOR there, as Kafka answers."""
    worker = coordinator(gbroker, group)
    elsewhere = next(f"{group}-{i}" for i in range(100)
                     if coordinator(gbroker, f"{group}-{i}") != worker)
    with gbroker.client(worker) as c:
        assert commit(c, group, {(TOPIC, 0): 42}) == {(TOPIC, 0): 0}
        body = c.request(ApiKey.OFFSET_FETCH, 9, {"groups": [
            {"group_id": group, "member_id": None, "member_epoch": -1,
             "topics": [{"name": TOPIC, "partition_indexes": [0, 1]}]},
            {"group_id": elsewhere, "topics": None},
            {"group_id": "", "topics": None}], "require_stable": True})
    mine, other, bad = body["groups"]
    assert mine["error_code"] == 0
    [t] = mine["topics"]
    assert [(p["partition_index"], p["committed_offset"], p["error_code"])
            for p in t["partitions"]] == [(0, 42, 0), (1, -1, 0)]
    assert (other["group_id"], other["error_code"], other["topics"]) == \
        (elsewhere, ErrorCode.NOT_COORDINATOR, [])
    assert bad["error_code"] == ErrorCode.INVALID_GROUP_ID


def test_delete_groups(gbroker, zkc, group):
    """DeleteGroups: refused while the group has members or is another node's; its
    committed offsets deleted once it is empty; GROUP_ID_NOT_FOUND for one with none."""
    worker = coordinator(gbroker, group)
    elsewhere = next(f"{group}-{i}" for i in range(100)
                     if coordinator(gbroker, f"{group}-{i}") != worker)
    with gbroker.client(worker) as c:
        body = join(c, group)
        me = body["member_id"]
        sync(c, group, body["generation_id"], me, [(me, b"a")])
        assert commit(c, group, {(TOPIC, 0): 5}, generation=body["generation_id"],
                      member_id=me) == {(TOPIC, 0): 0}

        def delete(*groups, version=2):
            answer = c.request(ApiKey.DELETE_GROUPS, version, {"groups_names": list(groups)})
            return [(r["group_id"], r["error_code"]) for r in answer["results"]]
        assert delete(group, elsewhere, "") == [
            (group, ErrorCode.NON_EMPTY_GROUP), (elsewhere, ErrorCode.NOT_COORDINATOR),
            ("", ErrorCode.INVALID_GROUP_ID)]
        c.request(ApiKey.LEAVE_GROUP, 3, {"group_id": group, "members": [
            {"member_id": me, "group_instance_id": None}]})
        assert zkc.exists(f"/consumers/{group}/offsets/{TOPIC}/0")
        for version in (0, 1):
            assert delete(group + "-never", version=version) == \
                [(group + "-never", ErrorCode.GROUP_ID_NOT_FOUND)] or \
                coordinator(gbroker, group + "-never") != worker
        assert delete(group) == [(group, ErrorCode.NONE)]
        assert zkc.exists(f"/consumers/{group}") is None
        assert fetch(c, group, [(TOPIC, 0)])[1][(TOPIC, 0)][0] == -1
        assert delete(group) == [(group, ErrorCode.GROUP_ID_NOT_FOUND)]


def test_offset_delete(gbroker, zkc, group):
    """OffsetDelete: refused for a topic the group's members subscribe to; deletes the
    rest; GROUP_ID_NOT_FOUND for a group with no offsets."""
    worker = coordinator(gbroker, group)

    def delete(c, g, partitions):
        body = c.request(ApiKey.OFFSET_DELETE, 0, {"group_id": g, "topics": [
            {"name": t, "partitions": [{"partition_index": p}]} for t, p in partitions]})
        return body["error_code"], [(t["name"], p["partition_index"], p["error_code"])
                                    for t in body["topics"] for p in t["partitions"]]
    with gbroker.client(worker) as c:
        assert commit(c, group, {(TOPIC, 0): 7, (TOPIC, 1): 8}) == {(TOPIC, 0): 0,
                                                                   (TOPIC, 1): 0}
        # a member subscribing to TOPIC (a consumer protocol Subscription v0)
        subscription = struct.pack(">hih", 0, 1, len(TOPIC)) + TOPIC.encode() + b"\0\0\0\0"
        body = join(c, group, protocols=[("range", subscription)])
        me = body["member_id"]
        assert delete(c, group, [(TOPIC, 0)]) == \
            (0, [(TOPIC, 0, ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC)])
        c.request(ApiKey.LEAVE_GROUP, 3, {"group_id": group, "members": [
            {"member_id": me, "group_instance_id": None}]})
        assert delete(c, group, [(TOPIC, 0), (TOPIC, 99), ("no-such-topic", 0)]) == (0, [
            (TOPIC, 0, 0), (TOPIC, 99, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
            ("no-such-topic", 0, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)])
        assert zkc.exists(f"/consumers/{group}/offsets/{TOPIC}/0") is None
        _top, got = fetch(c, group, [(TOPIC, 0), (TOPIC, 1)])
        assert (got[(TOPIC, 0)][0], got[(TOPIC, 1)][0]) == (-1, 8)
        never = next(f"{group}-{i}" for i in range(100)
                     if coordinator(gbroker, f"{group}-{i}") == worker)
        assert delete(c, never, [(TOPIC, 0)])[0] == ErrorCode.GROUP_ID_NOT_FOUND


def test_pipelined_commits_apply_in_order(gbroker, group):
    """Commits are written to ZooKeeper one at a time in arrival order: the last of
    many pipelined commits of one partition is the one that stays."""
    with gbroker.client(coordinator(gbroker, group)) as c:
        frames = []
        for offset in range(1, 51):
            frames.append(c.encode(ApiKey.OFFSET_COMMIT, 7, {
                "group_id": group, "generation_id_or_member_epoch": -1, "member_id": "",
                "group_instance_id": None, "topics": [{"name": TOPIC, "partitions": [
                    {"partition_index": 2, "committed_offset": offset,
                     "committed_leader_epoch": -1, "committed_metadata": f"m{offset}"}]}]})[1])
        c.send(b"".join(frames))
        for _ in frames:
            body = c.recv_response(ApiKey.OFFSET_COMMIT, 7)[1]
            assert body["topics"][0]["partitions"][0]["error_code"] == 0
        assert fetch(c, group, [(TOPIC, 2)])[1] == {(TOPIC, 2): (50, "m50", 0)}


def test_offsets_shared_with_the_paper_consumer(gbroker, zkc, group):
    """The paper's consumer writes a bare decimal offset; the coordinator reads it, and
    metadata written for another offset is not reported with it."""
    with gbroker.client(coordinator(gbroker, group)) as c:
        assert commit(c, group, {(TOPIC, 0): 5}, metadata="old") == {(TOPIC, 0): 0}
        zkc.set(f"/consumers/{group}/offsets/{TOPIC}/0", b"42")
        zkc.create(f"/consumers/{group}/offsets/{TOPIC}/1", b"7", makepath=True)
        _top, got = fetch(c, group, [(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)])
        assert got == {(TOPIC, 0): (42, "", 0), (TOPIC, 1): (7, "", 0),
                       (TOPIC, 2): (-1, "", 0)}


def test_offset_fetch_of_unknown_group_is_minus_one(gbroker, group):
    with gbroker.client(coordinator(gbroker, group)) as c:
        for v in (1, 2, 3, 4, 5):
            top, got = fetch(c, group, [(TOPIC, 0), ("never-heard-of", 3)], version=v)
            assert top == 0
            assert got == {(TOPIC, 0): (-1, "", 0), ("never-heard-of", 3): (-1, "", 0)}
        for v in (2, 5):
            assert fetch(c, group, None, version=v) == (0, {})


def test_null_metadata_and_long_metadata(gbroker, group):
    with gbroker.client(coordinator(gbroker, group)) as c:
        assert commit(c, group, {(TOPIC, 0): 3}, metadata=None) == {(TOPIC, 0): 0}
        assert fetch(c, group, [(TOPIC, 0)])[1][(TOPIC, 0)] == (3, "", 0)
        assert commit(c, group, {(TOPIC, 0): 4}, metadata="m" * 5000) == \
            {(TOPIC, 0): ErrorCode.OFFSET_METADATA_TOO_LARGE}
        assert fetch(c, group, [(TOPIC, 0)])[1][(TOPIC, 0)] == (3, "", 0)


# --- ListGroups, DescribeGroups ------------------------------------------------------------------

def test_list_and_describe_every_version(gbroker, group):
    worker = coordinator(gbroker, group)
    with gbroker.client(worker) as c, gbroker.client(other(gbroker, worker)) as elsewhere:
        body = join(c, group)
        me = body["member_id"]
        sync(c, group, body["generation_id"], me, [(me, b"assignment-bytes")])
        for v in range(6):
            listed = c.request(ApiKey.LIST_GROUPS, v, {})
            assert listed["error_code"] == 0
            [mine] = [g for g in listed["groups"] if g["group_id"] == group]
            assert mine["protocol_type"] == CONSUMER
            assert (mine["group_state"], mine["group_type"]) == \
                ("Stable" if v >= 4 else "", "classic" if v >= 5 else "")
            assert group not in {g["group_id"] for g in
                                 elsewhere.request(ApiKey.LIST_GROUPS, v, {})["groups"]}
        for v, filters, listed in [(4, {"states_filter": ["stable"]}, True),
                                   (4, {"states_filter": ["Empty", "Dead"]}, False),
                                   (5, {"types_filter": ["Classic"]}, True),
                                   (5, {"types_filter": ["consumer"]}, False),
                                   (5, {"states_filter": ["Stable"],
                                        "types_filter": ["classic"]}, True)]:
            groups = c.request(ApiKey.LIST_GROUPS, v, filters)["groups"]
            assert (group in {g["group_id"] for g in groups}) is listed, (v, filters)
        for v in range(7):
            d = describe(c, group, version=v)
            assert (d["error_code"], d["group_state"], d["protocol_data"]) == \
                (0, "Stable", "range")
            [m] = d["members"]
            assert (m["member_id"], m["client_id"], m["client_host"], m["member_metadata"],
                    m["member_assignment"]) == (me, "pybroker-tests", "/127.0.0.1",
                                                b"meta-range", b"assignment-bytes")
    never = group + "-never"
    with gbroker.client(coordinator(gbroker, never)) as c:
        assert describe(c, never)["group_state"] == "Dead"
        # v6 (KIP-1043): a group that does not exist is an error, with a message
        d = describe(c, never, version=6)
        assert (d["error_code"], d["error_message"]) == \
            (ErrorCode.GROUP_ID_NOT_FOUND, f"Group {never} not found.")


# --- the state machine on its own loop: loading and groups moving away ----------------------

class _Worker:
    """What GroupCoordinator reads of a worker: its loop, node id and cluster view."""

    def __init__(self, loop, nodes: dict):
        self.loop = loop
        self.node_id = 0
        self.stopping = False
        self.cluster = ClusterState(nodes=nodes)


def test_loading_until_the_node_sees_itself_and_groups_moving_away():
    moving = next(f"moving-{i}" for i in range(100) if coordinator_node(f"moving-{i}", [0, 1]) == 1)
    staying = next(f"staying-{i}" for i in range(100)
                   if coordinator_node(f"staying-{i}", [0, 1]) == 0)
    protocols = [("range", b"")]

    async def scenario():
        worker = _Worker(asyncio.get_running_loop(), {})
        groups = GroupCoordinator(worker)
        # no view of the cluster yet: every group API says "loading", so clients retry
        assert groups.join(moving, "", None, "c", "/h", SESSION_MS, SESSION_MS, CONSUMER,
                           protocols, False)["error_code"] == \
            ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
        assert groups.heartbeat(moving, 1, "m", None) == ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
        assert groups.commit_check(moving, -1, "", None) == \
            ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
        worker.cluster = ClusterState(nodes={0: ("h", 1)})   # alone: coordinates all
        waiting = groups.join(moving, "", None, "c", "/h", SESSION_MS, SESSION_MS, CONSUMER,
                              protocols, False)
        kept = groups.join(staying, "", None, "c", "/h", SESSION_MS, SESSION_MS, CONSUMER,
                           protocols, False)
        # node 1 appears: `moving` is its group now; its waiting member hears so
        worker.cluster = ClusterState(nodes={0: ("h", 1), 1: ("h", 2)})
        answer = await asyncio.wait_for(waiting, WAIT_S)
        assert answer["error_code"] == ErrorCode.NOT_COORDINATOR
        assert groups.heartbeat(moving, 1, answer["member_id"], None) == \
            ErrorCode.NOT_COORDINATOR
        joined = await asyncio.wait_for(kept, WAIT_S)
        assert (joined["error_code"], joined["generation_id"]) == (0, 1)
        assert set(groups.listed()) == {staying}
        worker.stopping = True   # stops the coordinator's watch timer
        await asyncio.sleep(WATCH_S * 2)
        assert groups.listed() == {}
    asyncio.run(scenario())
