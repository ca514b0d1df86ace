"""AlterPartitionReassignments (key 45) and ListPartitionReassignments (key 46).

Alter. The rules per partition are coord/reassignment.py's (alter, check_target);
before them, per request:
- a topic not in this node's view (never created, or being deleted):
  UNKNOWN_TOPIC_OR_PARTITION for each of its partitions;
- a partition named twice: INVALID_REQUEST at each place, nothing changed for it.
Each topic is then one Registry.update_topic on the ZooKeeper thread: a
compare-and-set of its znode that re-applies the rules to the content it reads, so
a reassignment racing another (or the controller finishing one) decides on what is
in ZooKeeper, not on this node's view. Replica ids are checked against the nodes
registered in the view. The answer comes once the reassignment has started, not
finished (Kafka's meaning): after the write, bounded by timeout_ms and
admin.MAX_CLUSTER_WAIT_S, until this node's view shows each partition's new replica
set. The top-level error is NONE; a ZooKeeper failure is answered per partition.
Any node answers it (Kafka's admin client sends it to the controller).

List. The partitions of the view with a reassignment under way: every one when
`topics` is null, else those named (a named partition with none under way, or
unknown, is left out, as Kafka does).
"""
from __future__ import annotations

import logging
from collections import Counter

from kazoo.exceptions import NoNodeError

from pybroker.coord import reassignment
from pybroker.protocol import ErrorCode
from pybroker.server.handlers import admin

log = logging.getLogger("pybroker.server")


def _alter_all(registry, plans: list) -> list:
    """On the ZooKeeper thread: per (topic, change) True/False (written or not) or the
    exception that stopped it."""
    outcomes = []
    for topic, change in plans:
        try:
            outcomes.append(registry.update_topic(topic, change))
        except Exception as exc:  # noqa: BLE001 - sorted out on the loop, per topic
            outcomes.append(exc)
    return outcomes


class _TopicChange:
    """The change of one topic's znode; keeps the outcomes and content of its last
    run (update_topic may run it more than once)."""

    def __init__(self, requests: dict, nodes, allow_rf_change: bool):
        self.requests, self.nodes, self.allow = requests, nodes, allow_rf_change
        self.outcomes: dict = {}
        self.content: dict | None = None

    def __call__(self, znode: dict) -> dict | None:
        self.content, self.outcomes = reassignment.alter(znode, self.requests, self.nodes,
                                                         self.allow)
        return self.content

    def expected(self, p: int):
        """The (replicas, adding, removing) the write gave partition p, or None."""
        if self.content is None:
            return None
        key = str(p)
        return (tuple(self.content["partitions"][key]),
                tuple(self.content.get("adding_replicas", {}).get(key, ())),
                tuple(self.content.get("removing_replicas", {}).get(key, ())))


def handle_alter(ctx, request):
    worker = ctx.worker
    state = worker.cluster
    allow = request.get("allow_replication_factor_change", True)
    named = Counter((t["name"], p["partition_index"]) for t in request["topics"]
                    for p in t["partitions"])
    answers: dict = {}   # (topic, p) -> Outcome
    changes: dict = {}   # topic -> _TopicChange
    for t in request["topics"]:
        name = t["name"]
        for p in t["partitions"]:
            key = (name, p["partition_index"])
            if name not in state.topics:
                answers[key] = reassignment.Outcome(
                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                    f"topic {name!r} does not exist (or is being deleted)")
            elif named[key] > 1:
                answers[key] = reassignment.Outcome(
                    ErrorCode.INVALID_REQUEST,
                    f"partition {name}-{key[1]} appears twice in the request")
            else:
                change = changes.setdefault(name, _TopicChange({}, set(state.nodes), allow))
                change.requests[key[1]] = p["replicas"]

    def response():
        topics = []
        for t in request["topics"]:
            rows = []
            for p in t["partitions"]:
                outcome = answers.get((t["name"], p["partition_index"]),
                                      reassignment.Outcome())
                rows.append({"partition_index": p["partition_index"],
                             "error_code": outcome.error_code,
                             "error_message": outcome.error_message})
            topics.append({"name": t["name"], "partitions": rows})
        return {"throttle_time_ms": 0, "allow_replication_factor_change": allow,
                "error_code": ErrorCode.NONE, "error_message": None, "responses": topics}

    if not changes:
        return response()
    plans = sorted(changes.items())
    wait_s = min(max(0, request["timeout_ms"]) / 1000, admin.MAX_CLUSTER_WAIT_S)

    def answer(outcome):
        code, message, written = outcome
        shown = []
        for (name, change), result in zip(plans, written or [None] * len(plans)):
            for p in change.requests:
                if code:
                    answers[(name, p)] = reassignment.Outcome(code, message)
                elif isinstance(result, NoNodeError):
                    answers[(name, p)] = reassignment.Outcome(
                        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                        f"topic {name!r} was deleted during the reassignment")
                elif isinstance(result, Exception):
                    answers[(name, p)] = reassignment.Outcome(*admin.zk_error(
                        worker, f"reassignment of topic {name!r}", result))
                else:
                    answers[(name, p)] = change.outcomes[p]
                    if result and not change.outcomes[p].error_code:
                        shown.append((name, p, change.expected(p), change.requests[p]))
                        log.info("node=%d tp=%s-%d reassignment to %s: replicas, adding, "
                                 "removing now %s", worker.node_id, name, p,
                                 change.requests[p], change.expected(p))
        if not shown:
            return response()
        return admin.chain(worker.when_cluster(
            lambda st: all(_shows(st, *s) for s in shown), wait_s, None),
            lambda _: response())
    what = f"reassignment of {len(plans)} topic(s)"
    return admin.chain(admin.zk_call(worker, what, _alter_all, worker.registry, plans), answer)


def _shows(state, topic: str, p: int, expected, target) -> bool:
    """The view has partition p as written (or finished already, or gone)."""
    info = state.partition(topic, p)
    if info is None:
        return True
    if (info.replicas, info.adding, info.removing) == expected:
        return True
    return target is not None and not reassignment.reassigning(info) and \
        info.replicas == tuple(target)


def handle_list(ctx, request):
    state = ctx.worker.cluster
    if request["topics"] is None:
        asked = sorted(tp for tp, info in state.partitions.items()
                       if reassignment.reassigning(info))
    else:
        asked = [(t["name"], p) for t in request["topics"] for p in t["partition_indexes"]]
    by_topic: dict = {}
    for topic, p in dict.fromkeys(asked):
        info = state.partition(topic, p)
        if info is None or not reassignment.reassigning(info):
            continue
        by_topic.setdefault(topic, []).append({
            "partition_index": p, "replicas": list(info.replicas),
            "adding_replicas": list(info.adding), "removing_replicas": list(info.removing)})
    return {"throttle_time_ms": 0, "error_code": ErrorCode.NONE, "error_message": None,
            "topics": [{"name": t, "partitions": parts} for t, parts in by_topic.items()]}
