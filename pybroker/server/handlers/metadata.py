"""Metadata (key 3): nodes, controller, cluster id, and topic/partition leaders; and
DescribeCluster (key 60), the same nodes for admin clients.

Every answer lists at least the answering node. Replicas, ISR and leader epoch come
from the partition's state znode; a replica that is not registered (or says it has
the partition offline) is listed in offline_replicas. Unknown topics are auto-created when the broker allows it
and the request does (v4+ flag; always in v0-v3): the topics are written on the
worker's ZooKeeper thread (admin.zk_call), and the answer waits until they are in this
node's view of ZooKeeper, so the client gets leaders at once. One request auto-creates
at most max.partitions.per.request partitions in all (the CreateTopics bound); a topic
beyond that, or whose ZooKeeper write failed, is answered LEADER_NOT_AVAILABLE or
REQUEST_TIMED_OUT, which clients retry.
"""
from __future__ import annotations

from pybroker.protocol import ErrorCode
from pybroker.protocol.types import ZERO_UUID
from pybroker.server.handlers.admin import (INTERNAL_TOPICS, chain, create_topics, plan_topic,
                                            topic_name_error)

NO_AUTHORIZED_OPERATIONS = -2147483648
AUTO_CREATE_WAIT_S = 5.0


def _brokers(worker, state) -> list[dict]:
    nodes = dict(state.nodes)
    nodes.setdefault(worker.node_id, (worker.advertised_host, worker.port))
    return [{"node_id": node, "host": host, "port": port, "rack": state.racks.get(node)}
            for node, (host, port) in sorted(nodes.items())]


def _live(worker, state, node: int, name: str, index: int) -> bool:
    """node is registered and has the partition's log usable: this node knows its own
    offline partitions, the others publish theirs in ZooKeeper."""
    if node == worker.node_id:
        return worker.partitions.error_for((name, index)) != ErrorCode.KAFKA_STORAGE_ERROR
    return state.is_live(node, name, index)


def _topic(worker, state, name: str) -> dict:
    partitions = []
    for index, leader in sorted(state.topics[name].items()):
        # A registered leader is given even while it opens the log (it answers the
        # retriable LEADER_NOT_AVAILABLE meanwhile), as clients expect a leader to stay
        # put; an offline partition is shown without one, as Kafka does.
        info = state.partition(name, index)
        alive = leader >= 0 and _live(worker, state, leader, name, index)
        partitions.append({
            "error_code": ErrorCode.NONE if alive else ErrorCode.LEADER_NOT_AVAILABLE,
            "partition_index": index, "leader_id": leader if alive else -1,
            "leader_epoch": info.leader_epoch, "replica_nodes": list(info.replicas),
            "isr_nodes": list(info.isr),
            "offline_replicas": [n for n in info.replicas
                                 if not _live(worker, state, n, name, index)]})
    return {"error_code": ErrorCode.NONE, "name": name,
            "topic_id": state.topic_ids.get(name, ZERO_UUID), "is_internal": False,
            "partitions": partitions, "topic_authorized_operations": NO_AUTHORIZED_OPERATIONS}


def _error_topic(name: str | None, code: ErrorCode, topic_id=ZERO_UUID) -> dict:
    return {"error_code": code, "name": name, "topic_id": topic_id, "is_internal": False,
            "partitions": [], "topic_authorized_operations": NO_AUTHORIZED_OPERATIONS}


def _by_name(worker, version: int, requested: list) -> tuple[list[str], list[dict]]:
    """The names asked for, and the answers of topics asked for by ID: v12+ may look a
    topic up by ID (KIP-516; an ID no topic has is UNKNOWN_TOPIC_ID); v10-v11 carry the
    field but, as in Kafka, may not use it."""
    names, by_id = [], []
    for t in requested:
        name, topic_id = t["name"], t.get("topic_id", ZERO_UUID)
        if name is not None and topic_id == ZERO_UUID:
            names.append(name)
        elif version < 12 or (name is not None and topic_id != ZERO_UUID):
            # a name may be null from v12 only
            by_id.append(_error_topic(name or ("" if version < 12 else None),
                                      ErrorCode.INVALID_REQUEST, topic_id))
        elif topic_id in worker.cluster.topic_names:
            names.append(worker.cluster.topic_names[topic_id])
        else:
            by_id.append(_error_topic(None, ErrorCode.UNKNOWN_TOPIC_ID, topic_id))
    return names, by_id


