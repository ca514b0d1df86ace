"""ElectLeaders (key 43) on three brokers x one worker (nodes 100, 200, 300) through the
cluster harness, with the controller's own rebalance off (auto.leader.rebalance.enable
false) so only the request moves leaders back:

- kill -9 the host leading partition 0; while it is down its preferred replica is
  PREFERRED_LEADER_NOT_AVAILABLE; restarted and back in the ISR, a PREFERRED election
  gives partition 0 back to replicas[0] at a higher epoch on every node; asking again
  is ELECTION_NOT_NEEDED; UNCLEAN is refused; an unknown partition is
  UNKNOWN_TOPIC_OR_PARTITION; a null topic_partitions (every partition) leaves out the
  partitions that needed nothing;
- SIGTERM (controlled shutdown) the host leading partition 1, restart it, and
  confluent-kafka's AdminClient.elect_leaders moves the leader back.

Every wait is bounded; no assertion is on time.
"""
from __future__ import annotations

from confluent_kafka import ElectionType, TopicPartition
from confluent_kafka.admin import AdminClient

from pybroker import config
from pybroker.protocol import ApiKey
from pybroker.testing.broker_plugin import RawClient
from pybroker.testing.cluster import SESSION_S

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_REQUEST = 42
PREFERRED_LEADER_NOT_AVAILABLE = 80
ELECTION_NOT_NEEDED = 84
PREFERRED, UNCLEAN = 0, 1
# The controller's own preferred-replica rebalance off, so only the request moves leaders
# back (a pybroker.config without the key has no rebalance at all).
SETTINGS = {"replica.lag.time.max.ms": 3000,
            **({"auto.leader.rebalance.enable": False}
               if "auto.leader.rebalance.enable" in config.BY_KEY else {})}
FAILOVER_S = SESSION_S + 10     # kill -9 -> a new leader (liveness bound)
CATCH_UP_S = 60.0               # restarted broker back in the ISR


def elect(cluster, topic_partitions, election_type: int = PREFERRED,
          version: int = 2) -> dict:
    """One ElectLeaders to a live node: the whole body."""
    body = {"election_type": election_type, "topic_partitions": topic_partitions,
            "timeout_ms": 30_000}
    _node, port = cluster.live_nodes()[0]
    with RawClient(port, timeout=40) as c:
        return c.request(ApiKey.ELECT_LEADERS, version, body)


def rows(body: dict) -> dict:
    """{(topic, partition): (error_code, error_message)} of an ElectLeaders answer."""
    return {(t["topic"], r["partition_id"]): (r["error_code"], r["error_message"])
            for t in body["replica_election_results"] for r in t["partition_result"]}


def move_leader_away(cluster, topic: str, partition: int, how: str):
    """Take down the host leading the partition (kill -9 or SIGTERM) until another node
    leads it; returns (victim broker, the partition as every node then sees it)."""
    before = cluster.wait_partition(topic, partition, lambda m: m.leader_id >= 0,
                                    FAILOVER_S, "a leader")
    assert before.leader_id == before.replica_nodes[0], before  # placement: preferred leads
    victim = cluster.broker_of(before.leader_id)
    if how == "kill9":
        cluster.kill9(victim)
    else:
        cluster.terminate(victim)
    after = cluster.wait_partition(
        topic, partition, lambda m: m.leader_id >= 0 and m.leader_id not in victim.node_ids,
        FAILOVER_S, f"a leader other than broker {victim.broker_id}")
    assert after.leader_epoch > before.leader_epoch, (before, after)
    return victim, after


