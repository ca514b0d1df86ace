"""The versions below Kafka 4.0's baseline, against one real 1-worker broker (real
ZooKeeper, real sockets): OffsetCommit v0-v1 and OffsetFetch v0 on the group offset
store of v2+, ListOffsets v0's offset lists, Produce v0-v2 and old-format records refused
per partition with the connection kept open; then kafka-python told it talks to Kafka
0.8.1 / 0.8.2, which makes it send exactly those versions.

Error codes are Kafka's numbers, written out.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time

import pytest
from kazoo.client import KazooClient

from pybroker.protocol import ApiKey
from pybroker.records import build_batch, parse_batches
from pybroker.testing.broker_plugin import Broker
from pybroker.testing.spec_bytes import i32, i64

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
UNSUPPORTED_VERSION = 35
INVALID_REQUEST = 42
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
LATEST, EARLIEST = -1, -2
TOPIC = "legacy"            # 2 partitions, default segments
SEGMENTED = "legacy-segs"   # 1 partition, one batch per segment (segment.bytes 128)


@pytest.fixture(scope="module")
def chroot(zk_root):
    path = f"/t-legacy-versions-{secrets.token_hex(4)}"
    zk_root.create(path)
    yield path
    zk_root.delete(path, recursive=True)


@pytest.fixture(scope="module")
def lbroker(tmp_path_factory, zk_server, chroot):
    tmp = tmp_path_factory.mktemp("legacy-versions")
    b = Broker(tmp / "data", tmp / "broker.log", zk_server.connect_string + chroot, workers=1)
    b.start()
    try:
        with b.client() as c:
            body = c.request(ApiKey.CREATE_TOPICS, 4, {"topics": [
                {"name": TOPIC, "num_partitions": 2, "replication_factor": 1,
                 "assignments": [], "configs": []},
                {"name": SEGMENTED, "num_partitions": 1, "replication_factor": 1,
                 "assignments": [], "configs": [{"name": "segment.bytes", "value": "128"}]}],
                "timeout_ms": 10_000, "validate_only": False})
            assert [t["error_code"] for t in body["topics"]] == [NONE, NONE], body
            deadline = time.monotonic() + 30
            while not all(p["error_code"] == NONE for t in c.request(ApiKey.METADATA, 1, {
                    "topics": [{"name": TOPIC}, {"name": SEGMENTED}]})["topics"]
                    for p in t["partitions"] or [{"error_code": -1}]):
                assert time.monotonic() < deadline, "topics never came online"
                time.sleep(0.05)
        yield b
    except BaseException:
        print(b.log_tail())
        raise
    finally:
        b.stop()
    failures = [line for line in b.log_text().splitlines() if "handler failed" in line]
    assert failures == [], "\n".join(failures)


@pytest.fixture(scope="module")
def zkc(zk_server, chroot):
    client = KazooClient(hosts=zk_server.connect_string + chroot)
    client.start(15)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def group(request) -> str:
    return f"legacy-{request.node.name[:30]}-{secrets.token_hex(3)}".replace(
        "[", "-").replace("]", "")


# --- helpers -------------------------------------------------------------------------------

def commit(c, version: int, group: str, offsets: dict, generation: int = -1,
           member_id: str = "", timestamp: int = -1) -> dict:
    """OffsetCommit v0/v1 of {(topic, p): (offset, metadata)}; {(topic, p): error}."""
    by_topic: dict = {}
    for (t, p), (off, meta) in offsets.items():
        by_topic.setdefault(t, []).append({
            "partition_index": p, "committed_offset": off, "committed_metadata": meta,
            "commit_timestamp": timestamp if version == 1 else -1})
    body = c.request(ApiKey.OFFSET_COMMIT, version, {
        "group_id": group, "generation_id_or_member_epoch": generation if version else -1,
        "member_id": member_id if version else "",
        "topics": [{"name": t, "partitions": ps} for t, ps in by_topic.items()]})
    return {(t["name"], p["partition_index"]): p["error_code"]
            for t in body["topics"] for p in t["partitions"]}


def fetch(c, version: int, group: str, partitions) -> dict:
    """OffsetFetch; {(topic, p): (offset, metadata, error)}."""
    by_topic: dict = {}
    for t, p in partitions:
        by_topic.setdefault(t, []).append(p)
    body = c.request(ApiKey.OFFSET_FETCH, version, {"group_id": group, "topics": [
        {"name": t, "partition_indexes": ps} for t, ps in by_topic.items()]})
    assert body.get("error_code", 0) == NONE
    return {(t["name"], p["partition_index"]): (p["committed_offset"], p["metadata"],
                                                p["error_code"])
            for t in body["topics"] for p in t["partitions"]}


def list_v0(c, topic: str, asks: list, replica_id: int = -1) -> list:
    """ListOffsets v0 of [(partition, timestamp, max_num_offsets)]; [(error, offsets)]."""
    body = c.request(ApiKey.LIST_OFFSETS, 0, {"replica_id": replica_id, "topics": [
        {"name": topic, "partitions": [
            {"partition_index": p, "timestamp": ts, "max_num_offsets": n}
            for p, ts, n in asks]}]})
    return [(p["error_code"], p["old_style_offsets"]) for p in body["topics"][0]["partitions"]]


def latest(c, topic: str, partition: int) -> int:
    body = c.request(ApiKey.LIST_OFFSETS, 5, {"replica_id": -1, "isolation_level": 0,
                                              "topics": [{"name": topic, "partitions": [
                                                  {"partition_index": partition,
                                                   "timestamp": LATEST}]}]})
    return body["topics"][0]["partitions"][0]["offset"]


def produce(c, version: int, topic: str, parts: dict, acks: int = -1) -> dict:
    """Produce {partition: records}; {partition: (error, base offset)} (None for acks 0)."""
    body = {"transactional_id": None, "acks": acks, "timeout_ms": 10_000, "topic_data": [
        {"name": topic, "partition_data": [{"index": p, "records": bytes(r)}
                                           for p, r in parts.items()]}]}
    if acks == 0:
        c.send(c.encode(ApiKey.PRODUCE, version, body)[1])
        return None
    answer = c.request(ApiKey.PRODUCE, version, body)
    return {p["index"]: (p["error_code"], p["base_offset"])
            for p in answer["responses"][0]["partition_responses"]}


def message_set(magic: int, value: bytes) -> bytes:
    """One uncompressed entry of a v0 (magic 0) or v1 (magic 1) message set; the CRC
    is not checked by anyone here (the broker refuses the format before reading it)."""
    body = bytes([magic, 0]) + (i64(1_700_000_000_000) if magic else b"") + i32(-1) + \
        i32(len(value)) + value
    message = i32(0) + body
    return i64(0) + i32(len(message)) + message


# --- OffsetCommit v0-v1, OffsetFetch v0 ------------------------------------------------------

def test_commit_v0_v1_and_fetch_v0_share_the_group_offset_store(lbroker, zkc, group):
    with lbroker.client() as c:
        assert commit(c, 0, group, {(TOPIC, 0): (11, "v0 ü"), (TOPIC, 1): (12, None)}) == \
            {(TOPIC, 0): NONE, (TOPIC, 1): NONE}
        every = [(TOPIC, 0), (TOPIC, 1), (TOPIC, 9)]
        for version in (0, 1, 5):
            assert fetch(c, version, group, every) == {
                (TOPIC, 0): (11, "v0 ü", NONE), (TOPIC, 1): (12, "", NONE),
                (TOPIC, 9): (-1, "", NONE)}
        # v1 with no generation (Sarama's and kafka-python 0.8.2's) and a commit time
        assert commit(c, 1, group, {(TOPIC, 0): (21, "v1")},
                      timestamp=int(time.time() * 1000)) == {(TOPIC, 0): NONE}
        assert commit(c, 1, group, {(TOPIC, 1): (22, "now")}, timestamp=-1) == \
            {(TOPIC, 1): NONE}
        assert fetch(c, 0, group, every[:2]) == {(TOPIC, 0): (21, "v1", NONE),
                                                 (TOPIC, 1): (22, "now", NONE)}
        # what v2+ commits, v0 reads
        body = c.request(ApiKey.OFFSET_COMMIT, 7, {
            "group_id": group, "generation_id_or_member_epoch": -1, "member_id": "",
            "group_instance_id": None, "topics": [{"name": TOPIC, "partitions": [
                {"partition_index": 0, "committed_offset": 31, "committed_leader_epoch": 4,
                 "committed_metadata": "v7"}]}]})
        assert body["topics"][0]["partitions"][0]["error_code"] == NONE
        assert fetch(c, 0, group, [(TOPIC, 0)]) == {(TOPIC, 0): (31, "v7", NONE)}
        # a partition that does not exist fails alone
        assert commit(c, 0, group, {(TOPIC, 1): (5, ""), ("nope", 0): (5, "")}) == \
            {(TOPIC, 1): NONE, ("nope", 0): UNKNOWN_TOPIC_OR_PARTITION}
    assert zkc.get(f"/consumers/{group}/offsets/{TOPIC}/1")[0] == b"5"
    meta = json.loads(zkc.get(f"/consumers/{group}/offset-metadata/{TOPIC}/0")[0])
    assert (meta["offset"], meta["metadata"]) == (31, "v7")


def test_commit_v1_checks_the_generation_and_v0_is_not_a_member(lbroker, group):
    with lbroker.client() as c:
        joined = c.request(ApiKey.JOIN_GROUP, 3, {
            "group_id": group, "session_timeout_ms": 30_000, "rebalance_timeout_ms": 10_000,
            "member_id": "", "protocol_type": "consumer",
            "protocols": [{"name": "range", "metadata": b"m"}]})
        me, gen = joined["member_id"], joined["generation_id"]
        assert joined["error_code"] == NONE and me
        synced = c.request(ApiKey.SYNC_GROUP, 1, {"group_id": group, "generation_id": gen,
                                                  "member_id": me, "assignments": [
                                                      {"member_id": me, "assignment": b""}]})
        assert synced["error_code"] == NONE
        tp = (TOPIC, 0)
        assert commit(c, 1, group, {tp: (7, "")}, generation=gen, member_id=me) == {tp: NONE}
        assert commit(c, 1, group, {tp: (8, "")}, generation=gen + 1, member_id=me) == \
            {tp: ILLEGAL_GENERATION}
        assert commit(c, 1, group, {tp: (8, "")}, generation=gen, member_id="other") == \
            {tp: UNKNOWN_MEMBER_ID}
        # v0 carries no membership: an assign()-mode commit, refused while members exist
        assert commit(c, 0, group, {tp: (9, "")}) == {tp: UNKNOWN_MEMBER_ID}
        assert fetch(c, 0, group, [tp]) == {tp: (7, "", NONE)}
        c.request(ApiKey.LEAVE_GROUP, 0, {"group_id": group, "member_id": me})
        assert commit(c, 0, group, {tp: (9, "")}) == {tp: NONE}


# --- ListOffsets v0 ----------------------------------------------------------------------------

def _segment_files(b: Broker, topic: str, partition: int) -> list[str]:
    found = []
    for root, _dirs, names in os.walk(b.data_dir):
        if os.path.basename(root) == f"{topic}-{partition}":
            found += [os.path.join(root, n) for n in names if n.endswith(".log")]
    return sorted(found)


def test_list_offsets_v0_offset_lists(lbroker):
    with lbroker.client() as c:
        assert list_v0(c, TOPIC, [(1, LATEST, 1), (1, EARLIEST, 1), (1, LATEST, 5)]) == \
            [(NONE, [0]), (NONE, [0]), (NONE, [0])]    # empty: one segment, no data
        for n in range(3):   # each batch rolls a new segment (segment.bytes 128)
            assert produce(c, 7, SEGMENTED, {0: build_batch([b"x" * 40])}) == {0: (NONE, n)}
        segments = _segment_files(lbroker, SEGMENTED, 0)
        assert len(segments) == 3, segments
        for i, path in enumerate(segments):   # modified at 1000 s, 2000 s, 3000 s
            os.utime(path, (1000 * (i + 1), 1000 * (i + 1)))
        asks = [(0, LATEST, 1), (0, LATEST, 10), (0, EARLIEST, 1), (0, EARLIEST, 10),
                (0, 2_500_000, 10), (0, 2_500_000, 1), (0, 1_000_000, 10), (0, 999_999, 10),
                (0, int(time.time() * 1000) + 60_000, 10), (0, LATEST, 0)]
        assert list_v0(c, SEGMENTED, asks) == [
            (NONE, [3]), (NONE, [3, 2, 1, 0]), (NONE, [0]), (NONE, [0]),
            (NONE, [1, 0]), (NONE, [1]), (NONE, [0]), (NONE, []),
            (NONE, [3, 2, 1, 0]), (NONE, [])]
        # Burrow asks for the latest offset of every partition in one request
        assert list_v0(c, SEGMENTED, [(0, LATEST, 1), (5, LATEST, 1), (0, -3, 1),
                                      (0, LATEST, -1)]) == [
            (NONE, [3]), (UNKNOWN_TOPIC_OR_PARTITION, []), (UNSUPPORTED_VERSION, []),
            (INVALID_REQUEST, [])]
        # a debugging replica (-2) is not clamped to the high watermark (equal here)
        assert list_v0(c, SEGMENTED, [(0, LATEST, 2)], replica_id=-2) == [(NONE, [3, 2])]
        assert latest(c, SEGMENTED, 0) == 3


# --- Produce v0-v2 and old message formats ------------------------------------------------------

def test_old_produce_versions_and_formats_are_refused_on_an_open_connection(lbroker):
    with lbroker.client() as c:
        before = latest(c, TOPIC, 0), latest(c, TOPIC, 1)
        for version, magic in ((0, 0), (1, 0), (2, 1)):
            assert produce(c, version, TOPIC, {0: message_set(magic, b"old"),
                                               1: message_set(magic, b"old")}) == \
                {0: (UNSUPPORTED_FOR_MESSAGE_FORMAT, -1), 1: (UNSUPPORTED_FOR_MESSAGE_FORMAT, -1)}
        # acks=0: no answer at all, and still no closed connection
        assert produce(c, 0, TOPIC, {0: message_set(0, b"old")}, acks=0) is None
        # a v3+ request: the old-format partition is refused, its neighbour appended
        answer = produce(c, 7, TOPIC, {0: message_set(1, b"old"), 1: build_batch([b"new"])})
        assert answer == {0: (UNSUPPORTED_FOR_MESSAGE_FORMAT, -1), 1: (NONE, before[1])}
        assert (latest(c, TOPIC, 0), latest(c, TOPIC, 1)) == (before[0], before[1] + 1)
        assert c.request(ApiKey.API_VERSIONS, 0, {})["error_code"] == NONE
    lines = lbroker.wait_log(lambda line: "UNSUPPORTED_FOR_MESSAGE_FORMAT" in line)
    assert any("Produce v0: refused 2 partition(s) (legacy-0, legacy-1)" in line and
               "message format v0 (magic 0)" in line for line in lines), lines
    assert any("Produce v7: refused 1 partition(s) (legacy-0)" in line and
               "message format v1 (magic 1)" in line for line in lines), lines


def test_only_a_whole_old_format_entry_counts_as_one():
    """Kafka reads an entry's size before its magic: a size no entry can have, or an
    entry cut short, is left to the batch validation (CORRUPT_MESSAGE), not called an
    old format."""
    from pybroker.server.handlers.produce import old_format_magic
    for magic in (0, 1):
        entry = message_set(magic, b"v")
        assert old_format_magic(entry) == magic
        assert old_format_magic(memoryview(entry)) == magic
        assert old_format_magic(entry[:-1]) is None
        negative = bytearray(entry)
        negative[8:12] = i32(-12)
        assert old_format_magic(bytes(negative)) is None
        assert old_format_magic(bytes(61)) is None     # zeros: size 0
    assert old_format_magic(bytes(build_batch([b"v2"]))) is None
    assert old_format_magic(b"\0" * 16) is None


# --- kafka-python speaking Kafka 0.8.1 and 0.8.2 --------------------------------------------------

@pytest.mark.parametrize("api_version, commit_version", [((0, 8, 1), 0), ((0, 8, 2), 1)],
                         ids=["0.8.1", "0.8.2"])
def test_kafka_python_with_a_pre_0_9_api_version(lbroker, zkc, group, monkeypatch,
                                                 api_version, commit_version):
    """kafka-python pinned to 0.8.1 commits with OffsetCommit v0 and reads with
    OffsetFetch v0; pinned to 0.8.2, v1 and v1 (through FindCoordinator v0); both find
    the end and start of a partition with ListOffsets v0. The versions it sent are
    read off its own protocol encoder."""
    from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
    from kafka.protocol.parser import KafkaProtocol
    sent = set()
    send_request = KafkaProtocol.send_request

    def recording(self, request, *args, **kwargs):
        sent.add((request.API_KEY, request.API_VERSION))
        return send_request(self, request, *args, **kwargs)
    monkeypatch.setattr(KafkaProtocol, "send_request", recording)
    with lbroker.client() as c:
        assert produce(c, 7, TOPIC, {1: build_batch([b"a", b"b"])})[1][0] == NONE
        expected_end = latest(c, TOPIC, 1)
    consumer = KafkaConsumer(bootstrap_servers=lbroker.bootstrap, group_id=group,
                             api_version=api_version, enable_auto_commit=False,
                             request_timeout_ms=15_000)
    try:
        tp = TopicPartition(TOPIC, 1)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        assert end == expected_end and consumer.beginning_offsets([tp])[tp] == 0
        consumer.commit({tp: OffsetAndMetadata(end - 1, "kp", -1)})
        assert consumer.committed(tp) == end - 1
    finally:
        consumer.close()
    assert zkc.get(f"/consumers/{group}/offsets/{TOPIC}/1")[0] == str(end - 1).encode()
    assert {(ApiKey.OFFSET_COMMIT, commit_version), (ApiKey.OFFSET_FETCH, commit_version),
            (ApiKey.LIST_OFFSETS, 0)} <= sent, sorted(sent)
    assert {v for k, v in sent if k in (ApiKey.OFFSET_COMMIT, ApiKey.OFFSET_FETCH,
                                        ApiKey.LIST_OFFSETS)} == {0, commit_version}


# --- librdkafka before 2.1 (kcat from Debian) compresses again ----------------------------------

@pytest.mark.parametrize("codec, bits", [("gzip", 1), ("snappy", 2), ("lz4", 3)])
def test_kcat_with_librdkafka_2_0_stores_compressed_batches(lbroker, codec, bits):
    """librdkafka < 2.1 compresses only if ApiVersions lists Produce v0 (KAFKA-18659);
    with Produce 3-7 advertised it logged "Broker does not support compression type"
    and stored the batch uncompressed."""
    path = shutil.which("kcat")
    if path is None:
        pytest.fail("kcat is not installed (Debian: apt-get install -y kcat)", pytrace=False)
    lines = [f"{codec}-{i}-" + "z" * 40 for i in range(50)]
    done = subprocess.run([path, "-b", lbroker.bootstrap, "-P", "-t", TOPIC, "-p", "0",
                           "-z", codec], input=("\n".join(lines) + "\n").encode(),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"does not support compression" not in done.stderr, done.stderr
    with lbroker.client() as c:
        body = c.request(ApiKey.FETCH, 11, {
            "replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 8 << 20,
            "isolation_level": 0, "session_id": 0, "session_epoch": -1, "topics": [
                {"topic": TOPIC, "partitions": [{"partition": 0, "current_leader_epoch": -1,
                                                 "fetch_offset": 0, "log_start_offset": -1,
                                                 "partition_max_bytes": 8 << 20}]}],
            "forgotten_topics_data": [], "rack_id": ""})
    batches = parse_batches(body["responses"][0]["partitions"][0]["records"] or b"")
    ours = [b for b in batches if b.compression == bits]
    assert ours and sum(b.last_offset_delta + 1 for b in ours) == len(lines), \
        [(b.base_offset, b.compression) for b in batches]
