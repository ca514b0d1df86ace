"""pybroker's own clients across a leader's loss: the Producer retries at the new
leader (NOT_LEADER_OR_FOLLOWER and a dead node are retriable), and the paper's
ZooKeeper consumer follows the leader change and reads every acknowledged message,
whose committed offsets live in ZooKeeper and so outlive any broker."""
from __future__ import annotations

import time

from pybroker.client import Consumer, Producer
from pybroker.client.consumer import ConsumerTimeout

TOPIC = "own-clients"
MESSAGES = 200


def _read_all(zk: str, group: str, want: set, timeout_s: float = 60.0) -> set:
    got: set = set()
    consumer = Consumer(zookeeper=zk, group=group, auto_offset_reset="smallest",
                        consumer_timeout_ms=3000)
    try:
        stream = consumer.create_message_streams({TOPIC: 1})[TOPIC][0]
        deadline = time.monotonic() + timeout_s
        while got != want and time.monotonic() < deadline:
            try:
                for message in stream:
                    got.add(message.value)
                    if got == want:
                        break
            except ConsumerTimeout:
                continue
    finally:
        consumer.close()
    return got


def test_own_producer_and_consumer_follow_a_leader_change(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1)
    assert cluster.create_topic(TOPIC, partitions=1, replication_factor=3,
                                configs={"min.insync.replicas": 2})["error_code"] == 0
    victim = cluster.leader_broker(TOPIC, 0)
    old = cluster.partition(TOPIC, 0)
    producer = Producer(cluster.bootstrap, acks="all", retries=60, retry_backoff_ms=250,
                        linger_ms=0)
    try:
        first = [producer.send(TOPIC, b"before-%d" % i, partition=0)
                 for i in range(MESSAGES // 2)]
        assert [f.result(30) for f in first] == list(range(MESSAGES // 2))
        cluster.kill9(victim)
        second = [producer.send(TOPIC, b"after-%d" % i, partition=0)
                  for i in range(MESSAGES // 2)]
        offsets = [f.result(60) for f in second]   # each retried to the new leader
    finally:
        producer.close(30)
    new = cluster.partition(TOPIC, 0)
    assert new.leader_id != old.leader_id and new.leader_epoch > old.leader_epoch
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert offsets[0] >= MESSAGES // 2   # the acknowledged first half was kept

    want = {b"before-%d" % i for i in range(MESSAGES // 2)} | \
        {b"after-%d" % i for i in range(MESSAGES // 2)}
    zk = cluster.brokers[0].zk_connect
    assert _read_all(zk, "own", want) == want
    cluster.restart(victim)               # back as a follower: the group's offsets held
    cluster.wait_isr(TOPIC, [0], 3, 60)
    again = _read_all(zk, "own", want, timeout_s=8)
    # at least once: the last message may come again (committed after processing), but
    # the group goes on from its committed offset, not from the start
    assert again <= want and b"before-0" not in again and len(again) < 10, sorted(again)
