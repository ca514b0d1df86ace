"""Partition reassignment (AlterPartitionReassignments key 45, ListPartitionReassignments
key 46) on four brokers x one worker (nodes 100, 200, 300, 400) through the cluster
harness, with kafka-python's KafkaAdminClient (alter_partition_reassignments,
list_partition_reassignments) as the client:

- a partition of RF 2 on brokers 1 and 2 moves to brokers 3 and 4 (its leader moves
  too) after records were written with acks=all: every record is readable from the new
  leader, the new replicas are byte-identical, the old ones are deleted, the leader
  epoch went up, and nothing is listed as under way any more;
- the errors: an unknown topic or partition, a target naming an unregistered node or
  a node twice, a replication-factor change with allow_replication_factor_change
  false (v1), cancelling with nothing under way (the rules on brokers' workers are
  tests/coord/test_reassignment.py's);
- cancelling (raw requests to live nodes: kafka-python would send them to the
  controller, which may be the stopped broker): with broker 4 SIGSTOPped (still
  registered, so the target is accepted, but it never catches up) a move to it stays
  under way and is listed with its adding and removing replicas; a null target
  restores the original replicas.

Every wait is bounded; no assertion is on time.
"""
from __future__ import annotations

import os

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaAdminClient
from kafka import TopicPartition as KTopicPartition

from pybroker import config
from pybroker.protocol import ApiKey
from pybroker.testing.broker_plugin import RawClient

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_REPLICATION_FACTOR = 38
INVALID_REPLICA_ASSIGNMENT = 39
NO_REASSIGNMENT_IN_PROGRESS = 85
SETTINGS = {"replica.lag.time.max.ms": 3000,
            **({"auto.leader.rebalance.enable": False}
               if "auto.leader.rebalance.enable" in config.BY_KEY else {})}
MOVE_S = 60.0          # a reassignment of a small partition done (liveness bound)
RECORDS = 500


def admin(cluster) -> KafkaAdminClient:
    # live brokers only: a SIGSTOPped one accepts connections but never answers
    return KafkaAdminClient(bootstrap_servers=cluster.live_bootstrap, request_timeout_ms=30000,
                            client_id="reassign-test")


def alter(cluster, topics: list, version: int = 1, allow: bool = True) -> dict:
    """One AlterPartitionReassignments to a live node: {(topic, p): (code, message)}."""
    body = {"timeout_ms": 30000, "allow_replication_factor_change": allow, "topics": [
        {"name": t, "partitions": [{"partition_index": p, "replicas": r} for p, r in parts]}
        for t, parts in topics]}
    _node, port = cluster.live_nodes()[0]
    with RawClient(port, timeout=40) as c:
        answer = c.request(ApiKey.ALTER_PARTITION_REASSIGNMENTS, version, body)
    assert answer["error_code"] == NONE, answer
    return {(t["name"], p["partition_index"]): (p["error_code"], p["error_message"])
            for t in answer["responses"] for p in t["partitions"]}


def list_reassignments(cluster) -> dict:
    """ListPartitionReassignments (every topic) to a live node: {(topic, p): (replicas,
    adding, removing)}."""
    _node, port = cluster.live_nodes()[0]
    with RawClient(port, timeout=40) as c:
        answer = c.request(ApiKey.LIST_PARTITION_REASSIGNMENTS, 0,
                           {"timeout_ms": 30000, "topics": None})
    assert answer["error_code"] == NONE, answer
    return {(t["name"], p["partition_index"]): (p["replicas"], p["adding_replicas"],
                                                p["removing_replicas"])
            for t in answer["topics"] for p in t["partitions"]}


def produce(cluster, topic: str, partition: int, n: int) -> list[bytes]:
    values = [f"{topic}-{partition}-{i}".encode() for i in range(n)]
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all",
                  "enable.idempotence": True, "linger.ms": 5})
    failed = []
    for v in values:
        p.produce(topic, v, partition=partition,
                  on_delivery=lambda err, _m: err and failed.append(err))
    assert p.flush(60) == 0 and not failed, failed
    return values


def consume(cluster, topic: str, partition: int, n: int) -> list[bytes]:
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": f"g-{topic}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, partition, 0)])
    out = []
    try:
        for _ in range(200):
            for m in c.consume(500, timeout=0.5):
                assert m.error() is None, m.error()
                out.append(m.value())
            if len(out) >= n:
                break
    finally:
        c.close()
    return out


