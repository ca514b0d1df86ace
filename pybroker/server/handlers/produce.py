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
"""
from __future__ import annotations

import logging

from pybroker.protocol import ErrorCode
from pybroker.server.handlers.append_batch import AnswerAfterRun, append_one, partition_result
from pybroker.server.handlers.common import partition_error
from pybroker.server.producer_state import is_idempotent


log = logging.getLogger("pybroker.server")

VALID_ACKS = (1, -1, 0)  # anything else: INVALID_REQUIRED_ACKS, nothing appended


def handle(ctx, request):
    worker = ctx.worker
    acks = request["acks"]
    batch = worker.appends
    durable: list | None = [] if acks == -1 else None
    refused = (ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
               if request["transactional_id"] is not None else
               ErrorCode.INVALID_REQUIRED_ACKS if acks not in VALID_ACKS else None)
    responses = []
    for topic in request["topic_data"]:
        name = topic["name"]
        parts = []
        for pd in topic["partition_data"]:
            result = partition_result(pd["index"])
            parts.append(result)
            if refused is not None:
                result["error_code"] = refused
                continue
            tp = (name, pd["index"])
            plog = worker.replicas.leader_logs.get(tp)
            records = pd["records"]
            if plog is None:
                result["error_code"] = partition_error(worker, *tp)
            elif records is None or len(records) == 0:
                result["error_code"] = ErrorCode.INVALID_RECORD
            elif durable is not None and worker.replicas.isr_short(tp):
                result["error_code"] = ErrorCode.NOT_ENOUGH_REPLICAS
            elif not is_idempotent(records):
                batch.add(tp, plog, records, result, durable)
            else:
                batch.apply_partition(tp)  # keep arrival order in the partition
                append_one(worker, tp, plog, records, result, durable)
        responses.append({"name": name, "partition_responses": parts})
    if acks == 0:
        return None
    response = {"responses": responses, "throttle_time_ms": 0}
    return AnswerAfterRun(response, durable, request["timeout_ms"],  # after the run's appends
                          worker.replicas.isr_short)


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
