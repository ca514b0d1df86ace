"""The fault schedule of issue 14 on three brokers x one worker (nodes 100, 200, 300),
under load, then a history check (pybroker.testing.history).

Load: two acks=all confluent-kafka producers (cluster.ProducerThread), "idem"
(enable.idempotence) and "plain" (retries, no idempotence), RATE msgs/s each, unique
values b"<producer>-<seq>" round-robin over PARTITIONS partitions of an RF 3 topic with
min.insync.replicas=2.

Faults, `rounds` of each kind, kinds alternating; the victim of a leader fault is the
broker that leads the round's partition when the fault starts:
  kill    kill -9 the host (supervisor and workers); wait until another node of its ISR
          leads that partition with a higher leader epoch; restart the host
  pause   SIGSTOP the host; wait until another node leads that partition (so ZooKeeper
          has expired the host's session); SIGCONT it. The resumed former leader must
          acknowledge nothing as leader: the history check below finds it if it did
  term    SIGTERM the host (controlled shutdown: its leaderships move to in-sync
          followers before it exits, exit code 0 asserted); another node of the ISR
          leads with a higher epoch; restart the host
  disk    (its own cluster, test_follower_disk_failure_*) broker DISK_BROKER's data dir
          is a loop-mounted ext4 image (pybroker.testing.disk.LoopExt4) and, by the
          topic's explicit assignment, it follows every partition and leads none. Its
          file system is made read-only under it (remount,ro; ext4's remount,abort
          when files are open for writing, as a running broker always has): every
          partition's ISR loses it, acks=all goes on with the other two
          (min.insync.replicas=2), and it should publish its replicas as offline
          (Metadata offline_replicas; checked last, after the history check). Then the
          broker is stopped (SIGTERM; its exit code is printed, not asserted), the file
          system repaired (remount,rw, or umount + e2fsck + mount) and the broker
          restarted: it must catch up and rejoin every ISR
  reassign  (four brokers: test_reassignment_and_preferred_election_*) the round's
          partition moves off its leader's broker onto the broker holding none of
          it (kafka-python's alter_partition_reassignments); done when every node
          shows the target replicas all in sync, the leader in the target at a
          higher epoch, and the removed replica's directory deleted
  elect   the round's partition's replicas reordered (its leader last: a
          reassignment that moves nothing), then a preferred election
          (confluent-kafka's elect_leaders) makes the new first replica leader
After each fault: every partition back to an ISR of 3, and both producers acked on
every partition again (a liveness bound of LIVENESS_S, never a performance figure).
The longest time without an ack on a partition within each fault's window (from the
fault to both producers acking everywhere again) is printed per fault.

Then: producers stopped and flushed; the final log read from offset 0 to each high
watermark; asserted: 0 lost, 0 inconsistent, 0 idempotent duplicates (and the other
must-be-zero counts of the checker), no failed delivery, the replicas byte-identical
below the high watermark. The longest time without an ack on a partition, per producer,
is printed (the issue's figure: produce resumed within 15 s of a fault) and asserted
only against LIVENESS_S.

The default run does FAST_ROUNDS rounds of each kind; the soak (-m slow) SLOW_ROUNDS.
"""
from __future__ import annotations

import os
import time

import pytest
from confluent_kafka import ElectionType, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka import KafkaAdminClient
from kafka import TopicPartition as KafkaTopicPartition

from pybroker import config
from pybroker.testing import history
from pybroker.testing.cluster import (SESSION_S, FaultLog, ProducerThread, factory_data_dir,
                                      longest_gaps, read_log)
from pybroker.testing.disk import LoopExt4

