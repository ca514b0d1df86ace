"""CreatePartitions (key 37) on three brokers x one worker (nodes 100, 200, 300) through
the cluster harness: an RF 3 topic grown from 2 to 5 partitions, each new one with 3
replicas on distinct brokers, a leader and a full ISR on every node's view, written to
with acks=all and read back; the refusals (a smaller or equal count, an unknown topic,
a topic named twice, bad assignments, max.partitions.per.request); validate_only; an
explicit assignment honoured; confluent-kafka's AdminClient.create_partitions; and
Registry.add_partitions' compare-and-set against a real ZooKeeper.

Every wait is bounded; no assertion is on time.
"""
from __future__ import annotations

import gc
import json

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions
from kazoo.exceptions import BadVersionError, NoNodeError

from pybroker.coord.registry import TOPICS, Registry, initial_info, state_path
from pybroker.protocol import ApiKey
from pybroker.testing.broker_plugin import RawClient
from pybroker.testing.cluster import read_log

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_REPLICA_ASSIGNMENT = 39
INVALID_REQUEST = 42
POLICY_VIOLATION = 44
LIMIT = 50                        # max.partitions.per.request for these brokers
SETTINGS = {"replica.lag.time.max.ms": 3000, "max.partitions.per.request": LIMIT}
WAIT_S = 60.0


def create_partitions(cluster, topics: list[dict], version: int = 3,
                      validate_only: bool = False, timeout_ms: int = 30_000) -> dict:
    """One CreatePartitions to a live node: {topic: (error_code, error_message)} (a name
    given twice keeps its last answer; results() gives them all)."""
    return {r["name"]: (r["error_code"], r["error_message"])
            for r in results(cluster, topics, version, validate_only, timeout_ms)}


def results(cluster, topics, version=3, validate_only=False, timeout_ms=30_000) -> list:
    body = {"topics": [{"assignments": None, **t} for t in topics],
            "timeout_ms": timeout_ms, "validate_only": validate_only}
    _node, port = cluster.live_nodes()[0]
    with RawClient(port, timeout=timeout_ms / 1000 + 5) as c:
        return c.request(ApiKey.CREATE_PARTITIONS, version, body)["results"]


def check_placement(cluster, topic: str, count: int, factor: int = 3) -> None:
    """count partitions, each with `factor` replicas on distinct brokers, a leader and a
    full ISR, as every live node sees it."""
    cluster.wait_isr(topic, range(count), factor, WAIT_S)
    for node in cluster.node_ids:
        meta = cluster.metadata(topic, via=node)
        assert sorted(meta.partitions) == list(range(count)), (node, meta.partitions)
        for p in meta.partitions.values():
            assert p.error_code == NONE, (node, p)
            assert len(p.replica_nodes) == factor, (node, p)
            brokers = {cluster.broker_of(n).broker_id for n in p.replica_nodes}
            assert len(brokers) == factor, (node, p)
            assert p.leader_id in p.replica_nodes and p.leader_epoch >= 0, (node, p)


