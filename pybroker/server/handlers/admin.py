"""CreateTopics (key 19) and DeleteTopics (key 20), topic auto-creation, and the one way
the handlers call ZooKeeper (`zk_call`).

Replicas are placed on distinct brokers (pybroker.coord.placement) or as the request's
explicit assignment says; the replication factor -1 means default.replication.factor.
A factor larger than the live brokers answers INVALID_REPLICATION_FACTOR. The
assignment and each partition's first state (first replica leading) are written to
ZooKeeper, from which every node opens its replicas.

Every count a client declares is checked before anything is built from it: the
partitions of one request (the sum over its topics, as Kafka's controller counts
them) against the broker setting `max.partitions.per.request`, and the config
entries of a topic against MAX_CONFIG_ENTRIES. ZooKeeper is only ever called on the
worker's ZooKeeper thread (Worker.run_zk), so a slow or lost ZooKeeper delays the
admin requests that need it, never the event loop and the other clients.
"""
from __future__ import annotations

import asyncio
import logging
import re
import uuid

from kazoo.exceptions import ConnectionLoss, OperationTimeoutError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError

from pybroker.config import topic_config_error
from pybroker.coord import placement
from pybroker.coord.registry import TopicExists
from pybroker.protocol import ErrorCode
from pybroker.protocol.types import ZERO_UUID
from pybroker.server.handlers.common import topic_config_entries

log = logging.getLogger("pybroker.server")

MAX_TOPIC_NAME = 249
_LEGAL_NAME = re.compile(r"^[a-zA-Z0-9._-]+$")
# A topic has about ten settings one can override (config.TOPIC_SETTINGS); a thousand
# entries is no client's mistake but garbage, refused before a dict is built from it.
MAX_CONFIG_ENTRIES = 1000
# Waiting for the cluster view to show a created or deleted topic: Kafka's default
# CreateTopics timeout is 60 s, but a client's own request timeout is often 30 s, and
# the view normally follows ZooKeeper within milliseconds.
MAX_CLUSTER_WAIT_S = 10.0
# ZooKeeper unreachable: kazoo's calls wait for a reconnect with no deadline, so a
# call still pending after the session timeout is answered as timed out (the call
# itself goes on and may still take effect later, as a timed-out Kafka request may).
# Connection loss is retriable (Kafka's answer when the controller does not respond
# in time is REQUEST_TIMED_OUT); anything else is UNKNOWN_SERVER_ERROR.
_RETRIABLE_ZK_ERRORS = (ConnectionLoss, OperationTimeoutError, SessionExpiredError,
                        KazooTimeoutError)


INTERNAL_TOPICS = frozenset({"__consumer_offsets", "__transaction_state",
                             "__share_group_state"})   # Kafka's Topic.isInternal


def topic_name_error(name) -> str | None:
    """Why Kafka would refuse this topic name, or None."""
    if not name:
        return "topic name is empty"
    if name in (".", ".."):
        return f"topic name {name!r} is not allowed"
    if len(name) > MAX_TOPIC_NAME:
        return f"topic name is {len(name)} characters; at most {MAX_TOPIC_NAME} allowed"
    if not _LEGAL_NAME.match(name):
        return f"topic name {name!r} has characters outside [a-zA-Z0-9._-]"
    return None


# --- ZooKeeper ---------------------------------------------------------------------

def zk_call(worker, what: str, fn, *args) -> asyncio.Future:
    """fn(*args) on the worker's ZooKeeper thread; a Future of (error code, message,
    result) that never holds an exception: (NONE, None, result) on success, else
    (REQUEST_TIMED_OUT or UNKNOWN_SERVER_ERROR, message, None), logged once. Resolves
    at the latest zookeeper.session.timeout.ms after the call is queued."""
    out = worker.loop.create_future()
    limit_s = worker.config["zookeeper.session.timeout.ms"] / 1000

    def fail(code: ErrorCode, message: str) -> None:
        if not out.done():
            log.error("node=%d ZooKeeper %s failed: %s", worker.node_id, what, message)
            out.set_result((code, message, None))

    def done(f: asyncio.Future) -> None:
        timer.cancel()
        if out.done():
            return
        exc = f.exception()
        if exc is None:
            out.set_result((ErrorCode.NONE, None, f.result()))
        else:
            fail(*_failure(what, exc))

    timer = worker.loop.call_later(limit_s, fail, ErrorCode.REQUEST_TIMED_OUT,
                                   f"no answer from ZooKeeper within {limit_s:g} s "
                                   "(zookeeper.session.timeout.ms); the change may still "
                                   "happen")
    worker.run_zk(fn, *args).add_done_callback(done)
    return out


