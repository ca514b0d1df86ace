"""Client-declared counts are bounded before the broker builds anything from them, and
ZooKeeper calls of admin requests never stall the worker's event loop (issue 8, #2).

Against a real 2-worker broker with raw sockets. Error codes are Kafka's numbers,
written out (see test_protocol_edges.py for why).

The ZooKeeper tests put a loopback proxy between the broker and the session's
ZooKeeper (this module overrides `zk_connect`, which broker_factory uses) and freeze
it: bytes stop flowing both ways, as with a ZooKeeper that hangs or a network that
drops packets, while the TCP connections stay up.
"""
from __future__ import annotations

import socket
import struct
import threading

import pytest

from pybroker.protocol import ApiKey, ErrorCode
from pybroker.testing.poll import wait_for

NONE = 0
REQUEST_TIMED_OUT = 7
INVALID_PARTITIONS = 37
INVALID_CONFIG = 40
INVALID_REQUEST = 42
POLICY_VIOLATION = 44
TOPIC_ALREADY_EXISTS = 36
UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC = 2   # DescribeConfigs/AlterConfigs resource type

LIMIT = 10   # max.partitions.per.request in these tests (default 10000)


def create_topics(client, topics: list[dict], timeout_ms: int = 10_000,
                  validate_only: bool = False) -> list[dict]:
    full = [{"replication_factor": 1, "assignments": [], "configs": [], **t} for t in topics]
    return client.request(ApiKey.CREATE_TOPICS, 4, {
        "topics": full, "timeout_ms": timeout_ms, "validate_only": validate_only})["topics"]


def topic_names(client) -> set[str]:
    body = client.request(ApiKey.METADATA, 8, {"topics": None,
                                               "allow_auto_topic_creation": False})
    return {t["name"] for t in body["topics"]}


@pytest.fixture
def bounded(broker_factory):
    return broker_factory(workers=2, settings={"max.partitions.per.request": LIMIT})


def _same_workers(broker, rows_before) -> None:
    rows = broker.worker_rows()
    assert [r["pid"] for r in rows] == [r["pid"] for r in rows_before], rows
    assert [r["restarts"] for r in rows] == [0] * broker.workers, rows


# --- partitions ------------------------------------------------------------------------

def test_num_partitions_2_31_minus_1_is_refused_at_once(broker):
    """The defect: this request grew a worker by ~400 MB/s until its heartbeat kill."""
    rows = broker.worker_rows()
    with broker.client() as c:
        [t] = create_topics(c, [{"name": "huge", "num_partitions": 2**31 - 1}])
        assert t["error_code"] == POLICY_VIOLATION, t
        assert "2147483647 requested" in t["error_message"], t
        assert "limit 10000" in t["error_message"], t
        assert "huge" not in topic_names(c)
    _same_workers(broker, rows)


def test_the_bound_is_on_the_whole_request_as_in_kafka(bounded):
    with bounded.client() as c:
        # 6 + 6 > 10: every topic of the request is refused, none is created
        answers = create_topics(c, [{"name": "a6", "num_partitions": 6},
                                    {"name": "b6", "num_partitions": 6}])
        assert [t["error_code"] for t in answers] == [POLICY_VIOLATION] * 2, answers
        assert "12 requested, limit 10" in answers[0]["error_message"]
        # num_partitions=-1 counts as num.partitions (1): 9 + 1 = 10 is within the bound
        answers = create_topics(c, [{"name": "a9", "num_partitions": 9},
                                    {"name": "b-default", "num_partitions": -1}])
        assert [t["error_code"] for t in answers] == [NONE, NONE], answers
        assert {"a9", "b-default"} <= topic_names(c)
        assert not {"a6", "b6"} & topic_names(c)


@pytest.mark.parametrize("count", [0, -2, -2**31])
def test_a_partition_count_below_one_is_invalid_partitions(bounded, count):
    with bounded.client() as c:
        [t] = create_topics(c, [{"name": "none", "num_partitions": count}])
    assert t["error_code"] == INVALID_PARTITIONS, t
    assert str(count) in t["error_message"]


