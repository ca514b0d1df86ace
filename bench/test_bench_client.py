"""Producing (and consuming) 200-byte messages through pybroker's own client beside
confluent-kafka (librdkafka behind a C extension), same broker, same run.

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
keyless="sticky" is librdkafka's own default for messages without a key (one
partition until its batch is sealed), so both clients partition alike.

Consuming (no target; for the record): one round = MESSAGES messages read from the
start of a pre-filled PARTITIONS-partition topic by a fresh consumer (created in the
round's untimed setup, which also waits for the first message, so the round
measures reading, not connecting):
- path:       pybroker_consumer    Consumer(auto_offset_reset="smallest"), a new group
                                   per round (ZooKeeper rebalance in setup), one stream
- reference:  confluent_consumer   confluent_kafka.Consumer with assign() at the
                                   beginning, consume(num_messages=10000) batches
"""
from __future__ import annotations

import itertools

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka import Consumer as CkConsumer
from confluent_kafka import Producer as CkProducer

from pybroker.client import Consumer, Producer


VALUE_BYTES = 200
MESSAGES = 50_000          # per round: ~10 MB, a fraction of a second for either client
PARTITIONS = 4
BATCH_BYTES = 256 * 1024   # per-partition batch, the same for both clients
ROUNDS = 9
SIZES = [pytest.param(VALUE_BYTES, id=f"{VALUE_BYTES}B")]



@pytest.mark.parametrize("size", SIZES)
def test_pybroker_producer(benchmark, record, broker, size):
    broker.create_topic("bench-pybroker", PARTITIONS)
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
    broker.create_topic("bench-confluent", PARTITIONS)
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
    record("produce", "reference", nbytes=MESSAGES * size, messages=MESSAGES, guard=False)
    benchmark.pedantic(round_, rounds=ROUNDS, iterations=1)


@pytest.fixture
def filled_topic(broker):
    """A topic holding MESSAGES 200-byte messages over PARTITIONS partitions."""
    broker.create_topic("bench-fetch", PARTITIONS)
    with Producer(broker.bootstrap, acks="all", batch_size=BATCH_BYTES,
                  keyless="sticky") as producer:
        for _ in range(MESSAGES):
            producer.send("bench-fetch", b"v" * VALUE_BYTES)
        assert producer.flush(120) == 0
    return "bench-fetch"


@pytest.mark.parametrize("size", SIZES)
def test_pybroker_consumer(benchmark, record, broker, filled_topic, size):
    consumers, groups = [], itertools.count()

    def setup():
        consumer = Consumer(broker.zk_connect, f"bench-{next(groups)}",
                            auto_offset_reset="smallest", consumer_timeout_ms=120_000,
                            fetch_max_bytes=1 << 20, max_queued_messages=20_000)
        consumers.append(consumer)
        stream = consumer.create_message_streams({filled_topic: 1})[filled_topic][0]
        next(stream)        # connected and pulling
        return (stream,), {}

    def round_(stream):
        for _ in range(MESSAGES - 1):
            next(stream)

    try:
        record("consume", "path", nbytes=(MESSAGES - 1) * size, messages=MESSAGES - 1)
        benchmark.pedantic(round_, setup=setup, rounds=ROUNDS, iterations=1)
    finally:
        for consumer in consumers:
            consumer.close()


@pytest.mark.parametrize("size", SIZES)
def test_confluent_consumer(benchmark, record, broker, filled_topic, size):
    # fetch.wait.max.ms: a rewind waits for the fetch long-polling at the end of the log
    # (the broker holds it for up to that long, as Kafka does) before fetching again
    consumer = CkConsumer({"bootstrap.servers": broker.bootstrap, "fetch.wait.max.ms": 10,
                           "group.id": "bench-confluent", "enable.auto.commit": False})
    consumer.assign([TopicPartition(filled_topic, p, OFFSET_BEGINNING)
                     for p in range(PARTITIONS)])
    # One consumer for every round, connected to each partition's leader before timing:
    # librdkafka connects to brokers lazily (~0.5 s for the second one, a client delay,
    # not the broker's speed). A round rewinds with seek(), which keeps the connections.
    seen = set()
    while len(seen) < PARTITIONS:
        seen.update(m.partition() for m in consumer.consume(num_messages=100, timeout=1.0))

    def setup():
        for p in range(PARTITIONS):
            consumer.seek(TopicPartition(filled_topic, p, 0))
        return (), {}

    def round_():
        got = 0
        while got < MESSAGES:
            for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                assert msg.error() is None, msg.error()
                got += 1

    try:
        record("consume", "reference", nbytes=MESSAGES * size, messages=MESSAGES, guard=False)
        benchmark.pedantic(round_, setup=setup, rounds=ROUNDS, iterations=1)
    finally:
        consumer.close()
