"""Produce (key 0) and InitProducerId (key 22).

Each partition's records are validated whole (magic 2, CRC-32C, sizes, record counts)
before any byte of them is appended; a bad partition gets its error code and the other
partitions of the request are appended as usual. acks=0: no response; acks=1: answer
after the append; acks=-1: answer once the flush that makes the batches durable has
happened (group commit, P5).
"""
from __future__ import annotations

import asyncio

from pybroker.errors import CorruptRecordError, MessageTooLarge
from pybroker.protocol import ErrorCode
from pybroker.server.handlers.common import partition_error
from pybroker.server.producer_state import SequenceError


def _append(worker, tp, records, durable: list) -> dict:
    result = {"index": tp[1], "error_code": ErrorCode.NONE, "base_offset": -1,
              "log_append_time_ms": -1, "log_start_offset": -1}
    plog = worker.partitions.logs.get(tp)
    if plog is None:
        result["error_code"] = partition_error(worker, *tp)
        return result
    if records is None or len(records) == 0:
        result["error_code"] = ErrorCode.INVALID_RECORD
        return result
    try:
        base, last, appended = worker.producers.append(tp, plog, records)
    except CorruptRecordError as exc:
        worker.log_bad_input(tp, exc)
        result["error_code"] = ErrorCode.CORRUPT_MESSAGE
        return result
    except MessageTooLarge as exc:
        worker.log_bad_input(tp, exc)
        result["error_code"] = ErrorCode.MESSAGE_TOO_LARGE
        return result
    except SequenceError as exc:
        result["error_code"] = exc.error_code
        return result
    except OSError as exc:  # CoreIOError from the write, or the index reservation
        worker.log_storage_error(tp, exc)
        result["error_code"] = ErrorCode.KAFKA_STORAGE_ERROR
        return result
    if appended:
        worker.partitions.appended(tp)
        worker.stats.produced(tp, last - base + 1, len(records))
    result["base_offset"] = base
    result["log_start_offset"] = plog.log_start_offset
    durable.append((plog, last))
    return result


def handle(ctx, request):
    worker = ctx.worker
    acks = request["acks"]
    durable: list = []
    responses = []
    for topic in request["topic_data"]:
        name = topic["name"]
        parts = []
        for pd in topic["partition_data"]:
            if request["transactional_id"] is not None:
                parts.append({"index": pd["index"], "base_offset": -1, "log_append_time_ms": -1,
                              "log_start_offset": -1,
                              "error_code": ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED})
                continue
            parts.append(_append(worker, (name, pd["index"]), pd["records"], durable))
        responses.append({"name": name, "partition_responses": parts})
    if acks == 0:
        return None
    response = {"responses": responses, "throttle_time_ms": 0}
    if acks == 1 or not durable:
        return response
    return _when_all_durable(worker.loop, durable, response)


def _when_all_durable(loop, durable: list, response: dict) -> asyncio.Future:
    fut = loop.create_future()
    remaining = [len(durable)]

    def one_done(_hw):
        remaining[0] -= 1
        if remaining[0] == 0 and not fut.done():
            fut.set_result(response)

    for plog, last in durable:
        plog.when_durable(last, one_done)
    return fut


def handle_init_producer_id(ctx, request) -> dict:
    if request["transactional_id"] is not None:
        return {"throttle_time_ms": 0, "producer_id": -1, "producer_epoch": -1,
                "error_code": ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}
    return {"throttle_time_ms": 0, "error_code": ErrorCode.NONE,
            "producer_id": ctx.worker.registry.next_producer_id(), "producer_epoch": 0}
