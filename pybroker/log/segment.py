"""One segment: a `.log` file of record batches plus its offset and time indexes.

Contract:
- Holds the batches with offsets in [base_offset, next_offset); base_offset <= every
  offset here, and every offset here < the next segment's base offset (P4, P6).
- [0, size) of the file is whole valid batches once the segment is recovered or was
  closed cleanly; `size` is where the next append goes.
- Only the active (last) segment is appended to; its indexes are preallocated and
  mapped. A sealed segment's indexes are trimmed and loaded on first use, when their
  invariants are checked; a damaged index is rebuilt from the log. A follower's
  truncation (`truncate_to`) cuts a segment at a batch boundary and makes it the
  active one again.
- Owned by one partition log, i.e. one worker; not thread-safe.
- Crash: the file may end in a torn batch and the indexes may be stale; `recover`
  truncates at the first bad batch and rebuilds both indexes. Offsets have no gaps, so
  a batch whose base offset (outside the CRC) is not one past the previous batch's last
  offset is a bad batch too.
"""
from __future__ import annotations

import logging
import mmap
import os
from typing import Callable, NamedTuple

from pybroker import core, failpoints
from pybroker.errors import CorruptLogError, CorruptRecordError
from pybroker.log import files
from pybroker.log.config import LogConfig
from pybroker.log.index import MappedIndex

log = logging.getLogger("pybroker.log")
U32_MAX = 2**32 - 1
DURABLE = 2**63 - 1  # a recovery point above every offset: all of the segment is durable


def offsets_contiguous(scan: core.Scan, expected: int) -> bool:
    """True when the batches of a scan hold offsets expected, expected + 1, ... without a
    gap. The base offset lies outside the CRC, and the scan only demands increasing base
    offsets, so a damaged one that went up passes it; offsets here never have gaps."""
    return scan.batches == 0 or (scan.first_offset == expected and
                                 scan.last_offset - expected + 1 == scan.records)


def first_offset_gap(buf, end: int, expected: int) -> tuple[int, str]:
    """Position and description of the first batch in buf[0:end) (whole batches, already
    validated) whose base offset is not `expected`, one past the previous batch."""
    pos = 0
    while pos < end:
        base = int.from_bytes(buf[pos:pos + 8], "big", signed=True)
        if base != expected:
            return pos, f"batch base offset {base} is not {expected}, one past the previous batch"
        expected = base + int.from_bytes(buf[pos + 23:pos + 27], "big", signed=True) + 1
        pos += int.from_bytes(buf[pos + 8:pos + 12], "big", signed=True) + 12
    raise ValueError(f"no offset gap in the {end} bytes scanned")


class RangeCheck(NamedTuple):
    next_offset: int     # one past the last offset of the valid batches scanned
    position: int        # where the check stopped: the end, or the first problem
    problem: str | None  # None when every batch in the range is whole and valid


def check_range(fd: int, start: int, end: int, expected: int,
                pace: Callable[[int], None] | None = None,
                chunk_bytes: int = 16 << 20) -> RangeCheck:
    """Validate (CRC included) the batches in file[start:end), whose first offset must
    be `expected` and whose offsets follow on without gaps; read by pread in chunks, so
    any thread may run it on its own fd (a scrub, `verify`). pace(n) is called after
    each n bytes read (a rate limit). Changes nothing."""
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(end - pos, chunk_bytes), pos)
        if pace is not None:
            pace(len(chunk))
        if not chunk:
            return RangeCheck(expected, pos, f"the file ends {end - pos} bytes early")
        try:
            scan = core.scan_batches(chunk, min_offset=expected)
        except CorruptRecordError as exc:
            if exc.scan.batches == 0:  # not a batch cut by the chunk's end
                return RangeCheck(expected, pos + exc.position, str(exc))
            scan = exc.scan
        if not offsets_contiguous(scan, expected):
            gap, why = first_offset_gap(chunk, scan.valid_bytes, expected)
            return RangeCheck(expected, pos + gap, why)
        pos += scan.valid_bytes
        if scan.batches:
            expected = scan.last_offset + 1
    return RangeCheck(expected, pos, None)


