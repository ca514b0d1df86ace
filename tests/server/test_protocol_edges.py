"""The broker's wire protocol at its edges, with raw sockets and our own codec
(pybroker.protocol) against a real 2-worker broker: every advertised version, framing
abuse, pipelining, per-partition errors, long-poll fetch, and idempotent producers.

Error codes are written out as Kafka numbers (the protocol's table), not taken from
pybroker.protocol.ErrorCode, so a wrong entry in our table cannot hide a wrong answer.
"""
from __future__ import annotations

import socket
import struct
import time

import pytest

from pybroker.protocol import ApiKey, decode_response
from pybroker.records import build_batch, parse_batches, parse_records
from pybroker.server.controlblock import ControlBlock
from pybroker.testing.broker_plugin import RawClient

NONE = 0
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
NOT_LEADER_OR_FOLLOWER = 6
MESSAGE_TOO_LARGE = 10
INVALID_REQUIRED_ACKS = 21
INVALID_TOPIC_EXCEPTION = 17
UNSUPPORTED_VERSION = 35
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
UNKNOWN_PRODUCER_ID = 59

# What the brief says the broker implements, and so must advertise (and nothing else).
IMPLEMENTED = {
    0: (0, 8),     # Produce (v0-v2 as Kafka 4.0 lists them, refused: KAFKA-18659)
    1: (4, 17),    # Fetch
    2: (0, 10),    # ListOffsets
    3: (0, 13),    # Metadata
    18: (0, 4),    # ApiVersions
    19: (0, 7),    # CreateTopics
    20: (0, 6),    # DeleteTopics
    22: (0, 5),    # InitProducerId
    # replication
    23: (0, 4),    # OffsetForLeaderEpoch
    37: (0, 3),    # CreatePartitions
    43: (0, 2),    # ElectLeaders
    45: (0, 1),    # AlterPartitionReassignments
    46: (0, 0),    # ListPartitionReassignments
    60: (0, 2),    # DescribeCluster
    35: (0, 4),    # DescribeLogDirs
    # consumer groups (issue 4)
    8: (0, 9),     # OffsetCommit
    9: (0, 9),     # OffsetFetch
    10: (0, 6),    # FindCoordinator
    11: (0, 9),    # JoinGroup
    12: (0, 4),    # Heartbeat
    13: (0, 5),    # LeaveGroup
    14: (0, 5),    # SyncGroup
    15: (0, 6),    # DescribeGroups
    16: (0, 5),    # ListGroups
    42: (0, 2),    # DeleteGroups
    47: (0, 0),    # OffsetDelete
    # configuration (issue 5)
    32: (0, 4),    # DescribeConfigs
    33: (0, 2),    # AlterConfigs
    44: (0, 1),    # IncrementalAlterConfigs
}
LATEST, EARLIEST = -1, -2
_INT16, _INT32 = struct.Struct(">h"), struct.Struct(">i")


# --- helpers ---------------------------------------------------------------------------

def create_topic(broker, name: str, partitions: int, configs: dict | None = None) -> None:
    """CreateTopics, then wait until every node's view has the topic. (The answer comes
    once the node that took the request knows it; the others learn it from ZooKeeper a
    moment later, as Kafka's brokers do from the controller.)"""
    with broker.client() as client:
        body = client.request(ApiKey.CREATE_TOPICS, 4, {
            "topics": [{"name": name, "num_partitions": partitions, "replication_factor": 1,
                        "assignments": [], "configs": [{"name": k, "value": str(v)}
                                                       for k, v in (configs or {}).items()]}],
            "timeout_ms": 10_000, "validate_only": False})
    assert body["topics"][0]["error_code"] == NONE, body
    for worker in range(broker.workers):
        with broker.client(worker) as client:
            for _ in range(200):   # bounded: 200 metadata round trips, 20 ms apart
                [t] = metadata(client, [name])["topics"]
                if (t["error_code"] == NONE and len(t["partitions"]) == partitions and
                        all(p["error_code"] == NONE for p in t["partitions"])):
                    break
                time.sleep(0.02)
            else:
                raise AssertionError(f"node {broker.node_ids[worker]} never learnt of {name}")


