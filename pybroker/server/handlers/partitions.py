"""CreatePartitions (key 37): raise a topic's partition count.

Per topic, in this order (Kafka's KafkaApis.handleCreatePartitionsRequest and
AdminZkClient.createPartitions):

0. The whole request: the partitions it would add, summed over its topics (count
   minus the current count, or the assignments given if more), against the broker
   setting max.partitions.per.request: POLICY_VIOLATION for every topic when over,
   before anything is built, as CreateTopics does.
1. A name given twice: INVALID_REQUEST for every occurrence, none changed (Kafka's
   "Duplicate topic in request").
2. A topic not in this node's view (never created, or being deleted: a topic marked
   for deletion leaves the view at once): UNKNOWN_TOPIC_OR_PARTITION.
3. count not above the current count: INVALID_PARTITIONS (partitions are never
   removed).
4. assignments (null: the broker places them): one per new partition, each of the
   topic's replication factor (partition 0's replica count), on distinct live
   brokers (placement.check_assignment's rules, for the new partitions only):
   INVALID_REPLICA_ASSIGNMENT otherwise. Without assignments the new partitions are
   placed by placement.assign over the live nodes; a replication factor above the
   live brokers is INVALID_REPLICATION_FACTOR.
5. validate_only: the answer of a real change, nothing written.

The write is Registry.add_partitions on the ZooKeeper thread (admin.zk_call): one
transaction sets the topic's partition map by compare-and-set on its znode version
and creates the new partitions' state znodes. A topic changed meanwhile (another
CreatePartitions came first: BadVersionError) answers INVALID_PARTITIONS naming the
race (the count is absolute, so asking again is safe: it either adds what is still
missing or says the topic already has that many); one deleted meanwhile
(NoNodeError) UNKNOWN_TOPIC_OR_PARTITION. The answer waits (bounded by timeout_ms
and admin.MAX_CLUSTER_WAIT_S) until this node's view shows every new partition
served by its leader: every node's LogManager opens the replicas the view assigns it.
"""
from __future__ import annotations

import logging
from collections import Counter

from kazoo.exceptions import BadVersionError, NoNodeError

from pybroker.coord import placement
from pybroker.protocol import ErrorCode
from pybroker.server.handlers import admin

log = logging.getLogger("pybroker.server")


def _new_count(state, topic: dict) -> int:
    """Partitions this entry would add, as declared (for the request's bound)."""
    declared = len(topic["assignments"] or ())
    parts = state.topics.get(topic["name"])
    if parts is None:
        return declared
    return max(topic["count"] - len(parts), declared, 0)


def _check_assignments(assignments: list, first: int, factor: int, nodes):
    """(error code, message, {partition: replicas} or None) of explicit assignments
    for partitions first, first+1, ..."""
    plan = {}
    for i, a in enumerate(assignments):
        p, replicas = first + i, list(a["broker_ids"])
        if len(replicas) != factor:
            return (ErrorCode.INVALID_REPLICA_ASSIGNMENT, f"partition {p}: {len(replicas)} "
                    f"replica(s) {replicas}; the topic's replication factor is {factor}",
                    None)
        try:  # the rules of one partition; the message names partition 0, so: ours
            placement.check_assignment({0: replicas}, nodes)
        except placement.PlacementError as exc:
            message = str(exc)
            if message.startswith("partition 0:"):
                message = f"partition {p}:" + message[len("partition 0:"):]
            return ErrorCode.INVALID_REPLICA_ASSIGNMENT, message, None
        plan[p] = replicas
    return ErrorCode.NONE, None, plan


