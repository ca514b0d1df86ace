"""Shared builders and oracles of the storage tests (tests/log).

Batch arithmetic, used by every layout comment in this directory. records.build_batch
with no key, no headers and one timestamp encodes a record with an L-byte value
(L < 64, offset delta < 64) in 7 + L bytes:
    length varint 1 | attributes 1 | timestampDelta 1 | offsetDelta 1 | keyLength(-1) 1 |
    valueLength 1 | value L | headerCount 1
and a batch is the 61-byte header + its records. value_for(offset) is 10 bytes, so
    a 1-record batch is 61 + 17 = 78 bytes; an n-record batch is 61 + 17 n bytes.

Oracles:
- `scan_directory` reads every `.log` file of a partition directory in plain Python
  (records.parse_batches) and lists each whole batch with its file and position: the
  full scan that every log lookup is compared with.
- `LogModel` is what a partition log must hold, as plain lists: the roll, flush and
  retention rules of LogConfig restated without files.
"""
from __future__ import annotations

import os
import struct
from typing import NamedTuple

from pybroker.errors import OffsetOutOfRange
from pybroker.log import checkpoint, files
from pybroker.records import Batch, build_batch, parse_batches, parse_records

BATCH_HEADER = 61
VALUE_BYTES = 10
RECORD_BYTES = 7 + VALUE_BYTES          # one value_for() record, see above
BATCH_BYTES = BATCH_HEADER + RECORD_BYTES  # a 1-record batch: 78 bytes

# field positions in a batch header (csrc/batch.h)
OFF_BASE, OFF_LENGTH, OFF_EPOCH, OFF_MAGIC, OFF_CRC, OFF_ATTRS = 0, 8, 12, 16, 17, 21
CRC_COVERED_FROM = 21  # CRC-32C covers attributes..end; baseOffset, length, epoch, magic do not


def value_for(offset: int) -> bytes:
    """The value every test stores at `offset`: deterministic, so a reopened log can be
    checked record by record without remembering what was written."""
    return b"%010d" % offset


def batch_for(first_offset: int, records: int = 1, timestamp: int = 0) -> bytearray:
    """A batch of `records` records whose values are value_for(first_offset...), to be
    appended when the log end offset is first_offset. 61 + 17 * records bytes."""
    return build_batch([value_for(first_offset + i) for i in range(records)],
                       timestamps=[timestamp] * records)


def batch_of_size(size: int, timestamp: int = 0) -> bytearray:
    """A 1-record batch of exactly `size` bytes (size >= 68): 61 + 7 + L for L < 64; a
    longer value needs a 2-byte valueLength and a 2-byte record length varint."""
    for value_len in range(max(0, size - 80), size):
        buf = build_batch([b"x" * value_len], timestamps=[timestamp])
        if len(buf) == size:
            return buf
    raise ValueError(f"no 1-record batch is {size} bytes")


def append_values(log, count: int, records: int = 1, timestamp: int = 0) -> list:
    """Append `count` batches of value_for() records; their AppendResults."""
    return [log.append(batch_for(log.log_end_offset, records, timestamp))
            for _ in range(count)]


def get_i32(buf, pos: int) -> int:
    return struct.unpack_from(">i", buf, pos)[0]


def get_i64(buf, pos: int) -> int:
    return struct.unpack_from(">q", buf, pos)[0]


# --- files ------------------------------------------------------------------------------

def log_path(directory: str, base_offset: int) -> str:
    return files.segment_paths(directory, base_offset)[0]


def index_path(directory: str, base_offset: int) -> str:
    return files.segment_paths(directory, base_offset)[1]


def time_index_path(directory: str, base_offset: int) -> str:
    return files.segment_paths(directory, base_offset)[2]


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def flip_bit(path: str, position: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ (1 << bit)]))