def metadata(client: RawClient, topics: list[str] | None, version: int = 8) -> dict:
    names = None if topics is None else [{"name": t} for t in topics]
    if version == 0 and names is None:
        names = []     # v0: an empty array means every topic
    body = {"topics": names}
    if version >= 4:
        body["allow_auto_topic_creation"] = False
    return client.request(ApiKey.METADATA, version, body)


def leaders(client: RawClient, topic: str) -> dict[int, int]:
    [t] = metadata(client, [topic])["topics"]
    assert t["error_code"] == NONE, t
    return {p["partition_index"]: p["leader_id"] for p in t["partitions"]}


def produce_request(topic: str, parts: dict, acks: int = -1, version: int = 7) -> dict:
    return {"transactional_id": None, "acks": acks, "timeout_ms": 10_000,
            "topic_data": [{"name": topic, "partition_data": [
                {"index": p, "records": bytes(records)} for p, records in parts.items()]}]}


def produce(client: RawClient, topic: str, partition: int, records, acks: int = -1,
            version: int = 7) -> dict:
    """One partition's answer to a Produce request carrying `records`."""
    body = client.request(ApiKey.PRODUCE, version,
                          produce_request(topic, {partition: records}, acks, version))
    [t] = body["responses"]
    [p] = t["partition_responses"]
    return p


def fetch_request(topic: str, partition: int, offset: int, max_wait_ms: int = 0,
                  min_bytes: int = 0) -> dict:
    return {"replica_id": -1, "max_wait_ms": max_wait_ms, "min_bytes": min_bytes,
            "max_bytes": 8 << 20, "topics": [{"topic": topic, "partitions": [{
                "partition": partition, "fetch_offset": offset,
                "partition_max_bytes": 8 << 20}]}]}


def fetch(client: RawClient, topic: str, partition: int, offset: int, version: int = 11,
          **kwargs) -> dict:
    body = client.request(ApiKey.FETCH, version,
                          fetch_request(topic, partition, offset, **kwargs))
    return body["responses"][0]["partitions"][0]


def records_of(answer: dict) -> list:
    return [r for b in parse_batches(answer["records"] or b"") for r in parse_records(b)]


def list_offset(client: RawClient, topic: str, partition: int, timestamp: int,
                version: int = 5) -> dict:
    body = client.request(ApiKey.LIST_OFFSETS, version, {
        "replica_id": -1, "isolation_level": 0, "topics": [{"name": topic, "partitions": [
            {"partition_index": partition, "timestamp": timestamp}]}]})
    return body["topics"][0]["partitions"][0]


def now_ms() -> int:
    return int(time.time() * 1000)


def raw_request(api_key: int, version: int, correlation_id: int, body: bytes = b"",
                client_id: bytes = b"raw") -> bytes:
    """A framed request built by hand (for versions and keys our codec refuses)."""
    header = (_INT16.pack(api_key) + _INT16.pack(version) + _INT32.pack(correlation_id) +
              _INT16.pack(len(client_id)) + client_id)
    payload = header + body
    return _INT32.pack(len(payload)) + payload


def local_peer(client: RawClient) -> str:
    host, port = client.sock.getsockname()
    return f"peer={host}:{port} "


def close_lines(broker, client: RawClient) -> list[str]:
    """The broker's log lines about closing this client's connection."""
    peer = local_peer(client)
    return broker.wait_log(lambda line: peer in line and "connection closed" in line)


@pytest.fixture
def topic(broker):
    """A 4-partition topic "edges"; partitions alternate between the two nodes."""
    create_topic(broker, "edges", 4)
    return "edges"


def client_for(broker, topic: str, partition: int) -> RawClient:
    """A RawClient connected to the leader of topic/partition."""
    with broker.client() as c:
        node = leaders(c, topic)[partition]
    return broker.client(broker.node_ids.index(node))


# --- ApiVersions -----------------------------------------------------------------------

@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_api_versions_advertise_exactly_the_implemented_ranges(broker, version):
    with broker.client() as c:
        body = c.request(ApiKey.API_VERSIONS, version,
                         {"client_software_name": "pybroker-tests",
                          "client_software_version": "1"} if version >= 3 else {})
    assert body["error_code"] == NONE
    advertised = {k["api_key"]: (k["min_version"], k["max_version"]) for k in body["api_keys"]}
    assert advertised == IMPLEMENTED