TOPIC = "faults"
PARTITIONS = 3           # one led by each broker at the start
RATE = 100               # msgs/s per producer
LAG_MS = 3000            # replica.lag.time.max.ms (Kafka's name; from the replication work)
SETTINGS = {"replica.lag.time.max.ms": LAG_MS}
FAILOVER_S = SESSION_S + 15     # fault -> another leader in Metadata
SHRINK_S = LAG_MS / 1000 + 20   # a follower whose disk failed -> out of every ISR
OFFLINE_S = 20.0                # ... -> its replicas listed in offline_replicas
CATCH_UP_S = 90.0               # a restarted or resumed host back in every ISR
LIVENESS_S = 30.0               # longest tolerated time without an ack on a partition
FLUSH_S = 180.0                 # above the producers' message.timeout.ms of 120 s
FAST_ROUNDS, SLOW_ROUNDS = 2, 5
OPERATION_FAST_ROUNDS = 2
DISK_FAST_ROUNDS, DISK_SLOW_ROUNDS = 1, 3
KINDS = ("kill", "pause", "term")
OPERATIONS = ("reassign", "elect")   # on four brokers: a spare one to move replicas to
OPERATION_SETTINGS = {**SETTINGS, **({"auto.leader.rebalance.enable": False}
                                     if "auto.leader.rebalance.enable" in config.BY_KEY
                                     else {})}  # only the request moves leaders
DISK_BROKER = 3                 # the broker whose data dir is the ext4 image
# Broker b's worker 0 is node b*100: brokers 1 and 2 lead, broker 3 only follows.
DISK_ASSIGNMENTS = {0: [100, 200, 300], 1: [200, 100, 300], 2: [100, 200, 300]}


