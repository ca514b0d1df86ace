"""Produce (key 0) and InitProducerId (key 22).

Each partition's records are validated whole (magic 2, CRC-32C, sizes, record counts)
before any byte of them is appended; a bad partition gets its error code and the other
partitions of the request are appended as usual. acks=0: no response; acks=1: answer
after the leader's append; acks=-1: answer once the batches are durable on every
in-sync replica (the high watermark passed them: group commit, P5, and the followers'
fetches), refused with NOT_ENOUGH_REPLICAS while the ISR is smaller than
min.insync.replicas. Plain (non-idempotent) appends wait for the end of the
connection's run of pipelined frames, to be written with the run's others for the same
partition (append_batch.py).

Records in the old message formats (magic 0 or 1: every Produce v0-v2 request, or a
v3+ request whose first batch is one) are refused per partition with
UNSUPPORTED_FOR_MESSAGE_FORMAT and one warning line per request naming the client; the
connection stays open. (Kafka 4.0 advertises Produce v0-v2 but closes the connection
on such a request, and answers a v3+ one with INVALID_RECORD.)
"""
from __future__ import annotations

import logging
import struct

from pybroker.protocol import ErrorCode
from pybroker.server.handlers.append_batch import AnswerAfterRun, append_one, partition_result
from pybroker.server.handlers.common import partition_error
from pybroker.server.producer_state import is_idempotent


log = logging.getLogger("pybroker.server")

VALID_ACKS = (1, -1, 0)  # anything else: INVALID_REQUIRED_ACKS, nothing appended
FIRST_V2_VERSION = 3     # the first Produce version carrying RecordBatch v2 (magic 2)
# In a RecordBatch as in a v0/v1 message set entry: offset int64, then the size int32
# of what follows it, ..., the magic byte at 16.
_SIZE = struct.Struct(">i")
SIZE_AT, MAGIC_AT = 8, 16
LEGACY_OVERHEAD_V0 = 14  # Kafka's LegacyRecord.RECORD_OVERHEAD_V0: the smallest entry


def old_format_magic(records) -> int | None:
    """The magic (0 or 1) when the first batch is a whole entry in an old message
    format, else None: magic 2, or a size no entry can have, or cut short (Kafka checks
    the size before the magic; the append's validation answers those, CORRUPT_MESSAGE)."""
    if len(records) <= MAGIC_AT or records[MAGIC_AT] >= 2:
        return None
    (size,) = _SIZE.unpack_from(records, SIZE_AT)
    if size < LEGACY_OVERHEAD_V0 or SIZE_AT + 4 + size > len(records):
        return None
    return records[MAGIC_AT]


def handle(ctx, request):
    worker = ctx.worker
    acks = request["acks"]
    batch = worker.appends
    durable: list | None = [] if acks == -1 else None
    refused = (ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
               if request["transactional_id"] is not None else
               ErrorCode.INVALID_REQUIRED_ACKS if acks not in VALID_ACKS else
               ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT
               if ctx.api_version < FIRST_V2_VERSION else None)
    old_format: list = []   # (topic, partition, magic) refused for their message format
    responses = []
    for topic in request["topic_data"]:
        name = topic["name"]
        parts = []
        for pd in topic["partition_data"]:
            result = partition_result(pd["index"])
            parts.append(result)
            if refused is not None:
                result["error_code"] = refused
                if refused == ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT:
                    records = pd["records"]
                    old_format.append((name, pd["index"], None if records is None
                                       else old_format_magic(records)))
                continue
            tp = (name, pd["index"])
            plog = worker.replicas.leader_logs.get(tp)
            records = pd["records"]
            if plog is None:
                result["error_code"] = partition_error(worker, *tp)
            elif records is None or len(records) == 0:
                result["error_code"] = ErrorCode.INVALID_RECORD
            elif (magic := old_format_magic(records)) is not None:
                result["error_code"] = ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT
                old_format.append((name, pd["index"], magic))
            elif durable is not None and worker.replicas.isr_short(tp):
                result["error_code"] = ErrorCode.NOT_ENOUGH_REPLICAS
            elif not is_idempotent(records):
                batch.add(tp, plog, records, result, durable)
            else:
                batch.apply_partition(tp)  # keep arrival order in the partition
                append_one(worker, tp, plog, records, result, durable)
        responses.append({"name": name, "partition_responses": parts})
    if old_format:
        _log_old_format(ctx, old_format)
    if acks == 0:
        return None
    response = {"responses": responses, "throttle_time_ms": 0}
    return AnswerAfterRun(response, durable, request["timeout_ms"],  # after the run's appends
                          worker.replicas.isr_short)


def _log_old_format(ctx, refused: list) -> None:
    """One line per request: which client sent what, and why it was refused."""
    magics = sorted({m for _t, _p, m in refused if m is not None})
    shown = ", ".join(f"{t}-{p}" for t, p, _m in refused[:5])
    more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
    why = (" and ".join(f"message format v{m} (magic {m})" for m in magics) if magics
           else "a Produce version below 3, which carries message formats v0/v1")
    peer = getattr(ctx.connection, "peer", "?")
    log.warning("node=%d peer=%s client_id=%s Produce v%d: refused %d partition(s) (%s%s) "
                "with UNSUPPORTED_FOR_MESSAGE_FORMAT: %s; this broker stores only "
                "RecordBatch v2 (magic 2, Produce v3+, Kafka 0.11+ clients)",
                ctx.worker.node_id, peer, ctx.client_id, ctx.api_version, len(refused),
                shown, more, why)


def handle_init_producer_id(ctx, request):
    if request["transactional_id"] is not None:
        return _producer_id_answer(ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    worker = ctx.worker
    answer = worker.loop.create_future()

    def done(fut):
        if answer.done():
            return  # cancelled: its connection closed
        if fut.exception() is not None:  # ZooKeeper unreachable: the client retries
            log.warning("node=%d producer id block: %r", worker.node_id, fut.exception())
            answer.set_result(_producer_id_answer(ErrorCode.COORDINATOR_NOT_AVAILABLE))
        else:
            answer.set_result(_producer_id_answer(ErrorCode.NONE, fut.result(), 0))
    worker.run_zk(worker.registry.next_producer_id).add_done_callback(done)
    return answer


def _producer_id_answer(code: ErrorCode, producer_id: int = -1, epoch: int = -1) -> dict:
    return {"throttle_time_ms": 0, "error_code": code, "producer_id": producer_id,
            "producer_epoch": epoch}