def test_api_versions_above_ours_gets_unsupported_version_in_v0_layout(broker):
    with broker.client() as c:
        c.send(raw_request(ApiKey.API_VERSIONS, 99, 4242))
        header, body = decode_response(ApiKey.API_VERSIONS, 0, c.recv_frame())
        assert header["correlation_id"] == 4242
        assert body["error_code"] == UNSUPPORTED_VERSION
        advertised = {k["api_key"]: (k["min_version"], k["max_version"])
                      for k in body["api_keys"]}
        assert advertised == IMPLEMENTED
        # the connection stays open: the client retries with a version we listed
        assert c.request(ApiKey.API_VERSIONS, 3, {})["error_code"] == NONE


# --- Metadata --------------------------------------------------------------------------

@pytest.mark.parametrize("version", range(9))
def test_metadata_every_version(broker, topic, version):
    for worker in range(broker.workers):
        with broker.client(worker) as c:
            body = metadata(c, None, version)
            named = metadata(c, [topic], version)
        nodes = {b["node_id"]: (b["host"], b["port"]) for b in body["brokers"]}
        assert nodes[broker.node_ids[worker]] == ("127.0.0.1", broker.ports[worker])
        assert nodes == {n: ("127.0.0.1", p) for n, p in zip(broker.node_ids, broker.ports)}
        if version >= 1:
            assert body["controller_id"] in broker.node_ids
        if version >= 2:
            assert body["cluster_id"]
        for answer in (body, named):
            [t] = [t for t in answer["topics"] if t["name"] == topic]
            assert t["error_code"] == NONE
            assert sorted(p["partition_index"] for p in t["partitions"]) == [0, 1, 2, 3]
            assert {p["leader_id"] for p in t["partitions"]} == set(broker.node_ids)


def test_metadata_for_an_illegal_topic_name(broker):
    with broker.client() as c:
        body = c.request(ApiKey.METADATA, 8, {"topics": [{"name": "bad/name"}],
                                              "allow_auto_topic_creation": True})
    [t] = body["topics"]
    assert t["error_code"] == INVALID_TOPIC_EXCEPTION


# --- Produce and Fetch in every version ----------------------------------------------------

def test_every_produce_version_then_every_fetch_version(broker):
    create_topic(broker, "versions", 1)
    expected = []
    with client_for(broker, "versions", 0) as c:
        for version in range(3, 8):
            values = [b"produce-v%d-%d" % (version, j) for j in range(3)]
            answer = produce(c, "versions", 0, build_batch(values), version=version)
            assert answer["error_code"] == NONE, (version, answer)
            assert answer["base_offset"] == len(expected)
            expected += values
        for version in range(4, 12):
            answer = fetch(c, "versions", 0, 0, version=version)
            assert answer["error_code"] == NONE, (version, answer)
            assert answer["high_watermark"] == len(expected)
            assert answer["last_stable_offset"] == len(expected)
            if version >= 5:
                assert answer["log_start_offset"] == 0
            records = records_of(answer)
            assert [r.value for r in records] == expected, version
            assert [r.offset for r in records] == list(range(len(expected)))
            # from the middle of a batch: the whole batch comes back, starting before it
            mid = records_of(fetch(c, "versions", 0, 4, version=version))
            assert mid[0].offset <= 4 and [r.value for r in mid if r.offset >= 4] == expected[4:]
        for version in range(1, 6):
            assert list_offset(c, "versions", 0, EARLIEST, version)["offset"] == 0
            assert list_offset(c, "versions", 0, LATEST, version)["offset"] == len(expected)


# --- pipelining --------------------------------------------------------------------------

def test_fifty_pipelined_requests_answered_in_order(broker, topic):
    with client_for(broker, topic, 0) as c:
        kinds, wire = [], bytearray()
        for i in range(50):
            if i % 3 == 0:     # acks=all produce: answered only after a flush
                api, version, body = ApiKey.PRODUCE, 7, produce_request(
                    topic, {0: build_batch([b"pipelined-%d" % i])})
            elif i % 3 == 1:
                api, version, body = ApiKey.METADATA, 8, {"topics": None}
            else:
                api, version, body = ApiKey.API_VERSIONS, 3, {}
            cid, data = c.encode(api, version, body, correlation_id=1000 + i)
            kinds.append((cid, api, version))
            wire += data
        c.send(bytes(wire))
        base = None
        for cid, api, version in kinds:
            header, body = c.recv_response(api, version)
            assert header["correlation_id"] == cid
            if api == ApiKey.PRODUCE:
                p = body["responses"][0]["partition_responses"][0]
                assert p["error_code"] == NONE
                base = p["base_offset"] if base is None else base + 1
                assert p["base_offset"] == base, "appends happen in request order"


