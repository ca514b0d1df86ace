"""The newest versions of Kafka 4.1's specs that need more than a codec: ListOffsets
v7-v10 (the max-timestamp, earliest-local and latest-tiered specs), InitProducerId v2-v5,
DescribeConfigs v3-v4 (types and documentation), ApiVersions v4, Fetch v12-v17 (topic
IDs, replica_state, diverging epochs, the current leader and its endpoint)."""
from __future__ import annotations

import time
import uuid

from pybroker.config import TOPIC_SETTINGS
from pybroker.protocol import ApiKey, ErrorCode
from pybroker.records import build_batch, parse_batches, parse_records

TOPIC = "newer"
MAX_TIMESTAMP, EARLIEST_LOCAL, LATEST_TIERED, EARLIEST, LATEST = -3, -4, -5, -2, -1


def produce(c, timestamps: list[int]) -> int:
    """One batch of records with these timestamps; its base offset."""
    body = c.request(ApiKey.PRODUCE, 7, {
        "transactional_id": None, "acks": -1, "timeout_ms": 10_000,
        "topic_data": [{"name": TOPIC, "partition_data": [{"index": 0, "records": bytes(
            build_batch([b"v%d" % t for t in timestamps], timestamps=timestamps))}]}]})
    answer = body["responses"][0]["partition_responses"][0]
    assert answer["error_code"] == 0, answer
    return answer["base_offset"]


def list_offset(c, timestamp: int, version: int) -> dict:
    body = c.request(ApiKey.LIST_OFFSETS, version, {
        "replica_id": -1, "isolation_level": 0, "timeout_ms": 5000, "topics": [
            {"name": TOPIC, "partitions": [{"partition_index": 0, "timestamp": timestamp,
                                            "current_leader_epoch": -1}]}]})
    return body["topics"][0]["partitions"][0]


def test_list_offsets_special_timestamps(broker):
    broker.create_topic(TOPIC, 1)
    worker = broker._leader_worker(TOPIC, 0, time.monotonic() + 30)
    with broker.client(worker) as c:
        assert list_offset(c, MAX_TIMESTAMP, 7)["offset"] == -1   # empty: none
        produce(c, [1000, 1001])
        biggest = produce(c, [5000])            # offset 2 holds the largest timestamp
        produce(c, [3000, 3001])
        for v in (7, 8, 9, 10):
            answer = list_offset(c, MAX_TIMESTAMP, v)
            assert (answer["error_code"], answer["offset"], answer["timestamp"]) == \
                (0, biggest, 5000), v
        for v in (8, 9, 10):
            assert list_offset(c, EARLIEST_LOCAL, v)["offset"] == \
                list_offset(c, EARLIEST, v)["offset"] == 0
        for v in (9, 10):   # nothing is tiered
            answer = list_offset(c, LATEST_TIERED, v)
            assert (answer["error_code"], answer["offset"]) == (0, -1)
        assert list_offset(c, LATEST, 10)["offset"] == 5
        # by time: the first offset whose timestamp is at least it
        assert [list_offset(c, ts, 10)["offset"] for ts in (1001, 3000, 5000, 5001)] == \
            [1, 2, 2, -1]
        # each special timestamp exists from its version on
        for ts, since in ((MAX_TIMESTAMP, 7), (EARLIEST_LOCAL, 8), (LATEST_TIERED, 9)):
            assert list_offset(c, ts, since - 1)["error_code"] == ErrorCode.UNSUPPORTED_VERSION


def test_init_producer_id_every_version_gives_a_new_id(broker):
    seen = set()
    with broker.client() as c:
        for v in range(6):
            body = c.request(ApiKey.INIT_PRODUCER_ID, v, {
                "transactional_id": None, "transaction_timeout_ms": 60_000,
                # v3+: an idempotent producer may name its current id and epoch (KIP-360);
                # without a transactional id Kafka gives a new id anyway
                "producer_id": max(seen) if seen and v >= 3 else -1,
                "producer_epoch": 0 if seen and v >= 3 else -1})
            assert (body["error_code"], body["producer_epoch"]) == (0, 0), (v, body)
            assert body["producer_id"] not in seen
            seen.add(body["producer_id"])