class Schedule:
    """One run: the cluster, the producers, what happened (notes, fault windows) and the
    expectations checked only at the very end (so the history check always runs)."""

    def __init__(self, cluster, producers, disk: LoopExt4 | None = None):
        self.cluster, self.producers, self.disk = cluster, producers, disk
        self.faults = FaultLog()
        self.windows: list[tuple[str, str, float, float]] = []  # (label, kind, from, to)
        self.deferred: list[str] = []

    # --- leader faults ---------------------------------------------------------------

    def leader_fault(self, r: int, kind: str, partition: int) -> None:
        cluster, faults = self.cluster, self.faults
        before = cluster.wait_partition(TOPIC, partition, lambda m: m.leader_id >= 0,
                                        FAILOVER_S, "a leader")
        victim = cluster.broker_of(before.leader_id)
        faults.note(f"round {r}: {kind} broker {victim.broker_id} (leads {TOPIC}-"
                    f"{partition}, epoch {before.leader_epoch}, isr {before.isr_nodes})")
        t0 = time.monotonic()
        if kind == "kill":
            cluster.kill9(victim)
        elif kind == "pause":
            cluster.stop_process(victim)
        else:
            code = cluster.terminate(victim)          # exit code 0 asserted
            faults.note(f"  broker {victim.broker_id} exited {code} after "
                        f"{time.monotonic() - t0:.2f}s (controlled shutdown)")
        try:
            after = cluster.wait_partition(
                TOPIC, partition, lambda m: m.leader_id >= 0 and
                m.leader_id not in victim.node_ids, FAILOVER_S,
                f"a leader other than broker {victim.broker_id}")
            faults.note(f"  new leader {after.leader_id} epoch {after.leader_epoch}, "
                        f"agreed by every live node {time.monotonic() - t0:.2f}s after "
                        f"the signal")
            assert after.leader_id in before.isr_nodes, (before, after)
            assert after.leader_epoch > before.leader_epoch, (before, after)
        finally:
            if kind == "pause":
                cluster.resume(victim)
            else:
                cluster.restart(victim)
        faults.note(f"  broker {victim.broker_id} back ({kind})")

    # --- operations under load: a reassignment, a preferred election -----------------

    def reassign(self, r: int, partition: int) -> None:
        """Move the partition off its leader's broker onto the broker holding no replica
        of it (four brokers, RF 3): the leader moves too. kafka-python's admin client."""
        cluster, faults = self.cluster, self.faults
        before = cluster.wait_partition(TOPIC, partition, lambda m: len(m.isr_nodes) == 3,
                                        CATCH_UP_S, "a full ISR")
        spare = next(n for n in cluster.node_ids if n not in before.replica_nodes)
        target = [spare] + [n for n in before.replica_nodes if n != before.leader_id]
        faults.note(f"round {r}: reassign {TOPIC}-{partition} {before.replica_nodes} -> "
                    f"{target} (leader {before.leader_id}, epoch {before.leader_epoch})")
        t0 = time.monotonic()
        client = KafkaAdminClient(bootstrap_servers=cluster.bootstrap,
                                  request_timeout_ms=30000, client_id="faults")
        try:
            tp = KafkaTopicPartition(TOPIC, partition)
            assert client.alter_partition_reassignments({tp: target}) == {tp: None}
            after = cluster.wait_partition(
                TOPIC, partition, lambda m: m.replica_nodes == tuple(target)
                and len(m.isr_nodes) == 3, CATCH_UP_S, f"replicas {target} in sync")
            assert client.list_partition_reassignments() == {}
        finally:
            client.close()
        assert after.leader_id in target and after.leader_epoch > before.leader_epoch, after
        gone = cluster.replica_dir(cluster.broker_of(before.leader_id), TOPIC, partition)
        cluster.wait_for(lambda: not os.path.exists(gone), CATCH_UP_S,
                         f"the removed replica {gone} deleted")
        faults.note(f"  done in {time.monotonic() - t0:.2f}s: leader {after.leader_id} "
                    f"epoch {after.leader_epoch}, isr {after.isr_nodes}; {gone} deleted")

    def elect(self, r: int, partition: int) -> None:
        """Reorder the partition's replicas so its leader is last (a reassignment that
        moves nothing: applied at once, the leader stays), then a preferred election
        (confluent-kafka's AdminClient) hands leadership to the new first replica."""
        cluster, faults = self.cluster, self.faults
        before = cluster.wait_partition(TOPIC, partition, lambda m: len(m.isr_nodes) == 3,
                                        CATCH_UP_S, "a full ISR")
        order = [n for n in before.replica_nodes if n != before.leader_id] + [before.leader_id]
        client = KafkaAdminClient(bootstrap_servers=cluster.bootstrap,
                                  request_timeout_ms=30000, client_id="faults")
        try:
            tp = KafkaTopicPartition(TOPIC, partition)
            assert client.alter_partition_reassignments({tp: order}) == {tp: None}
        finally:
            client.close()
        reordered = cluster.wait_partition(TOPIC, partition,
                                           lambda m: m.replica_nodes == tuple(order),
                                           CATCH_UP_S, f"replicas reordered to {order}")
        assert reordered.leader_id == before.leader_id, reordered
        faults.note(f"round {r}: elect {TOPIC}-{partition}: replicas {order}, leader "
                    f"{reordered.leader_id}; preferred election to {order[0]}")
        t0 = time.monotonic()
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        result = admin.elect_leaders(ElectionType.PREFERRED,
                                     [TopicPartition(TOPIC, partition)]).result(timeout=60)
        assert all(err is None for err in result.values()), result
        after = cluster.wait_partition(TOPIC, partition, lambda m: m.leader_id == order[0],
                                       CATCH_UP_S, f"node {order[0]} leading")
        assert after.leader_epoch > before.leader_epoch, after
        faults.note(f"  node {order[0]} leads in epoch {after.leader_epoch}, "
                    f"{time.monotonic() - t0:.2f}s after the request")

    # --- a follower's disk -----------------------------------------------------------

    def disk_fault(self, r: int) -> None:
        cluster, faults, disk = self.cluster, self.faults, self.disk
        victim = cluster.broker(DISK_BROKER)
        node = victim.node_ids[0]
        for p in range(PARTITIONS):
            m = cluster.partition(TOPIC, p)
            assert m.leader_id != node and node in m.isr_nodes, m
        faults.note(f"round {r}: disk of broker {victim.broker_id} (follower of every "
                    f"partition) fails")
        t0 = time.monotonic()
        how = disk.fail()
        faults.note(f"  read-only by {how}: {disk.events[-1]}")
        try:
            for p in range(PARTITIONS):
                after = cluster.wait_partition(
                    TOPIC, p, lambda m: m.leader_id >= 0 and node not in m.isr_nodes,
                    SHRINK_S, f"an ISR without node {node} (its disk failed)")
                faults.note(f"  {TOPIC}-{p}: leader {after.leader_id} epoch "
                            f"{after.leader_epoch} isr {after.isr_nodes} offline "
                            f"{after.offline_replicas} at {time.monotonic() - t0:.2f}s")
                assert after.leader_id not in victim.node_ids, after
            shrunk = time.monotonic()
            self.wait_acks_everywhere(shrunk, f"acks with node {node}'s disk failed")
            faults.note(f"  both producers acked everywhere with 2 in-sync replicas, "
                        f"{time.monotonic() - t0:.2f}s after the failure")
            self._check_offline(node, t0)
            lines = [line for line in victim.log_text().splitlines()
                     if "storage error" in line or "offline" in line.lower()]
            faults.note(f"  broker {victim.broker_id} log: {len(lines)} storage-error/"
                        f"offline lines; first: {lines[:3]}")
            code = cluster.terminate(victim, check=False)
            faults.note(f"  broker {victim.broker_id} stopped (SIGTERM), exit code {code}")
        finally:
            if victim.running():   # a failed check above: stop it before the repair
                cluster.terminate(victim, check=False)
            disk.repair()
            faults.note(f"  disk repaired: {disk.events[-2:]}")
            cluster.restart(victim)
        faults.note(f"  broker {victim.broker_id} restarted")

    def _check_offline(self, node: int, t0: float) -> None:
        """Deferred: every partition lists `node` in offline_replicas (its storage
        failed), as every live node's Metadata answers it."""
        seen: dict = {}

        def offline_everywhere() -> bool:
            ok = True
            for p in range(PARTITIONS):   # every partition, for the report
                views = self.cluster.views(TOPIC, p)
                seen[p] = {n: v.offline_replicas if v else None for n, v in views.items()}
                ok = ok and bool(views) and all(v is not None and node in v.offline_replicas
                                                for v in views.values())
            return ok
        try:
            self.cluster.wait_for(offline_everywhere, OFFLINE_S,
                                  f"node {node} in offline_replicas of every partition")
        except AssertionError:
            self.deferred.append(f"node {node} (its disk read-only) not published as "
                                 f"offline within {OFFLINE_S}s of the failure: "
                                 f"offline_replicas per partition per node {seen}")
            self.faults.note(f"  NOT offline in Metadata: {seen}")
        else:
            self.faults.note(f"  node {node} in offline_replicas of every partition "
                             f"{time.monotonic() - t0:.2f}s after the failure")

    # --- waiting -----------------------------------------------------------------------

    def wait_acks_everywhere(self, since: float, what: str) -> None:
        for p in self.producers:
            for part in range(PARTITIONS):
                self.cluster.wait_for(
                    lambda p=p, part=part: p.acked_since(since, part) > 0, LIVENESS_S,
                    f"{what}: producer {p.label} on {TOPIC}-{part}",
                    detail=lambda p=p: f"failed {p.failed[-3:]} errors {p.errors[-3:]} "
                                       f"exception {p.exception!r}")


