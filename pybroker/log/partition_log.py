"""The log of one partition (paper P4-P12): a sorted table of segments addressed by offset.

Offsets (P6): log_start_offset <= high_watermark <= durable_offset <= log_end_offset,
where
- log_end_offset is the next offset to assign,
- durable_offset is one past the last flushed message: this node's group commit (P5).
  Flush tickets, the recovery point, scrubs and `verify` work below it.
- high_watermark is what reads and acks=all (`when_durable`) see. With no replication
  bound (the default, and every standalone log) it is the durable offset: a message is
  visible once flushed (P5). With one (`set_replication_bound`, the smallest fetch
  offset of the in-sync followers) it is max(itself, min(durable_offset, bound)): a
  message is visible once flushed here and copied by every in-sync follower. It never
  goes down, except by a follower's truncate_to / reset_to.
Followers fetch up to the log end (`read(to_log_end=True)`): they copy before the
leader's fsync. The flushed bytes end at position _durable_position of the segment based
at _durable_base, the visible ones at _hw_position of _hw_base; only the durable
segment and the ones after it hold unflushed bytes.
Two ways to flush. Standalone (no `on_flush_due`): the flush policy flushes in place,
inside append, and a roll flushes first, so only the active segment holds unflushed
bytes. Owner-driven (a worker's LogManager passes `on_flush_due`): the log never
syncs on the caller's thread; it calls on_flush_due() when the policy says a flush is
due, and the owner runs a FlushTicket (begin_flush / end_flush) on a storage thread. A
roll then seals a segment that may still hold unflushed bytes: the next ticket syncs
every segment from the durable offset's on, and the directory entry of a new segment.
Segments are found by bisecting the in-memory sorted list of base offsets (P8); the
page cache is the only cache (P9). Retention deletes whole non-active segments by age
or total size and advances the log start offset (P11); any retained offset can be read
again (P12). Owned by one worker; not thread-safe.
Replicas: the leader stamps its epoch into the batches it appends (append's
leader_epoch); `epochs` (leader_epochs.py) records where each epoch starts. A follower
appends the leader's batches as they are (append_replica), cuts its log at a divergence
point (truncate_to) or restarts it empty at the leader's log start (reset_to); both lower
the recovery point durably before they touch a file, so a crash midway reopens a log
that ends at or above its recovery point.
Opening after a crash scans the segments from the recovery point on (P22); damage to
offsets below the recovery point, or a log that ends below it, raises CorruptLogError
and changes nothing: those offsets were acknowledged as durable.
"""
from __future__ import annotations

import bisect
import heapq
import logging
import os
import struct
import time
from typing import Callable, NamedTuple

from pybroker import core, failpoints
from pybroker.errors import (CoreError, CorruptLogError, LogClosedError, LogSyncFailedError,
                             MessageTooLarge, OffsetOutOfRange, PyBrokerError)
from pybroker.log import checkpoint, files
from pybroker.log.config import LogConfig
from pybroker.log.leader_epochs import LeaderEpochCache
from pybroker.log.segment import (LogSegment, RangeCheck, SegmentFile, check_range,
                                  offsets_contiguous)

log = logging.getLogger("pybroker.log")
_tuple_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (hot path)
# baseOffset, batchLength, partitionLeaderEpoch: the first 16 bytes of a batch (csrc/batch.h)
_BATCH_PREFIX = struct.Struct(">qii")
_MIN_BATCH_LENGTH = core.BATCH_HEADER_SIZE - core.BATCH_LOG_OVERHEAD  # batchLength of 0 records


class ReplicaOffsetMismatch(PyBrokerError, ValueError):
    """A follower's append whose batches do not continue its log: the first base offset
    is not the log end offset, or the offsets that follow have a gap."""


class FlushInProgress(PyBrokerError, RuntimeError):
    """truncate_to / reset_to while a begin_flush ticket is out: end it first."""


class LogTruncatedError(PyBrokerError):
    """The offset an acks=all waiter waited for was cut from the log (truncate_to,
    reset_to) before it became visible: it never will be."""


def whole_batches(buf) -> int:
    """How many leading bytes of buf are whole RecordBatches, by their batchLength fields
    alone (a fetch response may end inside a batch that max_bytes cut). The walk stops
    at the first batch that runs past the end of buf or whose batchLength is below the
    header's; append_replica then validates (CRC included) what it covered."""
    size = len(buf)
    pos = 0
    while pos + core.BATCH_LOG_OVERHEAD <= size:
        length = int.from_bytes(buf[pos + 8:pos + 12], "big", signed=True)
        if length < _MIN_BATCH_LENGTH or pos + core.BATCH_LOG_OVERHEAD + length > size:
            break
        pos += core.BATCH_LOG_OVERHEAD + length
    return pos


def _batch_epochs(buf, end: int):
    """(base offset, partitionLeaderEpoch) of each batch in buf[0:end), whole batches
    already validated by a scan."""
    pos = 0
    while pos < end:
        base, length, epoch = _BATCH_PREFIX.unpack_from(buf, pos)
        yield base, epoch
        pos += core.BATCH_LOG_OVERHEAD + length


class AppendResult(NamedTuple):
    base_offset: int  # first offset assigned
    last_offset: int  # last offset assigned
    records: int
    max_timestamp: int


class FileSlice(NamedTuple):
    """A byte range of a segment file for a zero-copy fetch (P10). The range starts on a
    batch boundary and may end inside a batch when max_bytes cut it, as in Kafka; it
    holds the segment's file open until it is dropped."""

    file: SegmentFile
    position: int
    length: int
    base_offset: int  # base offset of the first batch in the range

    @property
    def fd(self) -> int:
        return self.file.fd

    def read_bytes(self) -> bytes:
        return os.pread(self.file.fd, self.length, self.position)


