"""OffsetForLeaderEpoch (key 23): where did a leader epoch end in this node's log?

Per partition, in this order (Kafka's ReplicaManager.lastOffsetForLeaderEpoch and
Partition.lastOffsetForLeaderEpoch):

1. Serving: `partition_error` (UNKNOWN_TOPIC_OR_PARTITION, NOT_LEADER_OR_FOLLOWER,
   LEADER_NOT_AVAILABLE, or the stored error of an opening/offline partition). Kafka
   answers only from the leader (fetchOnlyFromLeader=true), for followers and
   consumers alike; so do we.
2. Fencing (KIP-320, v2+): a current_leader_epoch of -1 (NO_PARTITION_LEADER_EPOCH,
   also what v0-v1 decode to) asks for no check. Otherwise it is compared with this
   node's epoch for the partition, `worker.replicas.leader_epoch(tp)`: below it is
   FENCED_LEADER_EPOCH, above it UNKNOWN_LEADER_EPOCH. While this node knows no epoch
   for the partition (-1, or no `worker.replicas` at all) nothing is fenced.
3. The lookup: `plog.epochs.end_offset_for(leader_epoch, plog.log_end_offset)` gives
   (epoch, end_offset) with the LeaderEpochCache's rules: the latest epoch ends at the
   log end offset; an epoch between two known ones is answered with the largest known
   epoch below it and the start offset of the next; an epoch below every known one
   with the first known start offset; an undefined request (-1), or an empty cache,
   with (-1, -1). A log without an epoch cache answers as an empty cache.
   As in Kafka's UnifiedLog.endOffsetForEpoch, an end offset of -1 (undefined) is
   answered as (-1, -1) with error NONE.

Errors (1, 2) carry leader_epoch -1 and end_offset -1. The response's leader_epoch
is absent from v0 (the codec drops it); replica_id (v3+) changes nothing, as in
Kafka, where it only served authorization, which this broker does not do.
"""
from __future__ import annotations

from pybroker.protocol import ErrorCode
from pybroker.server.handlers.common import partition_error

UNDEFINED_EPOCH = -1          # also NO_PARTITION_LEADER_EPOCH in a request
UNDEFINED_EPOCH_OFFSET = -1


def node_leader_epoch(worker, tp: tuple[str, int]) -> int:
    """This node's leader epoch of `tp`, or -1 if unknown (or no replica state yet)."""
    replicas = getattr(worker, "replicas", None)
    if replicas is None:
        return UNDEFINED_EPOCH
    return replicas.leader_epoch(tp)


def fencing_error(current_leader_epoch: int, node_epoch: int) -> ErrorCode:
    """KIP-320: the error for a request's current_leader_epoch (NONE if it passes)."""
    if current_leader_epoch == UNDEFINED_EPOCH or node_epoch < 0:
        return ErrorCode.NONE
    if current_leader_epoch < node_epoch:
        return ErrorCode.FENCED_LEADER_EPOCH
    if current_leader_epoch > node_epoch:
        return ErrorCode.UNKNOWN_LEADER_EPOCH
    return ErrorCode.NONE


def end_offset_for(plog, leader_epoch: int) -> tuple[int, int]:
    """(epoch, end_offset) of `leader_epoch` in `plog`; (-1, -1) when undefined."""
    epochs = getattr(plog, "epochs", None)
    if epochs is None:
        return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET
    epoch, end_offset = epochs.end_offset_for(leader_epoch, plog.log_end_offset)
    if end_offset == UNDEFINED_EPOCH_OFFSET:
        return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET
    return epoch, end_offset


def _partition(worker, topic: str, p: dict) -> dict:
    tp = (topic, p["partition"])
    answer = {"error_code": ErrorCode.NONE, "partition": p["partition"],
              "leader_epoch": UNDEFINED_EPOCH, "end_offset": UNDEFINED_EPOCH_OFFSET}
    code = partition_error(worker, *tp)
    if not code:
        code = fencing_error(p.get("current_leader_epoch", UNDEFINED_EPOCH),
                             node_leader_epoch(worker, tp))
    if code:
        answer["error_code"] = code
        return answer
    answer["leader_epoch"], answer["end_offset"] = end_offset_for(
        worker.partitions.logs[tp], p["leader_epoch"])
    return answer


def handle(ctx, request) -> dict:
    worker = ctx.worker
    topics = [{"topic": t["topic"],
               "partitions": [_partition(worker, t["topic"], p) for p in t["partitions"]]}
              for t in request["topics"]]
    return {"throttle_time_ms": 0, "topics": topics}
