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

Newer versions: v12+ may name the epoch of the last batch fetched; if this log's epoch
history says the fetcher's log diverged from ours there (Kafka's Partition.readRecords
check, the OffsetForLeaderEpoch lookup), the answer is the diverging epoch and its end
offset instead of records. NOT_LEADER_OR_FOLLOWER and FENCED_LEADER_EPOCH carry the
current leader and its epoch (v12+) and, from v16, its endpoint (KIP-951), so clients
move without a Metadata round trip. v13+ names topics by topic ID (UNKNOWN_TOPIC_ID for
an ID no topic has); v15+ carries the replica id in replica_state.
"""
from __future__ import annotations

import logging
import time

from pybroker.errors import OffsetOutOfRange
from pybroker.protocol import ErrorCode
from pybroker.server.handlers.common import partition_error
from pybroker.server.handlers.leader_epoch import end_offset_for

log = logging.getLogger("pybroker.server")


def _partition(worker, topic: str, p: dict, budget: int, replica: int) -> tuple[dict, int]:
    """One partition's answer and the bytes of records it carries."""
    tp = (topic, p["partition"])
    answer = _empty(p)
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
    diverging = _diverging(plog, p)
    if diverging is not None:
        answer["diverging_epoch"] = diverging
        return answer, 0
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


def _diverging(plog, p: dict) -> dict | None:
    """v12+: where the fetcher's log diverged from this one, if it did: the epoch of
    its last fetched batch ended here before its fetch offset, or is not in this log."""
    fetched_epoch = p.get("last_fetched_epoch", -1)
    if fetched_epoch < 0:
        return None
    epoch, end_offset = end_offset_for(plog, fetched_epoch)
    if end_offset < 0 or (end_offset >= p["fetch_offset"] and epoch >= fetched_epoch):
        return None
    return {"epoch": epoch, "end_offset": end_offset}


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


_MOVED = (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.FENCED_LEADER_EPOCH)


def _build(worker, request, version: int, replica: int) -> tuple[dict, int]:
    budget = request["max_bytes"]
    total = 0
    responses, leaders = [], set()
    for topic in request["topics"]:
        name = topic["topic"]
        parts = []
        for p in topic["partitions"]:
            if name is None:   # v13+: an ID no topic has
                parts.append(_empty(p, ErrorCode.UNKNOWN_TOPIC_ID))
                continue
            # the first data may exceed max_bytes by one batch; after it, the budget binds
            answer, size = _partition(worker, name, p, budget if total else
                                      max(budget, 1), replica)
            if version >= 12 and answer["error_code"] in _MOVED:
                _current_leader(worker, name, answer, leaders)
            total += size
            budget -= size
            parts.append(answer)
        responses.append({"topic": name, "topic_id": topic.get("topic_id"),
                          "partitions": parts})
    response = {"throttle_time_ms": 0, "error_code": ErrorCode.NONE, "session_id": 0,
                "responses": responses}
    if version >= 16 and leaders:
        response["node_endpoints"] = _endpoints(worker, leaders)
    return response, total


def _empty(p: dict, code: ErrorCode = ErrorCode.NONE) -> dict:
    """A partition's answer without records (or offsets, until filled in)."""
    return {"partition_index": p["partition"], "error_code": code,
            "high_watermark": -1, "last_stable_offset": -1, "log_start_offset": -1,
            "aborted_transactions": None, "preferred_read_replica": -1, "records": b""}


def _current_leader(worker, topic: str, answer: dict, leaders: set) -> None:
    """KIP-951: the leader this node knows of, for a fetcher told it is not here."""
    info = worker.cluster.partition(topic, answer["partition_index"])
    if info is not None and info.leader >= 0 and info.leader in worker.cluster.nodes:
        answer["current_leader"] = {"leader_id": info.leader,
                                    "leader_epoch": info.leader_epoch}
        leaders.add(info.leader)


def _endpoints(worker, nodes) -> list[dict]:
    return [{"node_id": n, "host": worker.cluster.nodes[n][0],
             "port": worker.cluster.nodes[n][1], "rack": worker.cluster.racks.get(n)}
            for n in sorted(nodes)]


def _by_name(worker, request, version: int) -> dict:
    """The request with v13+'s topic IDs turned into names (None: no topic has it)."""
    if version < 13:
        return request
    names = worker.cluster.topic_names
    topics = [{**t, "topic": names.get(t["topic_id"])} for t in request["topics"]]
    return {**request, "topics": topics}


def _replica_id(request, version: int) -> int:
    if version >= 15:
        return request["replica_state"]["replica_id"]
    return request.get("replica_id", -1)


def handle(ctx, request):
    worker = ctx.worker
    version = ctx.api_version
    if request.get("session_id", 0) != 0:
        return {"throttle_time_ms": 0, "error_code": ErrorCode.FETCH_SESSION_ID_NOT_FOUND,
                "session_id": 0, "responses": []}
    replica = _replica_id(request, version)
    if replica >= 0 and replica not in worker.cluster.nodes:
        return _refused(worker, request, replica)
    request = _by_name(worker, request, version)
    response, total = _build(worker, request, version, replica)
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
        response, total = _build(worker, request, version, replica)
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
            "responses": [{"topic": t["topic"], "topic_id": t.get("topic_id"), "partitions": [
                _empty(p, ErrorCode.TOPIC_AUTHORIZATION_FAILED) for p in t["partitions"]]}
                for t in request["topics"]]}