def test_preferred_election_after_a_killed_leader_returns(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=SETTINGS)
    topic = "elect"
    assert cluster.create_topic(topic, partitions=3, replication_factor=3)["error_code"] == 0
    victim, moved = move_leader_away(cluster, topic, 0, "kill9")
    preferred = moved.replica_nodes[0]

    answer = elect(cluster, [{"topic": topic, "partitions": [0]}])
    assert answer["error_code"] == NONE
    code, message = rows(answer)[(topic, 0)]
    assert code == PREFERRED_LEADER_NOT_AVAILABLE, (code, message)

    cluster.restart(victim)
    cluster.wait_isr(topic, [0], 3, CATCH_UP_S)
    back = cluster.partition(topic, 0)
    assert back.leader_id != preferred, back   # the controller did not move it back

    answer = elect(cluster, [{"topic": topic, "partitions": [0]}])
    assert answer == {"throttle_time_ms": 0, "error_code": NONE, "replica_election_results": [
        {"topic": topic, "partition_result": [
            {"partition_id": 0, "error_code": NONE, "error_message": None}]}]}, answer
    # the node that answered shows it already; every node agrees soon after
    elected = cluster.wait_partition(topic, 0, lambda m: m.leader_id == preferred,
                                     FAILOVER_S, f"node {preferred} leading")
    assert elected.leader_epoch == back.leader_epoch + 1, (back, elected)
    assert sorted(elected.isr_nodes) == sorted(back.isr_nodes), (back, elected)

    again = rows(elect(cluster, [{"topic": topic, "partitions": [0]}], version=1))
    assert again[(topic, 0)][0] == ELECTION_NOT_NEEDED, again
    unclean = rows(elect(cluster, [{"topic": topic, "partitions": [0, 1]}], UNCLEAN))
    assert {tp: c for tp, (c, _m) in unclean.items()} == {(topic, 0): INVALID_REQUEST,
                                                          (topic, 1): INVALID_REQUEST}
    assert "unclean.leader.election.enable=false" in unclean[(topic, 0)][1]
    unknown = rows(elect(cluster, [{"topic": topic, "partitions": [7]},
                                   {"topic": "absent", "partitions": [0]}], version=0))
    assert {tp: c for tp, (c, _m) in unknown.items()} == {
        (topic, 7): UNKNOWN_TOPIC_OR_PARTITION, ("absent", 0): UNKNOWN_TOPIC_OR_PARTITION}

    # every partition: all are led by their preferred replica, so nothing is listed
    every = elect(cluster, None)
    assert every["error_code"] == NONE
    assert rows(every) == {}, every
    assert topic in {t["topic"] for t in every["replica_election_results"]}
    assert cluster.partition(topic, 0).leader_epoch == elected.leader_epoch


def test_confluent_admin_client_elects_after_a_controlled_shutdown(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=SETTINGS)
    topic = "elect-admin"
    assert cluster.create_topic(topic, partitions=3, replication_factor=3)["error_code"] == 0
    victim, moved = move_leader_away(cluster, topic, 1, "sigterm")
    preferred = moved.replica_nodes[0]
    cluster.restart(victim)
    cluster.wait_isr(topic, [1], 3, CATCH_UP_S)
    back = cluster.partition(topic, 1)
    assert back.leader_id != preferred, back

    admin = AdminClient({"bootstrap.servers": cluster.live_bootstrap})
    # no request_timeout: confluent-kafka 2.16.1's C layer fails any keyword argument of
    # elect_leaders ("SystemError: more argument specifiers than keyword list entries")
    future = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(topic, 1)])
    result = future.result(timeout=60)
    assert set(result) == {TopicPartition(topic, 1)}, result
    assert all(err is None for err in result.values()), result
    elected = cluster.wait_partition(topic, 1, lambda m: m.leader_id == preferred,
                                     FAILOVER_S, f"node {preferred} leading")
    assert elected.leader_epoch > back.leader_epoch, (back, elected)

    # asking again: the client reports ELECTION_NOT_NEEDED for the partition
    result = admin.elect_leaders(ElectionType.PREFERRED,
                                 [TopicPartition(topic, 1)]).result(timeout=60)
    [err] = result.values()
    assert err is not None and "ELECTION_NOT_NEEDED" in str(err.name()), err
