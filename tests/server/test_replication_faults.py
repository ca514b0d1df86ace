"""The fault schedule of issue 14 on three brokers x one worker (nodes 100, 200, 300),
under load, then a history check (pybroker.testing.history).

Load: two acks=all confluent-kafka producers (cluster.ProducerThread), "idem"
(enable.idempotence) and "plain" (retries, no idempotence), RATE msgs/s each, unique
values b"<producer>-<seq>" round-robin over PARTITIONS partitions of an RF 3 topic with
min.insync.replicas=2.

Faults, `rounds` of each kind, kinds alternating; the victim of round r is the broker
that leads partition r % PARTITIONS when the fault starts:
  kill    kill -9 the host (supervisor and workers); wait until another node of its ISR
          leads that partition with a higher leader epoch; restart the host
  pause   SIGSTOP the host; wait until another node leads that partition (so ZooKeeper
          has expired the host's session); SIGCONT it. The resumed former leader must
          acknowledge nothing as leader: the history check below finds it if it did
After each fault: every partition back to an ISR of 3, and both producers acked on
every partition again (a liveness bound of LIVENESS_S, never a performance figure).

Then: producers stopped and flushed; the final log read from offset 0 to each high
watermark; asserted: 0 lost, 0 inconsistent, 0 idempotent duplicates (and the other
must-be-zero counts of the checker), no failed delivery, the replicas byte-identical
below the high watermark. The longest time without an ack on a partition, per producer,
is printed (the issue's figure: produce resumed within 15 s of a fault) and asserted
only against LIVENESS_S.

The default run does FAST_ROUNDS rounds of each kind; the soak (-m slow) SLOW_ROUNDS.
"""
from __future__ import annotations

import time

import pytest

from pybroker.testing import history
from pybroker.testing.cluster import (SESSION_S, FaultLog, ProducerThread, longest_gaps,
                                      read_log)

TOPIC = "faults"
PARTITIONS = 3           # one led by each broker at the start
RATE = 100               # msgs/s per producer
LAG_MS = 3000            # replica.lag.time.max.ms (Kafka's name; from the replication work)
SETTINGS = {"replica.lag.time.max.ms": LAG_MS}
FAILOVER_S = SESSION_S + 15     # fault -> another leader in Metadata
CATCH_UP_S = 90.0               # a restarted or resumed host back in every ISR
LIVENESS_S = 30.0               # longest tolerated time without an ack on a partition
FLUSH_S = 180.0                 # above the producers' message.timeout.ms of 120 s
FAST_ROUNDS, SLOW_ROUNDS = 2, 5
KINDS = ("kill", "pause")


def run_schedule(cluster, rounds: int) -> None:
    result = cluster.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3,
                                  configs={"min.insync.replicas": 2})
    assert result["error_code"] == 0, result
    # the idempotent producer keeps librdkafka's "eos" log: PID, epoch bumps and
    # partition drains, printed below (a bumped epoch resets sequences, so the broker
    # cannot tell its retries from new writes: what caused a bump matters)
    producers = [ProducerThread("idem", cluster.bootstrap, TOPIC, PARTITIONS, True, RATE,
                                debug="eos"),
                 ProducerThread("plain", cluster.bootstrap, TOPIC, PARTITIONS, False, RATE)]
    for p in producers:
        p.start()
    faults = FaultLog()
    try:
        _wait_acks_everywhere(cluster, producers, time.monotonic() - 1e9, "the first acks")
        begin = time.monotonic()
        for r in range(rounds * len(KINDS)):
            kind, partition = KINDS[r % len(KINDS)], r % PARTITIONS
            before = cluster.wait_partition(TOPIC, partition, lambda m: m.leader_id >= 0,
                                            FAILOVER_S, "a leader")
            victim = cluster.broker_of(before.leader_id)
            faults.note(f"round {r}: {kind} broker {victim.broker_id} (leads {TOPIC}-"
                        f"{partition}, epoch {before.leader_epoch}, isr {before.isr_nodes})")
            if kind == "kill":
                cluster.kill9(victim)
            else:
                cluster.stop_process(victim)
            try:
                after = cluster.wait_partition(
                    TOPIC, partition, lambda m: m.leader_id >= 0 and
                    m.leader_id not in victim.node_ids, FAILOVER_S,
                    f"a leader other than broker {victim.broker_id}")
                faults.note(f"  new leader {after.leader_id} epoch {after.leader_epoch}")
                assert after.leader_id in before.isr_nodes, (before, after)
                assert after.leader_epoch > before.leader_epoch, (before, after)
            finally:
                if kind == "kill":
                    cluster.restart(victim)
                else:
                    cluster.resume(victim)
            faults.note(f"  broker {victim.broker_id} back ({kind})")
            cluster.wait_isr(TOPIC, range(PARTITIONS), 3, CATCH_UP_S)
            recovered = time.monotonic()
            faults.note("  every ISR back to 3")
            _wait_acks_everywhere(cluster, producers, recovered, "acks after the fault")
        end = time.monotonic()
    finally:
        for p in producers:
            p.stop.set()
        for p in producers:
            p.join(FLUSH_S)
    for p in producers:
        p.finish(1.0)

    gaps = {p.label: longest_gaps(p.acks, PARTITIONS, begin, end) for p in producers}
    for label, per_partition in gaps.items():
        print(f"longest ack gap of {label}: " +
              " ".join(f"p{k}={v:.1f}s" for k, v in sorted(per_partition.items())))
    for p in producers:
        print(f"{p.label}: sent {p.sent} acked {len(p.acks)} failed {len(p.failed)} "
              f"client errors {len(p.errors)} {p.errors[:3]}")

    for line in producers[0].client_lines("bump", "epoch:1", "fatal", "sequence",
                                          "persisted", "UNKNOWN_PRODUCER"):
        print(f"idem client: {line}")
    log, ends = read_log(cluster.bootstrap, TOPIC, PARTITIONS)
    acks = [a for p in producers for a in p.history()]
    report = history.check(acks, [history.Delivery(r.value, r.partition, r.offset)
                                  for r in log], log)
    print(report.summary())
    assert report.violations() == [], report.summary()
    for p in producers:
        assert p.failed == [], f"{p.label} failed deliveries: {p.failed[:5]}"
        assert not any(e.startswith("FATAL") for e in p.errors), p.errors
    for part in range(PARTITIONS):
        batches = cluster.assert_replicas_identical(TOPIC, part, ends[part], timeout=60)
        print(f"{TOPIC}-{part}: {batches} batches identical on 3 replicas below HW "
              f"{ends[part]}")
    worst = max(v for g in gaps.values() for v in g.values())
    assert worst < LIVENESS_S, f"a partition went {worst:.1f}s without an ack: {gaps}"


def _wait_acks_everywhere(cluster, producers, since: float, what: str) -> None:
    for p in producers:
        for part in range(PARTITIONS):
            cluster.wait_for(lambda p=p, part=part: p.acked_since(since, part) > 0,
                             LIVENESS_S, f"{what}: producer {p.label} on {TOPIC}-{part}",
                             detail=lambda p=p: f"failed {p.failed[-3:]} errors "
                                                f"{p.errors[-3:]} exception {p.exception!r}")


@pytest.mark.timeout(600)
def test_leader_faults_lose_no_acknowledged_write(cluster_factory):
    run_schedule(cluster_factory(brokers=3, workers=1, settings=SETTINGS), FAST_ROUNDS)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_leader_faults_lose_no_acknowledged_write_soak(cluster_factory):
    run_schedule(cluster_factory(brokers=3, workers=1, settings=SETTINGS), SLOW_ROUNDS)