def _send_run(c: RawClient, requests: list[tuple[dict, bool]]) -> list:
    """Send produce requests (body, answered) in one write, so the broker reads them as
    one run of frames; the partition answers of those answered, in order."""
    wire, expected = bytearray(), []
    for body, answered in requests:
        cid, data = c.encode(ApiKey.PRODUCE, 7, body)
        wire += data
        if answered:
            expected.append(cid)
    c.send(bytes(wire))
    answers = []
    for cid in expected:
        header, body = c.recv_response(ApiKey.PRODUCE, 7)
        assert header["correlation_id"] == cid
        answers.append(body["responses"][0]["partition_responses"][0])
    return answers


def _partition_row(broker, topic: str, partition: int, messages: int):
    """The control block's row for topic/partition once it counts `messages` in."""
    block = ControlBlock.in_dir(broker.data_dir)
    try:
        for _ in range(200):   # bounded: rows are published every 0.25 s
            rows = [r for r in block.partitions()
                    if (r.topic, r.partition) == (topic, partition)]
            if rows and rows[0].messages_in == messages:
                return rows[0]
            time.sleep(0.05)
        raise AssertionError(f"{topic}-{partition} never counted {messages} messages: {rows}")
    finally:
        block.close()


@pytest.mark.parametrize("acks", [1, -1])
def test_a_pipelined_run_of_produces_is_written_as_one_append(broker, acks):
    # flush.messages=1: every append asks for a flush (tickets merge what comes while
    # one is out, so flushes only bound appends from below; the appends counter counts)
    name = f"coalesced{acks}"
    create_topic(broker, name, 1, {"flush.messages": 1})
    values = [b"run-%d" % i for i in range(40)]
    with client_for(broker, name, 0) as c:
        answers = _send_run(c, [(produce_request(name, {0: build_batch([v])}, acks=acks),
                                 True) for v in values])
        assert [a["error_code"] for a in answers] == [NONE] * 40
        assert [a["base_offset"] for a in answers] == list(range(40))
        # acks=1 answers before the flush: wait (bounded) for the data to be visible
        assert [r.value for r in records_of(fetch(c, name, 0, 0, max_wait_ms=10_000,
                                                  min_bytes=1))] == values
    row = _partition_row(broker, name, 0, 40)
    # one recv() on loopback brings the whole 4 KB write; a split run still only adds one
    assert row.appends <= 4, f"{row.appends} appends for 40 requests: not coalesced"
    assert 1 <= row.flushes <= row.appends


def test_a_pipelined_run_keeps_order_and_isolates_a_bad_request(broker):
    create_topic(broker, "mixed-run", 1)
    with client_for(broker, "mixed-run", 0) as c:
        pid, epoch = init_producer_id(c)
        corrupt = build_batch([b"bad"])
        corrupt[-3] ^= 0xFF            # CRC-32C mismatch
        plan = [  # (records, acks, values it adds to the log)
            (build_batch([b"a"]), 1, [b"a"]),
            (build_batch([b"b1", b"b2"]) + build_batch([b"b3"]), 1, [b"b1", b"b2", b"b3"]),
            (corrupt, 1, []),
            (idempotent_batch(pid, epoch, 0, [b"idem"]), 1, [b"idem"]),  # appended at once
            (build_batch([b"c"]), 0, [b"c"]),                            # no answer
            (build_batch([b"d"]), -1, [b"d"]),                           # waits for a flush
            (build_batch([b"e"]), 1, [b"e"]),
        ]
        answers = _send_run(c, [(produce_request("mixed-run", {0: records}, acks=acks),
                                 acks != 0) for records, acks, _ in plan])
        want, offset = [], 0
        for records, acks, added in plan:
            if acks != 0:
                want.append((NONE, offset) if added else (CORRUPT_MESSAGE, -1))
            offset += len(added)
        assert [(a["error_code"], a["base_offset"]) for a in answers] == want
        values = [r.value for r in records_of(fetch(c, "mixed-run", 0, 0))]
        assert values == [v for _, _, added in plan for v in added]
    assert broker.wait_log(lambda line: "tp=mixed-run-0 rejected batch" in line)