def chain(fut: asyncio.Future, fn) -> asyncio.Future:
    """A Future of fn(fut.result()); fn's own Future, if it returns one, is followed."""
    out = fut.get_loop().create_future()

    def step(f):
        if out.done():
            return  # cancelled: its connection closed
        try:
            value = fn(f.result())
        except Exception as exc:  # noqa: BLE001 - the connection logs it as a handler error
            out.set_exception(exc)
            return
        if isinstance(value, asyncio.Future):
            value.add_done_callback(follow)
        else:
            out.set_result(value)

    def follow(g):
        if out.done():
            return
        if g.exception() is not None:
            out.set_exception(g.exception())
        else:
            out.set_result(g.result())
    fut.add_done_callback(step)
    return out


def _create_all(registry, plans: list) -> list:
    """On the ZooKeeper thread: create each planned topic; per topic its topic ID
    (created), TopicExists, or the exception that stopped it (one failure does not stop
    the rest)."""
    outcomes = []
    for name, assignment, configs in plans:
        try:
            outcomes.append(registry.create_topic(name, assignment, configs))
        except Exception as exc:  # noqa: BLE001 - sorted out on the loop, per topic
            outcomes.append(exc)
    return outcomes


def _delete_all(registry, names: list) -> list:
    """On the ZooKeeper thread: per name True (deleted), False (unknown) or the
    exception that stopped it."""
    outcomes = []
    for name in names:
        try:
            outcomes.append(registry.delete_topic(name))
        except Exception as exc:  # noqa: BLE001 - sorted out on the loop, per topic
            outcomes.append(exc)
    return outcomes


def _failure(what: str, exc: BaseException) -> tuple[ErrorCode, str]:
    name = type(exc).__name__
    if isinstance(exc, _RETRIABLE_ZK_ERRORS):
        return ErrorCode.REQUEST_TIMED_OUT, f"ZooKeeper unreachable ({name}); retry"
    return ErrorCode.UNKNOWN_SERVER_ERROR, f"ZooKeeper {what} failed: {name}: {exc}"


def zk_error(worker, what: str, exc: Exception) -> tuple[ErrorCode, str]:
    """The error code and message of one failed ZooKeeper write (logged)."""
    log.error("node=%d ZooKeeper %s failed: %r", worker.node_id, what, exc)
    return _failure(what, exc)


# --- creating ----------------------------------------------------------------------

def plan_topic(worker, name: str, partitions: int, configs: dict,
               replication_factor: int = -1, assignment: dict | None = None):
    """Validate a new topic: (error code, message, assignment or None). `partitions`
    must already be within max.partitions.per.request; an explicit `assignment`
    ({partition: [nodes]}) replaces the placement."""
    problem = topic_name_error(name)
    if problem:
        return ErrorCode.INVALID_TOPIC_EXCEPTION, problem, None
    if partitions < 1:
        return (ErrorCode.INVALID_PARTITIONS,
                f"num_partitions must be >= 1 (or -1 for num.partitions), got {partitions}",
                None)
    problem = topic_config_error(configs)
    if problem:
        return ErrorCode.INVALID_CONFIG, problem, None
    if name in worker.cluster.topics:
        return ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists", None
    nodes = sorted(worker.cluster.nodes) or [worker.node_id]
    if assignment is not None:
        try:
            placement.check_assignment(assignment, nodes)
        except placement.PlacementError as exc:
            return ErrorCode.INVALID_REPLICA_ASSIGNMENT, str(exc), None
        return ErrorCode.NONE, None, assignment
    if replication_factor == -1:
        replication_factor = worker.config["default.replication.factor"]
    if replication_factor < 1:
        return (ErrorCode.INVALID_REPLICATION_FACTOR,
                f"replication factor must be >= 1 (or -1 for default.replication.factor), "
                f"got {replication_factor}", None)
    try:
        return ErrorCode.NONE, None, placement.assign(nodes, partitions, replication_factor,
                                                      racks=worker.cluster.racks)
    except placement.PlacementError as exc:
        return ErrorCode.INVALID_REPLICATION_FACTOR, str(exc), None


