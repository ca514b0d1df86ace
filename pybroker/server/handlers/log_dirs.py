"""DescribeLogDirs (key 35): what this node stores, where, and how big it is.

A node has one log directory (log.dirs; a broker's workers share it, each answering for
the partitions it stores). Every stored partition is listed, led or followed, with its
size on disk (the sum of its segments) and its offset lag as Kafka computes it:
max(high watermark - log end offset, 0), 0 for a leader. No partition is ever a
"future" replica (moves between directories of one broker are not supported). v4's
total and usable bytes are the file system's (statvfs).
"""
from __future__ import annotations

import os

from pybroker.protocol import ErrorCode


def handle(ctx, request) -> dict:
    worker = ctx.worker
    logs = worker.partitions.logs
    asked = request["topics"]
    wanted = None if asked is None else {(t["topic"], p) for t in asked
                                         for p in t["partitions"]}
    topics: dict[str, list] = {}
    for (topic, partition), plog in sorted(logs.items()):
        if wanted is not None and (topic, partition) not in wanted:
            continue
        topics.setdefault(topic, []).append({
            "partition_index": partition, "partition_size": plog.size_bytes(),
            "offset_lag": max(plog.high_watermark - plog.log_end_offset, 0),
            "is_future_key": False})
    log_dir = os.path.abspath(worker.data_dir)
    total = usable = -1
    try:
        fs = os.statvfs(log_dir)
        total, usable = fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize
    except OSError:
        pass
    return {"throttle_time_ms": 0, "error_code": ErrorCode.NONE, "results": [{
        "error_code": ErrorCode.NONE, "log_dir": log_dir,
        "topics": [{"name": name, "partitions": parts} for name, parts in topics.items()],
        "total_bytes": total, "usable_bytes": usable}]}