def test_acks_zero_produce_gets_no_response_but_is_appended(broker, topic):
    with client_for(broker, topic, 0) as c:
        _cid, wire = c.encode(ApiKey.PRODUCE, 7, produce_request(
            topic, {0: build_batch([b"fire", b"forget"])}, acks=0))
        versions_cid, versions_wire = c.encode(ApiKey.API_VERSIONS, 0, {})
        c.send(wire + versions_wire)
        header, body = c.recv_response(ApiKey.API_VERSIONS, 0)
        assert header["correlation_id"] == versions_cid, "the produce got an answer"
        for _ in range(200):   # bounded: acks=0 gives no signal of the flush; poll
            values = [r.value for r in records_of(fetch(c, topic, 0, 0))]
            if values:
                break
            time.sleep(0.02)
        assert values == [b"fire", b"forget"]


def test_metadata_auto_creates_a_topic_when_asked(broker):
    with broker.client() as c:
        body = c.request(ApiKey.METADATA, 8, {"topics": [{"name": "auto-made"}],
                                              "allow_auto_topic_creation": True})
        [t] = body["topics"]
        assert t["error_code"] == NONE and len(t["partitions"]) == 1   # num.partitions=1
        body = c.request(ApiKey.METADATA, 8, {"topics": [{"name": "not-made"}],
                                              "allow_auto_topic_creation": False})
        assert body["topics"][0]["error_code"] == UNKNOWN_TOPIC_OR_PARTITION
        assert "not-made" not in {t["name"] for t in metadata(c, None)["topics"]}


# --- bad input closes only its own connection ---------------------------------------------

def _assert_closed_alone(broker, bad: RawClient, bystander: RawClient, reason: str) -> None:
    assert bad.is_closed_by_peer(timeout=10.0), "the broker kept the connection open"
    assert bystander.request(ApiKey.API_VERSIONS, 0, {})["error_code"] == NONE
    with broker.client() as fresh:
        assert fresh.request(ApiKey.API_VERSIONS, 3, {})["error_code"] == NONE
    lines = close_lines(broker, bad)
    assert len(lines) == 1, lines
    assert reason in lines[0], lines[0]


def test_unknown_api_key_closes_only_that_connection(broker):
    with broker.client() as bystander, broker.client() as bad:
        bad.send(raw_request(999, 0, 7))
        _assert_closed_alone(broker, bad, bystander, "unknown api key")


@pytest.mark.parametrize("body", [
    # Metadata v1 announcing 1000 topic names, then nothing: truncated
    raw_request(ApiKey.METADATA, 1, 9, _INT32.pack(1000)),
    # Metadata v1 with a topic name whose length runs past the frame
    raw_request(ApiKey.METADATA, 1, 9, _INT32.pack(1) + _INT16.pack(300) + b"abc"),
    # a frame too short to hold the request header's fixed prefix
    _INT32.pack(3) + b"\x00\x03\x00",
], ids=["array-past-end", "string-past-end", "short-header"])
def test_malformed_request_closes_only_that_connection(broker, body):
    with broker.client() as bystander, broker.client() as bad:
        bad.send(body)
        _assert_closed_alone(broker, bad, bystander, "malformed request")


def test_bytes_after_a_request_body_are_ignored_as_kafka_does(broker):
    """librdkafka's all-topics Metadata v9+ carries three such bytes."""
    with broker.client() as c:
        c.send(raw_request(ApiKey.METADATA, 1, 9, _INT32.pack(0) + b"junk"))
        header, body = c.recv_response(ApiKey.METADATA, 1)
        assert header["correlation_id"] == 9 and body["topics"] == []
        assert c.request(ApiKey.API_VERSIONS, 3, {})["error_code"] == NONE