def test_reassignment_moves_replicas_and_leader(cluster_factory):
    cluster = cluster_factory(brokers=4, workers=1, settings=SETTINGS)
    topic = "moving"
    result = cluster.create_topic(topic, assignments={0: [100, 200], 1: [200, 100]})
    assert result["error_code"] == NONE, result
    values = produce(cluster, topic, 0, RECORDS)
    before = cluster.partition(topic, 0)
    assert before.leader_id == 100, before

    client = admin(cluster)
    try:
        answer = client.alter_partition_reassignments(
            {KTopicPartition(topic, 0): [300, 400]})
        assert answer == {KTopicPartition(topic, 0): None}, answer
        after = cluster.wait_partition(
            topic, 0, lambda m: m.replica_nodes == (300, 400) and len(m.isr_nodes) == 2,
            MOVE_S, "replicas [300, 400] in sync")
        assert after.leader_id == 300 and after.leader_epoch > before.leader_epoch, after
        cluster.wait_for(lambda: client.list_partition_reassignments() == {}, MOVE_S,
                         "no reassignment listed")
    finally:
        client.close()

    assert consume(cluster, topic, 0, RECORDS) == values
    hw = cluster.high_watermark(topic, 0)
    assert hw == RECORDS
    cluster.assert_replicas_identical(topic, 0, hw)
    old = [cluster.replica_dir(cluster.broker(b), topic, 0) for b in (1, 2)]
    cluster.wait_for(lambda: not any(os.path.exists(d) for d in old), MOVE_S,
                     f"the removed replicas {old} deleted")
    # the other partition was not touched, and the cluster still takes writes on both
    assert cluster.partition(topic, 1).replica_nodes == (200, 100)
    more = produce(cluster, topic, 0, 10)
    assert consume(cluster, topic, 0, RECORDS + 10)[-10:] == more


def test_reassignment_errors_and_cancel(cluster_factory):
    cluster = cluster_factory(brokers=4, workers=1, settings=SETTINGS)
    topic = "stay"
    result = cluster.create_topic(topic, assignments={0: [100, 200], 1: [200, 300]})
    assert result["error_code"] == NONE, result
    rows = alter(cluster, [
        (topic, [(0, [100, 900]), (1, [200, 200]), (7, [100, 200])]),
        ("nosuch", [(0, [100, 200])])])
    assert rows[(topic, 0)][0] == INVALID_REPLICA_ASSIGNMENT and "900" in rows[(topic, 0)][1]
    assert rows[(topic, 1)][0] == INVALID_REPLICA_ASSIGNMENT and "twice" in rows[(topic, 1)][1]
    assert rows[(topic, 7)][0] == UNKNOWN_TOPIC_OR_PARTITION
    assert rows[("nosuch", 0)][0] == UNKNOWN_TOPIC_OR_PARTITION
    rows = alter(cluster, [(topic, [(0, [100, 200, 300]), (1, None)])], allow=False)
    assert rows[(topic, 0)][0] == INVALID_REPLICATION_FACTOR, rows
    assert rows[(topic, 1)][0] == NO_REASSIGNMENT_IN_PROGRESS, rows
    assert cluster.partition(topic, 0).replica_nodes == (100, 200)

    # a move to a broker that never catches up stays under way until cancelled
    stuck = cluster.broker(4)
    cluster.stop_process(stuck)
    try:
        # raw requests to live nodes: kafka-python sends these to the controller, which
        # may be the stopped broker
        assert alter(cluster, [(topic, [(1, [200, 400])])]) == {(topic, 1): (NONE, None)}
        ongoing = {(topic, 1): ([200, 400, 300], [400], [300])}
        cluster.wait_for(lambda: list_reassignments(cluster) == ongoing, MOVE_S,
                         f"{ongoing} listed (every live node's view)")
        m = cluster.wait_partition(topic, 1, lambda m: m.replica_nodes == (200, 400, 300),
                                   MOVE_S, "replicas [200, 400, 300]")
        assert 400 not in m.isr_nodes, m
        assert alter(cluster, [(topic, [(1, None)])]) == {(topic, 1): (NONE, None)}
        cluster.wait_for(lambda: list_reassignments(cluster) == {}, MOVE_S,
                         "nothing listed after the cancel")
    finally:
        cluster.resume(stuck)
    back = cluster.wait_partition(topic, 1, lambda m: m.replica_nodes == (200, 300)
                                  and set(m.isr_nodes) == {200, 300}, MOVE_S,
                                  "the original replicas back")
    assert back.leader_id == 200, back
