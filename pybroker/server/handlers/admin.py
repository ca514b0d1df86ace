"""CreateTopics (key 19) and DeleteTopics (key 20), and topic auto-creation.

Topics without replication: a replication factor other than 1 (or -1, the default) is
refused. Partitions are spread round-robin over the live nodes from a random start,
and the assignment is written to ZooKeeper, from which every node opens its share.
"""
from __future__ import annotations

import random
import re

from pybroker.config import topic_config_error
from pybroker.coord.registry import TopicExists
from pybroker.protocol import ErrorCode

MAX_TOPIC_NAME = 249
_LEGAL_NAME = re.compile(r"^[a-zA-Z0-9._-]+$")


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


def create_topic(worker, name: str, partitions: int, configs: dict,
                 validate_only: bool = False) -> tuple[ErrorCode, str | None]:
    """Validate and register a topic; (error code, message)."""
    problem = topic_name_error(name)
    if problem:
        return ErrorCode.INVALID_TOPIC_EXCEPTION, problem
    if partitions < 1:
        return ErrorCode.INVALID_PARTITIONS, f"num_partitions must be >= 1, got {partitions}"
    problem = topic_config_error(configs)
    if problem:
        return ErrorCode.INVALID_CONFIG, problem
    if name in worker.cluster.topics:
        return ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists"
    nodes = sorted(worker.cluster.nodes) or [worker.node_id]
    start = random.randrange(len(nodes))
    assignment = {p: nodes[(start + p) % len(nodes)] for p in range(partitions)}
    if validate_only:
        return ErrorCode.NONE, None
    try:
        worker.registry.create_topic(name, assignment, configs)
    except TopicExists:
        return ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists"
    return ErrorCode.NONE, None


def handle_create_topics(ctx, request) -> dict:
    worker = ctx.worker
    results, created = [], []
    for topic in request["topics"]:
        name = topic["name"]
        partitions = topic["num_partitions"]
        if partitions == -1:
            partitions = worker.config["num.partitions"]
        if topic["replication_factor"] not in (-1, 1):
            code, msg = (ErrorCode.INVALID_REPLICATION_FACTOR,
                         f"replication factor {topic['replication_factor']}: this broker "
                         "does not replicate; use 1")
        elif topic["assignments"]:
            code, msg = ErrorCode.INVALID_REQUEST, "manual replica assignment is not supported"
        else:
            configs = {c["name"]: c["value"] for c in topic["configs"]}
            code, msg = create_topic(worker, name, partitions, configs,
                                     request.get("validate_only", False))
            if code == ErrorCode.NONE and not request.get("validate_only", False):
                created.append(name)
        results.append({"name": name, "error_code": code, "error_message": msg})
    response = {"throttle_time_ms": 0, "topics": results}
    if not created:
        return response
    timeout = max(0, request["timeout_ms"]) / 1000
    return worker.when_cluster(lambda st: all(t in st.topics for t in created),
                               min(timeout, 10.0), response)


def handle_delete_topics(ctx, request) -> dict:
    worker = ctx.worker
    results, deleted = [], []
    for name in request["topic_names"]:
        if worker.registry.delete_topic(name):
            code = ErrorCode.NONE
            deleted.append(name)
        else:
            code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        results.append({"name": name, "error_code": code})
    response = {"throttle_time_ms": 0, "responses": results}
    if not deleted:
        return response
    timeout = max(0, request["timeout_ms"]) / 1000
    return worker.when_cluster(lambda st: not any(t in st.topics for t in deleted),
                               min(timeout, 10.0), response)