class SegmentFile:
    """The open `.log` descriptor, shared by its segment and the FileSlices of fetches in
    flight: after the segment is deleted by retention, the fd lives until the last slice
    holding it is dropped, so a sendfile never runs on a closed or reused fd."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str, fd: int):
        self.path = path
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        self.close()


class RecoveryResult(NamedTuple):
    truncated_bytes: int
    position: int       # where the first bad batch started (== valid bytes)
    reason: str | None  # None when the whole file was valid


class LogSegment:
    def __init__(self, directory: str, base_offset: int, config: LogConfig, owner: str):
        self.base_offset = base_offset
        self.config = config
        self.owner = owner  # for log lines: "tp=orders-3"
        self.log_path, index_path, time_path = files.segment_paths(directory, base_offset)
        self.offset_index = MappedIndex(index_path, core.INDEX_OFFSET, config.index_max_bytes)
        self.time_index = MappedIndex(time_path, core.INDEX_TIME, config.index_max_bytes)
        self.file: SegmentFile | None = None
        self.size = 0                   # bytes; the next append's position
        self.next_offset = base_offset  # one past the last offset held
        self.opened_ms = -1             # clock at the first append since open (segment.ms)
        self.cursor = None              # index append state; None until indexes load
        self.active = False             # the last segment, the one appended to
        self._preallocated = False      # indexes mapped at full size (active or rebuilt)

    def __repr__(self):
        return f"seg={files.segment_name(self.base_offset)}"

    # --- life cycle ------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str, base_offset: int, config: LogConfig, owner: str,
               sync_dir: bool = True):
        """A new empty active segment. sync_dir=False leaves the directory entry's
        fsync to the caller (a partition log's next flush ticket does it)."""
        seg = cls(directory, base_offset, config, owner)
        fd = os.open(seg.log_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        seg.file = SegmentFile(seg.log_path, fd)
        for index in (seg.offset_index, seg.time_index):
            index.delete()  # a leftover from a crash between create and use
        seg._load_fresh_indexes()
        if sync_dir:
            files.fsync_dir(directory)
        return seg

    @classmethod
    def open_existing(cls, directory: str, base_offset: int, config: LogConfig, owner: str):
        seg = cls(directory, base_offset, config, owner)
        fd = os.open(seg.log_path, os.O_RDWR)
        seg.file = SegmentFile(seg.log_path, fd)
        seg.size = os.fstat(fd).st_size
        return seg

    def seal(self) -> None:
        """Stop appending: record the max timestamp, trim the indexes, keep them mapped."""
        if self.cursor is not None and self._preallocated:
            core.index_seal(self.time_index.pinned, self.base_offset, self.cursor)
            entries, time_entries = self.cursor.entries, self.cursor.time_entries
            self.offset_index.trim(entries)
            self.time_index.trim(time_entries)
            self._map_indexes(entries, time_entries, preallocate=False)
            self._restore_cursor()
        self.active = False

    def close(self) -> None:
        self.seal()
        self.offset_index.unload()
        self.time_index.unload()
        if self.file is not None:
            self.file.close()

    def delete(self) -> None:
        """Remove the files, the log first: a crash in between leaves stray indexes, which
        the next open removes. The fd closes when the last in-flight FileSlice lets go."""
        os.unlink(self.log_path)
        failpoints.hit("retention.after_log_unlink")
        self.offset_index.delete()
        self.time_index.delete()
        self.file = None
        self.cursor = None

    def truncate_to(self, position: int, next_offset: int) -> int:
        """Cut the file to `position`, a batch boundary below which it holds the offsets
        [base_offset, next_offset), durably (ftruncate, then fdatasync: the new size
        must not come back longer after a crash once later data took those offsets),
        and make this the active segment: both indexes rebuilt from the bytes kept,
        preallocated. Returns the bytes removed. In-flight FileSlices past position
        then read a shorter file (sendfile reports it truncated)."""
        if not 0 <= position <= self.size:
            raise ValueError(f"{self.owner} {self}: cannot truncate to position {position} "
                             f"of a {self.size}-byte file")
        removed = self.size - position
        os.ftruncate(self.file.fd, position)
        files.fdatasync(self.file.fd, self.log_path)
        self.size = position
        self.next_offset = next_offset
        self.active = True
        self.cursor = None
        self._rebuild_indexes(position)
        return removed

    # --- appends and flushes ---------------------------------------------------------

    def append(self, batches, scan: core.Scan, now_ms: int) -> None:
        """Write stamped, validated batches (see core.scan_batches) at the end.
        OSError (e.g. ENOSPC) leaves the segment as it was."""
        cur = self.cursor
        if ((cur.entries + scan.batches) * core.OFFSET_ENTRY_SIZE > self.offset_index.reserved
                or (cur.time_entries + scan.batches + 1) * core.TIME_ENTRY_SIZE
                > self.time_index.reserved):
            self.offset_index.ensure_room(cur.entries + scan.batches)
            self.time_index.ensure_room(cur.time_entries + scan.batches + 1)
        core.segment_append(self.file.fd, batches, self.size, self.base_offset,
                            self.config.index_interval_bytes, self.offset_index.pinned,
                            self.time_index.pinned, self.cursor)
        if self.opened_ms < 0:
            self.opened_ms = now_ms
        self.size += len(batches)
        self.next_offset = scan.last_offset + 1

    def flush(self) -> None:
        files.fdatasync(self.file.fd, self.log_path)

    def max_timestamp(self) -> int:
        """Largest batch timestamp held (ms), or the file's mtime if none has one."""
        self.ensure_indexes()
        if self.cursor.max_timestamp >= 0:
            return self.cursor.max_timestamp
        return int(os.path.getmtime(self.log_path) * 1000)

    # --- lookups ---------------------------------------------------------------------

    def seek(self, offset: int, end_pos: int) -> core.BatchPos | None:
        """The batch holding offset among the whole batches before end_pos, or None."""
        if self.cursor is None:
            self.ensure_indexes()
        found = self._seek(False, offset, end_pos)
        if found is not None and found.base_offset > offset >= self.base_offset:
            # Offsets here have no gaps, so the scan started past the target: index entries
            # that keep the invariants `check` tests but point at the wrong batches.
            log.warning("%s %s %s sends offset %d to the batch at position %d holding "
                        "offset %d; rebuilding it from the log", self.owner, self,
                        self.offset_index.path, offset, found.position, found.base_offset)
            self._reindex_from_log(self.next_offset if not self.active else DURABLE)
            found = self._seek(False, offset, end_pos)
            if found is not None and found.base_offset > offset:
                raise CorruptLogError(
                    f"{self.owner} {self} file={self.log_path} position={found.position}: "
                    f"offset {offset} is missing, the batch there starts at offset "
                    f"{found.base_offset}")
        return found

    def seek_time(self, timestamp: int, end_pos: int) -> core.BatchPos | None:
        """The first batch before end_pos with maxTimestamp >= timestamp, or None."""
        self.ensure_indexes()
        return self._seek(True, timestamp, end_pos)

    def _seek(self, by_time: bool, target: int, end_pos: int) -> core.BatchPos | None:
        return core.segment_seek(self.file.fd, self.offset_index.pinned,
                                 self.time_index.pinned, self.cursor, self.base_offset,
                                 by_time, target, end_pos)

    # --- indexes ---------------------------------------------------------------------

    def ensure_indexes(self, recovery_point: int | None = None) -> None:
        """Load the stored indexes on first use; rebuild them from the log if damaged.
        Offsets below recovery_point (default: all this segment holds) are durable, so
        damage to them found while rebuilding raises CorruptLogError."""
        if self.cursor is not None:
            return
        problem = self._load_stored_indexes(preallocate=self.active)
        if problem:
            log.warning("%s %s %s; rebuilding it from the log", self.owner, self, problem)
            self._reindex_from_log(self.next_offset if recovery_point is None
                                   else recovery_point)

    def _reindex_from_log(self, recovery_point: int) -> None:
        """Recover (rebuilding both indexes from the log); a sealed segment is sealed again."""
        self.cursor = None
        self.recover(recovery_point)
        if not self.active:
            self.seal()

    def load_as_active(self) -> None:
        """Open the last segment after a clean close: map its indexes preallocated and
        find its end by scanning the batches after the last index entry."""
        self.active = True
        self.next_offset = self.base_offset  # until the tail scan says otherwise
        self.ensure_indexes(recovery_point=DURABLE)  # a clean close made it all durable
        if self.cursor.entries:
            start = self.offset_index.entry(self.cursor.entries, self.cursor.entries - 1)[1]
        else:
            start = 0
        tail = os.pread(self.file.fd, self.size - start, start)
        try:
            scan = core.scan_batches(tail, min_offset=self.base_offset)
        except CorruptRecordError as exc:
            raise CorruptLogError(
                f"{self.owner} {self} file={self.log_path} position={start + exc.position}: "
                f"{exc} after a clean shutdown; this data was durable. To cut the log here, "
                "remove the partition's recovery-point checkpoint and its .clean-shutdown "
                "marker, and reopen") from None
        expected = self.base_offset
        if self.cursor.entries:
            expected += self.offset_index.entry(self.cursor.entries, self.cursor.entries - 1)[0]
        if not offsets_contiguous(scan, expected):
            # a wrong last index entry, or a damaged base offset: the full scan tells which
            log.warning("%s %s offsets after position %d do not follow on from offset %d; "
                        "rebuilding the indexes from the log", self.owner, self, start, expected)
            self.recover(DURABLE)
            return
        if scan.batches:
            self.next_offset = scan.last_offset + 1
        # Checked at load against any relative offset (the end was not known yet): now
        # bound the entries by the offsets this segment really holds.
        max_relative = max(self.next_offset - 1 - self.base_offset, 0)
        for index, n in ((self.offset_index, self.cursor.entries),
                         (self.time_index, self.cursor.time_entries)):
            bad = index.check(n, max_relative, self.size)
            if bad >= 0:
                log.warning("%s %s %s entry %d of %d is beyond offset %d; rebuilding it from "
                            "the log", self.owner, self, index.path, bad, n,
                            self.next_offset - 1)
                self.recover(DURABLE)
                return

    def _load_stored_indexes(self, preallocate: bool) -> str | None:
        """Map the index files as stored; a description of the damage, or None."""
        counts = []
        for index in (self.offset_index, self.time_index):
            if not index.exists():
                return f"{index.path} is missing"
            entries = index.stored_entries()
            if entries is None:
                return f"{index.path} is not a whole number of entries"
            counts.append(entries)
        entries, time_entries = counts
        if preallocate and (entries >= self.offset_index.max_entries or
                            time_entries >= self.time_index.max_entries):
            return "index holds more entries than index_max_bytes allows"
        self._map_indexes(entries, time_entries, preallocate)
        max_relative = (self.next_offset - 1 - self.base_offset) if not self.active else U32_MAX
        for index, n in ((self.offset_index, entries), (self.time_index, time_entries)):
            bad = index.check(n, max(max_relative, 0), self.size)
            if bad >= 0:
                self.cursor = None
                return f"{index.path} entry {bad} of {n} breaks the index invariants"
        self._restore_cursor()
        return None

    def _map_indexes(self, entries: int, time_entries: int, preallocate: bool) -> None:
        self.offset_index.load(entries, preallocate)
        self.time_index.load(time_entries, preallocate)
        self._preallocated = preallocate
        self.cursor = core.new_index_cursor(self.offset_index.capacity(),
                                            self.time_index.capacity())
        self.cursor.entries = entries
        self.cursor.time_entries = time_entries

    def _load_fresh_indexes(self) -> None:
        self.active = True
        self._map_indexes(0, 0, preallocate=True)

    def _restore_cursor(self) -> None:
        """Derive the append state of loaded indexes from their last entries."""
        cur = self.cursor
        last_pos = self.offset_index.entry(cur.entries, cur.entries - 1)[1] if cur.entries else 0
        cur.bytes_since_entry = self.size - last_pos
        if cur.time_entries:
            ts, rel = self.time_index.entry(cur.time_entries, cur.time_entries - 1)
            cur.max_timestamp, cur.offset_of_max_timestamp = ts, self.base_offset + rel

    # --- recovery --------------------------------------------------------------------

    def recover(self, recovery_point: int) -> RecoveryResult:
        """Validate every batch (CRC included), truncate at the first bad or torn one and
        rebuild both indexes. Damage to offsets below recovery_point (durable data)
        raises CorruptLogError and changes nothing."""
        valid, scan, reason = self._scan_file()
        if reason is not None:
            damaged_from = scan.last_offset + 1 if scan.batches else self.base_offset
            if damaged_from < recovery_point:
                point = ("all durable" if recovery_point == DURABLE else
                         f"below the recovery point {recovery_point}")
                raise CorruptLogError(
                    f"{self.owner} {self} file={self.log_path} position={valid}: {reason}; "
                    f"offsets from {damaged_from} are {point}, so durable data is damaged. "
                    "Nothing was truncated. To cut the log here, remove the partition's "
                    "recovery-point checkpoint and reopen")
        self._rebuild_indexes(valid)
        truncated = self.size - valid
        if truncated:
            os.ftruncate(self.file.fd, valid)
            self.size = valid
        self.next_offset = scan.last_offset + 1 if scan.batches else self.base_offset
        return RecoveryResult(truncated, valid, reason)

    def _scan_file(self) -> tuple[int, core.Scan, str | None]:
        if self.size == 0:
            return 0, core.scan_batches(b""), None
        with mmap.mmap(self.file.fd, self.size, access=mmap.ACCESS_READ) as view:
            try:
                scan = core.scan_batches(view, min_offset=self.base_offset)
                valid, reason = scan.valid_bytes, None
            except CorruptRecordError as exc:
                scan, valid, reason = exc.scan, exc.position, str(exc)
            if not offsets_contiguous(scan, self.base_offset):
                valid, reason = first_offset_gap(view, valid, self.base_offset)
                scan = core.scan_batches(view[:valid], min_offset=self.base_offset)
            return valid, scan, reason

    def _rebuild_indexes(self, valid: int) -> None:
        self._map_indexes(0, 0, preallocate=True)
        if valid == 0:
            return
        # at most one entry per batch, so this many bytes of batches need no more
        batches_bound = valid // core.BATCH_HEADER_SIZE + 1
        self.offset_index.ensure_room(min(batches_bound, self.offset_index.max_entries))
        self.time_index.ensure_room(min(batches_bound + 1, self.time_index.max_entries))
        with mmap.mmap(self.file.fd, valid, access=mmap.ACCESS_READ) as view:
            core.index_add(view, 0, self.base_offset, self.config.index_interval_bytes,
                           self.offset_index.pinned, self.time_index.pinned, self.cursor)
