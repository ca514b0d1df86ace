"""The newest versions of Kafka 4.1's specs that need more than a codec: ListOffsets
v7-v10 (the max-timestamp, earliest-local and latest-tiered specs), InitProducerId v2-v5,
DescribeConfigs v3-v4 (types and documentation), ApiVersions v4."""
from __future__ import annotations

import time

from pybroker.config import TOPIC_SETTINGS
from pybroker.protocol import ApiKey, ErrorCode
from pybroker.records import build_batch

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
