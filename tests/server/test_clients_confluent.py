"""confluent-kafka (librdkafka) against a real 2-worker broker: keyed produce with
acks=all and consume back, compression codecs, ListOffsets, topic deletion, and
"acknowledged with acks=all = visible to a fetch".

Consumers here use assign() (groups have their own tests in test_groups_clients.py).
"""
from __future__ import annotations

import random
import time
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pybroker.protocol import ApiKey
from pybroker.records import parse_batches, parse_records

CLIENT_TIMEOUT_S = 30.0
CONSUME_TIMEOUT_S = 120.0
FLUSH_TIMEOUT_S = 120.0
GROUP = "pybroker-tests-assign-only"
CODEC_IDS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}  # RecordBatch attributes & 7


# --- helpers ---------------------------------------------------------------------------

def admin_client(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def create_topic(broker, name: str, partitions: int) -> None:
    admin = admin_client(broker)   # must outlive the future (its handle answers it)
    futures = admin.create_topics([NewTopic(name, partitions, 1)],
                                  operation_timeout=CLIENT_TIMEOUT_S)
    futures[name].result(CLIENT_TIMEOUT_S)


def new_consumer(broker, **extra) -> Consumer:
    return Consumer({"bootstrap.servers": broker.bootstrap, "group.id": GROUP,
                     "enable.auto.commit": False, **extra})


class DeliveryLog:
    """Delivery callbacks: (key, value) -> (partition, offset) of each acked message."""

    def __init__(self):
        self.acked: list[tuple[bytes, bytes, int, int]] = []
        self.errors: list[str] = []

    def __call__(self, err, msg) -> None:
        if err is not None:
            self.errors.append(f"{msg.key()!r}: {err}")
        else:
            self.acked.append((msg.key(), msg.value(), msg.partition(), msg.offset()))


def produce_all(producer: Producer, topic: str, messages, on_delivery, **kwargs) -> None:
    """Produce every (key, value), waiting for queue room when it is full; then flush."""
    for key, value in messages:
        for _ in range(10_000):
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        else:
            raise AssertionError("producer queue stayed full")
        producer.poll(0)
    left = producer.flush(FLUSH_TIMEOUT_S)
    assert left == 0, f"{left} messages still undelivered after {FLUSH_TIMEOUT_S}s"


def consume(consumer: Consumer, count: int, timeout: float = CONSUME_TIMEOUT_S) -> list:
    """Poll until `count` messages arrived (or the deadline); returns them in arrival
    order as (partition, offset, key, value, timestamp)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=10_000, timeout=0.5):
            if msg.error():
                raise AssertionError(f"consumer error: {msg.error()}")
            got.append((msg.partition(), msg.offset(), msg.key(), msg.value(),
                        msg.timestamp()[1]))
    return got


def leader_port(broker, topic: str, partition: int) -> int:
    admin = admin_client(broker)
    md = admin.list_topics(topic, timeout=CLIENT_TIMEOUT_S)
    return broker.port_of_node(md.topics[topic].partitions[partition].leader)


def raw_fetch(broker, topic: str, partition: int, offset: int = 0) -> dict:
    """One Fetch v11 with max_wait_ms=0 straight to the partition's leader."""
    with broker.client(broker.ports.index(leader_port(broker, topic, partition))) as c:
        body = c.request(ApiKey.FETCH, 11, {
            "replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 8 << 20,
            "isolation_level": 0, "session_id": 0, "session_epoch": -1,
            "topics": [{"topic": topic, "partitions": [{
                "partition": partition, "fetch_offset": offset, "log_start_offset": -1,
                "partition_max_bytes": 8 << 20}]}],
            "forgotten_topics_data": [], "rack_id": ""})
    return body["responses"][0]["partitions"][0]


def advertises(broker, api_key: int) -> bool:
    with broker.client() as c:
        body = c.request(ApiKey.API_VERSIONS, 0, {})
    return any(k["api_key"] == api_key for k in body["api_keys"])


# --- tests -----------------------------------------------------------------------------

KEYS = 1_000
PER_KEY = 100           # 100,000 messages in all
PARTITIONS = 4


def _keyed_messages():
    """(key, value) in send order; the value starts with "<key>:<sequence>:" and goes on
    with 0..200 pseudo-random bytes, so equality is byte-exact and order checkable."""
    rng = random.Random(2011)
    for seq in range(PER_KEY):
        for k in range(KEYS):
            key = b"key-%04d" % k
            yield key, b"%s:%d:" % (key, seq) + rng.randbytes(rng.randrange(201))


def test_keyed_acks_all_produce_consumed_back_in_order(broker):
    topic = "keyed"
    create_topic(broker, topic, PARTITIONS)
    sent = list(_keyed_messages())
    deliveries = DeliveryLog()
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                         "linger.ms": 5})
    produce_all(producer, topic, sent, deliveries)
    del producer
    assert deliveries.errors == []
    assert len(deliveries.acked) == len(sent)

    # each key always went to one partition, and every partition got some keys
    partition_of: dict[bytes, set] = defaultdict(set)
    for key, _value, partition, _offset in deliveries.acked:
        partition_of[key].add(partition)
    assert all(len(parts) == 1 for parts in partition_of.values())
    assert {next(iter(p)) for p in partition_of.values()} == set(range(PARTITIONS))

    consumer = new_consumer(broker)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got = consume(consumer, len(sent))
    consumer.close()

    assert len(got) == len(sent)
    assert sorted((k, v) for _p, _o, k, v, _t in got) == sorted(sent)
    next_seq: dict[bytes, int] = defaultdict(int)
    last_offset: dict[int, int] = {}
    for partition, offset, key, value, _ts in got:
        assert {partition} == partition_of[key]
        assert offset == last_offset.get(partition, -1) + 1, "offsets are dense, in order"
        last_offset[partition] = offset
        seq = int(value.split(b":")[1])
        assert seq == next_seq[key], f"{key!r}: sequence {seq}, expected {next_seq[key]}"
        next_seq[key] += 1
    assert sum(last_offset[p] + 1 for p in range(PARTITIONS)) == len(sent)