def test_describe_configs_v3_v4_types_and_documentation(broker):
    broker.create_topic(TOPIC + "-c", 1)
    with broker.client() as c:
        for v in (3, 4):
            for documented in (False, True):
                body = c.request(ApiKey.DESCRIBE_CONFIGS, v, {
                    "resources": [{"resource_type": 2, "resource_name": TOPIC + "-c",
                                   "configuration_keys": ["retention.ms", "segment.bytes"]}],
                    "include_synonyms": False, "include_documentation": documented})
                [result] = body["results"]
                assert result["error_code"] == 0
                entries = {e["name"]: e for e in result["configs"]}
                retention = entries["retention.ms"]
                assert retention["config_type"] == entries["segment.bytes"]["config_type"] == 5
                if documented:
                    assert retention["documentation"] == TOPIC_SETTINGS["retention.ms"].doc
                else:
                    assert retention["documentation"] is None


def test_api_versions_v4_answers_as_v3(broker):
    with broker.client() as c:
        v3 = c.request(ApiKey.API_VERSIONS, 3, {"client_software_name": "t",
                                                "client_software_version": "1"})
        v4 = c.request(ApiKey.API_VERSIONS, 4, {"client_software_name": "t",
                                                "client_software_version": "1"})
    assert v4["error_code"] == 0 and v4["api_keys"] == v3["api_keys"]
    assert {k["api_key"]: k["max_version"] for k in v4["api_keys"]}[18] == 4


# --- Fetch v12-v17 -----------------------------------------------------------------------

def fetch(c, version: int, topic: dict, partition: int = 0, offset: int = 0, **extra) -> dict:
    body = c.request(ApiKey.FETCH, version, {
        "replica_id": -1, "replica_state": {"replica_id": -1, "replica_epoch": -1},
        "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20, "isolation_level": 0,
        "session_id": 0, "session_epoch": -1, "forgotten_topics_data": [], "rack_id": "",
        "topics": [{**topic, "partitions": [{
            "partition": partition, "fetch_offset": offset, "partition_max_bytes": 1 << 20,
            "current_leader_epoch": -1, "log_start_offset": -1, **extra}]}]})
    return body


def test_fetch_by_topic_id_and_the_newer_fields(broker):
    broker.create_topic(TOPIC + "-f", 2)
    broker.produce_one(TOPIC + "-f", 0, b"one")
    with broker.client() as c:
        topic_id = c.request(ApiKey.METADATA, 12, {
            "topics": [{"name": TOPIC + "-f", "topic_id": uuid.UUID(int=0)}],
            "allow_auto_topic_creation": False,
            "include_topic_authorized_operations": False})["topics"][0]["topic_id"]
    leader = broker._leader_worker(TOPIC + "-f", 0, time.monotonic() + 30)
    with broker.client(leader) as c:
        for v in (12, 13, 15, 16, 17):
            named = ({"topic_id": topic_id} if v >= 13 else {"topic": TOPIC + "-f"})
            body = fetch(c, v, named)
            [t] = body["responses"]
            [p] = t["partitions"]
            assert (p["error_code"], p["high_watermark"]) == (0, 1), (v, p)
            assert [r.value for b in parse_batches(p["records"]) for r in parse_records(b)] \
                == [b"one"]
            if v >= 13:
                assert t["topic_id"] == topic_id
            # an epoch this log never had: nothing diverged (the lookup is undefined)
            [p] = fetch(c, v, named, last_fetched_epoch=9)["responses"][0]["partitions"]
            assert p["error_code"] == 0 and p["diverging_epoch"]["epoch"] == -1
        stranger = uuid.uuid4()
        [t] = fetch(c, 13, {"topic_id": stranger})["responses"]
        assert (t["topic_id"], t["partitions"][0]["error_code"]) == \
            (stranger, ErrorCode.UNKNOWN_TOPIC_ID)
        # v15+: the replica id comes in replica_state; an unregistered one is refused
        body = c.request(ApiKey.FETCH, 15, {
            "replica_state": {"replica_id": 4242, "replica_epoch": -1}, "max_wait_ms": 0,
            "min_bytes": 0, "topics": [{"topic_id": topic_id, "partitions": [{
                "partition": 0, "fetch_offset": 0, "partition_max_bytes": 100}]}],
            "forgotten_topics_data": []})
        assert body["responses"][0]["partitions"][0]["error_code"] == \
            ErrorCode.TOPIC_AUTHORIZATION_FAILED
    # KIP-951: asked of a node that does not lead it, the answer names the leader
    other = next(i for i in range(broker.workers) if i != leader)
    with broker.client(other) as c:
        body = fetch(c, 16, {"topic_id": topic_id})
        [p] = body["responses"][0]["partitions"]
        assert p["error_code"] == ErrorCode.NOT_LEADER_OR_FOLLOWER
        assert p["current_leader"]["leader_id"] == broker.node_ids[leader]
        assert [(e["node_id"], e["port"]) for e in body["node_endpoints"]] == \
            [(broker.node_ids[leader], broker.ports[leader])]


