"""The controller: leader election from the ISR when brokers come and go (Kafka 0.8's
ZooKeeper-based controller).

One node at a time holds /controller (Registry._elect). After every read of the
registries its registry thread calls `Controller.on_view`, which compares each
partition's state znode with the live nodes and writes what must change:
- a partition without a state znode (a topic from before replication) gets one: its
  first live replica leads epoch 0, the live replicas are in sync;
- a leader that is gone (unregistered, or it says it has the partition offline) is
  replaced by the first replica, in assignment order, that is in the ISR and live;
  the leader epoch goes up by one and the ISR keeps only live members;
- with a live leader, ISR members that are gone leave the ISR (the leader would wait
  replica.lag.time.max.ms to find out; acks=all waits for every ISR member);
- with no live ISR member nothing is written: unclean election is off, so the
  partition stays without a leader until an ISR member returns, and Metadata shows it
  offline (its recorded leader is not live);
- with auto.leader.rebalance.enable, every leader.imbalance.check.interval.seconds a
  partition whose preferred replica (the first) is live and in the ISR but does not
  lead gets it back as leader (Kafka's preferred-replica election), so leaders return
  to their even placement after brokers come back;
- a partition being reassigned (coord/reassignment.py) whose target replicas are all
  in the ISR gets its final state (a leader and an ISR within the target), then its
  topic znode's replicas become the target;
- a topic written before topic IDs (KIP-516) gets one in its topic znode.
Each write is a compare-and-set on the state znode's version inside a transaction
that checks /controller_epoch's version, so a controller deposed while it was paused
(SIGSTOP, a long GC) writes nothing. Nodes learn the outcome from their watches on the
state znodes (Kafka's controller sends LeaderAndIsr requests instead).
"""
from __future__ import annotations

import logging
import time

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from pybroker.coord import reassignment
from pybroker.coord.registry import ClusterState, PartitionInfo

log = logging.getLogger("pybroker.coord")


def decide(state: ClusterState, topic: str, partition: int,
           info: PartitionInfo) -> PartitionInfo | None:
    """The state this partition should have now, or None when its znode is right."""
    def live(node: int) -> bool:
        # a node outside the replicas (left there by a cancelled reassignment) is gone
        return node in info.replicas and state.is_live(node, topic, partition)

    if info.version < 0:
        alive = tuple(n for n in info.replicas if live(n))
        return info._replace(leader=alive[0] if alive else info.replicas[0],
                             leader_epoch=0, isr=alive or info.replicas)
    if info.leader >= 0 and live(info.leader):
        isr = tuple(n for n in info.isr if live(n))
        if info.leader not in isr:
            isr = (info.leader,) + isr  # the leader is always in its ISR
        return info._replace(isr=isr) if isr != info.isr else None
    candidates = [n for n in info.replicas if n in info.isr and live(n)]
    if not candidates:
        return None  # no clean leader: stay offline until an ISR member returns
    return info._replace(leader=candidates[0], leader_epoch=info.leader_epoch + 1,
                         isr=tuple(n for n in info.isr if live(n)))


def preferred(state: ClusterState, topic: str, partition: int,
              info: PartitionInfo) -> PartitionInfo | None:
    """The state moving leadership back to the preferred replica, or None when it
    leads already or cannot (not live, not in sync)."""
    first = info.replicas[0]
    if (info.version < 0 or info.leader == first or first not in info.isr
            or not state.is_live(first, topic, partition)):
        return None
    return info._replace(leader=first, leader_epoch=info.leader_epoch + 1)


def plan(state: ClusterState, rebalance: bool = False) -> list[tuple[str, int, PartitionInfo]]:
    """Every (topic, partition, new info) the controller should write for this view;
    with rebalance, preferred-replica elections too."""
    changes = []
    for (topic, partition), info in sorted(state.partitions.items()):
        new = decide(state, topic, partition, info)
        if new is None and reassignment.reassigning(info):
            step = reassignment.settle(state, topic, partition, info)
            new = step if isinstance(step, PartitionInfo) else None
        if new is None and rebalance:
            new = preferred(state, topic, partition, info)
        if new is not None:
            changes.append((topic, partition, new))
    return changes