def run_schedule(cluster, rounds: int, kinds=KINDS, disk: LoopExt4 | None = None,
                 assignments: dict | None = None) -> None:
    result = cluster.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3,
                                  configs={"min.insync.replicas": 2},
                                  assignments=assignments)
    assert result["error_code"] == 0, result
    # the idempotent producer keeps librdkafka's "eos" log: PID, epoch bumps and
    # partition drains, printed below (a bumped epoch resets sequences, so the broker
    # cannot tell its retries from new writes: what caused a bump matters)
    producers = [ProducerThread("idem", cluster.bootstrap, TOPIC, PARTITIONS, True, RATE,
                                debug="eos"),
                 ProducerThread("plain", cluster.bootstrap, TOPIC, PARTITIONS, False, RATE)]
    run = Schedule(cluster, producers, disk)
    for p in producers:
        p.start()
    try:
        run.wait_acks_everywhere(time.monotonic() - 1e9, "the first acks")
        begin = time.monotonic()
        for r in range(rounds * len(kinds)):
            kind = kinds[r % len(kinds)]
            partition = (r + r // len(kinds)) % PARTITIONS   # kinds meet every partition
            start = time.monotonic()
            if kind == "disk":
                run.disk_fault(r)
            elif kind in OPERATIONS:
                getattr(run, kind)(r, partition)
            else:
                run.leader_fault(r, kind, partition)
            cluster.wait_isr(TOPIC, range(PARTITIONS), 3, CATCH_UP_S)
            recovered = time.monotonic()
            run.faults.note("  every ISR back to 3")
            run.wait_acks_everywhere(recovered, "acks after the fault")
            run.windows.append((f"round {r} {kind}", kind, start, time.monotonic()))
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
    worst_by_kind: dict[str, float] = {}
    for label, kind, start, stop in run.windows:
        per = {p.label: longest_gaps(p.acks, PARTITIONS, start, stop) for p in producers}
        worst = max(v for g in per.values() for v in g.values())
        worst_by_kind[kind] = max(worst_by_kind.get(kind, 0.0), worst)
        print(f"{label}: longest ack gap {worst:.2f}s (" + "; ".join(
            f"{name} " + " ".join(f"p{k}={v:.2f}" for k, v in sorted(g.items()))
            for name, g in per.items()) + ")")
    print("longest ack gap per fault kind: " +
          " ".join(f"{k}={v:.2f}s" for k, v in worst_by_kind.items()))
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
    assert run.deferred == [], "\n".join(run.deferred)


@pytest.mark.timeout(900)
def test_leader_faults_lose_no_acknowledged_write(cluster_factory):
    run_schedule(cluster_factory(brokers=3, workers=1, settings=SETTINGS), FAST_ROUNDS)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_leader_faults_lose_no_acknowledged_write_soak(cluster_factory):
    run_schedule(cluster_factory(brokers=3, workers=1, settings=SETTINGS), SLOW_ROUNDS)


@pytest.mark.timeout(900)
def test_reassignment_and_preferred_election_under_load(cluster_factory):
    run_schedule(cluster_factory(brokers=4, workers=1, settings=OPERATION_SETTINGS),
                 OPERATION_FAST_ROUNDS, kinds=OPERATIONS)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_reassignment_and_preferred_election_under_load_soak(cluster_factory):
    run_schedule(cluster_factory(brokers=4, workers=1, settings=OPERATION_SETTINGS),
                 SLOW_ROUNDS, kinds=OPERATIONS)


@pytest.fixture
def follower_disk(tmp_path):
    """Broker DISK_BROKER's future data dir as the mount point of a fresh ext4 image.
    Requested before cluster_factory, so it is torn down after broker_factory has
    stopped every broker: then umount (lazily if still busy), loop device detached."""
    disk = LoopExt4(tmp_path / "follower-disk.img", factory_data_dir(tmp_path, DISK_BROKER))
    try:
        disk.create()
        yield disk
    finally:
        disk.cleanup()


def _disk_cluster(cluster_factory, disk: LoopExt4):
    cluster = cluster_factory(brokers=3, workers=1, settings=SETTINGS)
    assert str(cluster.broker(DISK_BROKER).data_dir) == str(disk.mountpoint)
    return cluster


@pytest.mark.timeout(600)
def test_follower_disk_failure_loses_no_acknowledged_write(follower_disk, cluster_factory):
    run_schedule(_disk_cluster(cluster_factory, follower_disk), DISK_FAST_ROUNDS,
                 kinds=("disk",), disk=follower_disk, assignments=DISK_ASSIGNMENTS)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_follower_disk_failure_loses_no_acknowledged_write_soak(follower_disk,
                                                               cluster_factory):
    run_schedule(_disk_cluster(cluster_factory, follower_disk), DISK_SLOW_ROUNDS,
                 kinds=("disk",), disk=follower_disk, assignments=DISK_ASSIGNMENTS)
