"""Idempotent producers: per partition and producer id, the epoch and the sequence
ranges of the last five batches, with the offsets they were given (Kafka's window).

Rules, checked after the C scan validated the request's records and before anything
is written (PartitionLog.append's `check`); the producer fields come from that scan,
so no header byte is read in Python before C has checked it:
- producer id -1: not idempotent, appended as is;
- more than one batch, or a negative base sequence: INVALID_RECORD, as Kafka's
  LogValidator refuses any v2 request holding more than one batch for a partition;
- an epoch below the known one: INVALID_PRODUCER_EPOCH;
- a sequence range equal to one of the last five: a retried duplicate; not appended
  again, answered with its original offsets;
- otherwise the first sequence must follow the last one (0 for a new epoch or a
  producer not seen yet); a gap is OUT_OF_ORDER_SEQUENCE_NUMBER, and an unknown
  producer starting past 0 is UNKNOWN_PRODUCER_ID.

The table survives restarts: `snapshot` serializes it (on the event loop) to bytes for
`write_snapshot` (on a storage thread) to store as `producer-state.json` in the
partition directory, only when it changed or the log rolled past the stored one, so
the replay at open reads at most about one segment. `load` replays the batches after
the snapshot through the C walk's per-batch output, so a crash loses nothing.
Owned by the worker's event loop; not thread-safe, except that `load` may run on a
storage thread for a partition the loop does not see yet: it publishes its table by a
single assignment at its end.
"""
from __future__ import annotations

import json
import logging
import os
from collections import deque

from pybroker import core
from pybroker.errors import CorruptLogError
from pybroker.log import PartitionLog, files
from pybroker.protocol import ErrorCode
from pybroker.records import FIELDS, HEADER_SIZE, PRODUCER_ID_AT

log = logging.getLogger("pybroker.server")

WINDOW = 5                       # batches remembered per producer (Kafka's limit)
SNAPSHOT_FILE = "producer-state.json"
SEQ_MODULO = 2**31               # sequence numbers wrap at int32
# Replay reads the log in pieces this large: 4 MiB holds ~60,000 one-record batches, so
# the per-piece cost (a read, a C call) is noise beside the ~200 ns a batch of the apply
# loop, and a load holds ~6 MB (the piece and its info array, 32 bytes for each 61
# bytes) however long the log, whichever storage thread runs it.
REPLAY_READ_BYTES = 4 << 20
_PRODUCER_ID = FIELDS["producer_id"]


class SequenceError(Exception):
    def __init__(self, error_code: ErrorCode, message: str):
        super().__init__(message)
        self.error_code = error_code


class _Duplicate(Exception):
    """A retried batch: raised by the append check so nothing is written, caught by
    ProducerStates.append, which answers with the offsets it was first given."""

    def __init__(self, base_offset: int, last_offset: int):
        super().__init__(base_offset, last_offset)
        self.base_offset = base_offset
        self.last_offset = last_offset


class _Producer:
    __slots__ = ("epoch", "batches")

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.batches: deque = deque(maxlen=WINDOW)  # (first_seq, last_seq, base, last)


class _Table:
    """One partition's producers, and how they relate to its stored snapshot."""

    __slots__ = ("producers", "changed", "snapshot_offset")

    def __init__(self, producers: dict[int, _Producer], changed: bool, snapshot_offset: int):
        self.producers = producers
        self.changed = changed                  # differs from the stored snapshot
        self.snapshot_offset = snapshot_offset  # the stored snapshot's offset; -1: none


def is_idempotent(records) -> bool:
    """True when the first batch carries a producer id, so the append must go through
    ProducerStates.append. Reads nothing but that field (any bytes are safe; C
    validates them later); a request too short to hold it is not idempotent."""
    return (len(records) >= HEADER_SIZE and
            _PRODUCER_ID.unpack_from(records, PRODUCER_ID_AT)[0] >= 0)


def write_snapshot(directory: str, data: bytes) -> None:
    """Store a `ProducerStates.snapshot` durably and atomically (any thread)."""
    files.write_atomic(os.path.join(directory, SNAPSHOT_FILE), data)


