"""Partition reassignment: moving a partition's replicas to other brokers (KIP-455 on
Kafka's ZooKeeper-based controller).

The topic znode holds the whole story, as Kafka 2.4+ writes it:

    /brokers/topics/<t>  {"version": 2, "partitions": {"0": RS, ...},
                          "adding_replicas": {"0": AR}, "removing_replicas": {"0": RR}}

Starting a reassignment of a partition from its original replicas ORS to the target
TRS writes RS = TRS + (ORS - TRS) (the target first, so its first replica is the
preferred leader), AR = TRS - ORS and RR = ORS - TRS. A request for a partition
already being reassigned replaces the old target: ORS is then RS - AR, and replicas
the old target added but the new one does not keep are dropped. A target equal to
ORS (or a reordering of it) is applied at once: nothing moves.

From then on every replica in RS is a replica like any other: each node opens the
replicas RS gives it (LogManager.sync), the new ones follow the leader from offset 0
and the leader adds each to the ISR once it has caught up (never one in RR: it is
on its way out). The controller finishes the move once every target replica is in
the ISR, in two compare-and-set writes:
1. the state znode: the leader stays if it is in TRS, else the first live in-sync
   target replica leads (epoch + 1, a clean election: it is in the ISR); the ISR
   keeps only target replicas;
2. then the topic znode: RS = TRS, the partition's AR and RR entries removed. Nodes
   no longer in RS close their replica and delete it.
A controller that stops between the two writes leaves a state the next controller
finds finished at step 1 and completes with step 2.

Cancelling (a null target) restores RS = ORS at once; the controller then drops the
replicas no longer in RS from the ISR and, if the leader was one of them, elects a
leader among the rest (controller.decide treats a leader outside RS as gone).

Invariants the rules keep: RS never holds two workers of one broker (a broker's
workers share one data directory, so a replica cannot move between workers of one
broker), and the ISR never loses a member before TRS is wholly in sync, so acks=all
keeps its meaning throughout.
"""
from __future__ import annotations

from typing import NamedTuple

from pybroker.coord.placement import broker_of
from pybroker.protocol import ErrorCode


class Outcome(NamedTuple):
    """The answer for one partition of a request."""

    error_code: ErrorCode = ErrorCode.NONE
    error_message: str | None = None


def original(replicas, adding) -> tuple:
    """ORS: the replicas before the reassignment under way (RS - AR)."""
    return tuple(n for n in replicas if n not in set(adding))


def target_of(info) -> tuple:
    """TRS of a partition (RS - RR; RS itself when no reassignment is under way)."""
    return tuple(n for n in info.replicas if n not in set(info.removing))


def reassigning(info) -> bool:
    return bool(info.adding or info.removing)


def check_target(target: list, ors: tuple, nodes, allow_rf_change: bool) -> Outcome:
    """Why target cannot replace ors (INVALID_REPLICA_ASSIGNMENT / _REPLICATION_FACTOR),
    or NONE."""
    bad = ErrorCode.INVALID_REPLICA_ASSIGNMENT
    if not target:
        return Outcome(bad, "the target replica list is empty (a null list cancels)")
    if len(set(target)) != len(target):
        return Outcome(bad, f"the target replicas {target} name a node twice")
    unknown = [n for n in target if n not in nodes]
    if unknown:
        return Outcome(bad, f"node(s) {unknown} of the target {target} are not registered")
    hosts = [broker_of(n) for n in target]
    if len(set(hosts)) != len(hosts):
        return Outcome(bad, f"the target replicas {target} share a broker (a broker's "
                       "workers share one host)")
    for n in target:
        for o in ors:
            if broker_of(n) == broker_of(o) and n != o:
                return Outcome(bad, f"node {n} is on the broker of current replica {o}: a "
                               "replica cannot move between workers of one broker (they "
                               "share its data directory)")
    if not allow_rf_change and len(target) != len(ors):
        return Outcome(ErrorCode.INVALID_REPLICATION_FACTOR, f"the target {target} changes "
                       f"the replication factor {len(ors)} (allow_replication_factor_change "
                       "is false)")
    return Outcome()