def create_topics(worker, plans: list) -> asyncio.Future:
    """Write planned topics [(name, assignment, configs)] to ZooKeeper; a Future of
    {name: (error code, message, topic ID or None)}, never of an exception."""
    def sort_out(outcome):
        code, message, results = outcome
        if code:
            return {name: (code, message, None) for name, _, _ in plans}
        answers = {}
        for (name, _, _), result in zip(plans, results):
            if isinstance(result, uuid.UUID):
                answers[name] = (ErrorCode.NONE, None, result)
            elif isinstance(result, TopicExists):
                answers[name] = (ErrorCode.TOPIC_ALREADY_EXISTS,
                                 f"topic {name!r} already exists", None)
            else:
                answers[name] = (*zk_error(worker, f"create of topic {name!r}", result), None)
        return answers
    what = f"create of {len(plans)} topic(s)"
    return chain(zk_call(worker, what, _create_all, worker.registry, plans), sort_out)


def requested_partitions(topics: list, default: int) -> int:
    """Partitions a CreateTopics request asks for in all, counted as Kafka's controller
    does: num_partitions (-1: the default), or the assignments given."""
    total = 0
    for topic in topics:
        if topic["assignments"]:
            total += len(topic["assignments"])
        elif topic["num_partitions"] == -1:
            total += default
        elif topic["num_partitions"] > 0:
            total += topic["num_partitions"]
    return total


def _check_topic(worker, topic: dict, seen: set):
    """(error code, message, plan or None) for one CreatableTopic."""
    name = topic["name"]
    if name in INTERNAL_TOPICS:   # Kafka's own state: never an ordinary topic
        return (ErrorCode.INVALID_REQUEST, f"Creation of internal topic {name} is "
                "prohibited.", None)
    partitions = topic["num_partitions"]
    if partitions == -1:
        partitions = worker.config["num.partitions"]
    if name in seen:
        return ErrorCode.INVALID_REQUEST, f"topic {name!r} appears twice in the request", None
    assignment = None
    if topic["assignments"]:  # bounded by max.partitions.per.request (counted before)
        if topic["num_partitions"] != -1 or topic["replication_factor"] != -1:
            return (ErrorCode.INVALID_REQUEST, "with assignments, num_partitions and "
                    "replication_factor must be -1", None)
        assignment = {a["partition_index"]: list(a["broker_ids"])
                      for a in topic["assignments"]}
        if len(assignment) != len(topic["assignments"]):
            return (ErrorCode.INVALID_REPLICA_ASSIGNMENT, "a partition is assigned twice",
                    None)
        partitions = len(assignment)
    if len(topic["configs"]) > MAX_CONFIG_ENTRIES:
        return (ErrorCode.INVALID_CONFIG, f"{len(topic['configs'])} config entries; at most "
                f"{MAX_CONFIG_ENTRIES} allowed", None)
    configs = {c["name"]: c["value"] for c in topic["configs"]}
    code, message, assignment = plan_topic(worker, name, partitions, configs,
                                           topic["replication_factor"], assignment)
    return code, message, (name, assignment, configs) if assignment is not None else None