def test_a_huge_replica_assignment_is_refused_without_a_loop(bounded):
    """200,000 assignments (8 bytes each on the wire): counted by Kafka's rule, so over
    the bound; a short list is checked as Kafka does (no replication factor beside it)."""
    many = [{"partition_index": i, "broker_ids": []} for i in range(200_000)]
    with bounded.client() as c:
        [t] = create_topics(c, [{"name": "assigned", "num_partitions": -1,
                                 "assignments": many}])
        assert t["error_code"] == POLICY_VIOLATION, t
        assert "200000 requested" in t["error_message"]
        [t] = create_topics(c, [{"name": "assigned", "num_partitions": -1,
                                 "assignments": many[:2]}])
        assert t["error_code"] == INVALID_REQUEST, t   # with a replication factor too
        assert "must be -1" in t["error_message"]


def test_validate_only_checks_the_bound_and_creates_nothing(bounded):
    with bounded.client() as c:
        [t] = create_topics(c, [{"name": "v", "num_partitions": LIMIT + 1}],
                            validate_only=True)
        assert t["error_code"] == POLICY_VIOLATION
        [t] = create_topics(c, [{"name": "v", "num_partitions": LIMIT}], validate_only=True)
        assert t["error_code"] == NONE
        assert "v" not in topic_names(c)


def test_a_topic_named_twice_in_one_request(bounded):
    with bounded.client() as c:
        answers = create_topics(c, [{"name": "twice", "num_partitions": 1},
                                    {"name": "twice", "num_partitions": 1}])
    assert [t["error_code"] for t in answers] == [NONE, INVALID_REQUEST], answers


def test_metadata_auto_creation_stays_within_the_bound(broker_factory):
    """One Metadata request naming 30 unknown topics at 4 partitions each, bound 10:
    two are created (8 partitions), the rest answered LEADER_NOT_AVAILABLE (retriable),
    and created by later requests."""
    broker = broker_factory(workers=2, settings={"max.partitions.per.request": LIMIT,
                                                 "num.partitions": 4})
    names = [f"auto-{i:02d}" for i in range(30)]
    with broker.client() as c:
        body = c.request(ApiKey.METADATA, 8, {"topics": [{"name": n} for n in names],
                                              "allow_auto_topic_creation": True})
        codes = [t["error_code"] for t in body["topics"]]
        assert codes.count(NONE) == 2 and codes.count(5) == 28, codes
        body = c.request(ApiKey.METADATA, 8, {"topics": [{"name": n} for n in names],
                                              "allow_auto_topic_creation": True})
        assert [t["error_code"] for t in body["topics"]].count(NONE) == 4


# --- config entries ----------------------------------------------------------------------

TOO_MANY = 1001   # admin.MAX_CONFIG_ENTRIES + 1


def test_too_many_config_entries_in_create_topics(bounded):
    configs = [{"name": "retention.ms", "value": str(i)} for i in range(TOO_MANY)]
    with bounded.client() as c:
        [t] = create_topics(c, [{"name": "configs", "num_partitions": 1,
                                 "configs": configs}])
        assert t["error_code"] == INVALID_CONFIG, t
        assert "1001 config entries; at most 1000" in t["error_message"]
        assert "configs" not in topic_names(c)


@pytest.mark.parametrize("api", ["alter", "incremental"])
def test_too_many_config_entries_in_alter_configs(bounded, api):
    with bounded.client() as c:
        assert create_topics(c, [{"name": "alter-me", "num_partitions": 1}])[0][
            "error_code"] == NONE
        if api == "alter":
            key, version = ApiKey.ALTER_CONFIGS, 1
            entries = [{"name": "retention.ms", "value": "1"}] * TOO_MANY
        else:
            key, version = ApiKey.INCREMENTAL_ALTER_CONFIGS, 1
            entries = [{"name": "retention.ms", "config_operation": 0, "value": "1"}] * \
                TOO_MANY
        body = c.request(key, version, {"resources": [
            {"resource_type": TOPIC, "resource_name": "alter-me", "configs": entries}],
            "validate_only": False})
    [r] = body["responses"]
    assert r["error_code"] == INVALID_CONFIG, r
    assert "1001 config entries" in r["error_message"]


def test_too_many_keys_in_describe_configs(bounded):
    with bounded.client() as c:
        create_topics(c, [{"name": "described", "num_partitions": 1}])
        body = c.request(ApiKey.DESCRIBE_CONFIGS, 1, {"resources": [
            {"resource_type": TOPIC, "resource_name": "described",
             "configuration_keys": [f"k{i}" for i in range(TOO_MANY)]}],
            "include_synonyms": False})
    [r] = body["results"]
    assert r["error_code"] == INVALID_REQUEST and "1001 config entries" in r["error_message"]


# --- ZooKeeper off the event loop ----------------------------------------------------------

