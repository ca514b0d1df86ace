"""Lookups shared by the handlers."""
from __future__ import annotations

from pybroker.protocol import ErrorCode


def partition_error(worker, topic: str, partition: int) -> ErrorCode:
    """Why this node cannot serve topic/partition to clients (NONE when it leads it and
    has its log online)."""
    tp = (topic, partition)
    if tp in worker.replicas.leader_logs:
        return ErrorCode.NONE
    if tp in worker.replicas.leading:  # a controlled shutdown is handing it over
        return ErrorCode.NOT_LEADER_OR_FOLLOWER
    stored = worker.partitions.error_for(tp)  # opening, offline, closing
    if stored is not None:
        return stored
    leader = worker.cluster.leader(topic, partition)
    if leader is None:
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    if leader == worker.node_id or leader < 0:
        return ErrorCode.LEADER_NOT_AVAILABLE  # becoming leader here, or none elected
    return ErrorCode.NOT_LEADER_OR_FOLLOWER