def produce_all(bootstrap: str, topic: str, partition: int, values) -> list:
    """acks=all produce of values to one partition; [(value, offset)] acked."""
    acked, failed = [], []

    def on_delivery(err, msg):
        (failed if err is not None else acked).append(
            (msg.value(), err if err is not None else msg.offset()))
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "message.timeout.ms": 30_000})
    for v in values:
        producer.produce(topic, value=v, partition=partition, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(60) == 0, "messages still undelivered after 60 s"
    del producer
    gc.collect()
    assert failed == [], failed[:5]
    return acked


def test_rf3_topic_grows_from_2_to_5_partitions_and_the_new_ones_take_writes(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=SETTINGS)
    assert cluster.create_topic("grow", partitions=2, replication_factor=3)["error_code"] == 0
    before = cluster.metadata("grow")

    # validate_only: the answer of a real change, nothing changed
    assert create_partitions(cluster, [{"name": "grow", "count": 5}],
                             validate_only=True) == {"grow": (NONE, None)}
    assert sorted(cluster.metadata("grow").partitions) == [0, 1]

    assert create_partitions(cluster, [{"name": "grow", "count": 5}]) == {"grow": (NONE, None)}
    check_placement(cluster, "grow", 5)
    after = cluster.metadata("grow")
    for p in (0, 1):   # the old partitions are untouched
        assert after[p].replica_nodes == before[p].replica_nodes, (before[p], after[p])

    values = [b"grow-%d" % i for i in range(200)]
    acked = produce_all(cluster.bootstrap, "grow", 4, values)
    assert [o for _v, o in acked] == list(range(200))
    log, ends = read_log(cluster.bootstrap, "grow", 5)
    assert ends == {0: 0, 1: 0, 2: 0, 3: 0, 4: 200}
    assert [r.value for r in sorted(log, key=lambda r: r.offset) if r.partition == 4] == values
    cluster.assert_replicas_identical("grow", 4, 200, timeout=30)

    # a partition count only grows
    code, message = create_partitions(cluster, [{"name": "grow", "count": 3}])["grow"]
    assert code == INVALID_PARTITIONS and "5 partition" in message, message
    code, message = create_partitions(cluster, [{"name": "grow", "count": 5}],
                                      version=0)["grow"]
    assert code == INVALID_PARTITIONS and "already has 5" in message, message
    assert sorted(cluster.metadata("grow").partitions) == list(range(5))


def test_refusals_and_an_explicit_assignment(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=SETTINGS)
    assert cluster.create_topic("a", partitions=1, replication_factor=3)["error_code"] == 0
    assert cluster.create_topic("b", partitions=1, replication_factor=2)["error_code"] == 0

    answer = create_partitions(cluster, [{"name": "absent", "count": 2}])
    assert answer["absent"][0] == UNKNOWN_TOPIC_OR_PARTITION, answer
    twice = results(cluster, [{"name": "a", "count": 2}, {"name": "a", "count": 3}])
    assert [r["error_code"] for r in twice] == [INVALID_REQUEST, INVALID_REQUEST], twice
    assert sorted(cluster.metadata("a").partitions) == [0]

    # over max.partitions.per.request: the whole request is refused
    answer = create_partitions(cluster, [{"name": "a", "count": 2},
                                         {"name": "b", "count": LIMIT + 1}])
    assert {t: c for t, (c, _m) in answer.items()} == {"a": POLICY_VIOLATION,
                                                       "b": POLICY_VIOLATION}, answer
    assert "max.partitions.per.request" in answer["a"][1]

    def assign(*replica_lists):
        return [{"broker_ids": list(r)} for r in replica_lists]
    bad = {
        "one short": [{"name": "a", "count": 3, "assignments": assign([100, 200, 300])}],
        "replica count": [{"name": "a", "count": 2, "assignments": assign([100, 200])}],
        "shared broker": [{"name": "a", "count": 2, "assignments": assign([100, 100, 200])}],
        "unknown node": [{"name": "a", "count": 2, "assignments": assign([100, 200, 900])}],
    }
    for why, topics in bad.items():
        code, message = create_partitions(cluster, topics)["a"]
        assert code == INVALID_REPLICA_ASSIGNMENT, (why, code, message)
    code, message = create_partitions(cluster, bad["unknown node"])["a"]
    assert message.startswith("partition 1:") and "900" in message, message
    assert sorted(cluster.metadata("a").partitions) == [0]

    # honoured as given (the first replica is the preferred leader, and leads); b grows
    # with its own replication factor, 2
    answer = create_partitions(cluster, [
        {"name": "a", "count": 3, "assignments": assign([300, 100, 200], [200, 300, 100])},
        {"name": "b", "count": 4}], version=2)
    assert answer == {"a": (NONE, None), "b": (NONE, None)}, answer
    check_placement(cluster, "a", 3)
    check_placement(cluster, "b", 4, factor=2)
    meta = cluster.metadata("a")
    assert list(meta[1].replica_nodes) == [300, 100, 200] and meta[1].leader_id == 300
    assert list(meta[2].replica_nodes) == [200, 300, 100] and meta[2].leader_id == 200


def test_more_replicas_than_live_brokers(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=SETTINGS)
    assert cluster.create_topic("wide", partitions=1, replication_factor=3)["error_code"] == 0
    victim = cluster.broker(3)
    cluster.kill9(victim)
    cluster.wait_for(lambda: len(cluster.metadata("wide").brokers) == 2, WAIT_S,
                     "every live node to drop broker 3")
    code, message = create_partitions(cluster, [{"name": "wide", "count": 2}])["wide"]
    assert code == INVALID_REPLICATION_FACTOR, (code, message)
    cluster.restart(victim)


def test_confluent_admin_client_create_partitions(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=SETTINGS)
    assert cluster.create_topic("admin", partitions=2, replication_factor=3)["error_code"] == 0
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    futures = admin.create_partitions([NewPartitions("admin", 4)], request_timeout=30)
    assert futures["admin"].result(timeout=60) is None
    check_placement(cluster, "admin", 4)
    futures = admin.create_partitions([NewPartitions("admin", 3)], request_timeout=30)
    try:
        futures["admin"].result(timeout=60)
        raise AssertionError("shrinking to 3 partitions was accepted")
    except Exception as exc:  # noqa: BLE001 - confluent_kafka raises KafkaException
        assert "INVALID_PARTITIONS" in str(exc) or "_INVALID_PARTITIONS" in repr(exc), exc
    # explicit assignment through the client: replica_assignment per new partition
    futures = admin.create_partitions(
        [NewPartitions("admin", 5, replica_assignment=[[200, 300, 100]])], request_timeout=30)
    assert futures["admin"].result(timeout=60) is None
    check_placement(cluster, "admin", 5)
    assert list(cluster.metadata("admin")[4].replica_nodes) == [200, 300, 100]


# --- Registry.add_partitions against a real ZooKeeper ---------------------------------------

def test_registry_add_partitions_is_one_compare_and_set(zk_connect, zk):
    """The map and the new states are written together by CAS over the topic znode's
    version: a stale plan, a change between the read and the write, and a topic being
    deleted all leave the topic as it was."""
    reg = Registry(zk_connect, 0, "127.0.0.1", 9092, lambda s: None, 4000)
    reg.start()
    try:
        reg.create_topic("t", {0: [0, 100]}, {})
        reg.add_partitions("t", {1: [100, 0], 2: [0, 100]})
        data, stat = zk.get(f"{TOPICS}/t")
        assert json.loads(data)["partitions"] == {"0": [0, 100], "1": [100, 0], "2": [0, 100]}
        state = json.loads(zk.get(state_path("t", 1))[0])
        expected = json.loads(initial_info([100, 0]).state_data(0))
        # the controller epoch is the registry's when it wrote, which its election may
        # have moved since
        assert {**state, "controller_epoch": 0} == expected
        assert state["leader"] == 100 and state["isr"] == [100, 0]

        with pytest.raises(BadVersionError):          # planned against 1 partition: stale
            reg.add_partitions("t", {1: [0, 100]})

        real_get = reg._zk.get

        def get_then_race(path, *args, **kwargs):     # another writer between read and CAS
            answer = real_get(path, *args, **kwargs)
            if path == f"{TOPICS}/t":
                zk.set(path, answer[0])
            return answer
        reg._zk.get = get_then_race
        with pytest.raises(BadVersionError):
            reg.add_partitions("t", {3: [0, 100]})
        reg._zk.get = real_get
        assert zk.exists(f"{TOPICS}/t/partitions/3") is None
        assert len(json.loads(zk.get(f"{TOPICS}/t")[0])["partitions"]) == 3

        info = json.loads(zk.get(f"{TOPICS}/t")[0])
        zk.set(f"{TOPICS}/t", json.dumps({**info, "deleting": True}).encode())
        with pytest.raises(NoNodeError):
            reg.add_partitions("t", {3: [0, 100]})
        assert zk.exists(f"{TOPICS}/t/partitions/3") is None
        with pytest.raises(NoNodeError):
            reg.add_partitions("absent", {1: [0]})
    finally:
        reg.stop()
