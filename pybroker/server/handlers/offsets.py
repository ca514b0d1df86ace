"""ListOffsets (key 2): earliest (-2), latest (-1), by timestamp, and from v7 the record
with the largest timestamp (-3, KIP-734), from v8 the earliest local offset (-4, KIP-405:
the earliest, as nothing is tiered here), from v9 the latest tiered offset (-5: -1, as
Kafka answers without tiered storage).

Latest is the high watermark (= last stable offset: no transactions). By timestamp:
the earliest offset whose record timestamp is >= the target, found with the time
index (P8) and, for uncompressed batches, exact to the record.

Version 0 (still sent by Sarama's defaults and Burrow) answers each partition with a
list of up to max_num_offsets offsets, as Kafka 3.x did (UnifiedLog's
legacyFetchOffsetsBefore): the candidates are each segment's base offset (at least the
log start offset), stamped with the segment file's modification time, and the log end
offset stamped now if the active segment holds data; latest picks the last candidate,
earliest the first, a timestamp the last one modified at or before it; from there the
answer runs backwards, newest first. For a consumer (replica id -1) offsets above the
high watermark are replaced by the high watermark. Other negative timestamps are
UNSUPPORTED_VERSION, as in Kafka.
"""
from __future__ import annotations

import os
import time
from itertools import dropwhile

from pybroker.log import files
from pybroker.protocol import ErrorCode
from pybroker.records import parse_batches, parse_records
from pybroker.server.handlers.common import partition_error

EARLIEST = -2
LATEST = -1
MAX_TIMESTAMP, EARLIEST_LOCAL, LATEST_TIERED = -3, -4, -5
SINCE_VERSION = {MAX_TIMESTAMP: 7, EARLIEST_LOCAL: 8, LATEST_TIERED: 9}
CONSUMER_REPLICA_ID = -1


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


def _partition(worker, topic: str, p: dict, version: int) -> dict:
    answer = {"partition_index": p["partition_index"], "error_code": ErrorCode.NONE,
              "timestamp": -1, "offset": -1, "leader_epoch": -1}
    tp = (topic, p["partition_index"])
    code = partition_error(worker, *tp)
    ts = p["timestamp"]
    if not code and version < SINCE_VERSION.get(ts, 0):
        code = ErrorCode.UNSUPPORTED_VERSION
    if code:
        answer["error_code"] = code
        return answer
    plog = worker.replicas.leader_logs[tp]
    if ts == MAX_TIMESTAMP:
        found = plog.max_timestamp_offset()
        if found is not None:
            answer["timestamp"], answer["offset"] = found
    elif ts == LATEST_TIERED:
        pass   # nothing is tiered: -1
    elif ts in (EARLIEST, EARLIEST_LOCAL):
        answer["offset"] = plog.log_start_offset
    elif ts == LATEST:
        answer["offset"] = plog.high_watermark
    elif ts < 0:
        answer["error_code"] = ErrorCode.INVALID_REQUEST
    else:
        answer["offset"], answer["timestamp"] = offset_for_time(plog, ts)
    return answer


def legacy_offsets_before(plog, timestamp: int, max_num_offsets: int,
                          now_ms: int) -> list[int]:
    """Kafka's v0 answer for one log before the high-watermark clamp (module doc)."""
    start = plog.log_start_offset
    bases = plog.segment_bases()
    candidates = []
    for base in bases:
        try:
            modified = os.stat(files.segment_paths(plog.directory, base)[0]).st_mtime_ns
        except FileNotFoundError:   # deleted by retention since segment_bases()
            continue
        candidates.append((max(base, start), modified // 1_000_000))
    if plog.log_end_offset > bases[-1]:   # the active segment holds data
        candidates.append((plog.log_end_offset, now_ms))
    if timestamp == LATEST:
        at = len(candidates) - 1
    elif timestamp == EARLIEST:
        at = 0
    else:
        at = len(candidates) - 1
        while at >= 0 and candidates[at][1] > timestamp:
            at -= 1
    count = min(max_num_offsets, at + 1)
    return sorted((candidates[at - j][0] for j in range(count)), reverse=True)


def _partition_v0(worker, topic: str, p: dict, replica_id: int) -> dict:
    answer = {"partition_index": p["partition_index"], "error_code": ErrorCode.NONE,
              "old_style_offsets": []}
    ts, wanted = p["timestamp"], p["max_num_offsets"]
    tp = (topic, p["partition_index"])
    code = partition_error(worker, *tp)
    if ts < EARLIEST:
        code = ErrorCode.UNSUPPORTED_VERSION
    elif not code and wanted < 0:
        code = ErrorCode.INVALID_REQUEST
    if code:
        answer["error_code"] = code
        return answer
    plog = worker.replicas.leader_logs[tp]
    offsets = legacy_offsets_before(plog, ts, wanted, int(time.time() * 1000))
    if replica_id == CONSUMER_REPLICA_ID:
        hw = plog.high_watermark
        if any(o > hw for o in offsets):
            offsets = [hw, *dropwhile(lambda o: o > hw, offsets)]
    answer["old_style_offsets"] = offsets
    return answer


def handle_list_offsets(ctx, request) -> dict:
    worker = ctx.worker
    if ctx.api_version == 0:
        replica_id = request["replica_id"]
        topics = [{"name": t["name"], "partitions": [
            _partition_v0(worker, t["name"], p, replica_id) for p in t["partitions"]]}
            for t in request["topics"]]
    else:
        topics = [{"name": t["name"], "partitions": [
            _partition(worker, t["name"], p, ctx.api_version) for p in t["partitions"]]}
            for t in request["topics"]]
    return {"throttle_time_ms": 0, "topics": topics}