@pytest.mark.parametrize("codec", ["gzip", "lz4", "zstd", "snappy"])
def test_compressed_batches_read_back_identical(broker, codec):
    topic = f"compressed-{codec}"
    create_topic(broker, topic, 1)
    rng = random.Random(codec)
    # compressible but not uniform values, some large enough to span several batches
    sent = [(b"k%d" % i, (b"%06d " % i) * rng.randrange(1, 400)) for i in range(3_000)]
    # confluent-kafka's wheels build librdkafka with all four codecs: a missing one is a
    # broken install, which fails here rather than leaving the codec untested
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                         "compression.type": codec, "linger.ms": 20})
    deliveries = DeliveryLog()
    produce_all(producer, topic, sent, deliveries)
    del producer
    assert deliveries.errors == []

    consumer = new_consumer(broker)
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = consume(consumer, len(sent))
    consumer.close()
    assert [(k, v) for _p, _o, k, v, _t in got] == sent

    # the broker stored the batches as the client compressed them (no recompression)
    answer = raw_fetch(broker, topic, 0)
    stored = {b.compression for b in parse_batches(answer["records"])}
    # (librdkafka enables lz4 only for brokers advertising FindCoordinator, which we do)
    assert advertises(broker, ApiKey.FIND_COORDINATOR)
    assert stored == {CODEC_IDS[codec]}


def test_list_offsets_earliest_latest_and_by_time(broker):
    topic = "timed"
    create_topic(broker, topic, 1)
    base_ts = 1_700_000_000_000
    count = 20
    deliveries = DeliveryLog()
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                         "linger.ms": 50})
    for i in range(count):   # message i has timestamp base + 1000 * i
        producer.produce(topic, value=b"m%d" % i, timestamp=base_ts + 1000 * i,
                         on_delivery=deliveries)
    assert producer.flush(FLUSH_TIMEOUT_S) == 0
    del producer
    assert deliveries.errors == []

    consumer = new_consumer(broker)
    tp = TopicPartition(topic, 0)
    assert consumer.get_watermark_offsets(tp, timeout=CLIENT_TIMEOUT_S) == (0, count)

    def offset_for(ts: int) -> int:
        [answer] = consumer.offsets_for_times([TopicPartition(topic, 0, ts)],
                                              timeout=CLIENT_TIMEOUT_S)
        assert answer.error is None
        return answer.offset

    assert offset_for(base_ts) == 0
    assert offset_for(base_ts - 1) == 0
    assert offset_for(base_ts + 5000) == 5           # exactly message 5's timestamp
    assert offset_for(base_ts + 5001) == 6           # the first one after it
    assert offset_for(base_ts + 1000 * (count - 1)) == count - 1
    assert offset_for(base_ts + 1000 * count) == -1  # later than every record: none
    consumer.close()


def test_delete_topic(broker):
    topic = "doomed"
    create_topic(broker, topic, 2)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    deliveries = DeliveryLog()
    produce_all(producer, topic, [(None, b"v%d" % i) for i in range(100)], deliveries,
                partition=0)
    del producer   # destroyed now: a live one would auto-create the topic again
    assert len(deliveries.acked) == 100

    admin = admin_client(broker)
    admin.delete_topics([topic], operation_timeout=CLIENT_TIMEOUT_S)[topic].result(
        CLIENT_TIMEOUT_S)
    # The answer comes once the node that took the request has seen the deletion; the
    # other node follows from ZooKeeper a moment later and deletes its partition then.
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while (leftover := sorted(p.name for p in broker.data_dir.iterdir()
                              if p.name.startswith(f"{topic}-"))) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftover == [], "partition directories remain after the delete"
    for port in broker.ports:   # ask each node itself
        node_admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        assert topic not in node_admin.list_topics(timeout=CLIENT_TIMEOUT_S).topics

    # creating it again gives an empty topic
    create_topic(broker, topic, 2)
    consumer = new_consumer(broker)
    for p in range(2):
        assert consumer.get_watermark_offsets(TopicPartition(topic, p),
                                              timeout=CLIENT_TIMEOUT_S) == (0, 0)
    consumer.close()


def test_acks_all_acknowledged_means_fetchable_at_once(broker):
    """High watermark = last flushed offset and acks=all answers after the flush, so a
    fetch sent right after the acknowledgement (max_wait_ms=0) must return the record."""
    topic = "visible"
    create_topic(broker, topic, 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                         "linger.ms": 0})
    for i in range(20):
        deliveries = DeliveryLog()
        value = b"visible-%d" % i
        producer.produce(topic, value=value, on_delivery=deliveries)
        assert producer.flush(CLIENT_TIMEOUT_S) == 0
        [(_k, _v, _p, offset)] = deliveries.acked
        answer = raw_fetch(broker, topic, 0, offset)
        assert answer["error_code"] == 0
        assert answer["high_watermark"] >= offset + 1
        records = [r for b in parse_batches(answer["records"]) for r in parse_records(b)]
        assert [r.value for r in records if r.offset == offset] == [value]
    del producer


def test_deleting_an_unknown_topic_is_an_error(broker):
    admin = admin_client(broker)
    future = admin.delete_topics(["never-created"], operation_timeout=CLIENT_TIMEOUT_S)
    with pytest.raises(KafkaException) as info:
        future["never-created"].result(CLIENT_TIMEOUT_S)
    assert info.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
