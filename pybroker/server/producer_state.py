"""Idempotent producers: per partition and producer id, the epoch and the sequence
ranges of the last five batches, with the offsets they were given (Kafka's window).

Rules, checked before anything is appended:
- producer id -1: not idempotent, appended as is;
- an epoch below the known one: INVALID_PRODUCER_EPOCH;
- a sequence range equal to one of the last five: a retried duplicate; not appended
  again, answered with its original offsets;
- otherwise the first sequence must follow the last one (0 for a new epoch or a
  producer not seen yet); a gap is OUT_OF_ORDER_SEQUENCE_NUMBER, and an unknown
  producer starting past 0 is UNKNOWN_PRODUCER_ID.
The table survives restarts: it is snapshotted to `producer-state.json` in the
partition directory (on close and periodically), and the batches after the snapshot
are replayed from the log when the partition opens, so a crash loses nothing.
Owned by the worker's event loop; not thread-safe.
"""
from __future__ import annotations

import json
import logging
import os
import struct
from collections import deque

from pybroker.log import PartitionLog, files
from pybroker.protocol import ErrorCode
from pybroker.records import parse_batches

log = logging.getLogger("pybroker.server")

WINDOW = 5                       # batches remembered per producer (Kafka's limit)
SNAPSHOT_FILE = "producer-state.json"
SEQ_MODULO = 2**31               # sequence numbers wrap at int32
_PRODUCER_FIELDS = struct.Struct(">qhi")  # producerId, producerEpoch, baseSequence @ 43
_PRODUCER_ID = struct.Struct(">q")         # producerId @ 43
_LAST_DELTA = struct.Struct(">i")          # lastOffsetDelta @ 23
_LENGTH = struct.Struct(">i")              # batchLength @ 8
REPLAY_READ_BYTES = 1 << 20


class SequenceError(Exception):
    def __init__(self, error_code: ErrorCode, message: str):
        super().__init__(message)
        self.error_code = error_code


class _Producer:
    __slots__ = ("epoch", "batches")

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.batches: deque = deque(maxlen=WINDOW)  # (first_seq, last_seq, base, last)


def is_idempotent(records) -> bool:
    """True when the first batch carries a producer id (sequences to check)."""
    return len(records) >= 61 and _PRODUCER_ID.unpack_from(records, 43)[0] >= 0


def _header(records) -> tuple[int, int, int, int]:
    """(producer id, epoch, first sequence, record count) of the records of a request."""
    if len(records) < 61:
        return -1, -1, -1, 0
    pid, epoch, seq = _PRODUCER_FIELDS.unpack_from(records, 43)
    count, pos = 0, 0
    while pos + 61 <= len(records):
        count += _LAST_DELTA.unpack_from(records, pos + 23)[0] + 1
        pos += _LENGTH.unpack_from(records, pos + 8)[0] + 12
    return pid, epoch, seq, count


class ProducerStates:
    def __init__(self):
        self._tables: dict[tuple[str, int], dict[int, _Producer]] = {}

    def append(self, tp, plog: PartitionLog, records) -> tuple[int, int, bool]:
        """Check sequences and append; (base offset, last offset, newly appended)."""
        if not is_idempotent(records):
            result = plog.append(records)  # nothing to check (hot path)
            return result.base_offset, result.last_offset, True
        pid, epoch, first_seq, count = _header(records)
        table = self._tables.setdefault(tp, {})
        last_seq = (first_seq + count - 1) % SEQ_MODULO
        producer = table.get(pid)
        duplicate = self._check(tp, pid, producer, epoch, first_seq, last_seq)
        if duplicate is not None:
            return duplicate[2], duplicate[3], False
        result = plog.append(records)
        if producer is None or producer.epoch != epoch:
            producer = table[pid] = _Producer(epoch)
        producer.batches.append((first_seq, last_seq, result.base_offset, result.last_offset))
        return result.base_offset, result.last_offset, True

    @staticmethod
    def _check(tp, pid, producer, epoch, first_seq, last_seq):
        where = f"tp={tp[0]}-{tp[1]} producer={pid}"
        if producer is None:
            if first_seq != 0:
                raise SequenceError(ErrorCode.UNKNOWN_PRODUCER_ID,
                                    f"{where}: unknown producer starting at sequence {first_seq}")
            return None
        if epoch < producer.epoch:
            raise SequenceError(ErrorCode.INVALID_PRODUCER_EPOCH,
                                f"{where}: epoch {epoch} is older than {producer.epoch}")
        if epoch > producer.epoch:
            if first_seq != 0:
                raise SequenceError(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                                    f"{where}: new epoch {epoch} starts at {first_seq}, not 0")
            return None
        for batch in producer.batches:
            if batch[0] == first_seq and batch[1] == last_seq:
                return batch
        expected = (producer.batches[-1][1] + 1) % SEQ_MODULO if producer.batches else 0
        if first_seq != expected:
            raise SequenceError(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                                f"{where}: sequence {first_seq}, expected {expected}")
        return None

    # --- persistence -----------------------------------------------------------------

    def save(self, tp, plog: PartitionLog) -> None:
        table = self._tables.get(tp, {})
        data = {"offset": plog.log_end_offset, "producers": {
            str(pid): {"epoch": p.epoch, "batches": list(p.batches)} for pid, p in table.items()}}
        files.write_atomic(os.path.join(plog.directory, SNAPSHOT_FILE),
                           json.dumps(data).encode())

    def load(self, tp, plog: PartitionLog) -> None:
        """Restore a partition's table: the snapshot, then the batches after it."""
        table: dict[int, _Producer] = {}
        start = plog.log_start_offset
        path = os.path.join(plog.directory, SNAPSHOT_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data["offset"] <= plog.log_end_offset:
                for pid, p in data["producers"].items():
                    producer = table[int(pid)] = _Producer(p["epoch"])
                    producer.batches.extend(tuple(b) for b in p["batches"])
                start = max(start, data["offset"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("tp=%s unreadable %s (%s); replaying the whole log", plog.name,
                        SNAPSHOT_FILE, exc)
            table = {}
        self._tables[tp] = table
        self._replay(table, plog, start)

    @staticmethod
    def _replay(table: dict, plog: PartitionLog, offset: int) -> None:
        while offset < plog.high_watermark:
            piece = plog.read(offset, REPLAY_READ_BYTES)
            if piece is None:
                break
            batches = parse_batches(piece.read_bytes())
            if not batches:
                break
            for b in batches:
                if b.producer_id >= 0 and b.last_offset >= offset:
                    producer = table.get(b.producer_id)
                    if producer is None or producer.epoch != b.producer_epoch:
                        producer = table[b.producer_id] = _Producer(b.producer_epoch)
                    last_seq = (b.base_sequence + b.last_offset_delta) % SEQ_MODULO
                    producer.batches.append((b.base_sequence, last_seq, b.base_offset,
                                             b.last_offset))
            offset = batches[-1].last_offset + 1

    def forget(self, tp) -> None:
        self._tables.pop(tp, None)
