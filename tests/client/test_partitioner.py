"""The partitioner (P13): Kafka's murmur2 against the Java client's own test vectors,
and the partition a key lands on against confluent-kafka (librdkafka) with
partitioner=murmur2_random producing to a real broker, so mixed clients agree."""
from __future__ import annotations

from collections import Counter

import pytest
from confluent_kafka import Producer as CkProducer

from pybroker.client import Partitioner, Producer, murmur2, to_positive

# Apache Kafka, clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java,
# testMurmur2: Utils.murmur2(bytes) as a signed Java int.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}



@pytest.mark.parametrize("key", list(KAFKA_VECTORS), ids=lambda k: k.decode()[:12])
def test_murmur2_matches_kafkas_java_vectors(key):
    assert murmur2(key) == KAFKA_VECTORS[key]


def test_to_positive_is_javas_not_abs():
    assert to_positive(-1) == 0x7FFFFFFF
    assert to_positive(-(1 << 31)) == 0          # abs() would overflow in Java
    assert to_positive(123) == 123
    assert to_positive(murmur2(b"21")) == (-973932308) & 0x7FFFFFFF


def test_keyless_round_robin_and_random():
    rr = Partitioner("round_robin")
    got = [rr.partition("t", None, 4) for _ in range(400)]
    assert Counter(got) == {0: 100, 1: 100, 2: 100, 3: 100}
    assert all((b - a) % 4 == 1 for a, b in zip(got, got[1:]))
    rnd = Partitioner("random")
    assert set(rnd.partition("t", None, 4) for _ in range(400)) == {0, 1, 2, 3}
    assert rr.partition("t", b"21", 7) == to_positive(murmur2(b"21")) % 7
    with pytest.raises(ValueError, match="keyless"):
        Partitioner("bogus")
    with pytest.raises(ValueError, match="0 partitions"):
        rr.partition("t", b"k", 0)


KEYS = [b"", b"a", b"ab", b"abc", b"abcd", b"user-%d" % 1] + \
    [b"key-%d" % i for i in range(300)] + [bytes(range(i % 256)) for i in range(0, 600, 37)]


@pytest.mark.parametrize("partitions", [7, 16])
def test_same_partition_as_confluent_kafka_murmur2_random(broker, partitions):
    topic = f"mixed-{partitions}"
    broker.create_topic(topic, partitions)
    placed = {}

    def on_delivery(err, msg):
        assert err is None, err
        placed[msg.key()] = msg.partition()

    ck = CkProducer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random",
                     "linger.ms": 5})
    for key in KEYS:
        ck.produce(topic, value=b"v", key=key, on_delivery=on_delivery)
    assert ck.flush(60) == 0
    assert len(placed) == len(set(KEYS))
    ours = Partitioner()
    mismatched = {k: (placed[k], ours.partition(topic, k, partitions))
                  for k in placed if placed[k] != ours.partition(topic, k, partitions)}
    assert not mismatched
    # and pybroker's Producer puts each key where confluent-kafka did
    with Producer(broker.bootstrap) as producer:
        results = {key: producer.send(topic, b"w", key=key) for key in KEYS}
    for r in results.values():
        assert r.result(60) >= 0
    assert {k: r.partition for k, r in results.items()} == placed
