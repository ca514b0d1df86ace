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
- acks=all answers wait, after the run, for the high watermark to pass the run's
  appends (durable on every ISR member), at most the request's timeout_ms (then
  REQUEST_TIMED_OUT for the partitions not yet durable); a log fenced by a failed sync,
  or closing, answers its partitions at once (KAFKA_STORAGE_ERROR), one this node
  stopped leading NOT_LEADER_OR_FOLLOWER; one whose ISR shrank below
  min.insync.replicas meanwhile NOT_ENOUGH_REPLICAS_AFTER_APPEND.
- A joined append is all or nothing (PartitionLog.append). When it fails on bad input,
  each request is appended alone, so only the bad request gets the error.
- Nothing is pending between runs: the connection applies at the end of every run,
  also when the run ends in an error.
"""
from __future__ import annotations

import struct
from functools import partial

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


def _answer(tp, result: dict, base: int, plog, last: int, durable: list | None) -> None:
    result["base_offset"] = base
    result["log_start_offset"] = plog.log_start_offset
    if durable is not None:
        durable.append((plog, last, result, tp))


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
    _answer(tp, result, base, plog, last, durable)


class AnswerAfterRun:
    """A Produce response whose offsets are filled in when the run's appends are
    applied: the connection then calls `when_ready`."""

    __slots__ = ("response", "durable", "timeout_ms", "isr_short")

    def __init__(self, response: dict, durable: list | None, timeout_ms: int = 0,
                 isr_short=None):
        self.response = response
        self.durable = durable  # acks=all: (log, last offset, result, tp), once applied
        self.timeout_ms = timeout_ms
        self.isr_short = isr_short  # tp -> the ISR is below min.insync.replicas

    def when_ready(self, callback, loop) -> None:
        """callback(response) now, or for acks=all once every log in durable has flushed
        its offset (at once if it already has), a log refused to, or timeout_ms passed."""
        if not self.durable:
            callback(self.response)
            return
        _DurableWait(self, callback, loop)


class _DurableWait:
    """One acks=all answer waiting for its partitions' flushes (Kafka's DelayedProduce):
    each partition's result is final once its log says durable or failed; the answer
    goes when all are, or at the deadline with REQUEST_TIMED_OUT for the rest."""

    __slots__ = ("answer", "callback", "pending", "timer")

    def __init__(self, answer: AnswerAfterRun, callback, loop):
        self.answer = answer
        self.callback = callback
        self.pending = {id(result) for _plog, _last, result, _tp in answer.durable}
        self.timer = None
        for plog, last, result, tp in answer.durable:
            plog.when_durable(last, partial(self._one_done, result, tp))
        if self.pending:
            self.timer = loop.call_later(max(answer.timeout_ms, 0) / 1000, self._expire)

    def _one_done(self, result: dict, tp, error) -> None:
        if id(result) not in self.pending:
            return  # answered already (timed out), or a second entry of this partition
        if error is not None:
            result["error_code"] = getattr(error, "error_code", ErrorCode.KAFKA_STORAGE_ERROR)
        elif self.answer.isr_short is not None and self.answer.isr_short(tp):
            result["error_code"] = ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND
        self.pending.discard(id(result))
        if not self.pending:
            self._finish()

    def _expire(self) -> None:
        self.timer = None
        for _plog, _last, result, _tp in self.answer.durable:
            if id(result) in self.pending:
                result["error_code"] = ErrorCode.REQUEST_TIMED_OUT
        self.pending.clear()
        self._finish()

    def _finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.callback(self.answer.response)


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
            _answer(tp, result, _BASE_OFFSET.unpack_from(joined, position)[0], plog, last,
                    durable)
            position += len(records)