@pytest.mark.parametrize("size", [2**31 - 1, -1], ids=["2^31-1", "minus-1"])
def test_frame_size_out_of_range_is_refused_before_the_body(broker, size):
    with broker.client() as bystander, broker.client() as bad:
        bad.send(_INT32.pack(size))   # the prefix alone: nothing more will ever come
        _assert_closed_alone(broker, bad, bystander, "frame size out of range")


# --- per-partition produce errors ----------------------------------------------------------

def _partitions_by_leader(broker, topic: str) -> dict[int, list[int]]:
    with broker.client() as c:
        owned: dict[int, list[int]] = {}
        for p, node in sorted(leaders(c, topic).items()):
            owned.setdefault(node, []).append(p)
    return owned


def test_corrupt_batch_is_refused_while_its_neighbour_is_appended(broker, topic):
    node, (bad_p, good_p, *_) = next((n, ps) for n, ps in
                                     _partitions_by_leader(broker, topic).items() if len(ps) >= 2)
    corrupt = build_batch([b"will be corrupted", b"second record"])
    corrupt[-3] ^= 0xFF            # a byte of the last record's value: CRC-32C mismatch
    good = build_batch([b"fine"])
    with broker.client(broker.node_ids.index(node)) as c:
        body = c.request(ApiKey.PRODUCE, 7, produce_request(topic, {bad_p: corrupt,
                                                                    good_p: good}))
        answers = {p["index"]: p for p in body["responses"][0]["partition_responses"]}
        assert answers[bad_p]["error_code"] == CORRUPT_MESSAGE
        assert answers[good_p]["error_code"] == NONE and answers[good_p]["base_offset"] == 0
        assert records_of(fetch(c, topic, bad_p, 0)) == []
        assert fetch(c, topic, bad_p, 0)["high_watermark"] == 0
        assert [r.value for r in records_of(fetch(c, topic, good_p, 0))] == [b"fine"]
    assert broker.wait_log(lambda line: f"tp={topic}-{bad_p} rejected batch" in line)


def test_batch_over_message_max_bytes_is_refused(broker, topic):
    big = build_batch([b"x" * (2 << 20)])   # 2 MiB > message.max.bytes (1 MiB default)
    with client_for(broker, topic, 0) as c:
        assert produce(c, topic, 0, big)["error_code"] == MESSAGE_TOO_LARGE
        assert produce(c, topic, 0, build_batch([b"small"]))["error_code"] == NONE
        assert [r.value for r in records_of(fetch(c, topic, 0, 0))] == [b"small"]


@pytest.mark.parametrize("acks", [2, -2])
def test_produce_with_acks_outside_0_1_all_is_refused(broker, topic, acks):
    with client_for(broker, topic, 0) as c:
        answer = produce(c, topic, 0, build_batch([b"never"]), acks=acks)
        assert answer["error_code"] == INVALID_REQUIRED_ACKS and answer["base_offset"] == -1
        assert _log_end(c, topic, 0) == 0
        assert produce(c, topic, 0, build_batch([b"fine"]), acks=1)["base_offset"] == 0


def test_produce_to_unknown_topic_or_partition(broker, topic):
    with client_for(broker, topic, 0) as c:
        assert produce(c, topic, 99, build_batch([b"x"]))["error_code"] == \
            UNKNOWN_TOPIC_OR_PARTITION
        assert produce(c, "no-such-topic", 0, build_batch([b"x"]))["error_code"] == \
            UNKNOWN_TOPIC_OR_PARTITION


def test_produce_and_fetch_at_the_wrong_node(broker, topic):
    with broker.client() as c:
        owner = leaders(c, topic)
    for worker, node in enumerate(broker.node_ids):
        foreign = next(p for p, n in owner.items() if n != node)
        with broker.client(worker) as c:
            assert produce(c, topic, foreign, build_batch([b"x"]))["error_code"] == \
                NOT_LEADER_OR_FOLLOWER
            assert fetch(c, topic, foreign, 0)["error_code"] == NOT_LEADER_OR_FOLLOWER
            assert list_offset(c, topic, foreign, LATEST)["error_code"] == \
                NOT_LEADER_OR_FOLLOWER


# --- fetch offsets ----------------------------------------------------------------------

