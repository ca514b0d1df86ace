"""Two brokers (distinct broker ids, one ZooKeeper) form one cluster."""
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 8


def leaders(bootstrap, topic):
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return {p: m.leader for p, m in meta.topics[topic].partitions.items()}


def produce_all(bootstrap, topic, partitions, tag):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for p in partitions:
        producer.produce(topic, b"%s-%d" % (tag, p), partition=p)
    assert producer.flush(30) == 0


def read_partition(bootstrap, topic, partition, count):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "cluster-test",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, 0)])
    got = []
    for _ in range(20):
        got += [m.value() for m in consumer.consume(10, 0.5) if m.error() is None]
        if len(got) >= count:
            break
    consumer.close()
    return got


def test_two_brokers_share_topics_and_survive_one_stopping(broker_factory):
    first = broker_factory(broker_id=1)
    second = broker_factory(broker_id=2)
    nodes = set(first.node_ids) | set(second.node_ids)
    assert nodes == {100, 101, 200, 201}
    admin = AdminClient({"bootstrap.servers": first.bootstrap})
    admin.create_topics([NewTopic("spread", PARTITIONS, 1)])["spread"].result(30)

    seen_from_first = leaders(first.bootstrap, "spread")
    assert seen_from_first == leaders(second.bootstrap, "spread")  # either bootstraps
    assert set(seen_from_first.values()) == nodes  # 8 partitions over all 4 nodes

    produce_all(second.bootstrap, "spread", range(PARTITIONS), b"both-up")
    second.stop()
    kept = [p for p, node in seen_from_first.items() if node in first.node_ids]
    for p in kept:
        assert read_partition(first.bootstrap, "spread", p, 1) == [b"both-up-%d" % p]
    produce_all(first.bootstrap, "spread", kept, b"one-up")
    for p in kept:
        assert read_partition(first.bootstrap, "spread", p, 2) == [b"both-up-%d" % p,
                                                                   b"one-up-%d" % p]


def test_advertised_host_is_what_metadata_gives_clients(broker_factory):
    from pybroker.protocol import ApiKey
    broker = broker_factory(settings={"advertised.host": "localhost"})
    with broker.client() as client:
        meta = client.request(ApiKey.METADATA, 1, {"topics": []})
    assert {b["host"] for b in meta["brokers"]} == {"localhost"}
    assert sorted(b["port"] for b in meta["brokers"]) == sorted(broker.ports)
