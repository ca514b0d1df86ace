"""Lookups shared by the handlers."""
from __future__ import annotations

from pybroker.protocol import ErrorCode


def partition_error(worker, topic: str, partition: int) -> ErrorCode:
    """Why this node cannot serve topic/partition (NONE when it can)."""
    if (topic, partition) in worker.partitions.logs:
        return ErrorCode.NONE
    stored = worker.partitions.error_for((topic, partition))  # opening, offline, closing
    if stored is not None:
        return stored
    leader = worker.cluster.leader(topic, partition)
    if leader is None:
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    if leader == worker.node_id:
        return ErrorCode.LEADER_NOT_AVAILABLE  # assigned here, log not open yet
    return ErrorCode.NOT_LEADER_OR_FOLLOWER
