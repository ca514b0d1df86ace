"""Fetch (key 1): record data by sendfile, long-poll for new flushed data.

Only flushed data is visible (P5): reads stop at the high watermark, and the last
stable offset equals it (no transactions), so read_committed clients see everything
flushed. A partition's answer starts at the batch holding the fetch offset and holds at
least one whole batch; `partition_max_bytes` and the response's `max_bytes` bound the
rest (the first partition with data may exceed max_bytes by its first batch, as in
Kafka). With fewer than `min_bytes` ready, the answer waits up to `max_wait_ms` and is
rebuilt as soon as a flush adds data to one of the requested partitions. Fetch sessions
(v7+) are not kept: the answer's session id is 0, so clients send full requests.

A fetch with a replica id (>= 0) is a follower's (server/replication.py): only a node
registered in ZooKeeper may send one (anyone else gets TOPIC_AUTHORIZATION_FAILED per
partition, as Kafka answers a replica fetch it does not authorize, CVE-2018-1288), and
only for partitions it is a replica of. Its fetch offset reports what is durable on it
(moving the high watermark); its answer reads up to the log end, flushed or not, and
its long poll wakes on appends.
"""
from __future__ import annotations

import logging
import time

from pybroker.errors import OffsetOutOfRange
from pybroker.protocol import ErrorCode
from pybroker.server.handlers.common import partition_error

log = logging.getLogger("pybroker.server")


def _partition(worker, topic: str, p: dict, budget: int, replica: int) -> tuple[dict, int]:
    """One partition's answer and the bytes of records it carries."""
    tp = (topic, p["partition"])
    answer = {"partition_index": p["partition"], "error_code": ErrorCode.NONE,
              "high_watermark": -1, "last_stable_offset": -1, "log_start_offset": -1,
              "aborted_transactions": None, "preferred_read_replica": -1, "records": b""}
    if replica >= 0:  # a follower: also while a controlled shutdown hands the log over
        plog = worker.replicas.led_log(tp)
        code = partition_error(worker, *tp) if plog is None else ErrorCode.NONE
    else:
        plog = worker.replicas.leader_logs.get(tp)
        code = partition_error(worker, *tp)
    if not code:
        code = _epoch_error(worker, tp, p.get("current_leader_epoch", -1))
    if not code and replica >= 0:
        code = worker.replicas.follower_fetched(tp, replica, p["fetch_offset"])
    if code:
        answer["error_code"] = code
        return answer, 0
    hw = plog.high_watermark
    answer["high_watermark"] = answer["last_stable_offset"] = hw
    answer["log_start_offset"] = plog.log_start_offset
    if budget <= 0:
        return answer, 0
    try:
        piece = plog.read(p["fetch_offset"], min(p["partition_max_bytes"], budget),
                          to_log_end=replica >= 0)
    except OffsetOutOfRange:
        answer["error_code"] = ErrorCode.OFFSET_OUT_OF_RANGE
        return answer, 0
    if piece is None:
        return answer, 0
    answer["records"] = piece
    worker.stats.fetched(tp, piece.length)
    return answer, piece.length


def _epoch_error(worker, tp, current: int) -> ErrorCode:
    """KIP-320: a client's current_leader_epoch older than this leader's is fenced, a
    newer one is unknown here (this node's view is behind)."""
    if current < 0:
        return ErrorCode.NONE
    epoch = worker.replicas.leader_epoch(tp)
    if current < epoch:
        return ErrorCode.FENCED_LEADER_EPOCH
    if current > epoch:
        return ErrorCode.UNKNOWN_LEADER_EPOCH
    return ErrorCode.NONE


def _build(worker, request) -> tuple[dict, int]:
    budget = request["max_bytes"]
    replica = request.get("replica_id", -1)
    total = 0
    responses = []
    for topic in request["topics"]:
        parts = []
        for p in topic["partitions"]:
            # the first data may exceed max_bytes by one batch; after it, the budget binds
            answer, size = _partition(worker, topic["topic"], p, budget if total else
                                      max(budget, 1), replica)
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
    replica = request.get("replica_id", -1)
    if replica >= 0 and replica not in worker.cluster.nodes:
        return _refused(worker, request, replica)
    response, total = _build(worker, request)
    if total >= request["min_bytes"] or request["max_wait_ms"] <= 0:
        return response
    tps = [(t["topic"], p["partition"]) for t in request["topics"] for p in t["partitions"]
           if (t["topic"], p["partition"]) in worker.replicas.leading]
    if not tps:
        return response
    deadline = time.monotonic() + request["max_wait_ms"] / 1000
    result = worker.loop.create_future()

    def wait():
        remaining = deadline - time.monotonic()
        worker.partitions.wait_for_data(tps, max(0.0, remaining),
                                        appends=replica >= 0).add_done_callback(woken)

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


def _refused(worker, request, replica: int) -> dict:
    """A replica fetch from a node id ZooKeeper does not know: refused, logged."""
    log.warning("node=%d refused a replica fetch claiming node id %d, which is not "
                "registered", worker.node_id, replica)
    return {"throttle_time_ms": 0, "error_code": ErrorCode.NONE, "session_id": 0,
            "responses": [{"topic": t["topic"], "partitions": [
                {"partition_index": p["partition"],
                 "error_code": ErrorCode.TOPIC_AUTHORIZATION_FAILED, "high_watermark": -1,
                 "last_stable_offset": -1, "log_start_offset": -1,
                 "aborted_transactions": None, "preferred_read_replica": -1,
                 "records": b""} for p in t["partitions"]]} for t in request["topics"]]}