def completions(state: ClusterState) -> list[tuple[str, int, tuple]]:
    """(topic, partition, target) of every reassignment whose state znode is final:
    the topic znode's replicas become the target."""
    done = []
    for (topic, partition), info in sorted(state.partitions.items()):
        if reassignment.reassigning(info):
            step = reassignment.settle(state, topic, partition, info)
            if isinstance(step, tuple) and not isinstance(step, PartitionInfo):
                done.append((topic, partition, step))
    return done


class Controller:
    """The controller role of one node; acts only while the view names it controller."""

    def __init__(self, registry, rebalance_interval_s: float | None = None):
        self.registry = registry
        self.rebalance_interval_s = rebalance_interval_s  # None: no auto rebalance
        self._last_rebalance = time.monotonic()
        self.elections = 0   # leader changes written (stats, tests)
        self.reassignments = 0   # reassignments finished

    def on_view(self, state: ClusterState) -> None:
        """On the registry thread, after each pass: write this view's decisions."""
        if state.controller_id != self.registry.node_id or self.registry.controller_epoch <= 0:
            return
        rebalance = (self.rebalance_interval_s is not None and
                     time.monotonic() - self._last_rebalance >= self.rebalance_interval_s)
        if rebalance:
            self._last_rebalance = time.monotonic()
        for topic, partition, new in plan(state, rebalance):
            old = state.partitions[(topic, partition)]
            if not self._write(topic, partition, old, new):
                return  # the view is stale: the watches bring a new one
            if new.leader != old.leader:
                self.elections += 1
            log.info("node=%d controller: tp=%s-%d leader %d -> %d epoch %d isr %s -> %s",
                     self.registry.node_id, topic, partition, old.leader, new.leader,
                     new.leader_epoch, list(old.isr), list(new.isr))
        for topic, partition, target in completions(state):
            if not self._finish(topic, partition, target):
                return
        for topic in sorted(set(state.topics) - set(state.topic_ids)):
            if not self._add_topic_id(topic):
                return

    def _add_topic_id(self, topic: str) -> bool:
        registry = self.registry
        try:
            if registry.add_topic_id(topic, fence=registry.controller_epoch_version):
                log.info("node=%d controller: topic %s given a topic id", registry.node_id,
                         topic)
        except (BadVersionError, NoNodeError) as exc:
            log.info("node=%d controller: topic %s id not written (%s); re-reading",
                     registry.node_id, topic, type(exc).__name__)
            return False
        return True

    def _finish(self, topic: str, partition: int, target: tuple) -> bool:
        registry = self.registry
        try:
            written = registry.update_topic(
                topic, lambda znode: reassignment.finish(znode, partition, target),
                fence=registry.controller_epoch_version)
        except (BadVersionError, NoNodeError) as exc:
            log.info("node=%d controller: tp=%s-%d reassignment not finished (%s); "
                     "re-reading", registry.node_id, topic, partition, type(exc).__name__)
            return False
        if written:
            self.reassignments += 1
            log.info("node=%d controller: tp=%s-%d reassignment done: replicas now %s",
                     registry.node_id, topic, partition, list(target))
        return True

    def _write(self, topic: str, partition: int, old: PartitionInfo,
               new: PartitionInfo) -> bool:
        registry = self.registry
        try:
            if old.version < 0:
                registry.create_partition_state(topic, partition, new,
                                                registry.controller_epoch)
            else:
                registry.write_partition_state(topic, partition, new,
                                               registry.controller_epoch,
                                               fence=registry.controller_epoch_version)
            return True
        except (BadVersionError, NodeExistsError, NoNodeError) as exc:
            log.info("node=%d controller: tp=%s-%d changed under us (%s); re-reading",
                     registry.node_id, topic, partition, type(exc).__name__)
            return False
