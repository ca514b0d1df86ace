"""ListOffsets (key 2): earliest (-2), latest (-1) and by timestamp.

Latest is the high watermark (= last stable offset: no transactions). By timestamp:
the earliest offset whose record timestamp is >= the target, found with the time
index (P8) and, for uncompressed batches, exact to the record.
"""
from __future__ import annotations

from pybroker.protocol import ErrorCode
from pybroker.records import parse_batches, parse_records
from pybroker.server.handlers.common import partition_error

EARLIEST = -2
LATEST = -1


def offset_for_time(plog, timestamp: int) -> tuple[int, int]:
    """(offset, timestamp) of the first record with timestamp >= target, or (-1, -1)."""
    offset = plog.offset_for_time(timestamp)
    if offset is None:
        return -1, -1
    piece = plog.read(offset, 1)
    batch = parse_batches(piece.read_bytes())[0]
    if batch.compression:
        return batch.base_offset, batch.max_timestamp
    for record in parse_records(batch):
        if record.timestamp >= timestamp and record.offset >= offset:
            return record.offset, record.timestamp
    return batch.base_offset, batch.max_timestamp


def _partition(worker, topic: str, p: dict) -> dict:
    answer = {"partition_index": p["partition_index"], "error_code": ErrorCode.NONE,
              "timestamp": -1, "offset": -1, "leader_epoch": -1}
    tp = (topic, p["partition_index"])
    code = partition_error(worker, *tp)
    if code:
        answer["error_code"] = code
        return answer
    plog = worker.replicas.leader_logs[tp]
    ts = p["timestamp"]
    if ts == EARLIEST:
        answer["offset"] = plog.log_start_offset
    elif ts == LATEST:
        answer["offset"] = plog.high_watermark
    elif ts < 0:
        answer["error_code"] = ErrorCode.INVALID_REQUEST
    else:
        answer["offset"], answer["timestamp"] = offset_for_time(plog, ts)
    return answer


def handle_list_offsets(ctx, request) -> dict:
    topics = [{"name": t["name"],
               "partitions": [_partition(ctx.worker, t["name"], p) for p in t["partitions"]]}
              for t in request["topics"]]
    return {"throttle_time_ms": 0, "topics": topics}
