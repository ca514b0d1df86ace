"""Appends of produce requests, one partition at a time, with the error codes a client
sees; and the coalescing of a run of pipelined requests into one write per partition.

A producer batching 1 message sends one request per message; with many of them in
flight, one recv() brings dozens. Appending each alone costs a pwrite and an index
update apiece (about 5 us); appending the run's records for a partition as one buffer
costs under 1 us a request. So the Produce handler (produce.py), while its connection is inside a
run of frames, hands plain (non-idempotent) appends to the worker's AppendBatch and
answers after the run; the connection calls `apply()` before it encodes those answers.

Invariants:
- Order within a partition is arrival order: anything that must append at once (an
  idempotent batch, acks=all) or look at a log (any other request) first applies what
  is pending (`apply_partition`, `apply`).
- A joined append is all or nothing (PartitionLog.append). When it fails on bad input,
  each request is appended alone, so only the bad request gets the error.
- Nothing is pending between runs: the connection applies at the end of every run,
  also when the run ends in an error.
"""
from __future__ import annotations

from pybroker.errors import CorruptRecordError, LogClosedError, MessageTooLarge
from pybroker.protocol import ErrorCode
from pybroker.server.handlers.common import partition_error
from pybroker.server.producer_state import SequenceError, is_idempotent

_BASE_OFFSET_BYTES = 8  # a stamped batch starts with its base offset (int64, big-endian)


def partition_result(index: int) -> dict:
    """A Produce partition response, filled in by the append."""
    return {"index": index, "error_code": ErrorCode.NONE, "base_offset": -1,
            "log_append_time_ms": -1, "log_start_offset": -1}


def append_one(worker, tp, plog, records, result: dict, durable: list | None) -> None:
    """Append one request's records for tp now; fill result with the offset or the error
    code. With durable, record (log, last offset) for an acks=all wait."""
    try:
        base, last, appended = worker.producers.append(tp, plog, records)
    except CorruptRecordError as exc:
        worker.log_bad_input(tp, exc)
        result["error_code"] = ErrorCode.CORRUPT_MESSAGE
        return
    except MessageTooLarge as exc:
        worker.log_bad_input(tp, exc)
        result["error_code"] = ErrorCode.MESSAGE_TOO_LARGE
        return
    except SequenceError as exc:
        result["error_code"] = exc.error_code
        return
    except LogClosedError:  # deleted or moved away since the request arrived
        result["error_code"] = partition_error(worker, *tp)
        return
    except OSError as exc:  # CoreIOError from the write, or the index reservation
        worker.log_storage_error(tp, exc)
        result["error_code"] = ErrorCode.KAFKA_STORAGE_ERROR
        return
    if appended:
        worker.partitions.appended(tp)
        worker.stats.produced(tp, last - base + 1, len(records))
    result["base_offset"] = base
    result["log_start_offset"] = plog.log_start_offset
    if durable is not None:
        durable.append((plog, last))


class AnswerAfterRun:
    """A handler's response whose offsets are filled in when the run's appends are
    applied: the connection encodes it after `AppendBatch.apply()`."""

    __slots__ = ("response",)

    def __init__(self, response: dict):
        self.response = response


class AppendBatch:
    """The pending appends of the current run of frames, by partition in arrival order."""

    def __init__(self, worker):
        self.worker = worker
        self._pending: dict[tuple[str, int], list] = {}

    def can_defer(self, records) -> bool:
        return not is_idempotent(records)

    def add(self, tp, plog, records, result: dict) -> None:
        entries = self._pending.get(tp)
        if entries is None:
            self._pending[tp] = [(plog, records, result)]
        else:
            entries.append((plog, records, result))

    def __bool__(self) -> bool:
        return bool(self._pending)

    def apply_partition(self, tp) -> None:
        entries = self._pending.pop(tp, None)
        if entries:
            self._apply(tp, entries)

    def apply(self) -> None:
        pending, self._pending = self._pending, {}
        for tp, entries in pending.items():
            self._apply(tp, entries)

    def _apply(self, tp, entries: list) -> None:
        worker = self.worker
        if len(entries) == 1:
            plog, records, result = entries[0]
            append_one(worker, tp, plog, records, result, None)
            return
        plog = entries[0][0]
        joined = bytearray().join(records for _, records, _ in entries)
        try:
            appended = plog.append(joined)
        except (CorruptRecordError, MessageTooLarge):  # nothing written: find the culprit
            for plog, records, result in entries:
                append_one(worker, tp, plog, records, result, None)
            return
        except LogClosedError:
            for _, _, result in entries:
                result["error_code"] = partition_error(worker, *tp)
            return
        except OSError as exc:
            worker.log_storage_error(tp, exc)
            for _, _, result in entries:
                result["error_code"] = ErrorCode.KAFKA_STORAGE_ERROR
            return
        worker.partitions.appended(tp)
        worker.stats.produced(tp, appended.last_offset - appended.base_offset + 1,
                              len(joined))
        start = plog.log_start_offset
        position = 0
        from_bytes = int.from_bytes
        for _, records, result in entries:
            result["base_offset"] = from_bytes(
                joined[position:position + _BASE_OFFSET_BYTES], "big", signed=True)
            result["log_start_offset"] = start
            position += len(records)