class FreezableProxy:
    """Loopback TCP proxy to ZooKeeper whose forwarding can be frozen and thawed."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.flowing.set()
        for s in [self._listener, *self._sockets]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()   # frozen: hold the bytes (and read no more)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def zk_proxy(zk_server):
    host, port = zk_server.connect_string.rsplit(":", 1)
    proxy = FreezableProxy((host, int(port)))
    yield proxy
    proxy.close()


@pytest.fixture
def zk_connect(zk_proxy, zk_chroot):
    """This module's brokers reach ZooKeeper through the freezable proxy."""
    return f"127.0.0.1:{zk_proxy.port}{zk_chroot}"


def test_admin_requests_answer_with_an_error_while_zookeeper_hangs(broker_factory, zk_proxy):
    # 2 s sessions: a ZooKeeper call still pending after 2 s is answered as timed out
    broker = broker_factory(workers=2, settings={"zookeeper.session.timeout.ms": 2000})
    with broker.client() as setup:
        assert create_topics(setup, [{"name": "existing", "num_partitions": 1}])[0][
            "error_code"] == NONE
    for worker in range(broker.workers):   # every node knows it before the freeze
        with broker.client(worker) as c:
            wait_for(lambda: "existing" in topic_names(c),
                     f"node {broker.node_ids[worker]} to learn of the topic", 30.0)
    rows = broker.worker_rows()
    with broker.client(timeout=30.0) as admin, broker.client(timeout=30.0) as other:
        zk_proxy.freeze()
        try:
            wire, expected = b"", []
            for key, version, body in (
                    (ApiKey.CREATE_TOPICS, 4, {"topics": [
                        {"name": "during-freeze", "num_partitions": 1,
                         "replication_factor": 1, "assignments": [], "configs": []}],
                        "timeout_ms": 10_000, "validate_only": False}),
                    (ApiKey.DELETE_TOPICS, 3, {"topic_names": ["existing"],
                                               "timeout_ms": 10_000}),
                    (ApiKey.INCREMENTAL_ALTER_CONFIGS, 1, {"resources": [
                        {"resource_type": TOPIC, "resource_name": "existing", "configs": [
                            {"name": "retention.ms", "config_operation": 0,
                             "value": "60000"}]}], "validate_only": False}),
                    (ApiKey.METADATA, 8, {"topics": [{"name": "auto-during-freeze"}],
                                          "allow_auto_topic_creation": True})):
                cid, data = admin.encode(key, version, body)
                wire += data
                expected.append((cid, key, version))
            admin.send(wire)
            # The same worker answers another client while its ZooKeeper call hangs:
            # were the loop blocked, these would wait for the thaw below, which only
            # comes after them (the socket timeout would fail the test instead).
            assert other.request(ApiKey.API_VERSIONS, 3, {})["error_code"] == NONE
            assert "existing" in topic_names(other)
            answers = []
            for cid, key, version in expected:
                header, body = admin.recv_response(key, version)
                assert header["correlation_id"] == cid
                answers.append(body)
        finally:
            zk_proxy.thaw()
    create, delete, alter, metadata = answers
    assert create["topics"][0]["error_code"] == REQUEST_TIMED_OUT, create
    assert "ZooKeeper" in create["topics"][0]["error_message"]
    assert delete["responses"][0]["error_code"] == REQUEST_TIMED_OUT, delete
    assert alter["responses"][0]["error_code"] == REQUEST_TIMED_OUT, alter
    assert metadata["topics"][0]["error_code"] == REQUEST_TIMED_OUT, metadata
    assert broker.wait_log(lambda line: "ZooKeeper create of 1 topic(s) failed" in line)
    assert not broker.wait_log(lambda line: "internal error in a request handler" in line,
                               timeout=0)
    _same_workers(broker, rows)
    # After the thaw ZooKeeper serves again (the calls queued during the freeze run
    # then, so "existing" may be deleted now: the answer said the outcome is unknown).
    with broker.client(timeout=30.0) as c:
        def created():   # the session may need a reconnect first: retried, as clients do
            [t] = create_topics(c, [{"name": "after-thaw", "num_partitions": 1}])
            return t if t["error_code"] != REQUEST_TIMED_OUT else None
        t = wait_for(created, "a CreateTopics answered after the thaw", 60.0)
        assert t["error_code"] == NONE, t
        assert "after-thaw" in topic_names(c)


# --- counts in files owned elsewhere (a known failure stays a failure) ------------------

