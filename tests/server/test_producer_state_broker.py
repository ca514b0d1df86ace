"""Issue 8, defects 1 and 8, against a real broker: idempotent records that are not
valid batches get an error code for their partition, and the worker serves on.

The hostile request is the one of the report, byte for byte: Produce v7 with a null
client id, topic "hostile-topic", partition 0, and 61 record bytes holding
producerId 7 and batchLength -12, 114 bytes framed. The old Python header walk stepped
by batchLength + 12 = 0 bytes and never returned, hanging the worker.
Error codes are Kafka's numbers, written out.
"""
from __future__ import annotations

import struct

from pybroker.protocol import ApiKey
from pybroker.records import FIELD_OFFSETS, build_batch
from pybroker.testing.broker_plugin import RawClient
from pybroker.testing.poll import wait_for

NONE = 0
CORRUPT_MESSAGE = 2
INVALID_RECORD = 87
TOPIC = "hostile-topic"


def _leader_port(broker, topic: str, partition: int) -> int:
    with broker.client() as c:
        body = c.request(ApiKey.METADATA, 8, {"topics": [{"name": topic}],
                                              "allow_auto_topic_creation": False})
    [t] = body["topics"]
    [node] = [p["leader_id"] for p in t["partitions"] if p["partition_index"] == partition]
    return broker.port_of_node(node)


def _produce_body(records, acks: int = 1) -> dict:
    return {"transactional_id": None, "acks": acks, "timeout_ms": 10_000,
            "topic_data": [{"name": TOPIC, "partition_data": [
                {"index": 0, "records": bytes(records)}]}]}


def _produce(client: RawClient, records) -> dict:
    """The partition's answer; RawClient's read timeout bounds the wait (a hang fails)."""
    body = client.request(ApiKey.PRODUCE, 7, _produce_body(records))
    [t] = body["responses"]
    [p] = t["partition_responses"]
    return p


def _online(client: RawClient) -> bool:
    """The partition answers ListOffsets without error (it has finished opening)."""
    body = client.request(ApiKey.LIST_OFFSETS, 5, {
        "replica_id": -1, "isolation_level": 0, "topics": [{"name": TOPIC, "partitions": [
            {"partition_index": 0, "timestamp": -1}]}]})
    return body["topics"][0]["partitions"][0]["error_code"] == NONE


def _hostile_records() -> bytes:
    buf = bytearray(61)
    struct.pack_into(">i", buf, FIELD_OFFSETS["batch_length"], -12)
    struct.pack_into(">q", buf, FIELD_OFFSETS["producer_id"], 7)
    return bytes(buf)


def test_hostile_idempotent_request_is_corrupt_and_the_worker_serves_on(broker_factory):
    broker = broker_factory(workers=2)
    broker.create_topic(TOPIC, 1)
    with RawClient(_leader_port(broker, TOPIC, 0), client_id=None) as c:
        wait_for(lambda: _online(c), f"{TOPIC}-0 online", timeout=30)
        cid, frame = c.encode(ApiKey.PRODUCE, 7, _produce_body(_hostile_records()))
        assert len(frame) == 114
        c.send(frame)
        header, body = c.recv_response(ApiKey.PRODUCE, 7)
        assert header["correlation_id"] == cid
        [p] = body["responses"][0]["partition_responses"]
        assert p["error_code"] == CORRUPT_MESSAGE and p["base_offset"] == -1

        # the same worker, the same connection: a normal produce is appended at offset 0
        ok = _produce(c, build_batch([b"after"]))
        assert (ok["error_code"], ok["base_offset"]) == (NONE, 0)

        body = c.request(ApiKey.INIT_PRODUCER_ID, 1, {"transactional_id": None,
                                                      "transaction_timeout_ms": 60_000})
        pid, epoch = body["producer_id"], body["producer_epoch"]
        good = build_batch([b"idem"], producer_id=pid, producer_epoch=epoch, base_sequence=0)

        # mutated idempotent batches: each gets an error code, the connection stays
        crc_broken = bytearray(good)
        crc_broken[-1] ^= 0xFF
        short = bytearray(good)
        struct.pack_into(">i", short, FIELD_OFFSETS["batch_length"], len(good))  # 12 too many
        for bad in (crc_broken, short, good[:60], good[:61], good + b"\0" * 5):
            answer = _produce(c, bad)
            assert answer["error_code"] == CORRUPT_MESSAGE, bytes(bad[:16]).hex()

        # two idempotent batches for one partition: Kafka's LogValidator refuses them
        two = good + build_batch([b"x"], producer_id=pid, producer_epoch=epoch,
                                 base_sequence=1)
        assert _produce(c, two)["error_code"] == INVALID_RECORD

        ok = _produce(c, good)
        assert (ok["error_code"], ok["base_offset"]) == (NONE, 1)
        again = _produce(c, good)  # a retry: its first offset, not appended again
        assert (again["error_code"], again["base_offset"]) == (NONE, 1)
        end = _produce(c, build_batch([b"end"]))
        assert (end["error_code"], end["base_offset"]) == (NONE, 2)