class FlushTicket:
    """A group commit under way off the owner's thread (PartitionLog.begin_flush): an
    fdatasync of each segment holding unflushed bytes, through duplicates of their fds
    (closing a segment meanwhile neither breaks the sync nor lets it reach a reused fd),
    then an fsync of the directory when a segment was created since the last ticket.
    It covers the offsets below `offset`: the bytes below `position` of the segment
    based at `base`, and all of the segments before it."""

    __slots__ = ("syncs", "directory", "offset", "base", "position", "seconds")

    def __init__(self, syncs: list[tuple[int, str, int]], directory: str | None,
                 offset: int, base: int, position: int):
        self.syncs = syncs          # (dup fd, path, bytes covered) per segment
        self.directory = directory  # fsync'd after the segments, when not None
        self.offset = offset
        self.base = base
        self.position = position
        self.seconds = 0.0

    def sync(self) -> None:
        """fdatasync and release the fds; safe on any thread, once."""
        started = time.perf_counter()
        try:
            for fd, path, covers in self.syncs:
                files.fdatasync(fd, path, covers)
            if self.directory is not None:
                files.fsync_dir(self.directory)
        finally:
            self.release()
        self.seconds = time.perf_counter() - started

    def release(self) -> None:
        """Close the duplicated fds without syncing (a ticket dropped unsynced)."""
        syncs, self.syncs = self.syncs, []
        for fd, _path, _covers in syncs:
            os.close(fd)


def _check_segment_end(check: RangeCheck, next_offset: int) -> RangeCheck:
    """A whole, valid sealed segment must end where the next one starts."""
    if check.problem is not None or check.next_offset == next_offset:
        return check
    return check._replace(problem=f"the segment ends at offset {check.next_offset}, but "
                                  f"the next segment starts at {next_offset}")


class ScrubTarget(NamedTuple):
    """A sealed segment to scrub off the owner's thread: a duplicate fd of its file, so
    retention or a close meanwhile neither breaks the read nor reaches a reused fd."""

    owner: str
    segment: str
    path: str
    fd: int
    size: int
    base_offset: int
    next_offset: int

    def check(self, pace: Callable[[int], None] | None = None) -> str | None:
        """On any thread, once: a description of the damage found, or None. Closes fd."""
        try:
            check = _check_segment_end(check_range(self.fd, 0, self.size, self.base_offset,
                                                   pace, chunk_bytes=1 << 20),
                                       self.next_offset)
        finally:
            os.close(self.fd)
        if check.problem is None:
            return None
        return (f"{self.owner} {self.segment} file={self.path} position={check.position}: "
                f"{check.problem}")


def write_recovery_point(directory: str, point: int, owner: str) -> bool:
    """Write a recovery-point checkpoint durably; False (logged) when it failed, e.g. on
    a full disk, which leaves the older one: recovery then only scans more. Safe on any
    thread (an owner's storage thread writes what checkpoint_due returned)."""
    try:
        checkpoint.write_recovery_point(directory, point)
    except OSError as exc:
        log.error("%s cannot write the recovery point %d: %s", owner, point, exc)
        return False
    return True