def test_diverging_epoch_is_where_the_fetchers_epoch_ended_here(tmp_path):
    """Kafka's check (Partition.readRecords): the fetcher's last epoch ended in this log
    before its fetch offset, or this log's next lower epoch is older."""
    from pybroker.log.leader_epochs import LeaderEpochCache
    from pybroker.server.handlers.fetch import _diverging

    class Log:   # what _diverging reads of a PartitionLog
        epochs = LeaderEpochCache(str(tmp_path), "test")
        log_end_offset = 30
    Log.epochs.assign(0, 0)
    Log.epochs.assign(2, 10)    # epoch 0 ran 0-9, epoch 2 from 10 to the log end
    Log.epochs.assign(4, 20)

    def check(epoch, offset):
        return _diverging(Log, {"last_fetched_epoch": epoch, "fetch_offset": offset})
    assert check(-1, 25) is None                              # not asked
    assert check(4, 25) is None and check(2, 20) is None     # in step
    assert check(0, 15) == {"epoch": 0, "end_offset": 10}    # epoch 0 ended at 10 here
    assert check(3, 18) == {"epoch": 2, "end_offset": 20}    # no epoch 3 here: 2's end
    assert check(2, 25) == {"epoch": 2, "end_offset": 20}


def test_describe_cluster_and_internal_topic_names(broker):
    with broker.client() as c:
        meta = c.request(ApiKey.METADATA, 12, {"topics": None, "allow_auto_topic_creation":
                                               False,
                                               "include_topic_authorized_operations": False})
        for v in (0, 1, 2):
            body = c.request(ApiKey.DESCRIBE_CLUSTER, v, {
                "include_cluster_authorized_operations": False, "endpoint_type": 1,
                "include_fenced_brokers": v >= 2})
            assert (body["error_code"], body["cluster_id"], body["controller_id"]) == \
                (0, meta["cluster_id"], meta["controller_id"])
            assert [(b["broker_id"], b["host"], b["port"]) for b in body["brokers"]] == \
                [(b["node_id"], b["host"], b["port"]) for b in meta["brokers"]]
            assert not any(b["is_fenced"] for b in body["brokers"])
        body = c.request(ApiKey.DESCRIBE_CLUSTER, 1, {
            "include_cluster_authorized_operations": False, "endpoint_type": 2})
        assert body["error_code"] == ErrorCode.UNSUPPORTED_ENDPOINT_TYPE
        # Kafka's internal topics are never made as ordinary ones (Burrow asks for one)
        for name in ("__consumer_offsets", "__transaction_state"):
            [t] = c.request(ApiKey.METADATA, 12, {
                "topics": [{"name": name, "topic_id": uuid.UUID(int=0)}],
                "allow_auto_topic_creation": True,
                "include_topic_authorized_operations": False})["topics"]
            assert t["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            [r] = c.request(ApiKey.CREATE_TOPICS, 7, {"topics": [
                {"name": name, "num_partitions": 1, "replication_factor": 1,
                 "assignments": [], "configs": []}], "timeout_ms": 5000,
                "validate_only": False})["topics"]
            assert (r["error_code"], r["error_message"]) == \
                (ErrorCode.INVALID_REQUEST, f"Creation of internal topic {name} is prohibited.")


