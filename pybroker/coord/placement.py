"""Where a new partition's replicas go (Kafka's AdminUtils.assignReplicasToBrokers,
without racks).

A broker is a host: node id = broker id * NODES_PER_BROKER + worker index, and every
worker of a broker shares its disk, so the replicas of one partition go on distinct
brokers. Over brokers, partition p's first replica (its preferred leader) goes on the
broker after the previous partition's, from a random start, and the others follow it
with a shift that grows every len(brokers) partitions, so leaders and followers are
both even over brokers. Within a broker, its replicas take its workers round-robin,
leaders and followers each from their own random start, so they are even over workers.
With a rack for every broker (broker.rack), the brokers are first ordered so racks
alternate (Kafka's rack-alternated list), and a partition's followers skip brokers on
racks it already uses until every rack holds one of its replicas.
"""
from __future__ import annotations

import random

NODES_PER_BROKER = 100


def broker_of(node: int) -> int:
    return node // NODES_PER_BROKER


class PlacementError(ValueError):
    """A replication factor or assignment that cannot be placed (INVALID_REPLICATION_FACTOR
    / INVALID_REPLICA_ASSIGNMENT)."""


def _rack_alternated(brokers: list[int], rack_of: dict[int, str]) -> list[int]:
    """Brokers ordered so that consecutive ones are on different racks where possible:
    the first broker of each rack, then the second of each, ..."""
    by_rack: dict[str, list[int]] = {}
    for b in brokers:
        by_rack.setdefault(rack_of[b], []).append(b)
    racks = [by_rack[r] for r in sorted(by_rack)]
    return [rack[i] for i in range(max(len(r) for r in racks)) for rack in racks
            if i < len(rack)]


def assign(nodes, partitions: int, replication_factor: int,
           rng: random.Random | None = None,
           racks: dict[int, str] | None = None) -> dict[int, list[int]]:
    """{partition: [replica nodes, preferred leader first]} over the live `nodes`;
    racks (node -> rack) is used when every broker has one."""
    rng = rng or random.Random()
    by_broker: dict[int, list[int]] = {}
    for node in sorted(nodes):
        by_broker.setdefault(broker_of(node), []).append(node)
    brokers = sorted(by_broker)
    rack_of = {broker_of(n): r for n, r in (racks or {}).items() if n in set(nodes)}
    if rack_of and all(b in rack_of for b in brokers):
        brokers = _rack_alternated(brokers, rack_of)
    else:
        rack_of = {}
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
        if rack_of:
            order = _spread_racks(order, first, shift, count, brokers, rack_of)
        replicas = []
        for i, index in enumerate(order):
            broker = brokers[index]
            turn = next_leader if i == 0 else next_follower
            workers = by_broker[broker]
            replicas.append(workers[turn[broker] % len(workers)])
            turn[broker] += 1
        out[p] = replicas
    return out


def _spread_racks(order: list[int], first: int, shift: int, count: int,
                  brokers: list[int], rack_of: dict[int, str]) -> list[int]:
    """The followers in Kafka's shifted order, but a broker on a rack already used is
    taken only once every rack holds a replica (or no other broker is left)."""
    rack_count = len(set(rack_of.values()))
    chosen, used = [first], {rack_of[brokers[first]]}
    candidates = [_follower(first, shift, j, count) for j in range(count - 1)]
    while len(chosen) < len(order):
        pick = next((c for c in candidates if c not in chosen and
                     (rack_of[brokers[c]] not in used or len(used) == rack_count)), None)
        if pick is None:
            pick = next(c for c in candidates if c not in chosen)
        chosen.append(pick)
        used.add(rack_of[brokers[pick]])
    return chosen


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