def test_fetch_past_the_end_is_out_of_range(broker, topic):
    with client_for(broker, topic, 0) as c:
        produce(c, topic, 0, build_batch([b"a", b"b", b"c"]))
        at_end = fetch(c, topic, 0, 3)
        assert at_end["error_code"] == NONE and records_of(at_end) == []
        assert fetch(c, topic, 0, 4)["error_code"] == OFFSET_OUT_OF_RANGE
        assert fetch(c, topic, 0, -1)["error_code"] == OFFSET_OUT_OF_RANGE


def test_fetch_below_the_log_start_is_out_of_range(broker_factory):
    # 128-byte segments hold one of these ~90-byte batches each; keep at most ~3 of
    # them (retention.bytes=300); retention runs every 50 ms.
    broker = broker_factory(settings={"log.retention.check.interval.ms": 50})
    create_topic(broker, "retained", 1, {"segment.bytes": 128, "retention.bytes": 300})
    with client_for(broker, "retained", 0) as c:
        for i in range(20):
            # a current timestamp: time retention (7 days) must not be what deletes
            batch = build_batch([b"r%02d" % i + b"." * 20], timestamps=[now_ms()])
            assert produce(c, "retained", 0, batch)["error_code"] == NONE
        start, seen = 0, []
        for _ in range(200):   # bounded: 200 polls of 100 ms
            seen.append(list_offset(c, "retained", 0, EARLIEST)["offset"])
            # settled: the same start over 0.3 s (six retention runs) after it moved
            if seen[-1] > 0 and len(seen) >= 4 and len(set(seen[-4:])) == 1:
                start = seen[-1]
                break
            time.sleep(0.1)
        assert start > 0, f"retention never settled the log start offset: {seen}"
        assert fetch(c, "retained", 0, start - 1)["error_code"] == OFFSET_OUT_OF_RANGE
        answer = fetch(c, "retained", 0, start)
        assert answer["error_code"] == NONE and answer["log_start_offset"] == start
        assert records_of(answer)[0].offset == start


# --- long poll ---------------------------------------------------------------------------

def test_long_poll_fetch_is_woken_by_a_flush_and_holds_back_the_next_response(broker, topic):
    """The fetch waits up to 120 s but our socket only 30 s: answering at all means the
    flush woke it. The ApiVersions request pipelined behind it must come second."""
    with client_for(broker, topic, 0) as waiter, client_for(broker, topic, 0) as writer:
        fetch_cid, fetch_wire = waiter.encode(ApiKey.FETCH, 11, fetch_request(
            topic, 0, 0, max_wait_ms=120_000, min_bytes=1))
        versions_cid, versions_wire = waiter.encode(ApiKey.API_VERSIONS, 3, {})
        waiter.send(fetch_wire + versions_wire)
        # A round trip on the other connection to the same single-threaded worker gives
        # it an event-loop turn in which our two requests (on the wire first) are read.
        # Neither may be answered yet: the fetch waits, the ApiVersions queues behind it.
        # (Should the worker not have read them yet, this check passes vacuously; the
        # order of the two answers below is checked regardless.)
        assert writer.request(ApiKey.API_VERSIONS, 0, {})["error_code"] == NONE
        waiter.sock.setblocking(False)
        try:
            early = waiter.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            early = b""
        assert early == b"", "a response arrived before any data was produced"
        waiter.sock.settimeout(30.0)

        assert produce(writer, topic, 0, build_batch([b"wake up"]))["error_code"] == NONE
        header, body = waiter.recv_response(ApiKey.FETCH, 11)
        assert header["correlation_id"] == fetch_cid
        answer = body["responses"][0]["partitions"][0]
        assert [r.value for r in records_of(answer)] == [b"wake up"]
        header, body = waiter.recv_response(ApiKey.API_VERSIONS, 3)
        assert header["correlation_id"] == versions_cid and body["error_code"] == NONE


# --- idempotent producers -----------------------------------------------------------------

def init_producer_id(client: RawClient, version: int = 1) -> tuple[int, int]:
    body = client.request(ApiKey.INIT_PRODUCER_ID, version,
                          {"transactional_id": None, "transaction_timeout_ms": 60_000})
    assert body["error_code"] == NONE
    return body["producer_id"], body["producer_epoch"]