def overwrite(path: str, position: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        f.write(data)


def log_files(directory: str) -> dict[str, bytes]:
    """Every `.log` file of directory by name, with its bytes (to show nothing changed)."""
    return {name: read_file(os.path.join(directory, name))
            for name in sorted(os.listdir(directory)) if name.endswith(files.LOG_SUFFIX)}


def make_unclean(directory: str, recovery_point: int | None = None) -> None:
    """Turn a cleanly closed directory into one left by a crash: no clean-shutdown marker,
    and optionally the recovery-point checkpoint rewound (0: nothing known durable)."""
    marker = os.path.join(directory, files.CLEAN_SHUTDOWN_FILE)
    if os.path.exists(marker):
        os.unlink(marker)
    if recovery_point is not None:
        checkpoint.write_recovery_point(directory, recovery_point)


def abandon(log) -> None:
    """Drop an open log the way SIGKILL does: what was written stays in the page cache,
    and nothing more is written (no flush, no index trim, no checkpoint, no clean-shutdown
    marker). Releases the descriptors and maps so the same process can reopen it; this
    reaches into the segments because the log has no public "crash" operation."""
    for seg in log._segments:
        seg.offset_index.unload()
        seg.time_index.unload()
        if seg.file is not None:
            seg.file.close()
    log.closed = True


# --- the full-scan oracle ---------------------------------------------------------------

class OnDisk(NamedTuple):
    segment: int    # base offset of the segment file holding the batch
    path: str
    position: int   # byte position of the batch in that file
    batch: Batch
    raw: bytes


def scan_directory(directory: str) -> list[OnDisk]:
    """Every whole batch of every `.log` file in directory, in file order, read and
    CRC-checked in plain Python (parse_batches raises ValueError on a bad CRC)."""
    found = []
    for base in files.list_base_offsets(directory):
        path = log_path(directory, base)
        data = read_file(path)
        pos = 0
        for batch in parse_batches(data):
            found.append(OnDisk(base, path, pos, batch, data[pos:pos + batch.size]))
            pos += batch.size
    return found


def assert_log_matches_disk(log, directory: str) -> list[OnDisk]:
    """The log's offsets and every lookup agree with a full scan of the directory:
    batches are contiguous from log_start_offset to log_end_offset, and read(offset, 1)
    for every flushed offset returns the batch holding it, from its file and position."""
    disk = scan_directory(directory)
    expected = log.log_start_offset
    for d in disk:
        assert d.batch.base_offset == expected, (
            f"{d.path} position {d.position}: batch at offset {d.batch.base_offset}, "
            f"expected {expected}")
        expected = d.batch.last_offset + 1
    assert expected == log.log_end_offset, (
        f"the files hold offsets up to {expected}, the log ends at {log.log_end_offset}")
    on_disk = files.list_base_offsets(directory)
    assert on_disk == log.segment_bases(), f"segments {on_disk} != {log.segment_bases()}"
    for d in disk:
        for offset in range(d.batch.base_offset, d.batch.last_offset + 1):
            if offset >= log.high_watermark:
                return disk
            got = log.read(offset, 1)
            assert got is not None, f"read({offset}) returned None below the high watermark"
            found = (got.file.path, got.position, got.base_offset, got.length)
            assert found == (d.path, d.position, d.batch.base_offset, d.batch.size), \
                f"read({offset}) returned {found}, the batch is {d[:3]} of {d.batch.size} bytes"
            assert got.read_bytes() == d.raw, f"read({offset}): bytes differ"
    return disk


def assert_values(disk: list[OnDisk]) -> None:
    """Every record holds value_for(its offset)."""
    for d in disk:
        for rec in parse_records(d.batch):
            assert rec.value == value_for(rec.offset), \
                f"{d.path} offset {rec.offset}: value {rec.value!r}"


def parse_slice(slice_) -> list[Batch]:
    return parse_batches(slice_.read_bytes()) if slice_ is not None else []


# --- the in-memory model ----------------------------------------------------------------

class ModelSegment:
    def __init__(self, base: int):
        self.base = base
        # (base offset, records, stamped bytes, max timestamp) per batch
        self.batches: list[tuple[int, int, bytes, int]] = []
        self.opened_ms: int | None = None  # clock at the first append since open

    @property
    def size(self) -> int:
        return sum(len(b[2]) for b in self.batches)

    def max_timestamp(self) -> int:
        return max(b[3] for b in self.batches)


class LogModel:
    """A partition log as plain lists, following the documented rules:
    roll before an append to a non-empty active segment when size + incoming >
    segment_bytes or segment_ms passed since its first append since open; roll flushes;
    flush when unflushed messages >= flush_messages (or flush_ms == 0) and, via
    maybe_flush, flush_ms after the first unflushed append; a flush begun off-thread
    (begin_flush) covers the log end of its start; retention deletes the oldest
    non-active segments while the rest still holds retention_bytes or the segment's max
    timestamp is older than retention_ms (an expired active segment is rolled first).
    Offset-index-full rolls are not modelled: the property test's index never fills."""

    def __init__(self, config):
        self.config = config
        self.segments = [ModelSegment(0)]
        self.end = 0
        self.hw = 0
        self.unflushed = 0
        self.first_unflushed_ms: int | None = None
        self.ticket: int | None = None  # a begin_flush whose end_flush is to come

    @property
    def log_start(self) -> int:
        return self.segments[0].base

    def bases(self) -> list[int]:
        return [s.base for s in self.segments]

    def append(self, batches: list[tuple[bytes, int, int]], now: int) -> None:
        """One append of (stamped bytes, records, max timestamp) batches: the roll and
        flush rules see it as one unit, reads see its batches."""
        size = sum(len(b[0]) for b in batches)
        records = sum(b[1] for b in batches)
        active = self.segments[-1]
        if active.size and (active.size + size > self.config.segment_bytes or
                            (active.opened_ms is not None and
                             now - active.opened_ms >= self.config.segment_ms)):
            self.roll()
        active = self.segments[-1]
        if active.opened_ms is None:
            active.opened_ms = now
        for stamped, count, max_ts in batches:
            active.batches.append((self.end, count, bytes(stamped), max_ts))
            self.end += count
        self.unflushed += records
        if self.first_unflushed_ms is None:
            self.first_unflushed_ms = now
        if self.unflushed >= self.config.flush_messages or self.config.flush_ms == 0:
            self.flush()

    def flush(self) -> None:
        self.hw = self.end
        self.unflushed = 0
        self.first_unflushed_ms = None

    def begin_flush(self) -> int | None:
        """A flush under way: the log end it covers, or None."""
        if self.hw == self.end or self.ticket is not None:
            return None
        self.ticket = self.end
        self.unflushed, self.first_unflushed_ms = 0, None
        return self.ticket

    def end_flush(self) -> bool:
        """A ticket's sync succeeded. (A failed one fences the log: the machine reopens.)"""
        end, self.ticket = self.ticket, None
        if end <= self.hw:
            return False
        self.hw = end
        return True

    def roll(self) -> None:
        if self.segments[-1].size:
            self.flush()
            self.segments.append(ModelSegment(self.end))

    def maybe_flush(self, now: int) -> bool:
        due = self.first_unflushed_ms
        if due is not None and now >= due + self.config.flush_ms:
            self.flush()
            return True
        return False

    def _expired(self, seg: ModelSegment, now: int) -> bool:
        return (self.config.retention_ms >= 0 and
                seg.max_timestamp() < now - self.config.retention_ms)

    def enforce_retention(self, now: int) -> int:
        if self.segments[-1].size and self._expired(self.segments[-1], now):
            self.roll()
        total = sum(s.size for s in self.segments)
        deleted = 0
        while len(self.segments) > 1:
            seg = self.segments[0]
            over = (self.config.retention_bytes >= 0 and
                    total - seg.size >= self.config.retention_bytes)
            if not (over or self._expired(seg, now)):
                break
            total -= seg.size
            del self.segments[0]
            deleted += 1
        return deleted

    def reopen(self) -> None:
        """After a clean close, or a process crash (the page cache keeps every write)."""
        self.flush()
        self.ticket = None
        self.segments[-1].opened_ms = None

    def read(self, offset: int, max_bytes: int) -> tuple[int, bytes] | None:
        """(base offset, bytes) a read must return, None, or OffsetOutOfRange."""
        if not self.log_start <= offset <= self.end:
            raise OffsetOutOfRange(offset)
        if offset >= self.hw:
            return None
        seg = [s for s in self.segments if s.base <= offset][-1]
        data = b"".join(b[2] for b in seg.batches if b[0] < self.hw)
        pos = 0
        for base, records, raw, _ts in seg.batches:
            if base <= offset < base + records:
                length = min(len(data) - pos, max(max_bytes, len(raw)))
                return base, data[pos:pos + length]
            pos += len(raw)
        raise AssertionError(f"model has no batch for offset {offset}")

    def offset_for_time(self, timestamp: int) -> int | None:
        for seg in self.segments:
            for base, _records, _raw, max_ts in seg.batches:
                if base < self.hw and max_ts >= timestamp:
                    return base
        return None


class FakeClock:
    """An injected clock in whole milliseconds. PartitionLog takes seconds and computes
    int(clock() * 1000); returning (ms + 0.5) / 1000 keeps that exact (1.001 * 1000 is
    1000.9999999999999 in binary floating point)."""

    def __init__(self, ms: int = 1_000_000):
        self.ms = ms

    def __call__(self) -> float:
        return (self.ms + 0.5) / 1000