def _response(worker, names: list[str] | None, errors: dict,
              by_id: list[dict] = ()) -> dict:
    state = worker.cluster
    topics = list(by_id)
    for name in (sorted(state.topics) if names is None else names):
        if name in errors:
            topics.append(_error_topic(name, errors[name]))
        elif name in state.topics:
            topics.append(_topic(worker, state, name))
        else:
            topics.append(_error_topic(name, ErrorCode.LEADER_NOT_AVAILABLE))
    return {"throttle_time_ms": 0, "brokers": _brokers(worker, state),
            "cluster_id": state.cluster_id or None,
            "controller_id": state.controller_id if state.controller_id >= 0 else worker.node_id,
            "topics": topics, "cluster_authorized_operations": NO_AUTHORIZED_OPERATIONS}


def handle(ctx, request):
    worker = ctx.worker
    requested = request["topics"]
    if requested is None or (ctx.api_version == 0 and not requested):
        return _response(worker, None, {})
    names, by_id = _by_name(worker, ctx.api_version, requested)
    auto = worker.config["auto.create.topics.enable"] and request.get(
        "allow_auto_topic_creation", True)
    partitions = worker.config["num.partitions"]
    budget = worker.config["max.partitions.per.request"]   # partitions left to create
    errors, plans = {}, []
    for name in names:
        if name in worker.cluster.topics or name in errors:
            continue
        if topic_name_error(name):
            errors[name] = ErrorCode.INVALID_TOPIC_EXCEPTION
        elif not auto or name in INTERNAL_TOPICS:   # Kafka's own state: never made here
            errors[name] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        elif budget < partitions:
            errors[name] = ErrorCode.LEADER_NOT_AVAILABLE   # created by a later request
        else:
            code, _, assignment = plan_topic(worker, name, partitions, {})
            if assignment is not None:
                budget -= partitions
                plans.append((name, assignment, {}))
                errors[name] = None   # planned: not looked at twice
            elif code != ErrorCode.TOPIC_ALREADY_EXISTS:
                errors[name] = code
    errors = {n: c for n, c in errors.items() if c is not None}
    if not plans:
        return _response(worker, names, errors, by_id)

    def written(outcomes: dict):
        created = []
        for name, (code, _message, _id) in outcomes.items():
            if code in (ErrorCode.NONE, ErrorCode.TOPIC_ALREADY_EXISTS):
                created.append(name)
            else:
                errors[name] = code
        wait = worker.when_cluster(lambda st: all(st.topic_served(t) for t in created),
                                   AUTO_CREATE_WAIT_S, None)
        return chain(wait, lambda _: _response(worker, names, errors, by_id))
    return chain(create_topics(worker, plans), written)


def handle_describe_cluster(ctx, request) -> dict:
    """The brokers Metadata lists. Only broker endpoints (endpoint type 1): KRaft's
    controller endpoints (2) are UNSUPPORTED_ENDPOINT_TYPE, as a ZooKeeper-mode Kafka
    answers; no broker is ever fenced (a KRaft notion)."""
    worker = ctx.worker
    state = worker.cluster
    endpoint_type = request.get("endpoint_type", 1)
    answer = {"throttle_time_ms": 0, "error_code": ErrorCode.NONE, "error_message": None,
              "endpoint_type": endpoint_type, "cluster_id": state.cluster_id or "",
              "controller_id": state.controller_id if state.controller_id >= 0
              else worker.node_id, "brokers": [],
              "cluster_authorized_operations": NO_AUTHORIZED_OPERATIONS}
    if endpoint_type != 1:
        answer.update(error_code=ErrorCode.UNSUPPORTED_ENDPOINT_TYPE,
                      error_message=f"endpoint type {endpoint_type}: only brokers (1)")
        return answer
    answer["brokers"] = [{"broker_id": b["node_id"], "host": b["host"], "port": b["port"],
                          "rack": b["rack"], "is_fenced": False}
                         for b in _brokers(worker, state)]
    return answer
