"""kafka-python (pure Python; idempotent producer by default in 3.x) against a real
2-worker broker: produce and consume back (assign), topic administration, illegal
topic names."""
from __future__ import annotations

import time
from collections import defaultdict

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import (InvalidReplicationFactorError, InvalidTopicError,
                          TopicAlreadyExistsError, UnknownTopicOrPartitionError)

from pybroker.protocol import ApiKey
from pybroker.records import parse_batches
from pybroker.testing import poll

CLIENT_TIMEOUT_S = 30.0
CONSUME_TIMEOUT_S = 60.0
MESSAGES = 5_000
KEYS = 50
PARTITIONS = 3


@pytest.fixture
def admin(broker):
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap,
                              request_timeout_ms=int(CLIENT_TIMEOUT_S * 1000))
    yield client
    client.close()


def consume(consumer: KafkaConsumer, count: int) -> list:
    """Poll until `count` records arrived or the deadline passed."""
    got = []
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while len(got) < count and time.monotonic() < deadline:
        for _tp, records in consumer.poll(timeout_ms=500).items():
            got.extend(records)
    return got


def topic_names(broker) -> set[str]:
    """Topics as the client sees them (it may ask any node)."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        return set(consumer.topics())
    finally:
        consumer.close()


def topics_of_every_node(broker) -> list[set[str]]:
    """Each node's own list of topics (a Metadata request to each worker)."""
    listed = []
    for worker in range(broker.workers):
        with broker.client(worker) as c:
            body = c.request(ApiKey.METADATA, 1, {"topics": None})
        listed.append({t["name"] for t in body["topics"]})
    return listed


def eventually(predicate, what: str) -> None:
    """Poll predicate until true. Topic changes are answered once the node that took
    the request has seen them; the other node learns them from ZooKeeper a moment later,
    and a client may ask either."""
    poll.wait_for(predicate, what, CLIENT_TIMEOUT_S)


def test_idempotent_producer_and_assigned_consumer(broker, admin):
    topic = "kp-idempotent"
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)], timeout_ms=30_000)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    assert producer.config["enable_idempotence"], "kafka-python 3.x defaults to idempotent"
    sent = [(b"key-%02d" % (i % KEYS), b"key-%02d:%d:" % (i % KEYS, i // KEYS) + b"p" * (i % 97))
            for i in range(MESSAGES)]
    futures = [producer.send(topic, key=k, value=v) for k, v in sent]
    producer.flush(timeout=CLIENT_TIMEOUT_S)
    acked = [f.get(timeout=CLIENT_TIMEOUT_S) for f in futures]
    producer.close(timeout=CLIENT_TIMEOUT_S)
    partition_of = defaultdict(set)
    for (key, _v), meta in zip(sent, acked):
        partition_of[key].add(meta.partition)
    assert all(len(p) == 1 for p in partition_of.values())

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    got = consume(consumer, MESSAGES)
    consumer.close()

    assert sorted((r.key, r.value) for r in got) == sorted(sent)
    last_offset = defaultdict(lambda: -1)
    next_seq = defaultdict(int)
    for r in got:   # in arrival order: per partition, dense offsets and key sequences
        assert r.offset == last_offset[r.partition] + 1
        last_offset[r.partition] = r.offset
        assert {r.partition} == partition_of[r.key]
        assert int(r.value.split(b":")[1]) == next_seq[r.key]
        next_seq[r.key] += 1

    # the stored batches really are idempotent ones: producer id set, sequences from 0
    leaders = {p["partition_index"]: p["leader_id"]
               for p in admin.describe_topics([topic])[0]["partitions"]}
    for p in range(PARTITIONS):
        with broker.client(broker.node_ids.index(leaders[p])) as c:
            answer = c.request(ApiKey.FETCH, 11, {
                "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20,
                "topics": [{"topic": topic, "partitions": [{
                    "partition": p, "fetch_offset": 0, "partition_max_bytes": 1 << 20}]}],
            })["responses"][0]["partitions"][0]
        assert answer["error_code"] == 0
        batches = parse_batches(answer["records"])
        assert batches and all(b.producer_id >= 0 for b in batches)
        assert batches[0].base_sequence == 0


def test_admin_create_and_delete_topics(broker, admin):
    names = ["kp-admin-a", "kp-admin-b"]
    admin.create_topics([NewTopic(n, 2, 1) for n in names], timeout_ms=30_000)
    eventually(lambda: all(set(names) <= t for t in topics_of_every_node(broker)),
               "every node to list the new topics")
    assert set(names) <= topic_names(broker)
    described = {t["name"]: t for t in admin.describe_topics(names)}
    assert {n: len(described[n]["partitions"]) for n in names} == {n: 2 for n in names}
    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topics([NewTopic(names[0], 2, 1)], timeout_ms=30_000)

    admin.delete_topics(names, timeout_ms=30_000)
    eventually(lambda: not any(set(names) & t for t in topics_of_every_node(broker)),
               "every node to drop the topics")
    assert not set(names) & topic_names(broker)


def test_deleting_an_unknown_topic_is_an_error(broker, admin):
    with pytest.raises(UnknownTopicOrPartitionError):
        admin.delete_topics(["kp-never-created"], timeout_ms=30_000)


@pytest.mark.parametrize("name", ["bad/name", "x" * 250, "sp ace", "..", "ünï"],
                         ids=["slash", "250-chars", "space", "dotdot", "non-ascii"])
def test_illegal_topic_name_is_refused(broker, admin, name):
    with pytest.raises(InvalidTopicError):
        admin.create_topics([NewTopic(name, 1, 1)], timeout_ms=30_000)
    assert name not in topic_names(broker)
    assert not any(p.name.startswith(name) for p in broker.data_dir.iterdir())


def test_longest_legal_topic_name_is_accepted(broker, admin):
    name = "y" * 249
    admin.create_topics([NewTopic(name, 1, 1)], timeout_ms=30_000)
    eventually(lambda: all(name in t for t in topics_of_every_node(broker)),
               "every node to list the topic")


def test_replication_factor_above_one_is_refused(broker, admin):
    with pytest.raises(InvalidReplicationFactorError):
        admin.create_topics([NewTopic("kp-replicated", 1, 3)], timeout_ms=30_000)
    assert "kp-replicated" not in topic_names(broker)


def test_gzip_compressed_round_trip(broker, admin):
    topic = "kp-gzip"
    admin.create_topics([NewTopic(topic, 1, 1)], timeout_ms=30_000)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type="gzip",
                             linger_ms=20)
    sent = [b"%05d:" % i + b"abc" * (i % 300) for i in range(1_000)]
    for value in sent:
        producer.send(topic, value=value, partition=0)
    producer.flush(timeout=CLIENT_TIMEOUT_S)
    producer.close(timeout=CLIENT_TIMEOUT_S)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    got = consume(consumer, len(sent))
    consumer.close()
    assert [r.value for r in got] == sent