def handle_create_topics(ctx, request):
    worker = ctx.worker
    topics = request["topics"]
    limit = worker.config["max.partitions.per.request"]
    total = requested_partitions(topics, worker.config["num.partitions"])
    if total > limit:
        # Kafka's controller refuses the whole request (POLICY_VIOLATION, "Excessively
        # large number of partitions per request"), before building anything.
        message = (f"excessively large number of partitions per request: {total} "
                   f"requested, limit {limit} (max.partitions.per.request)")
        return {"throttle_time_ms": 0, "topics": [
            {"name": t["name"], "error_code": ErrorCode.POLICY_VIOLATION,
             "error_message": message} for t in topics]}
    results, plans, seen = [], [], set()
    for topic in topics:
        code, message, plan = _check_topic(worker, topic, seen)
        seen.add(topic["name"])
        results.append({"name": topic["name"], "error_code": code, "error_message": message})
        if plan is not None:
            plans.append(plan)
            if request.get("validate_only", False):   # v5+: what it would be
                _describe_created(worker, results[-1], plan)
    response = {"throttle_time_ms": 0, "topics": results}
    if not plans or request.get("validate_only", False):
        return response
    wait_s = min(max(0, request["timeout_ms"]) / 1000, MAX_CLUSTER_WAIT_S)
    planned = {plan[0]: plan for plan in plans}

    def answer(outcomes: dict):
        created = []
        for result in results:
            if result["error_code"] == ErrorCode.NONE and result["name"] in outcomes:
                code, message, topic_id = outcomes[result["name"]]
                result.update(error_code=code, error_message=message)
                if code == ErrorCode.NONE:
                    result["topic_id"] = topic_id
                    _describe_created(worker, result, planned[result["name"]])
                    created.append(result["name"])
        if not created:
            return response
        return worker.when_cluster(lambda st: all(st.topic_served(t) for t in created),
                                   wait_s, response)
    return chain(create_topics(worker, plans), answer)


def _describe_created(worker, result: dict, plan) -> None:
    """v5+ (KIP-525): a created topic's partitions, replication factor and configs."""
    name, assignment, configs = plan
    result["num_partitions"] = len(assignment)
    result["replication_factor"] = len(next(iter(assignment.values())))
    entries = topic_config_entries(worker, name, overrides={
        k: v for k, v in configs.items() if v is not None})
    result["configs"] = [{"name": e["name"], "value": e["value"], "read_only": False,
                          "config_source": e["config_source"], "is_sensitive": False}
                         for e in entries]


# --- deleting ----------------------------------------------------------------------

def _named_for_deletion(worker, request, version: int) -> list[dict]:
    """The DeleteTopics results to fill, one per topic asked for: v6 names a topic by
    name or by topic ID (not both); an ID this node does not know is UNKNOWN_TOPIC_ID."""
    if version < 6:
        return [{"name": name, "error_code": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}
                for name in request["topic_names"] or []]
    results = []
    for topic in request["topics"]:
        name, topic_id = topic["name"], topic["topic_id"]
        if name is not None and topic_id != ZERO_UUID:
            code, message = ErrorCode.INVALID_REQUEST, "give a topic name or an ID, not both"
        elif name is None:
            name = worker.cluster.topic_names.get(topic_id)
            code, message = ((ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, None) if name else
                             (ErrorCode.UNKNOWN_TOPIC_ID, f"no topic has ID {topic_id}"))
        else:
            code, message = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, None
        results.append({"name": name, "topic_id": worker.cluster.topic_ids.get(name, topic_id)
                        if name else topic_id, "error_code": code, "error_message": message})
    return results


def handle_delete_topics(ctx, request):
    worker = ctx.worker
    results = _named_for_deletion(worker, request, ctx.api_version)
    asked = {}   # a dict: ordered, and no quadratic search for duplicates
    known = worker.cluster.topics
    for r in results:
        # As Kafka does, a topic this node does not know is unknown without a ZooKeeper
        # round trip: the ZooKeeper calls of one request are bounded by the topics that
        # exist, whatever count of names it declares.
        if r["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION and r["name"] in known:
            asked[r["name"]] = None
    asked = list(asked)
    response = {"throttle_time_ms": 0, "responses": results}
    if not asked:
        return response
    wait_s = min(max(0, request["timeout_ms"]) / 1000, MAX_CLUSTER_WAIT_S)

    def answer(outcome):
        code, message, deleted = outcome
        codes = {}
        for name, result in zip(asked, deleted or [code] * len(asked)):
            if isinstance(result, Exception):
                codes[name] = zk_error(worker, f"delete of topic {name!r}", result)[0]
            elif isinstance(result, ErrorCode):
                codes[name] = result
            else:
                codes[name] = (ErrorCode.NONE if result
                               else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        for r in results:
            if r["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
                r["error_code"] = codes.get(r["name"], r["error_code"])
        gone = [n for n, c in codes.items() if c == ErrorCode.NONE]
        if not gone:
            return response
        return worker.when_cluster(lambda st: not any(t in st.topics for t in gone),
                                   wait_s, response)
    what = f"delete of {len(asked)} topic(s)"
    return chain(zk_call(worker, what, _delete_all, worker.registry, asked), answer)