def test_join_group_with_many_protocols_does_not_stall_the_coordinator(broker):
    """KNOWN FAILURE, not in this engineer's files: pybroker/server/groups.py
    GroupCoordinator._select_protocol rebuilds a member's protocol-name list for every
    name the leader offers, O(P^2) for P protocols. Two members offering 50,000
    protocols each (~600 KB frames; "common" last) keep the worker's loop busy for
    minutes and the supervisor kills it at its heartbeat timeout: this test's
    JoinGroup answers never come (connection reset). Fix: select with sets, e.g.
        common = set(leader.protocol_names())
        for m in group.members.values(): common &= set(m.protocol_names())
        return next(n for n in leader.protocol_names() if n in common)
    """
    group = "quadratic"
    with broker.client() as c:
        found = c.request(ApiKey.FIND_COORDINATOR, 0, {"key": group})
    worker = broker.node_ids.index(found["node_id"])
    rows = broker.worker_rows()
    protocols = 50_000

    def join_body(prefix: str) -> dict:
        names = [f"{prefix}{i}" for i in range(protocols)] + ["common"]
        return {"group_id": group, "session_timeout_ms": 30_000,
                "rebalance_timeout_ms": 30_000, "member_id": "", "protocol_type": "consumer",
                "protocols": [{"name": n, "metadata": b""} for n in names]}
    with broker.client(worker, timeout=60.0) as a, broker.client(worker, timeout=60.0) as b:
        cid_a, wire_a = a.encode(ApiKey.JOIN_GROUP, 2, join_body("a"))
        cid_b, wire_b = b.encode(ApiKey.JOIN_GROUP, 2, join_body("b"))
        a.send(wire_a)
        b.send(wire_b)
        answers = [a.recv_response(ApiKey.JOIN_GROUP, 2)[1],
                   b.recv_response(ApiKey.JOIN_GROUP, 2)[1]]
    assert [x["error_code"] for x in answers] == [NONE, NONE], answers
    assert {x["protocol_name"] for x in answers} == {"common"}
    _same_workers(broker, rows)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_offset_fetch_of_many_partitions_stays_within_memory(broker):
    """KNOWN FAILURE, not in this engineer's files: OffsetFetch v5 lists partitions at
    4 bytes each, and pybroker/server/handlers/groups.py handle_offset_fetch passes
    every one to pybroker/coord/offsets.py fetch_offsets, which puts two ZooKeeper
    reads per partition in flight at once (kazoo get_async), whether the partition
    exists or not. 50,000 partitions of a 1-partition topic (a 200 KB request) are
    100,000 pending reads: measured 35 -> 237 MB of worker RSS and ~20 s of the groups
    thread (200,000 partitions: 306 MB, 100 s). Fix: ask ZooKeeper only for partitions
    in the cluster view (the commit handler already checks worker.cluster.leader), and
    answer the others with no offset (-1), as Kafka does for partitions it has no commit for."""
    with broker.client() as c:
        found = c.request(ApiKey.FIND_COORDINATOR, 0, {"key": "many-fetched"})
    worker = broker.node_ids.index(found["node_id"])
    pid = broker.worker_rows()[worker]["pid"]
    rows = broker.worker_rows()
    before = _rss_kib(pid)
    with broker.client(worker, timeout=120.0) as c:
        assert create_topics(c, [{"name": "fetched", "num_partitions": 1}])[0][
            "error_code"] == NONE
        body = c.request(ApiKey.OFFSET_FETCH, 5, {"group_id": "many-fetched", "topics": [
            {"name": "fetched", "partition_indexes": list(range(50_000))}]})
    after = _rss_kib(pid)
    assert body["error_code"] == NONE
    [t] = body["topics"]
    assert len(t["partitions"]) == 50_000
    assert all(p["committed_offset"] == -1 for p in t["partitions"])
    _same_workers(broker, rows)
    # the answer itself is ~2.4 MB encoded; a few times that in Python objects is fine
    assert after <= 2 * before, f"coordinator RSS {before} -> {after} KiB"


