"""Appends of produce requests, one partition at a time, with the error codes a client
sees; and the coalescing of a run of pipelined requests into one write per partition.

A producer batching 1 message sends one request per message; with many of them in
flight, one recv() brings dozens. Appending each alone costs a pwrite and an index
update apiece (about 5 us); appending the run's records for a partition as one buffer
costs under 1 us a request. So the Produce handler (produce.py), while its connection
is inside a run of frames, hands plain (non-idempotent) appends to the worker's
AppendBatch and answers after the run; the connection calls `apply()` before it takes
those answers.

Invariants:
- Order within a partition is arrival order: anything that must append at once (an
  idempotent batch) or look at a log (any other request) first applies what is
  pending (`apply_partition`, `apply`).
- acks=all answers wait, after the run, for the flush of the run's appends.
- A joined append is all or nothing (PartitionLog.append). When it fails on bad input,
  each request is appended alone, so only the bad request gets the error.
- Nothing is pending between runs: the connection applies at the end of every run,
  also when the run ends in an error.
"""
from __future__ import annotations

import struct

from pybroker.errors import CorruptRecordError, LogClosedError, MessageTooLarge
from pybroker.protocol import ErrorCode
from pybroker.server.handlers.common import partition_error
from pybroker.server.producer_state import SequenceError

_BASE_OFFSET = struct.Struct(">q")  # a stamped batch starts with its base offset


def partition_result(index: int) -> dict:
    """A Produce partition response, filled in by the append."""
    return {"index": index, "error_code": ErrorCode.NONE, "base_offset": -1,
            "log_append_time_ms": -1, "log_start_offset": -1}


def refusal_code(worker, tp, exc: Exception) -> int:
    """The error code a client gets for an append that raised exc (logged where the
    operator should see it); exc itself when it is not an append refusal."""
    if isinstance(exc, (CorruptRecordError, MessageTooLarge)):
        worker.log_bad_input(tp, exc)
        return (ErrorCode.CORRUPT_MESSAGE if isinstance(exc, CorruptRecordError)
                else ErrorCode.MESSAGE_TOO_LARGE)
    if isinstance(exc, SequenceError):
        return exc.error_code
    if isinstance(exc, LogClosedError):  # deleted or moved away since the request arrived
        return partition_error(worker, *tp)
    if isinstance(exc, OSError):  # the write, the index reservation, a failed flush
        worker.log_storage_error(tp, exc)
        return ErrorCode.KAFKA_STORAGE_ERROR
    raise exc


def _appended(worker, tp, plog, first: int, last: int, size: int) -> None:
    worker.partitions.appended(tp)
    worker.stats.produced(tp, last - first + 1, size)


def _answer(result: dict, base: int, plog, last: int, durable: list | None) -> None:
    result["base_offset"] = base
    result["log_start_offset"] = plog.log_start_offset
    if durable is not None:
        durable.append((plog, last))


def append_one(worker, tp, plog, records, result: dict, durable: list | None) -> None:
    """Append one request's records for tp now, idempotence checked; fill result with
    the offset or the error code. With durable, add (log, last offset) for acks=all."""
    try:
        base, last, appended = worker.producers.append(tp, plog, records)
    except Exception as exc:  # noqa: BLE001 - refusal_code re-raises what is not a refusal
        result["error_code"] = refusal_code(worker, tp, exc)
        return
    if appended:  # not a retried duplicate answered with its first offsets
        _appended(worker, tp, plog, base, last, len(records))
    _answer(result, base, plog, last, durable)


class AnswerAfterRun:
    """A Produce response whose offsets are filled in when the run's appends are
    applied: the connection then calls `when_ready`."""

    __slots__ = ("response", "durable")

    def __init__(self, response: dict, durable: list | None):
        self.response = response
        self.durable = durable  # acks=all: (log, last offset) to wait for, once applied

    def when_ready(self, callback) -> None:
        """callback(response) now, or for acks=all once every log in durable has flushed
        its offset (at once if it already has)."""
        durable = self.durable
        if not durable:
            callback(self.response)
            return
        remaining = [len(durable)]

        def one_done(_hw):
            remaining[0] -= 1
            if remaining[0] == 0:
                callback(self.response)

        for plog, last in durable:
            plog.when_durable(last, one_done)


class AppendBatch:
    """The pending appends of the current run of frames, by partition in arrival order."""

    def __init__(self, worker):
        self.worker = worker
        self._pending: dict[tuple[str, int], list] = {}

    def add(self, tp, plog, records, result: dict, durable: list | None) -> None:
        """Append records to tp at the end of the run, filling result; with durable
        (acks=all), add (log, last offset) to it then."""
        entry = (plog, records, result, durable)
        entries = self._pending.get(tp)
        if entries is None:
            self._pending[tp] = [entry]
        else:
            entries.append(entry)

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
        """One append of the entries' records (plain batches: no sequences to check)."""
        worker, plog = self.worker, entries[0][0]
        joined = (entries[0][1] if len(entries) == 1 else
                  bytearray().join(entry[1] for entry in entries))
        try:
            appended = plog.append(joined)
        except Exception as exc:  # noqa: BLE001 - refusal_code re-raises the unexpected
            if len(entries) > 1 and isinstance(exc, (CorruptRecordError, MessageTooLarge)):
                for entry in entries:  # nothing was written: only the culprit is refused
                    append_one(worker, tp, *entry)
                return
            code = refusal_code(worker, tp, exc)
            for entry in entries:
                entry[2]["error_code"] = code
            return
        last = appended.last_offset  # all of the run's appends become durable together
        _appended(worker, tp, plog, appended.base_offset, last, len(joined))
        position = 0
        for _, records, result, durable in entries:
            _answer(result, _BASE_OFFSET.unpack_from(joined, position)[0], plog, last,
                    durable)
            position += len(records)