class ProducerStates:
    def __init__(self):
        self._tables: dict[tuple[str, int], _Table] = {}
        self._infos: core.BatchInfos | None = None  # the loop's, for `replicated`

    def append(self, tp, plog: PartitionLog, records) -> tuple[int, int, bool]:
        """Check sequences and append; (base offset, last offset, newly appended)."""
        if not is_idempotent(records):
            result = plog.append(records)  # nothing to check (hot path)
            return result.base_offset, result.last_offset, True
        table = self._tables.get(tp)
        if table is None:
            table = self._tables[tp] = _Table({}, False, -1)
        admitted = []

        def check(scan: core.Scan) -> None:
            admitted.append(self._check(tp, table.producers, scan))

        try:
            result = plog.append(records, check=check)
        except _Duplicate as dup:
            return dup.base_offset, dup.last_offset, False
        verdict = admitted[0]
        if verdict is not None:
            pid, epoch, first_seq, last_seq = verdict
            producer = table.producers.get(pid)
            if producer is None or producer.epoch != epoch:
                producer = table.producers[pid] = _Producer(epoch)
            producer.batches.append((first_seq, last_seq, result.base_offset,
                                     result.last_offset))
            table.changed = True
        return result.base_offset, result.last_offset, True

    @staticmethod
    def _check(tp, producers: dict[int, _Producer], scan: core.Scan):
        """(producer id, epoch, first sequence, last sequence) to record once the
        validated records are written, None when they carry no producer id; raises
        SequenceError to refuse them, _Duplicate for a retry."""
        pid, epoch, first_seq = scan.producer_id, scan.producer_epoch, scan.base_sequence
        if pid < 0:
            return None
        where = f"tp={tp[0]}-{tp[1]} producer={pid}"
        if scan.batches != 1:
            raise SequenceError(ErrorCode.INVALID_RECORD,
                                f"{where}: {scan.batches} batches in one request; an "
                                "idempotent producer sends one batch per partition")
        if first_seq < 0:
            raise SequenceError(ErrorCode.INVALID_RECORD,
                                f"{where}: invalid base sequence {first_seq}")
        last_seq = (first_seq + scan.records - 1) % SEQ_MODULO
        producer = producers.get(pid)
        if producer is None:
            if first_seq != 0:
                raise SequenceError(ErrorCode.UNKNOWN_PRODUCER_ID,
                                    f"{where}: unknown producer starting at sequence {first_seq}")
        elif epoch < producer.epoch:
            raise SequenceError(ErrorCode.INVALID_PRODUCER_EPOCH,
                                f"{where}: epoch {epoch} is older than {producer.epoch}")
        elif epoch > producer.epoch:
            if first_seq != 0:
                raise SequenceError(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                                    f"{where}: new epoch {epoch} starts at {first_seq}, not 0")
        else:
            for batch in producer.batches:
                if batch[0] == first_seq and batch[1] == last_seq:
                    raise _Duplicate(batch[2], batch[3])
            expected = (producer.batches[-1][1] + 1) % SEQ_MODULO if producer.batches else 0
            if first_seq != expected:
                raise SequenceError(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                                    f"{where}: sequence {first_seq}, expected {expected}")
        return pid, epoch, first_seq, last_seq

    # --- persistence -----------------------------------------------------------------

    def snapshot(self, tp, plog: PartitionLog) -> bytes | None:
        """tp's table serialized for write_snapshot, as of plog's log end offset; None
        when the stored snapshot is still good enough: the table has not changed since
        it and the log has not rolled past its offset (replay then reads at most the
        active segment). Taking it counts as stored: a failed write only lengthens
        the next replay, until the next change or roll takes another."""
        table = self._tables.get(tp)
        if table is None:
            table = self._tables[tp] = _Table({}, True, -1)
        active_base = plog.segment_bases()[-1]
        if not table.changed and table.snapshot_offset >= active_base:
            return None
        offset = plog.log_end_offset
        data = {"offset": offset, "producers": {
            str(pid): {"epoch": p.epoch, "batches": list(p.batches)}
            for pid, p in table.producers.items()}}
        table.changed = False
        table.snapshot_offset = offset
        return json.dumps(data).encode()

    def save(self, tp, plog: PartitionLog) -> None:
        """snapshot + write_snapshot on the caller's thread (for callers that block)."""
        data = self.snapshot(tp, plog)
        if data is not None:
            write_snapshot(plog.directory, data)

    def load(self, tp, plog: PartitionLog) -> None:
        """Restore a partition's table: the snapshot, then the batches after it up to
        the high watermark. May run on a storage thread while the loop does not serve
        tp: the table is published only at the end, in one assignment."""
        producers: dict[int, _Producer] = {}
        snapshot_offset = -1
        path = os.path.join(plog.directory, SNAPSHOT_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            offset = data["offset"]
            if not isinstance(offset, int) or offset > plog.log_end_offset:
                # a snapshot taken of appends that a crash then lost: replay them all
                log.warning("tp=%s %s offset %r is beyond the log end %d; replaying the "
                            "whole log", plog.name, SNAPSHOT_FILE, offset, plog.log_end_offset)
            else:
                for pid, p in data["producers"].items():
                    producer = producers[int(pid)] = _Producer(int(p["epoch"]))
                    producer.batches.extend(tuple(int(v) for v in b) for b in p["batches"])
                snapshot_offset = offset
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("tp=%s unreadable %s (%s); replaying the whole log", plog.name,
                        SNAPSHOT_FILE, exc)
            producers = {}
        start = max(plog.log_start_offset, snapshot_offset)
        replayed = _replay(producers, plog, start)
        self._tables[tp] = _Table(producers, replayed > 0, snapshot_offset)

    def forget(self, tp) -> None:
        self._tables.pop(tp, None)

    def replicated(self, tp, batches) -> None:
        """A follower appended `batches` (copied from its leader, validated by the
        append): record their producers as the leader's appends did, so this replica
        checks sequences right away if it becomes leader."""
        table = self._tables.get(tp)
        if table is None:
            table = self._tables[tp] = _Table({}, False, -1)
        if self._infos is None or self._infos.max_bytes < len(batches):
            self._infos = core.BatchInfos(max(len(batches), REPLAY_READ_BYTES))
        scan, packed, _error = core.scan_batch_infos(batches, self._infos)
        if _apply_infos(table.producers, packed, scan.first_offset if scan.batches else 0):
            table.changed = True


def _replay(producers: dict[int, _Producer], plog: PartitionLog, offset: int) -> int:
    """Apply the batches from offset to the log end to producers, as appends did;
    returns how many carried a producer id. Called at open (the log end is durable
    then) and by a follower after a cut of its log (synced first). Header fields come
    from the C walk (which also checks each CRC); damage raises CorruptLogError, since
    those batches are durable."""
    infos = core.BatchInfos(REPLAY_READ_BYTES)
    applied = 0
    hw = plog.log_end_offset
    while offset < hw:
        piece = plog.read(offset, REPLAY_READ_BYTES, to_log_end=True)
        if piece is None:
            break
        data = piece.read_bytes()
        if len(data) > infos.max_bytes:  # one batch larger than a piece: read() gives it whole
            infos = core.BatchInfos(len(data))
        scan, packed, error = core.scan_batch_infos(data, infos)
        if scan.batches == 0:
            raise CorruptLogError(
                f"tp={plog.name} file={piece.file.path} position={piece.position}: "
                f"producer-state replay at offset {offset} found {error or 'no batch'} "
                f"below the log end {hw}")
        applied += _apply_infos(producers, packed, offset)
        offset = scan.last_offset + 1
    return applied


def _apply_infos(producers: dict[int, _Producer], packed, offset: int) -> int:
    """Apply the C walk's per-batch infos (batches ending at or after offset) to
    producers, as appends did; how many carried a producer id."""
    get = producers.get
    applied = 0
    for base, pid, delta, seq, epoch, _attributes, _length in \
            core.BATCH_INFO_LAYOUT.iter_unpack(packed):
        if pid < 0 or base + delta < offset:
            continue
        producer = get(pid)
        if producer is None or producer.epoch != epoch:
            producer = producers[pid] = _Producer(epoch)
        producer.batches.append((seq, (seq + delta) % SEQ_MODULO, base, base + delta))
        applied += 1
    return applied