def test_answers_before_a_malformed_frame_are_sent_before_the_close(broker):
    """KNOWN FAILURE, not in this engineer's files: pybroker/server/connection.py
    Connection.close() clears the response slots, so when a malformed frame arrives in
    the same read as valid requests before it, their answers are dropped although the
    requests took effect (here: an acks=1 produce is appended, its client never learns
    the offset and retries: a duplicate). Kafka handles a connection's requests one at
    a time, so the earlier answers are on the wire before the bad frame is parsed. Seen
    in the broker fuzz: about half of the answers of batches ending in a malformed frame.
    Fix: on MALFORMED / UNKNOWN_API / UNSUPPORTED_VERSION stop reading and dispatching,
    let the slots already queued be answered and sent, then close."""
    from pybroker.records import build_batch
    with broker.client() as c:
        assert create_topics(c, [{"name": "before-bad", "num_partitions": 1}])[0][
            "error_code"] == NONE
        body = c.request(ApiKey.METADATA, 8, {"topics": [{"name": "before-bad"}],
                                              "allow_auto_topic_creation": False})
    leader = body["topics"][0]["partitions"][0]["leader_id"]
    with broker.client(broker.node_ids.index(leader)) as c:
        wait_for(lambda: c.request(ApiKey.API_VERSIONS, 0, {})["error_code"] == NONE,
                 "the leader to answer", 10.0)
        cid, produce = c.encode(ApiKey.PRODUCE, 7, {
            "transactional_id": None, "acks": 1, "timeout_ms": 10_000,
            "topic_data": [{"name": "before-bad", "partition_data": [
                {"index": 0, "records": bytes(build_batch([b"appended"]))}]}]})
        garbage = struct.pack(">i", 4) + b"\x00\x03\x00"   # too short for a header
        c.send(produce + garbage + b"\x00")
        try:
            header, answer = c.recv_response(ApiKey.PRODUCE, 7)
        except ConnectionError:
            header = answer = None
    with broker.client(broker.node_ids.index(leader)) as c:
        def high_watermark():   # acks=1 data is visible once flushed (P5)
            body = c.request(ApiKey.LIST_OFFSETS, 5, {
                "replica_id": -1, "isolation_level": 0, "topics": [{
                    "name": "before-bad", "partitions": [
                        {"partition_index": 0, "timestamp": -1}]}]})
            return body["topics"][0]["partitions"][0]["offset"] == 1
        wait_for(high_watermark, "the produced record to be flushed (it took effect)", 30.0)
    assert header is not None, "its answer was dropped when the connection closed"
    assert header["correlation_id"] == cid
    assert answer["responses"][0]["partition_responses"][0]["error_code"] == NONE


def test_init_producer_id_while_zookeeper_hangs(broker_factory, zk_proxy):
    """InitProducerId takes a block of 1000 ids from ZooKeeper (a compare-and-set) for
    the first id of each block; with ZooKeeper hung it must be answered with an error
    code (handlers/produce.py runs it on the ZooKeeper thread), the loop serving the
    other client meanwhile, the connection kept.
    """
    broker = broker_factory(workers=2, settings={"zookeeper.session.timeout.ms": 2000})
    rows = broker.worker_rows()
    with broker.client(timeout=30.0) as producer, broker.client(timeout=30.0) as other:
        zk_proxy.freeze()
        try:
            cid, wire = producer.encode(ApiKey.INIT_PRODUCER_ID, 1, {
                "transactional_id": None, "transaction_timeout_ms": 60_000})
            producer.send(wire)
            # as in the admin test above: answered only if the loop is not blocked
            assert other.request(ApiKey.API_VERSIONS, 3, {})["error_code"] == NONE
            header, body = producer.recv_response(ApiKey.INIT_PRODUCER_ID, 1)
        finally:
            zk_proxy.thaw()
    assert header["correlation_id"] == cid
    assert body["error_code"] != NONE and body["producer_id"] == -1, body
    _same_workers(broker, rows)


def test_group_max_size_bounds_members_and_handed_out_ids(broker_factory):
    """Member ids handed out by JoinGroup v4+ (KIP-394) and members count against
    group.max.size, so joins that never come back cannot pile up in a group."""
    broker = broker_factory(workers=1, settings={"group.max.size": 3})
    body = {"group_id": "bounded", "session_timeout_ms": 30_000,
            "rebalance_timeout_ms": 30_000, "member_id": "", "group_instance_id": None,
            "protocol_type": "consumer", "protocols": [{"name": "range", "metadata": b""}]}
    with broker.client() as c:
        codes = [c.request(ApiKey.JOIN_GROUP, 5, body)["error_code"] for _ in range(4)]
    assert codes == [ErrorCode.MEMBER_ID_REQUIRED] * 3 + [ErrorCode.GROUP_MAX_SIZE_REACHED]