def _entries(znode: dict, key: str) -> dict:
    return {int(p): tuple(r) for p, r in znode.get(key, {}).items()}


def alter(znode: dict, requests: dict, nodes, allow_rf_change: bool = True):
    """Apply {partition: target list or None (cancel)} to a topic znode's content.
    (new content or None when nothing changes, {partition: Outcome}). Pure: called
    again when the compare-and-set of the write loses a race."""
    replicas = {int(p): tuple(r) for p, r in znode["partitions"].items()}
    adding, removing = _entries(znode, "adding_replicas"), _entries(znode, "removing_replicas")
    outcomes, changed = {}, False
    for p, target in requests.items():
        if p not in replicas:
            outcomes[p] = Outcome(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                                  f"partition {p} does not exist")
            continue
        ors = original(replicas[p], adding.get(p, ()))
        if target is None:
            if p not in adding and p not in removing:
                outcomes[p] = Outcome(ErrorCode.NO_REASSIGNMENT_IN_PROGRESS,
                                      f"partition {p} has no reassignment to cancel")
                continue
            new_rs, new_ar, new_rr = ors, (), ()
        else:
            outcome = check_target(list(target), ors, nodes, allow_rf_change)
            if outcome.error_code:
                outcomes[p] = outcome
                continue
            trs = tuple(target)
            new_rs = trs + tuple(n for n in ors if n not in trs)
            new_ar = tuple(n for n in trs if n not in ors)
            new_rr = tuple(n for n in ors if n not in trs)
        outcomes[p] = Outcome()
        if (new_rs, new_ar, new_rr) != (replicas[p], adding.get(p, ()), removing.get(p, ())):
            changed = True
            replicas[p] = new_rs
            _put(adding, p, new_ar)
            _put(removing, p, new_rr)
    if not changed:
        return None, outcomes
    return _content(znode, replicas, adding, removing), outcomes


def finish(znode: dict, p: int, target: tuple) -> dict | None:
    """The topic znode's content with partition p's reassignment to target completed
    (RS = TRS, no AR/RR), or None when it is not under way to that target any more."""
    replicas = {int(q): tuple(r) for q, r in znode["partitions"].items()}
    adding, removing = _entries(znode, "adding_replicas"), _entries(znode, "removing_replicas")
    if p not in replicas or (p not in adding and p not in removing):
        return None
    if tuple(n for n in replicas[p] if n not in removing.get(p, ())) != tuple(target):
        return None  # replaced or cancelled since the view the controller decided on
    replicas[p] = tuple(target)
    _put(adding, p, ())
    _put(removing, p, ())
    return _content(znode, replicas, adding, removing)


def _put(entries: dict, p: int, nodes: tuple) -> None:
    if nodes:
        entries[p] = nodes
    else:
        entries.pop(p, None)


def _content(znode: dict, replicas: dict, adding: dict, removing: dict) -> dict:
    out = {k: v for k, v in znode.items()
           if k not in ("partitions", "adding_replicas", "removing_replicas")}
    out["version"] = 2
    out["partitions"] = {str(p): list(r) for p, r in sorted(replicas.items())}
    if adding:
        out["adding_replicas"] = {str(p): list(r) for p, r in sorted(adding.items())}
    if removing:
        out["removing_replicas"] = {str(p): list(r) for p, r in sorted(removing.items())}
    return out


def settle(state, topic: str, p: int, info):
    """The controller's step for a partition being reassigned: the state znode that
    ends it (leader in TRS, ISR within TRS), the target tuple when the state is
    already that (write the topic znode), or None (not every target replica is in
    sync yet, or no live one can lead)."""
    if not reassigning(info) or info.version < 0:
        return None
    target = target_of(info)
    if not set(target) <= set(info.isr):
        return None
    leader = info.leader
    if leader not in target or not state.is_live(leader, topic, p):
        candidates = [n for n in target if state.is_live(n, topic, p)]
        if not candidates:
            return None
        leader = candidates[0]
    isr = tuple(n for n in info.isr if n in target)
    if leader == info.leader and isr == info.isr:
        return target
    return info._replace(leader=leader, isr=isr,
                         leader_epoch=info.leader_epoch + (leader != info.leader))