def test_real_admin_clients_describe_the_cluster_and_delete_groups(broker):
    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient
    from kafka import KafkaAdminClient
    broker.create_topic(TOPIC + "-g", 1)
    broker.produce_one(TOPIC + "-g", 0, b"x")
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "to-delete",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([TOPIC + "-g"])
    deadline = time.monotonic() + 60
    while (msg := consumer.poll(0.5)) is None or msg.error():
        assert time.monotonic() < deadline, "no message consumed"
    consumer.commit(asynchronous=False)
    consumer.close()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    cluster = admin.describe_cluster().result(30)
    assert sorted(n.id for n in cluster.nodes) == sorted(broker.node_ids)
    [(group, fut)] = admin.delete_consumer_groups(["to-delete"]).items()
    assert (group, fut.result(30)) == ("to-delete", None)
    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        assert sorted(b["broker_id"] for b in kp.describe_cluster()["brokers"]) == \
            sorted(broker.node_ids)
        # gone: deleting it again is GROUP_ID_NOT_FOUND
        result = kp.delete_groups(["to-delete"])
        assert "GroupIdNotFound" in repr(result), result
    finally:
        kp.close()


def test_describe_log_dirs(broker):
    broker.create_topic(TOPIC + "-d", 2)
    for i in range(3):
        broker.produce_one(TOPIC + "-d", 0, b"x" * 100)
    stored = {}
    for worker in range(broker.workers):
        with broker.client(worker) as c:
            for v in range(5):
                body = c.request(ApiKey.DESCRIBE_LOG_DIRS, v, {"topics": None})
                [result] = body["results"]
                assert result["error_code"] == 0
                assert result["log_dir"] == str(broker.data_dir.resolve())
                if v >= 4:
                    assert 0 < result["usable_bytes"] <= result["total_bytes"]
                for t in result["topics"]:
                    for p in t["partitions"]:
                        assert p["offset_lag"] == 0 and p["is_future_key"] is False
                        stored[(t["name"], p["partition_index"])] = p["partition_size"]
            only = c.request(ApiKey.DESCRIBE_LOG_DIRS, 4, {"topics": [
                {"topic": TOPIC + "-d", "partitions": [1]}]})["results"][0]["topics"]
            assert all(t["name"] == TOPIC + "-d" and
                       [p["partition_index"] for p in t["partitions"]] == [1] for t in only)
    # every partition is stored by one worker; sizes are the segments' bytes on disk
    assert {tp for tp in stored if tp[0] == TOPIC + "-d"} == {(TOPIC + "-d", 0),
                                                               (TOPIC + "-d", 1)}
    on_disk = sum(f.stat().st_size for f in (broker.data_dir / f"{TOPIC}-d-0").glob("*.log"))
    assert stored[(TOPIC + "-d", 0)] == on_disk > 300
    assert stored[(TOPIC + "-d", 1)] == 0
    # kafka-python's admin client asks every node and reads the same
    from kafka import KafkaAdminClient
    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        answers = kp.describe_log_dirs()
    finally:
        kp.close()
    assert str(on_disk) in repr(answers) and TOPIC + "-d" in repr(answers), answers