def plan_partitions(worker, topic: dict):
    """(error code, message, {new partition: replicas} or None) for one topic entry
    that is named once (rules 2-4 of the module doc)."""
    state = worker.cluster
    name, count = topic["name"], topic["count"]
    parts = state.topics.get(name)
    if parts is None:
        return (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"topic {name!r} does not exist (or is being deleted)", None)
    current = len(parts)
    if count <= current:
        what = ("already has" if count == current
                else f"has more than the requested {count}:")
        return (ErrorCode.INVALID_PARTITIONS, f"topic {name!r} {what} {current} "
                f"partition(s); a partition count can only grow", None)
    first = state.partition(name, 0)
    factor = len(first.replicas) if first is not None else 1
    nodes = sorted(state.nodes) or [worker.node_id]
    assignments = topic["assignments"]
    if assignments is not None:
        if len(assignments) != count - current:
            return (ErrorCode.INVALID_REPLICA_ASSIGNMENT, f"increasing topic {name!r} from "
                    f"{current} to {count} partition(s) needs {count - current} "
                    f"assignment(s); {len(assignments)} given", None)
        return _check_assignments(assignments, current, factor, nodes)
    try:
        placed = placement.assign(nodes, count - current, factor)
    except placement.PlacementError as exc:
        return ErrorCode.INVALID_REPLICATION_FACTOR, f"topic {name!r}: {exc}", None
    return ErrorCode.NONE, None, {current + i: r for i, r in placed.items()}


def _add_all(registry, plans: list) -> list:
    """On the ZooKeeper thread: per (topic, assignment) None (added) or the exception
    that stopped it (one failure does not stop the rest)."""
    outcomes = []
    for name, assignment in plans:
        try:
            registry.add_partitions(name, assignment)
            outcomes.append(None)
        except Exception as exc:  # noqa: BLE001 - sorted out on the loop, per topic
            outcomes.append(exc)
    return outcomes


def _outcome(worker, name: str, result) -> tuple[ErrorCode, str | None]:
    if result is None:
        return ErrorCode.NONE, None
    if isinstance(result, BadVersionError):
        return (ErrorCode.INVALID_PARTITIONS, f"topic {name!r} changed while its partitions "
                "were being added (another CreatePartitions came first); ask again: the "
                "count is absolute")
    if isinstance(result, NoNodeError):
        return (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"topic {name!r} was deleted while its partitions were being added")
    return admin.zk_error(worker, f"add of partitions to topic {name!r}", result)


def handle(ctx, request):
    worker = ctx.worker
    topics = request["topics"]
    results = [{"name": t["name"], "error_code": ErrorCode.NONE, "error_message": None}
               for t in topics]
    response = {"throttle_time_ms": 0, "results": results}
    limit = worker.config["max.partitions.per.request"]
    total = sum(_new_count(worker.cluster, t) for t in topics)
    if total > limit:
        message = (f"excessively large number of partitions per request: {total} "
                   f"requested, limit {limit} (max.partitions.per.request)")
        for r in results:
            r["error_code"], r["error_message"] = ErrorCode.POLICY_VIOLATION, message
        return response
    twice = {n for n, k in Counter(t["name"] for t in topics).items() if k > 1}
    plans = []   # (name, {partition: replicas}), and the result each answers in
    answers = []
    for topic, result in zip(topics, results):
        if topic["name"] in twice:
            result["error_code"] = ErrorCode.INVALID_REQUEST
            result["error_message"] = f"topic {topic['name']!r} appears twice in the request"
            continue
        code, message, plan = plan_partitions(worker, topic)
        result["error_code"], result["error_message"] = code, message
        if plan is not None:
            plans.append((topic["name"], plan))
            answers.append(result)
    if not plans or request["validate_only"]:
        return response
    wait_s = min(max(0, request["timeout_ms"]) / 1000, admin.MAX_CLUSTER_WAIT_S)

    def answer(outcome):
        code, message, added = outcome
        new = []
        for (name, plan), result, done in zip(plans, answers, added or [None] * len(plans)):
            if code:
                result["error_code"], result["error_message"] = code, message
                continue
            result["error_code"], result["error_message"] = _outcome(worker, name, done)
            if result["error_code"] == ErrorCode.NONE:
                new += [(name, p) for p in plan]
                log.info("node=%d topic=%s partitions %d..%d added: %s", worker.node_id,
                         name, min(plan), max(plan), [plan[p] for p in sorted(plan)])
        if not new:
            return response
        return worker.when_cluster(lambda st: all(st.served(t, p) for t, p in new),
                                   wait_s, response)
    what = f"add of partitions to {len(plans)} topic(s)"
    return admin.chain(admin.zk_call(worker, what, _add_all, worker.registry, plans), answer)
