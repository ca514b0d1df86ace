"""Producing 200-byte messages through pybroker's own Producer beside confluent-kafka's
Producer (librdkafka behind a C extension), same broker, same run.

Target (issue 4): pybroker's Python client within 2x of confluent-kafka's Python
binding for batched production (speed ratio vs confluent_producer >= 0.5).

One round = MESSAGES sends of a 200-byte value (no key: round-robin / librdkafka's
default partitioner) to a PARTITIONS-partition topic, then flush(), i.e. until every
message is acknowledged (acks=1). Both clients are created once per benchmark and
batch with linger 5 ms:
- path:       pybroker_producer    Producer(acks=1, linger_ms=5, batch_size=BATCH_BYTES);
                                   send() returns a DeliveryResult per message
- reference:  confluent_producer   confluent_kafka.Producer(acks=1, linger.ms=5,
                                   batch.size=BATCH_BYTES), produce() without callbacks
Both are bounded by one Python call per message on the caller's thread plus the
broker; the broker is the same 2-worker pybroker (`broker` fixture, defaults).
"""
from __future__ import annotations

import pytest
from confluent_kafka import Producer as CkProducer

from pybroker.client import Producer
from pybroker.client.connection import Cluster
from pybroker.protocol import ApiKey

pytest_plugins = ["pybroker.testing.zk_plugin", "pybroker.testing.broker_plugin"]

VALUE_BYTES = 200
MESSAGES = 50_000          # per round: ~10 MB, a fraction of a second for either client
PARTITIONS = 4
BATCH_BYTES = 256 * 1024   # per-partition batch, the same for both clients
ROUNDS = 9
SIZES = [pytest.param(VALUE_BYTES, id=f"{VALUE_BYTES}B")]


def _create_topic(broker, name: str) -> None:
    with broker.client() as c:
        body = c.request(ApiKey.CREATE_TOPICS, 1, {
            "topics": [{"name": name, "num_partitions": PARTITIONS,
                        "replication_factor": 1, "assignments": [], "configs": []}],
            "timeout_ms": 30_000, "validate_only": False})
    assert body["topics"][0]["error_code"] == 0, body
    cluster = Cluster(broker.bootstrap)
    try:
        cluster.ensure_topic(name)
    finally:
        cluster.close()


@pytest.mark.parametrize("size", SIZES)
def test_pybroker_producer(benchmark, record, broker, size):
    _create_topic(broker, "bench-pybroker")
    value = b"v" * size
    producer = Producer(broker.bootstrap, acks=1, linger_ms=5, batch_size=BATCH_BYTES,
                        keyless="sticky")

    def round_():
        send = producer.send
        for _ in range(MESSAGES):
            send("bench-pybroker", value)
        assert producer.flush(120) == 0

    try:
        round_()   # warm-up: metadata, connections
        record("produce", "path", nbytes=MESSAGES * size, messages=MESSAGES,
               targets=({"vs": "confluent_producer", "min": 0.5},))
        benchmark.pedantic(round_, rounds=ROUNDS, iterations=1)
    finally:
        producer.close()


@pytest.mark.parametrize("size", SIZES)
def test_confluent_producer(benchmark, record, broker, size):
    _create_topic(broker, "bench-confluent")
    value = b"v" * size
    producer = CkProducer({"bootstrap.servers": broker.bootstrap, "acks": 1,
                           "linger.ms": 5, "batch.size": BATCH_BYTES,
                           "queue.buffering.max.messages": 2 * MESSAGES})

    def round_():
        produce = producer.produce
        for _ in range(MESSAGES):
            produce("bench-confluent", value)
        assert producer.flush(120) == 0

    round_()
    record("produce", "reference", nbytes=MESSAGES * size, messages=MESSAGES)
    benchmark.pedantic(round_, rounds=ROUNDS, iterations=1)
