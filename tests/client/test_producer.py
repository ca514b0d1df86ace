"""pybroker.client.Producer against a real 2-worker broker: acks 0/1/all, batching by
size and linger, keyed ordering, per-message delivery results, unknown topics, and
retries across a worker crash that keep each partition's order.

What was stored is read back with plain Fetch requests (RawClient + records.py), not
with the client under test.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import pytest

from pybroker.client import (DeliveryResult, KafkaError, Producer, UnknownTopicError,
                             murmur2, to_positive)
from pybroker.client.connection import Cluster
from pybroker.protocol import ApiKey
from pybroker.records import parse_batches, parse_records

RESULT_TIMEOUT_S = 60.0


# --- helpers ---------------------------------------------------------------------------


def fetch_batches(broker, topic: str, partition: int, count: int) -> list:
    """The batches of topic-partition holding offsets 0..count-1, by Fetch v4 to the
    leader. Consumers only see flushed data (P5), so this long-polls until the high
    watermark has passed count (bounded)."""
    cluster = Cluster(broker.bootstrap)
    leader = cluster.ensure_topic(topic)[partition]
    cluster.close()
    batches, offset = [], 0
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    with broker.client(broker.node_ids.index(leader)) as c:
        while offset < count:
            assert time.monotonic() < deadline, f"{topic}-{partition}: {offset} of {count}"
            body = c.request(ApiKey.FETCH, 4, {
                "replica_id": -1, "max_wait_ms": 200, "min_bytes": 1, "max_bytes": 8 << 20,
                "isolation_level": 0, "topics": [{"topic": topic, "partitions": [{
                    "partition": partition, "fetch_offset": offset,
                    "partition_max_bytes": 8 << 20}]}]})
            part = body["responses"][0]["partitions"][0]
            assert part["error_code"] == 0, part
            got = [b for b in parse_batches(part["records"] or b"")
                   if b.last_offset >= offset]
            batches += got
            if got:
                offset = got[-1].last_offset + 1
    return batches


def fetch_records(broker, topic: str, partition: int, count: int) -> list:
    return [r for b in fetch_batches(broker, topic, partition, count)
            for r in parse_records(b)]


def results_of(results: list[DeliveryResult]) -> list[int]:
    return [r.result(RESULT_TIMEOUT_S) for r in results]


# --- tests -----------------------------------------------------------------------------

@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_acks_deliver_every_message_in_order(broker, acks):
    topic = f"acks-{acks}"
    broker.create_topic(topic, 3)
    with Producer(broker.bootstrap, acks=acks, linger_ms=2) as producer:
        results = [producer.send(topic, b"v%05d" % i, partition=i % 3) for i in range(3000)]
        assert producer.flush(RESULT_TIMEOUT_S) == 0
    offsets = results_of(results)
    assert all(r.done() and r.error is None for r in results)
    for p in range(3):
        sent = [b"v%05d" % i for i in range(p, 3000, 3)]
        records = fetch_records(broker, topic, p, len(sent))
        assert [r.value for r in records] == sent
        if acks == 0:
            assert all(o == -1 for o in offsets[p::3])   # no answer, no offset
        else:
            assert offsets[p::3] == [r.offset for r in records] == list(range(len(sent)))


def test_batching_by_linger_and_size(broker):
    topic = "batching"
    broker.create_topic(topic, 1)
    value = b"x" * 100
    # A long linger: 2000 records of ~110 encoded bytes fill 4096-byte batches, so
    # batches are cut by size (about 37 records each), never one per record.
    with Producer(broker.bootstrap, linger_ms=1000, batch_size=4096) as producer:
        results = [producer.send(topic, value) for _ in range(2000)]
        producer.flush(RESULT_TIMEOUT_S)
    results_of(results)
    batches = fetch_batches(broker, topic, 0, 2000)
    assert sum(b.record_count for b in batches) == 2000
    assert len(batches) < 2000 // 20, [b.record_count for b in batches]
    assert all(b.size - 61 <= 4096 for b in batches), [b.size for b in batches]
    # linger alone: 10 records sent at once with a big batch size go out together
    with Producer(broker.bootstrap, linger_ms=200, batch_size=1 << 20) as producer:
        results = [producer.send(topic, value) for _ in range(10)]
        assert results[0].result(RESULT_TIMEOUT_S) >= 2000
    results_of(results)
    assert len({r.offset for r in results}) == 10
    last = fetch_batches(broker, topic, 0, 2010)[len(batches):]
    assert [b.record_count for b in last] == [10]


def test_keyed_messages_keep_order_on_the_murmur2_partition(broker):
    topic = "keyed"
    partitions = 5
    broker.create_topic(topic, partitions)
    keys = [b"key-%d" % k for k in range(20)]
    with Producer(broker.bootstrap, acks="all", linger_ms=5, batch_size=2048) as producer:
        results = [producer.send(topic, b"%s:%d" % (key, seq), key=key)
                   for seq in range(100) for key in keys]
    results_of(results)
    seen = defaultdict(list)
    per_partition = defaultdict(int)
    for r in results:
        per_partition[r.partition] += 1
    for p in range(partitions):
        for r in fetch_records(broker, topic, p, per_partition[p]):
            assert to_positive(murmur2(r.key)) % partitions == p
            seen[r.key].append(int(r.value.split(b":")[1]))
    assert {k: seqs for k, seqs in seen.items()} == {k: list(range(100)) for k in keys}
    by_key = {}
    for i, r in enumerate(results):
        by_key.setdefault(keys[i % len(keys)], set()).add(r.partition)
    assert all(len(ps) == 1 for ps in by_key.values())


def test_delivery_results_and_callbacks(broker):
    topic = "results"
    broker.create_topic(topic, 2)
    called = []
    lock = threading.Lock()

    def on_delivery(result):
        with lock:
            called.append((result.partition, result.offset, result.error))

    with Producer(broker.bootstrap, acks=1) as producer:
        results = []
        for i in range(500):
            r = producer.send(topic, b"m%d" % i, partition=i % 2)
            r.add_done_callback(on_delivery)
            results.append(r)
        assert producer.flush(RESULT_TIMEOUT_S) == 0
        late = []
        results[0].add_done_callback(late.append)     # already done: runs at once
        assert late == [results[0]]
    assert sorted(called) == sorted((r.partition, r.offset, None) for r in results)
    for p in range(2):
        offs = [r.result() for r in results if r.partition == p]
        assert offs == list(range(250))
        assert [r.value for r in fetch_records(broker, topic, p, 250)] == \
            [b"m%d" % i for i in range(p, 500, 2)]
    assert "offset=" in repr(results[0])


def test_unknown_topic_is_auto_created(broker):
    with Producer(broker.bootstrap) as producer:
        result = producer.send("created-by-send", b"hello")
        assert result.result(RESULT_TIMEOUT_S) == 0
    assert [r.value for r in fetch_records(broker, "created-by-send", 0, 1)] == [b"hello"]


def test_unknown_topic_errors_clearly_without_auto_create(broker_factory):
    broker = broker_factory(settings={"auto.create.topics.enable": "false"})
    with Producer(broker.bootstrap) as producer:
        with pytest.raises(UnknownTopicError, match="no-such-topic"):
            producer.send("no-such-topic", b"x")
        with pytest.raises(UnknownTopicError):
            producer.send("bad/name", b"x")
        broker.create_topic("exists", 2)
        with pytest.raises(ValueError, match="partition 7"):
            producer.send("exists", b"x", partition=7)
        assert producer.send("exists", b"x", partition=1).result(RESULT_TIMEOUT_S) == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="acks"):
        Producer("127.0.0.1:1", acks=2)
    with pytest.raises(ValueError, match="host:port"):
        Producer("nohost")


def test_retries_across_a_worker_crash_keep_partition_order(broker):
    topic = "retried"
    broker.create_topic(topic, 4)
    producer = Producer(broker.bootstrap, acks="all", linger_ms=2, retries=100,
                        retry_backoff_ms=100)
    results = [producer.send(topic, b"%d" % i, partition=i % 4) for i in range(2000)]
    results_of(results)
    row = broker.kill_worker(1)
    more = [producer.send(topic, b"%d" % i, partition=i % 4) for i in range(2000, 4000)]
    broker.wait_restarted(1, row)
    producer.flush(RESULT_TIMEOUT_S)
    producer.close()
    ok = [r for r in more if r.exception(RESULT_TIMEOUT_S) is None]
    assert len(ok) == len(more), [r.error for r in more if r.error][:3]
    for p in range(4):
        stored = max(r.offset for r in more + results if r.partition == p) + 1
        values = [int(r.value) for r in fetch_records(broker, topic, p, stored)]
        # at-least-once: a retried batch may be stored twice, but never out of order:
        # dropping repeats of already-seen values leaves exactly what was sent
        firsts = list(dict.fromkeys(values))
        assert firsts == list(range(p, 4000, 4))


def test_send_after_close_raises(broker):
    producer = Producer(broker.bootstrap)
    producer.close()
    with pytest.raises(KafkaError, match="closed"):
        producer.send("t", b"x")


def test_keyless_sticky_and_round_robin_spread(broker):
    topic = "spread"
    broker.create_topic(topic, 4)
    with Producer(broker.bootstrap, keyless="sticky", batch_size=1024,
                  linger_ms=1000) as producer:
        sticky = [producer.send(topic, b"s%d" % i) for i in range(400)]
    with Producer(broker.bootstrap) as producer:
        rr = [producer.send(topic, b"r%d" % i) for i in range(400)]
    results_of(sticky + rr)
    # sticky: runs of one partition, one batch each (~1 KiB / ~12 B a record), all used
    runs = [sticky[0].partition]
    for r in sticky[1:]:
        if r.partition != runs[-1]:
            runs.append(r.partition)
    assert set(runs) == {0, 1, 2, 3}
    assert len(runs) < 400 // 10
    # round-robin: each message to the next partition
    assert Counter(r.partition for r in rr) == {0: 100, 1: 100, 2: 100, 3: 100}
    assert all((b.partition - a.partition) % 4 == 1 for a, b in zip(rr, rr[1:]))
