"""Fetch (key 1): record data by sendfile, long-poll for new flushed data.

Only flushed data is visible (P5): reads stop at the high watermark, and the last
stable offset equals it (no transactions), so read_committed clients see everything
flushed. A partition's answer starts at the batch holding the fetch offset and holds at
least one whole batch; `partition_max_bytes` and the response's `max_bytes` bound the
rest (the first partition with data may exceed max_bytes by its first batch, as in
Kafka). With fewer than `min_bytes` ready, the answer waits up to `max_wait_ms` and is
rebuilt as soon as a flush adds data to one of the requested partitions. Fetch sessions
(v7+) are not kept: the answer's session id is 0, so clients send full requests.
"""
from __future__ import annotations

import time

from pybroker.errors import OffsetOutOfRange
from pybroker.protocol import ErrorCode
from pybroker.server.handlers.common import partition_error


def _partition(worker, topic: str, p: dict, budget: int) -> tuple[dict, int]:
    """One partition's answer and the bytes of records it carries."""
    tp = (topic, p["partition"])
    answer = {"partition_index": p["partition"], "error_code": ErrorCode.NONE,
              "high_watermark": -1, "last_stable_offset": -1, "log_start_offset": -1,
              "aborted_transactions": None, "preferred_read_replica": -1, "records": b""}
    code = partition_error(worker, *tp)
    if code:
        answer["error_code"] = code
        return answer, 0
    plog = worker.partitions.logs[tp]
    hw = plog.high_watermark
    answer["high_watermark"] = answer["last_stable_offset"] = hw
    answer["log_start_offset"] = plog.log_start_offset
    if budget <= 0:
        return answer, 0
    try:
        piece = plog.read(p["fetch_offset"], min(p["partition_max_bytes"], budget))
    except OffsetOutOfRange:
        answer["error_code"] = ErrorCode.OFFSET_OUT_OF_RANGE
        return answer, 0
    if piece is None:
        return answer, 0
    answer["records"] = piece
    worker.stats.fetched(tp, piece.length)
    return answer, piece.length


def _build(worker, request) -> tuple[dict, int]:
    budget = request["max_bytes"]
    total = 0
    responses = []
    for topic in request["topics"]:
        parts = []
        for p in topic["partitions"]:
            # the first data may exceed max_bytes by one batch; after it, the budget binds
            answer, size = _partition(worker, topic["topic"], p, budget if total else
                                      max(budget, 1))
            total += size
            budget -= size
            parts.append(answer)
        responses.append({"topic": topic["topic"], "partitions": parts})
    return {"throttle_time_ms": 0, "error_code": ErrorCode.NONE, "session_id": 0,
            "responses": responses}, total


def handle(ctx, request):
    worker = ctx.worker
    if request.get("session_id", 0) != 0:
        return {"throttle_time_ms": 0, "error_code": ErrorCode.FETCH_SESSION_ID_NOT_FOUND,
                "session_id": 0, "responses": []}
    response, total = _build(worker, request)
    if total >= request["min_bytes"] or request["max_wait_ms"] <= 0:
        return response
    tps = [(t["topic"], p["partition"]) for t in request["topics"] for p in t["partitions"]
           if (t["topic"], p["partition"]) in worker.partitions.logs]
    if not tps:
        return response
    deadline = time.monotonic() + request["max_wait_ms"] / 1000
    result = worker.loop.create_future()

    def wait():
        remaining = deadline - time.monotonic()
        worker.partitions.wait_for_data(tps, max(0.0, remaining)).add_done_callback(woken)

    def woken(_f):
        if result.done():
            return
        response, total = _build(worker, request)
        if total >= request["min_bytes"] or time.monotonic() >= deadline or worker.stopping:
            result.set_result(response)
        else:
            wait()

    wait()
    return result
