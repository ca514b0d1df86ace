"""Where a new partition's replicas go (Kafka's AdminUtils.assignReplicasToBrokers,
without racks).

A broker is a host: node id = broker id * NODES_PER_BROKER + worker index, and every
worker of a broker shares its disk, so the replicas of one partition go on distinct
brokers. Over brokers, partition p's first replica (its preferred leader) goes on the
broker after the previous partition's, from a random start, and the others follow it
with a shift that grows every len(brokers) partitions, so leaders and followers are
both even over brokers. Within a broker, its replicas take its workers round-robin,
leaders and followers each from their own random start, so they are even over workers.
"""
from __future__ import annotations

import random

NODES_PER_BROKER = 100


def broker_of(node: int) -> int:
    return node // NODES_PER_BROKER


class PlacementError(ValueError):
    """A replication factor or assignment that cannot be placed (INVALID_REPLICATION_FACTOR
    / INVALID_REPLICA_ASSIGNMENT)."""


def assign(nodes, partitions: int, replication_factor: int,
           rng: random.Random | None = None) -> dict[int, list[int]]:
    """{partition: [replica nodes, preferred leader first]} over the live `nodes`."""
    rng = rng or random.Random()
    by_broker: dict[int, list[int]] = {}
    for node in sorted(nodes):
        by_broker.setdefault(broker_of(node), []).append(node)
    brokers = sorted(by_broker)
    count = len(brokers)
    if replication_factor > count:
        raise PlacementError(f"replication factor {replication_factor} is larger than the "
                             f"{count} live broker(s)")
    start, shift = rng.randrange(count), rng.randrange(count)
    next_leader = {b: rng.randrange(len(by_broker[b])) for b in brokers}
    next_follower = {b: rng.randrange(len(by_broker[b])) for b in brokers}
    out = {}
    for p in range(partitions):
        if p and p % count == 0:
            shift += 1
        first = (start + p) % count
        order = [first] + [_follower(first, shift, j, count)
                           for j in range(replication_factor - 1)]
        replicas = []
        for i, index in enumerate(order):
            broker = brokers[index]
            turn = next_leader if i == 0 else next_follower
            workers = by_broker[broker]
            replicas.append(workers[turn[broker] % len(workers)])
            turn[broker] += 1
        out[p] = replicas
    return out


def _follower(first: int, shift: int, j: int, count: int) -> int:
    """Kafka's replicaIndex: the j-th follower's broker, never the first's."""
    return (first + 1 + (shift + j) % (count - 1)) % count


def check_assignment(assignment: dict[int, list[int]], nodes) -> None:
    """PlacementError naming the problem in an explicit assignment (CreateTopics'
    `assignments`): partitions 0..n-1, each with replicas on distinct live brokers and
    all of one replication factor."""
    live = set(nodes)
    if sorted(assignment) != list(range(len(assignment))):
        raise PlacementError("assignments must name partitions 0..n-1 once each")
    factors = {len(r) for r in assignment.values()}
    if len(factors) != 1 or 0 in factors:
        raise PlacementError("every partition needs the same, nonzero number of replicas")
    for p, replicas in sorted(assignment.items()):
        unknown = [n for n in replicas if n not in live]
        if unknown:
            raise PlacementError(f"partition {p}: node(s) {unknown} are not registered")
        hosts = [broker_of(n) for n in replicas]
        if len(set(hosts)) != len(hosts):
            raise PlacementError(f"partition {p}: replicas {replicas} share a broker (a "
                                 "broker's workers share one host)")