def idempotent_batch(pid: int, epoch: int, seq: int, values: list[bytes]) -> bytearray:
    return build_batch(values, producer_id=pid, producer_epoch=epoch, base_sequence=seq)


def test_init_producer_id_gives_distinct_ids(broker):
    ids = set()
    for worker in range(broker.workers):
        with broker.client(worker) as c:
            for version in (0, 1):
                pid, epoch = init_producer_id(c, version)
                assert pid >= 0 and epoch == 0
                ids.add(pid)
    assert len(ids) == 2 * broker.workers


def _log_end(client: RawClient, topic: str, partition: int) -> int:
    return list_offset(client, topic, partition, LATEST)["offset"]


def _check_sequences(c: RawClient, topic: str, pid: int, first: dict) -> None:
    """A retried duplicate of `first` (the batch with sequences 0..2) is answered with its
    original offset and not appended; a gap is refused; the next sequence is taken."""
    end = _log_end(c, topic, 0)
    again = produce(c, topic, 0, first["batch"])
    assert again["error_code"] == NONE
    assert again["base_offset"] == first["base_offset"]
    assert _log_end(c, topic, 0) == end, "the duplicate was appended again"
    next_seq = first["next_seq"]
    gap = produce(c, topic, 0, idempotent_batch(pid, 0, next_seq + 1, [b"gap"]))
    assert gap["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER
    ok = produce(c, topic, 0, idempotent_batch(pid, 0, next_seq, [b"next"]))
    assert ok["error_code"] == NONE and ok["base_offset"] == end
    first["next_seq"] = next_seq + 1


def test_idempotent_duplicates_gaps_and_epochs(broker, topic):
    with client_for(broker, topic, 0) as c:
        pid, epoch = init_producer_id(c)
        produce(c, topic, 0, build_batch([b"someone else's record"]))   # offsets move on
        batch = idempotent_batch(pid, epoch, 0, [b"i0", b"i1", b"i2"])
        answer = produce(c, topic, 0, batch)
        assert answer["error_code"] == NONE and answer["base_offset"] == 1
        first = {"batch": batch, "base_offset": 1, "next_seq": 3}
        _check_sequences(c, topic, pid, first)

        # an unknown producer id that does not start at sequence 0
        assert produce(c, topic, 0, idempotent_batch(pid + 1000, 0, 5, [b"?"]))[
            "error_code"] == UNKNOWN_PRODUCER_ID
        # a newer epoch restarts at 0; then the old epoch is fenced
        assert produce(c, topic, 0, idempotent_batch(pid, 1, 0, [b"e1"]))["error_code"] == NONE
        assert produce(c, topic, 0, idempotent_batch(pid, 0, 4, [b"stale"]))[
            "error_code"] == INVALID_PRODUCER_EPOCH
        values = [r.value for r in records_of(fetch(c, topic, 0, 0))]
    assert values == [b"someone else's record", b"i0", b"i1", b"i2", b"next", b"e1"]


def test_sequence_state_survives_a_clean_restart(broker, topic):
    with client_for(broker, topic, 0) as c:
        pid, epoch = init_producer_id(c)
        batch = idempotent_batch(pid, epoch, 0, [b"s0", b"s1", b"s2"])
        answer = produce(c, topic, 0, batch)
        assert answer["error_code"] == NONE
    first = {"batch": batch, "base_offset": answer["base_offset"], "next_seq": 3}
    broker.restart()
    with client_for(broker, topic, 0) as c:
        _check_sequences(c, topic, pid, first)


def test_sequence_state_survives_a_worker_crash(broker, topic):
    """SIGKILL: no snapshot is written, the table is rebuilt from the log."""
    with client_for(broker, topic, 0) as c:
        pid, epoch = init_producer_id(c)
        batch = idempotent_batch(pid, epoch, 0, [b"c0", b"c1", b"c2"])
        answer = produce(c, topic, 0, batch)   # acks=all: flushed before the answer
        assert answer["error_code"] == NONE
        worker = broker.ports.index(c.sock.getpeername()[1])
    first = {"batch": batch, "base_offset": answer["base_offset"], "next_seq": 3}
    old = broker.kill_worker(worker)
    broker.wait_restarted(worker, old)
    with client_for(broker, topic, 0) as c:
        _check_sequences(c, topic, pid, first)