class PartitionLog:
    def __init__(self, directory: str, config: LogConfig | None = None, *,
                 name: str | None = None, clock: Callable[[], float] = time.time,
                 on_flush: Callable[[int, float], None] | None = None,
                 on_flush_due: Callable[[], None] | None = None,
                 monotonic: Callable[[], float] | None = None,
                 on_hw: Callable[[int], None] | None = None,
                 replication_bound: int | None = None):
        self.directory = directory
        self.config = config or LogConfig()
        self.name = name or os.path.basename(os.path.normpath(directory))
        self.owner = f"tp={self.name}"
        self._clock = clock                  # wall clock: record times, rolls, retention
        self._monotonic = monotonic or clock  # flush deadlines (tests inject one clock)
        self._on_flush_due = on_flush_due    # owner-driven flushes (see the module doc)
        self._segments: list[LogSegment] = []
        self._bases: list[int] = []          # base offsets of _segments, for bisect (P8)
        self._next_offset = 0                # log end offset
        self._durable = 0                    # durable offset: one past the last flushed
        self._durable_base = 0               # base offset of the segment the flushed bytes end in
        self._durable_position = 0           # bytes of that segment that are flushed
        self._hw = 0                         # high watermark: one past the last visible
        self._hw_base = 0                    # base offset of the segment the visible bytes end in
        self._hw_position = 0                # bytes of that segment that are visible
        self._bound = replication_bound      # None: visible once flushed (see the module doc)
        self._dir_dirty = False              # a segment was created since the last ticket
        self._unflushed_messages = 0
        self._first_unflushed_ms: int | None = None
        self._recovery_point = 0             # last checkpointed offset
        self._last_checkpoint_ms = 0
        self._durable_waiters: list[tuple[int, int, Callable]] = []  # heap by offset
        self._waiter_seq = 0                 # tie-break: equal offsets wake in call order
        self._on_flush = on_flush            # (new durable offset, fdatasync seconds)
        self._on_hw = on_hw                  # (new high watermark), each time it moves
        self.flush_count = 0                 # fdatasyncs done (group commits)
        self._flush_ticket: FlushTicket | None = None  # a flush under way off-thread
        self._sync_error: BaseException | None = None  # a failed fdatasync fences the log
        self.closed = False
        self.leader_epoch: int | None = None  # stamped into appends (the owner leads)
        os.makedirs(directory, exist_ok=True)
        self._open()
        self.epochs = LeaderEpochCache(directory, self.owner)
        # a crash may have lost the tail of the log whose epochs the cache names
        self.epochs.truncate_from_end(self._next_offset)

    # --- offsets ---------------------------------------------------------------------

    @property
    def log_start_offset(self) -> int:
        return self._bases[0]

    @property
    def log_end_offset(self) -> int:
        return self._next_offset

    @property
    def high_watermark(self) -> int:
        """One past the last visible offset: what reads and acks=all see."""
        return self._hw

    @property
    def durable_offset(self) -> int:
        """One past the last offset flushed on this node."""
        return self._durable

    @property
    def replication_bound(self) -> int | None:
        return self._bound

    @property
    def recovery_point(self) -> int:
        return self._recovery_point

    def segment_bases(self) -> list[int]:
        return list(self._bases)

    def size_bytes(self) -> int:
        return sum(seg.size for seg in self._segments)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _mono_ms(self) -> int:
        return int(self._monotonic() * 1000)

    def _durable_end(self, seg: LogSegment) -> int:
        """Bytes of seg below the durable offset (for segments at or below its segment)."""
        return self._durable_position if seg.base_offset == self._durable_base else seg.size

    def _visible_end(self, seg: LogSegment) -> int:
        """Bytes of seg below the high watermark (for segments at or below its segment)."""
        return self._hw_position if seg.base_offset == self._hw_base else seg.size

    def _boundary_position(self, offset: int) -> tuple[int, int]:
        """(base offset of the segment, byte position) where the batch starting at offset
        starts; offset == log end gives the end of the active segment. ValueError when
        offset is inside a batch, or outside the log."""
        if offset == self._next_offset:
            active = self._segments[-1]
            return active.base_offset, active.size
        self._check_offset(offset)
        seg = self._segments[bisect.bisect_right(self._bases, offset) - 1]
        if offset == seg.base_offset:
            return seg.base_offset, 0
        batch = seg.seek(offset, seg.size)
        if batch is None or batch.base_offset != offset:
            where = (f"inside the batch of offsets {batch.base_offset}..{batch.last_offset} at "
                     f"position {batch.position}" if batch is not None else "not found")
            raise ValueError(f"{self.owner} {seg}: offset {offset} is {where}, not a batch "
                             "boundary")
        return seg.base_offset, batch.position

    def set_replication_bound(self, bound: int | None) -> bool:
        """Set what bounds the high watermark: None makes it the durable offset (every
        unreplicated log); an int, the smallest fetch offset of the in-sync followers (a
        batch boundary, as fetch offsets are), makes it max(itself, min(durable_offset,
        bound)). Wakes the acks=all waiters it passes and calls on_hw; True if the high
        watermark moved. ValueError (nothing changed) for a bound inside a batch."""
        if bound is not None and bound < 0:
            raise ValueError(f"{self.owner}: replication bound {bound} is negative")
        if bound is not None and self._hw < bound < self._next_offset:
            self._boundary_position(bound)  # checked now, not at a later flush's end
        previous, self._bound = self._bound, bound
        try:
            return self._raise_hw()
        except ValueError:
            self._bound = previous
            raise

    def _raise_hw(self, notify: bool = True) -> bool:
        """Move the high watermark up to min(durable offset, bound); True if it moved.
        With notify, wake the waiters it passed and call on_hw."""
        target = self._durable if self._bound is None else min(self._durable, self._bound)
        if target <= self._hw:
            return False
        if target == self._durable:
            base, position = self._durable_base, self._durable_position
        else:  # below the durable offset: the index finds where the batch at target starts
            try:
                base, position = self._boundary_position(target)
            except ValueError:
                # a bound given at open, or checked before a truncate_to and now inside a
                # batch appended since: the high watermark stops at that batch's start
                seg = self._segments[bisect.bisect_right(self._bases, target) - 1]
                batch = seg.seek(target, seg.size)
                target, base, position = batch.base_offset, seg.base_offset, batch.position
                if target <= self._hw:
                    return False
        self._hw, self._hw_base, self._hw_position = target, base, position
        if notify:
            self._wake_durable_waiters()
            if self._on_hw is not None:
                self._on_hw(target)
        return True

    # --- opening and recovery (P22) --------------------------------------------------

    def _open(self) -> None:
        clean = checkpoint.has_clean_shutdown_marker(self.directory)
        recovery_point = checkpoint.read_recovery_point(self.directory)
        self._remove_strays()
        bases = files.list_base_offsets(self.directory)
        if not bases:
            self._add_segment(LogSegment.create(self.directory, 0, self.config, self.owner))
        else:
            for base in bases:
                self._add_segment(LogSegment.open_existing(self.directory, base, self.config,
                                                           self.owner))
            for seg, nxt in zip(self._segments, bases[1:]):
                seg.next_offset = nxt
                if seg.size == 0 and nxt <= recovery_point:
                    # a sealed segment is never empty, and these offsets were durable:
                    # its data was lost (e.g. a write the disk acknowledged but dropped)
                    raise CorruptLogError(
                        f"{self.owner} {seg} file={seg.log_path} is empty, but offsets "
                        f"{seg.base_offset}..{nxt - 1} are below the recovery point "
                        f"{recovery_point}: durable data is missing. Nothing was changed")
            if clean:
                self._segments[-1].load_as_active()
            else:
                self._recover(recovery_point)
        active = self._segments[-1]
        if active.next_offset < recovery_point:
            # every offset below the recovery point was flushed before it was written, so
            # a shorter log lost durable data (a file cut at a batch boundary, a lost fsync)
            raise CorruptLogError(
                f"{self.owner} {active} file={active.log_path} size={active.size}: the log "
                f"ends at offset {active.next_offset}, below the recovery point "
                f"{recovery_point}, so durable data is missing. Nothing was truncated. To "
                "accept the loss, remove the partition's recovery-point checkpoint and reopen")
        self._next_offset = self._durable = active.next_offset
        self._durable_base, self._durable_position = active.base_offset, active.size
        # visible from the log start up to what the replication bound allows; quietly:
        # the owner's callbacks are for its own thread, and nobody waits yet
        self._hw, self._hw_base, self._hw_position = self._bases[0], self._bases[0], 0
        self._raise_hw(notify=False)
        if self._durable != recovery_point:
            self._write_checkpoint()
        else:  # unchanged (a clean close wrote it): two fsyncs saved per partition opened
            self._recovery_point, self._last_checkpoint_ms = recovery_point, self._mono_ms()
        if clean:
            checkpoint.remove_clean_shutdown_marker(self.directory)
        log.info("%s opened %s: segments=%d log_start=%d log_end=%d", self.owner,
                 "cleanly" if clean else "after recovery", len(self._segments),
                 self.log_start_offset, self._next_offset)

    def _remove_strays(self) -> None:
        """Temp files of interrupted atomic writes, indexes whose log is gone."""
        logs = set(files.list_base_offsets(self.directory))
        for name in os.listdir(self.directory):
            base = (files.parse_base_offset(name, files.INDEX_SUFFIX)
                    if name.endswith(files.INDEX_SUFFIX)
                    else files.parse_base_offset(name, files.TIME_INDEX_SUFFIX))
            if name.endswith(files.TEMP_SUFFIX) or (base is not None and base not in logs):
                log.warning("%s removing stray file %s", self.owner, name)
                os.unlink(os.path.join(self.directory, name))

    def _recover(self, recovery_point: int) -> None:
        """After an unclean stop: scan every segment that may hold offsets at or above
        the recovery point, truncate at the first bad batch, drop what follows it."""
        first = max(0, bisect.bisect_right(self._bases, recovery_point) - 1)
        last = len(self._segments) - 1
        self._segments[last].active = True
        for i in range(first, last + 1):
            seg = self._segments[i]
            result = seg.recover(recovery_point)
            if result.reason is None:
                seg.flush()  # what survived in the page cache is now made durable
                continue
            log.warning("%s %s file=%s position=%d: %s; truncated %d bytes", self.owner,
                        seg, seg.log_path, result.position, result.reason,
                        result.truncated_bytes)
            seg.flush()
            for later in self._segments[i + 1:]:
                log.warning("%s %s deleted: it follows the damage in %s", self.owner,
                            later, seg)
                later.delete()
            del self._segments[i + 1:]
            del self._bases[i + 1:]
            seg.active = True
            break
        for seg in self._segments[first:-1]:
            seg.seal()
        if self._segments[-1].cursor is None:
            self._segments[-1].load_as_active()

    def _add_segment(self, seg: LogSegment) -> None:
        self._segments.append(seg)
        self._bases.append(seg.base_offset)

    # --- appends, rolls and flushes (P4, P5) -----------------------------------------

    def append(self, batches, append_time: int | None = None,
               check: Callable[[core.Scan], None] | None = None,
               leader_epoch: int | None = None) -> AppendResult:
        """Validate (CRC included), stamp offsets into `batches` (a writable buffer of
        RecordBatch v2) and append them to the active segment. Visible to reads once
        flushed (and replicated, under a replication bound). Raises CorruptRecordError
        for a bad batch (nothing is written), MessageTooLarge above max_batch_bytes,
        LogSyncFailedError once a flush failed. `check(scan)` runs after validation and
        before the write (the idempotence check reads the producer fields the C scan
        returns); what it raises is raised, and nothing is written. A leader passes its
        leader_epoch (default: the attribute `leader_epoch`, which an owner sets while
        it leads): it is stamped into every batch, and recorded in `epochs` when it is
        new."""
        self._check_writable()
        if leader_epoch is None:
            leader_epoch = self.leader_epoch
        try:
            scan = core.scan_batches(batches, stamp_offset=self._next_offset,
                                     append_time=append_time,
                                     max_batch=self.config.max_batch_bytes,
                                     leader_epoch=leader_epoch)
        except CoreError as exc:
            if core.is_code(exc, "TOO_LARGE"):
                raise MessageTooLarge(f"{self.owner}: {exc} ({self.config.max_batch_bytes} "
                                      "bytes allowed)") from None
            raise
        if scan.batches == 0:
            raise ValueError(f"{self.owner}: nothing to append (empty buffer)")
        if check is not None:
            check(scan)
        if leader_epoch is not None and leader_epoch > self.epochs.latest_epoch():
            self.epochs.assign(leader_epoch, scan.first_offset)
        self._write(batches, scan)
        return AppendResult(scan.first_offset, scan.last_offset, scan.records,
                            scan.max_timestamp)

    def append_replica(self, batches) -> AppendResult:
        """A follower's append of batches copied from its leader, offsets and epochs as
        the leader stamped them: validated (CRC included, no size limit: the leader
        accepted them), not restamped. The first base offset must be the log end offset
        and the offsets must follow on without a gap, else ReplicaOffsetMismatch; a bad
        batch raises CorruptRecordError; either way nothing is written. Each batch's
        leader epoch above the latest known is recorded in `epochs` (before the write: a
        crash that loses the write leaves an entry at or past the log end, which the
        next open drops). Rolls and the flush policy are append's."""
        self._check_writable()
        expected = self._next_offset
        try:
            scan = core.scan_batches(batches, min_offset=expected)
        except CoreError as exc:
            if core.is_code(exc, "BAD_OFFSET"):  # a base offset below the one before
                base = _BATCH_PREFIX.unpack_from(batches, exc.position)[0]
                floor = exc.scan.last_offset + 1 if exc.scan.batches else expected
                raise ReplicaOffsetMismatch(
                    f"{self.owner}: replica batch at byte {exc.position} has base offset "
                    f"{base}, below {floor}; the log end offset is {expected}") from None
            raise
        if scan.batches == 0:
            raise ValueError(f"{self.owner}: nothing to append (empty buffer)")
        if scan.first_offset != expected:
            raise ReplicaOffsetMismatch(
                f"{self.owner}: replica batches start at offset {scan.first_offset}, the "
                f"log end offset is {expected}")
        if not offsets_contiguous(scan, expected):
            raise ReplicaOffsetMismatch(
                f"{self.owner}: replica batches from offset {expected} hold "
                f"{scan.records} records but end at offset {scan.last_offset}: a gap")
        self._learn_epochs(batches, scan)
        try:
            self._write(batches, scan)
        except BaseException:
            self.epochs.truncate_from_end(self._next_offset)  # nothing was written
            raise
        return AppendResult(scan.first_offset, scan.last_offset, scan.records,
                            scan.max_timestamp)

    def _learn_epochs(self, batches, scan: core.Scan) -> None:
        """Record the epochs of a follower's batches that are above the latest known: one
        assign when the scan says they share one epoch, else a walk of the headers."""
        if scan.epoch_changes == 0:
            if scan.last_leader_epoch > self.epochs.latest_epoch():
                self.epochs.assign(scan.last_leader_epoch, scan.first_offset)
            return
        for base, epoch in _batch_epochs(batches, scan.valid_bytes):
            if epoch > self.epochs.latest_epoch():
                self.epochs.assign(epoch, base)

    def _write(self, batches, scan: core.Scan) -> None:
        """Append validated, stamped batches to the active segment (rolling first when
        due) and apply the flush policy."""
        now = self._now_ms()
        if self._should_roll(len(batches), now):
            self.roll()
        try:
            self._segments[-1].append(batches, scan, now)
        except CoreError as exc:
            if not (core.is_code(exc, "INDEX_FULL") or core.is_code(exc, "OFFSET_OVERFLOW")):
                raise
            self.roll()  # the active segment's index or offset range is exhausted
            self._segments[-1].append(batches, scan, now)
        self._next_offset = scan.last_offset + 1
        self._unflushed_messages += scan.records
        if self._first_unflushed_ms is None:
            self._first_unflushed_ms = self._mono_ms()
        if self._unflushed_messages >= self.config.flush_messages or self.config.flush_ms == 0:
            if self._on_flush_due is None:
                self.flush()
            else:
                self._on_flush_due()

    def _should_roll(self, incoming: int, now: int) -> bool:
        active = self._segments[-1]
        if active.size == 0:
            return False
        if active.size + incoming > self.config.segment_bytes:
            return True
        # Age counts from the first append since the segment was opened (broker clock):
        # client timestamps may be arbitrarily old, which would roll on every append.
        return active.opened_ms >= 0 and now - active.opened_ms >= self.config.segment_ms

    def roll(self) -> None:
        """Close the active segment for appends and start a new one at the log end.
        Standalone, it flushes first and checkpoints after; owner-driven, the next
        flush ticket syncs the sealed segment and the new directory entry, and the
        owner's periodic checkpoint records the recovery point."""
        self._check_open()
        active = self._segments[-1]
        if active.size == 0:
            return
        standalone = self._on_flush_due is None
        if standalone:
            self.flush()  # keeps only the active segment holding unflushed data
        active.seal()
        failpoints.hit("roll.after_seal")
        self._add_segment(LogSegment.create(self.directory, self._next_offset, self.config,
                                            self.owner, sync_dir=standalone))
        failpoints.hit("roll.after_create")
        if standalone:
            self._durable_base, self._durable_position = self._next_offset, 0
            self._write_checkpoint()
        else:
            self._dir_dirty = True
        log.info("%s rolled %s at offset %d", self.owner, self._segments[-1], self._next_offset)

    def flush(self) -> int:
        """fdatasync every segment holding unflushed bytes, here and now (one group commit
        for every append since the last flush), and advance the high watermark to the
        log end. Returns the high watermark."""
        self._check_writable()
        if self._durable == self._next_offset:
            return self._hw
        ticket = self._ticket()
        try:
            ticket.sync()
        except OSError as exc:
            self._fence(exc)
            raise
        self._flushed(ticket)
        return self._hw

    def _ticket(self) -> FlushTicket:
        """A ticket covering everything appended so far; resets the flush policy."""
        first = bisect.bisect_right(self._bases, self._durable_base) - 1
        syncs = [(os.dup(seg.file.fd), seg.log_path, seg.size)
                 for seg in self._segments[max(first, 0):]
                 if seg.active or self._durable_end(seg) < seg.size]
        active = self._segments[-1]
        ticket = FlushTicket(syncs, self.directory if self._dir_dirty else None,
                             self._next_offset, active.base_offset, active.size)
        self._dir_dirty = False
        self._unflushed_messages = 0
        self._first_unflushed_ms = None
        return ticket

    def begin_flush(self) -> FlushTicket | None:
        """Start a group commit of everything appended so far without waiting for it: the
        caller runs `ticket.sync()` (on another thread: the event loop keeps serving
        during the fdatasync), then `end_flush(ticket, error)` back on the owner's thread.
        Appends made meanwhile wait for the next flush. None when nothing is unflushed
        or a ticket is already out, or the log is fenced by a failed flush."""
        self._check_open()
        if (self._durable == self._next_offset or self._flush_ticket is not None or
                self._sync_error is not None):
            return None
        self._flush_ticket = ticket = self._ticket()
        return ticket

    def end_flush(self, ticket: FlushTicket, error: BaseException | None = None) -> bool:
        """Finish a ticket of begin_flush: advance the durable offset to what it made
        durable (and the high watermark as far as the replication bound allows), or,
        when its sync failed (error), fence the log (LogSyncFailedError). True if the
        durable offset moved."""
        if self._flush_ticket is ticket:
            self._flush_ticket = None
        if self.closed:
            return False  # close() flushed everything itself
        if error is not None:
            self._fence(error)
            return False
        if self._sync_error is not None:
            # a later sync can "succeed" without the pages an earlier failure lost
            return False
        if ticket.offset <= self._durable:
            return False  # a synchronous flush (standalone roll or policy) overtook it
        self._flushed(ticket)
        return True

    @property
    def flushing(self) -> bool:
        """A begin_flush ticket is out."""
        return self._flush_ticket is not None

    @property
    def sync_failed(self) -> bool:
        """A flush failed: no more appends or flushes until the log is reopened."""
        return self._sync_error is not None

    def _fence(self, error: BaseException) -> None:
        if self._sync_error is None:
            log.error("%s fdatasync failed: %s; the log takes no more appends, and offsets "
                      "%d.. stay invisible until it is reopened and recovered",
                      self.owner, error, self._durable)
        self._sync_error = error
        self._unflushed_messages = 0      # nothing for the flush policy to retry
        self._first_unflushed_ms = None
        self.fail_durable_waiters(LogSyncFailedError(
            f"{self.owner}: fdatasync failed ({error}); not durable"))

    def fail_durable_waiters(self, error: BaseException) -> None:
        """Answer every acks=all waiter with error now (a fenced or closing log)."""
        waiters, self._durable_waiters = self._durable_waiters, []
        for _offset, _seq, callback in sorted(waiters):
            callback(error)

    def _flushed(self, ticket: FlushTicket) -> None:
        """A ticket's sync succeeded: its offsets are durable, and visible as far as the
        replication bound allows (which wakes waiters and calls on_hw)."""
        self._durable = ticket.offset
        self._durable_base = ticket.base
        self._durable_position = ticket.position
        self.flush_count += 1
        self._raise_hw()
        if self._on_flush is not None:
            self._on_flush(self._durable, ticket.seconds)

    def reconfigure(self, config: LogConfig) -> None:
        """Apply new settings (a topic config change) from the next operation on; the
        index size only applies to segments created from now on."""
        self.config = config
        for seg in self._segments:
            seg.config = config

    def flush_deadline_ms(self) -> int | None:
        """When (monotonic ms) the flush policy next wants a flush, or None: the time
        bound (flush_ms after the first unflushed append), or at once when the message
        bound was reached meanwhile (an owner's ticket was out)."""
        if self._first_unflushed_ms is None:
            return None
        if self._unflushed_messages >= self.config.flush_messages:
            return self._first_unflushed_ms
        return self._first_unflushed_ms + self.config.flush_ms

    def maybe_flush(self, now_ms: int | None = None) -> bool:
        """Apply the time-based flush policy and the periodic checkpoint; True if flushed.
        now_ms is on the flush clock (`monotonic`, or the one clock tests inject)."""
        now = self._mono_ms() if now_ms is None else now_ms
        flushed = False
        deadline = self.flush_deadline_ms()
        if deadline is not None and now >= deadline:
            self.flush()
            flushed = True
        self.maybe_checkpoint(now)
        return flushed

    def maybe_checkpoint(self, now_ms: int | None = None) -> None:
        """Record the durable offset as the recovery point if recovery_checkpoint_ms
        has passed since the last time and it moved."""
        now = self._mono_ms() if now_ms is None else now_ms
        if (self._recovery_point < self._durable and
                now - self._last_checkpoint_ms >= self.config.recovery_checkpoint_ms):
            self._write_checkpoint()

    def when_durable(self, offset: int, callback: Callable[[BaseException | None], None]) -> bool:
        """Call callback(None) once offset is below the high watermark (acks=all: flushed,
        and replicated when a replication bound is set), or callback(error) when it never
        will be (the log is fenced by a failed sync, closing, or was cut below offset by
        truncate_to / reset_to). Returns True and calls it at once if that is known."""
        if offset < self._hw:
            callback(None)
            return True
        if self._sync_error is not None:
            callback(LogSyncFailedError(f"{self.owner}: an earlier fdatasync failed"))
            return True
        self._waiter_seq += 1
        heapq.heappush(self._durable_waiters, (offset, self._waiter_seq, callback))
        return False

    def _wake_durable_waiters(self) -> None:
        waiters = self._durable_waiters  # a heap by offset: any registration order works
        while waiters and waiters[0][0] < self._hw:
            heapq.heappop(waiters)[2](None)

    def _write_checkpoint(self) -> None:
        """Record the durable offset as the recovery point. A failure (a full disk) is
        logged and leaves the older recovery point, which only makes recovery scan more."""
        self._last_checkpoint_ms = self._mono_ms()
        point = self._durable
        if write_recovery_point(self.directory, point, self.owner):
            self._recovery_point = point

    def checkpoint_due(self) -> int | None:
        """The recovery point an owner's checkpoint should write (the durable offset,
        when it moved past the last one written), or None: nothing changed."""
        return self._durable if self._durable > self._recovery_point else None

    def checkpointed(self, point: int) -> None:
        """An owner wrote `point` as the recovery point (checkpoint_due, off this thread).
        A point above the durable offset was computed before a truncate_to / reset_to
        and written after it: the file now names offsets the log no longer holds (a
        reopen would call that lost durable data), so it is rewritten at once."""
        if point > self._durable:
            log.warning("%s a recovery point %d written after a truncation to %d; "
                        "rewriting it", self.owner, point, self._durable)
            self._write_checkpoint()
            return
        self._recovery_point = max(self._recovery_point, point)

    # --- a follower's truncation -----------------------------------------------------

    def truncate_to(self, offset: int) -> int:
        """Cut the log at offset (a follower at its divergence point from the leader):
        offsets >= offset are gone, and the next append (append_replica) goes at offset.
        offset must lie in [log_start_offset, log_end_offset] and be a batch boundary,
        else ValueError; refused while a flush ticket is out (FlushInProgress); nothing
        is changed then. Returns the bytes removed.
        Crash safety, in this order: the recovery point is lowered to offset durably
        first (a crash after the cut would otherwise reopen a log that ends below its
        recovery point, CorruptLogError); the later segments are deleted last one first
        (a crash leaves a gapless prefix) and the directory synced; the segment holding
        offset is cut and synced, its indexes rebuilt, and it becomes the active one.
        The durable offset and high watermark drop to offset if above it; acks=all
        waiters at or above it fail (LogTruncatedError); `epochs` drops the entries
        from offset on. The owner rebuilds whatever it derived from the cut offsets
        (producer state)."""
        self._check_writable()
        self._check_not_flushing("truncate to", offset)
        if not self.log_start_offset <= offset <= self._next_offset:
            raise ValueError(f"{self.owner}: cannot truncate to offset {offset}, outside "
                             f"[{self.log_start_offset}, {self._next_offset}]")
        if offset == self._next_offset:
            self.epochs.truncate_from_end(offset)
            return 0
        base, position = self._boundary_position(offset)  # ValueError inside a batch
        self._lower_recovery_point(offset)
        i = self._bases.index(base)
        seg = self._segments[i]
        try:
            removed = self._delete_segments_after(i)
            removed += seg.truncate_to(position, offset)
        except OSError as exc:
            # half cut: fenced like a failed sync; a reopen recovers from the lowered
            # recovery point whatever the crash-safe order left
            self._fence(exc)
            raise
        self._next_offset = offset
        if self._durable > offset:
            self._durable, self._durable_base, self._durable_position = offset, base, position
        if self._hw > offset:
            self._hw, self._hw_base, self._hw_position = offset, base, position
        self._after_cut(offset)
        log.warning("%s truncated to offset %d (%s position %d): %d bytes removed",
                    self.owner, offset, seg, position, removed)
        return removed

    def reset_to(self, offset: int) -> int:
        """Delete every segment and start empty at offset (a follower whose fetch offset
        fell below the leader's log start). Refused while a flush ticket is out
        (FlushInProgress). Returns the bytes removed. `epochs` is cleared, every
        acks=all waiter fails (LogTruncatedError), and log start, durable offset, high
        watermark and log end are all offset.
        Crash safety: the recovery point goes to 0 first, durably, so whatever a crash
        leaves opens: a prefix of the old segments (deleted last one first), the new
        empty segment, or, between the last deletion and the creation, an empty
        directory, which opens at offset 0 (the follower's fetch is then out of range
        again and it resets again). The recovery point is offset at the end."""
        self._check_writable()
        self._check_not_flushing("reset to", offset)
        if offset < 0:
            raise ValueError(f"{self.owner}: cannot reset to offset {offset}")
        self._lower_recovery_point(0)
        try:
            removed = self._delete_segments_after(0)
            removed += self._segments[0].size
            self._segments[0].delete()
            self._segments, self._bases = [], []
            self._add_segment(LogSegment.create(self.directory, offset, self.config,
                                                self.owner))
        except OSError as exc:
            self._fence(exc)  # as in truncate_to: a reopen sorts out what is left
            raise
        self._dir_dirty = False  # create synced the directory
        self._next_offset = offset
        self._durable, self._durable_base, self._durable_position = offset, offset, 0
        self._hw, self._hw_base, self._hw_position = offset, offset, 0
        self.epochs.clear()
        self._after_cut(offset, waiters_from=0)  # every offset a waiter named is gone
        self._write_checkpoint()
        log.warning("%s reset to start empty at offset %d: %d bytes removed", self.owner,
                    offset, removed)
        return removed

    def _check_not_flushing(self, what: str, offset: int) -> None:
        if self._flush_ticket is not None:
            raise FlushInProgress(f"{self.owner}: cannot {what} offset {offset} while a "
                                  f"flush ticket up to offset {self._flush_ticket.offset} "
                                  "is out; end it first")

    def _lower_recovery_point(self, point: int) -> None:
        """Make the recovery point at most `point`, durably, before offsets above it are
        cut; OSError (a full disk) leaves everything as it was."""
        if self._recovery_point > point:
            checkpoint.write_recovery_point(self.directory, point)
            self._recovery_point = point

    def _delete_segments_after(self, i: int) -> int:
        """Delete the segments after the i-th, the last one first, and sync the directory
        (an old segment must not come back after new data took its offsets); their bytes."""
        later = self._segments[i + 1:]
        for seg in reversed(later):
            seg.delete()
        del self._segments[i + 1:]
        del self._bases[i + 1:]
        if later:
            files.fsync_dir(self.directory)
        return sum(seg.size for seg in later)

    def _after_cut(self, offset: int, waiters_from: int | None = None) -> None:
        """Bookkeeping after offsets >= offset left the log: the flush policy restarts
        when nothing is unflushed, the epochs from offset on go, and the acks=all
        waiters at or above waiters_from (default offset) fail."""
        if self._durable == self._next_offset:
            self._unflushed_messages = 0
            self._first_unflushed_ms = None
        self.epochs.truncate_from_end(offset)
        limit = offset if waiters_from is None else waiters_from
        cut = [w for w in self._durable_waiters if w[0] >= limit]
        if cut:
            self._durable_waiters = [w for w in self._durable_waiters if w[0] < limit]
            heapq.heapify(self._durable_waiters)
            error = LogTruncatedError(f"{self.owner}: truncated to offset {offset}")
            for _offset, _seq, callback in sorted(cut):
                callback(error)

    # --- reads (P7, P8, P10, P12) ----------------------------------------------------

    def _check_offset(self, offset: int) -> None:
        if not self.log_start_offset <= offset <= self._next_offset:
            raise OffsetOutOfRange(
                f"{self.owner}: offset {offset} is outside [{self.log_start_offset}, "
                f"{self._next_offset}]")

    def read(self, offset: int, max_bytes: int, *, to_log_end: bool = False) -> FileSlice | None:
        """Up to max_bytes of visible batches from the batch holding offset, as a file
        range for sendfile; at least the whole first batch even if it is larger. None when
        offset is at or past the high watermark. With to_log_end (a follower's fetch),
        up to the log end instead: appended, maybe not yet flushed. OffsetOutOfRange
        outside the log."""
        if self.closed:
            self._check_open()
        bases = self._bases
        if to_log_end:  # every written byte is whole batches: the active size is the end
            limit, limit_base = self._next_offset, bases[-1]
            limit_position = self._segments[-1].size
        else:
            limit, limit_base, limit_position = self._hw, self._hw_base, self._hw_position
        if offset >= limit or offset < bases[0]:
            self._check_offset(offset)
            return None
        if offset >= bases[-1]:  # the common case: a consumer near the end of the log
            seg, end = self._segments[-1], limit_position  # offset < limit: the limit is here
        else:
            i = bisect.bisect_right(bases, offset) - 1
            seg = self._segments[i]
            end = seg.size if seg.base_offset != limit_base else limit_position
        batch = seg.seek(offset, end)
        if batch is None:
            if seg is self._segments[-1]:
                return None
            # below the high watermark, in a sealed segment that ends early: its tail was
            # lost. Serve from the next segment so consumers move on past the gap.
            log.error("%s %s file=%s ends at byte %d without offset %d: data lost; "
                      "serving from offset %d", self.owner, seg, seg.log_path, seg.size,
                      offset, bases[i + 1])
            return self.read(bases[i + 1], max_bytes, to_log_end=to_log_end)
        position, length = batch[0], batch[1]
        if max_bytes > length:  # at least the whole first batch; conditionals, not min/max,
            length = max_bytes  # which cost a tenth of a lookup
        if length > end - position:
            length = end - position
        return _tuple_new(FileSlice, (seg.file, position, length, batch[2]))

    def offset_for_time(self, timestamp: int) -> int | None:
        """Base offset of the first visible batch with maxTimestamp >= timestamp (ListOffsets
        by time), or None if there is none."""
        self._check_open()
        for seg in self._segments:
            if seg.base_offset >= self._hw:
                break
            end = self._visible_end(seg)
            if end == 0 or seg.max_timestamp() < timestamp:
                continue
            batch = seg.seek_time(timestamp, end)
            if batch is not None:
                return max(batch.base_offset, self.log_start_offset)
        return None

    def max_timestamp_offset(self) -> tuple[int, int] | None:
        """(timestamp, offset) of the record with the largest timestamp, the first of
        them (ListOffsets -3, KIP-734); None if it is not below the high watermark or no
        batch carries a timestamp."""
        self._check_open()
        best = None
        for seg in self._segments:
            if seg.base_offset >= self._hw:
                break
            if self._visible_end(seg) == 0:
                continue
            seg.ensure_indexes()
            cursor = seg.cursor
            if cursor.max_timestamp >= 0 and (best is None or cursor.max_timestamp > best[0]):
                best = (cursor.max_timestamp, cursor.offset_of_max_timestamp)
        return best if best is not None and best[1] < self._hw else None

    # --- retention (P11) -------------------------------------------------------------

    def enforce_retention(self, now_ms: int | None = None,
                          delete: Callable[[LogSegment], None] | None = None) -> int:
        """Delete the oldest segments past retention_ms or beyond retention_bytes; an
        expired active segment is rolled first. Returns the number deleted. With
        `delete`, a segment leaves the log here (reads and the log start offset move on
        at once) and delete(segment) removes its files (an owner does it on its storage
        thread); a crash before that leaves the segment, which the next pass deletes."""
        self._check_open()
        now = self._now_ms() if now_ms is None else now_ms
        active = self._segments[-1]
        if active.size and self._expired(active, now) and self._sync_error is None:
            self.roll()
        deleted = 0
        total = self.size_bytes()
        # only segments wholly flushed and visible: unreplicated data is never deleted
        kept_from = min(self._hw, self._durable)
        while len(self._segments) > 1 and self._bases[1] <= kept_from:
            seg = self._segments[0]
            over_size = (self.config.retention_bytes >= 0 and
                         total - seg.size >= self.config.retention_bytes)
            if not (over_size or self._expired(seg, now)):
                break
            total -= seg.size
            (delete or LogSegment.delete)(seg)
            del self._segments[0]
            del self._bases[0]
            deleted += 1
            log.info("%s retention deleted %s; log start offset now %d", self.owner, seg,
                     self.log_start_offset)
            failpoints.hit("retention.after_delete")
        return deleted

    def _expired(self, seg: LogSegment, now: int) -> bool:
        return self.config.retention_ms >= 0 and seg.max_timestamp() < now - self.config.retention_ms

    # --- integrity -------------------------------------------------------------------

    def verify(self) -> list[str]:
        """Scan every batch of every segment (CRC included) without changing anything;
        a description of each problem found, empty when the log is intact."""
        problems = []
        for seg in self._segments:
            if seg.base_offset > self._durable_base:
                break
            end = self._durable_end(seg)
            check = check_range(seg.file.fd, 0, end, seg.base_offset)
            if seg.base_offset < self._durable_base:
                check = _check_segment_end(check, seg.next_offset)
            if check.problem is not None:
                problems.append(f"{self.owner} {seg} file={seg.log_path} "
                                f"position={check.position}: {check.problem}")
        return problems

    def scrub_targets(self) -> list["ScrubTarget"]:
        """The sealed segments wholly below the durable offset (durable, immutable), each
        with a duplicate fd a scrub thread reads and closes (ScrubTarget.check)."""
        return [ScrubTarget(self.owner, repr(seg), seg.log_path, os.dup(seg.file.fd),
                            seg.size, seg.base_offset, seg.next_offset)
                for seg in self._segments[:-1] if seg.next_offset <= self._durable]

    # --- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Flush, seal and trim, checkpoint, then mark the shutdown clean (not after a
        failed flush: the next open then recovers)."""
        if self.closed:
            return
        fenced = self._sync_error is not None
        if not fenced:
            self.flush()
        for seg in self._segments:
            seg.close()
        self._write_checkpoint()
        self.closed = True
        if fenced:
            return
        try:
            checkpoint.mark_clean_shutdown(self.directory)
        except OSError as exc:  # e.g. a full disk: the next open recovers, which is safe
            log.error("%s cannot mark the clean shutdown: %s", self.owner, exc)

    def _check_open(self) -> None:
        if self.closed:
            raise LogClosedError(f"{self.owner} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._sync_error is not None:
            raise LogSyncFailedError(
                f"{self.owner}: an earlier fdatasync failed ({self._sync_error}); reopen the "
                "log (restart the worker) to recover it")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
