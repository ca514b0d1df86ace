"""Plain-Python reference implementations of every C core function: the test oracles.

Nothing here calls pybroker.core (nor records.build_batch's CRC): each function restates
the contract of a header in csrc/ in the most obvious Python, slow but easy to read, so
the tests in this directory can compare the C core against it.

  crc32c      csrc/crc32c.h   bit-at-a-time table CRC-32C (one 256-entry table)
  scan        csrc/batch.h    pb_batches_scan: validate, stamp offsets / LogAppendTime
  IndexModel  csrc/index.h    the sparse offset + time index rule, as lists
  floor       csrc/index.h    pb_index_floor via bisect
  seek        csrc/segment.h  pb_segment_seek as a full scan of the batch list
  read_send   csrc/segment.h  pb_sendfile as pread() + sendall()

Batch byte layout (big-endian), from csrc/batch.h:
  0 baseOffset i64 | 8 batchLength i32 | 12 leaderEpoch i32 | 16 magic i8 | 17 crc u32
  21 attributes i16 | 23 lastOffsetDelta i32 | 27 baseTimestamp i64 | 35 maxTimestamp i64
  43 producerId i64 | 51 producerEpoch i16 | 53 baseSequence i32 | 57 recordCount i32
  61 records
"""
from __future__ import annotations

import bisect
import os
import struct
from typing import NamedTuple

# --- CRC-32C -----------------------------------------------------------------------------

POLY_REFLECTED = 0x82F63B78  # Castagnoli 0x1EDC6F41, bit-reversed


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ POLY_REFLECTED if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = _make_table()


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C of data, continuing a finished crc (0 to start). ~7 MB/s."""
    reg = crc ^ 0xFFFFFFFF
    table = CRC_TABLE
    for b in bytes(data):
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg ^ 0xFFFFFFFF


# --- building batches (test input) ---------------------------------------------------------

HEADER = struct.Struct(">qiibIhiqqqhii")  # the 61-byte header, magic signed as in C's check
HEADER_SIZE = 61
LOG_OVERHEAD = 12  # baseOffset + batchLength
ATTR_LOG_APPEND_TIME = 8

# field offsets
OFF_BASE, OFF_LENGTH, OFF_EPOCH, OFF_MAGIC, OFF_CRC, OFF_ATTRS = 0, 8, 12, 16, 17, 21
OFF_LAST_DELTA, OFF_BASE_TS, OFF_MAX_TS, OFF_COUNT = 23, 27, 35, 57
OFF_PRODUCER_ID, OFF_PRODUCER_EPOCH, OFF_BASE_SEQUENCE = 43, 51, 53


def make_batch(count: int = 1, *, base_offset: int = 0, base_timestamp: int = 0,
               max_timestamp: int | None = None, attributes: int = 0, payload: bytes = b"",
               last_offset_delta: int | None = None, magic: int = 2) -> bytearray:
    """One batch with a correct CRC (by the oracle CRC). The payload is opaque bytes: the
    C core never parses records, so tests choose its size freely."""
    if max_timestamp is None:
        max_timestamp = base_timestamp
    if last_offset_delta is None:
        last_offset_delta = count - 1
    out = bytearray(HEADER_SIZE) + payload
    HEADER.pack_into(out, 0, base_offset, len(out) - LOG_OVERHEAD, -1, magic, 0, attributes,
                     last_offset_delta, base_timestamp, max_timestamp, -1, -1, -1, count)
    recrc(out, 0)
    return out


def recrc(buf: bytearray, pos: int = 0) -> None:
    """Rewrite the CRC of the batch at pos after a test edited its covered bytes."""
    size = get_i32(buf, pos + OFF_LENGTH) + LOG_OVERHEAD
    struct.pack_into(">I", buf, pos + OFF_CRC, crc32c(memoryview(buf)[pos + 21:pos + size]))


def get_i16(buf, pos: int) -> int:
    return struct.unpack_from(">h", buf, pos)[0]


def get_i32(buf, pos: int) -> int:
    return struct.unpack_from(">i", buf, pos)[0]


def get_u32(buf, pos: int) -> int:
    return struct.unpack_from(">I", buf, pos)[0]


def get_i64(buf, pos: int) -> int:
    return struct.unpack_from(">q", buf, pos)[0]


class BatchInfo(NamedTuple):
    """One batch of a test buffer or file, as the seek oracle and index model see it."""

    position: int
    size: int
    base_offset: int
    last_offset: int
    max_timestamp: int


def batch_infos(buf, start: int = 0) -> list[BatchInfo]:
    """The headers of the whole batches in buf (no validation), positions + start."""
    out, pos = [], 0
    while pos + HEADER_SIZE <= len(buf):
        size = get_i32(buf, pos + OFF_LENGTH) + LOG_OVERHEAD
        if size < HEADER_SIZE or pos + size > len(buf):
            break
        base = get_i64(buf, pos)
        out.append(BatchInfo(start + pos, size, base, base + get_i32(buf, pos + OFF_LAST_DELTA),
                             get_i64(buf, pos + OFF_MAX_TS)))
        pos += size
    return out


# --- pb_batches_scan -----------------------------------------------------------------------

class ScanResult(NamedTuple):
    """Field for field the same as pybroker.core.Scan."""

    batches: int = 0
    records: int = 0
    valid_bytes: int = 0
    first_offset: int = -1
    last_offset: int = -1
    max_timestamp: int = -1
    offset_of_max_timestamp: int = -1
    max_batch_bytes: int = 0
    attributes_or: int = 0
    producer_id: int = -1      # the first batch's producer fields
    producer_epoch: int = -1
    base_sequence: int = -1
    last_leader_epoch: int = -1  # the last batch's partitionLeaderEpoch
    epoch_changes: int = 0       # batches whose epoch differs from the batch before


def _check_batch(buf, pos: int, max_batch: int) -> tuple[str | None, int]:
    """(error name or None, total size) of the batch at pos, checks in header order:
    bounds of the 12-byte prefix, batchLength >= 49, size limit, bounds, magic, CRC,
    record count."""
    avail = len(buf) - pos
    if avail < LOG_OVERHEAD:
        return "TRUNCATED", 0
    length = get_i32(buf, pos + OFF_LENGTH)
    if length < HEADER_SIZE - LOG_OVERHEAD:
        return "BAD_LENGTH", 0
    total = length + LOG_OVERHEAD
    if max_batch > 0 and total > max_batch:
        return "TOO_LARGE", 0
    if total > avail:
        return "TRUNCATED", 0
    if buf[pos + OFF_MAGIC] != 2:
        return "BAD_MAGIC", 0
    if crc32c(memoryview(buf)[pos + 21:pos + total]) != get_u32(buf, pos + OFF_CRC):
        return "BAD_CRC", 0
    count = get_i32(buf, pos + OFF_COUNT)
    if count < 1 or get_i32(buf, pos + OFF_LAST_DELTA) != count - 1:
        return "BAD_COUNT", 0
    return None, total


def scan(buf, *, stamp_offset: int | None = None, append_time: int | None = None,
         max_batch: int = 0, min_offset: int = -1,
         leader_epoch: int | None = None) -> tuple[ScanResult, str | None, bytearray]:
    """pb_batches_scan on a copy of buf: (what was valid, error name or None, the copy with
    any stamping applied). On error, valid_bytes is the position of the bad batch.

    Offsets: with stamp_offset the batches get base offsets stamp_offset,
    stamp_offset + count0, ...; otherwise, when min_offset >= 0, every stored base offset
    must be >= min_offset and above the previous batch's last offset; min_offset == -1
    turns that check off entirely (the csrc/batch.h wording "-1 skips that").
    leader_epoch, when given, is written into every valid batch's partitionLeaderEpoch
    (bytes 12..15, outside the CRC)."""
    buf = bytearray(buf)
    r = ScanResult()._asdict()
    check_offsets = stamp_offset is None and min_offset >= 0
    next_offset = stamp_offset if stamp_offset is not None else min_offset
    pos = 0
    while pos < len(buf):
        err, size = _check_batch(buf, pos, max_batch)
        if err:
            return ScanResult(**r), err, buf
        if stamp_offset is not None:
            base = next_offset
            struct.pack_into(">q", buf, pos, base)
        else:
            base = get_i64(buf, pos)
            if check_offsets and base < next_offset:
                return ScanResult(**r), "BAD_OFFSET", buf
        if append_time is not None:
            attrs = get_i16(buf, pos + OFF_ATTRS) | ATTR_LOG_APPEND_TIME
            struct.pack_into(">h", buf, pos + OFF_ATTRS, attrs)
            struct.pack_into(">q", buf, pos + OFF_MAX_TS, append_time)
            recrc(buf, pos)
        if leader_epoch is not None:  # outside the CRC
            struct.pack_into(">i", buf, pos + OFF_EPOCH, leader_epoch)
        epoch = get_i32(buf, pos + OFF_EPOCH)
        if r["batches"] and epoch != r["last_leader_epoch"]:
            r["epoch_changes"] += 1
        r["last_leader_epoch"] = epoch
        last = base + get_i32(buf, pos + OFF_LAST_DELTA)
        max_ts = get_i64(buf, pos + OFF_MAX_TS)
        if r["batches"] == 0:
            r["first_offset"] = base
            r["producer_id"] = get_i64(buf, pos + OFF_PRODUCER_ID)
            r["producer_epoch"] = get_i16(buf, pos + OFF_PRODUCER_EPOCH)
            r["base_sequence"] = get_i32(buf, pos + OFF_BASE_SEQUENCE)
        if max_ts > r["max_timestamp"]:
            r["max_timestamp"] = max_ts
            r["offset_of_max_timestamp"] = last
        r["max_batch_bytes"] = max(r["max_batch_bytes"], size)
        r["attributes_or"] |= get_i16(buf, pos + OFF_ATTRS)
        r["batches"] += 1
        r["records"] += last - base + 1
        r["last_offset"] = last
        next_offset = last + 1
        pos += size
        r["valid_bytes"] = pos
    return ScanResult(**r), None, buf


# --- the indexes ---------------------------------------------------------------------------

OFFSET_ENTRY = struct.Struct("<II")  # relative offset, file position (host order)
TIME_ENTRY = struct.Struct("<qI")    # max timestamp so far, relative offset


class IndexModel:
    """The offset and time index of one segment as two lists, built by the rule of
    csrc/index.h: before the first batch starting at least `interval` bytes after the
    previous entry (the segment start counts as one), add (relative offset, position) to
    the offset index, and (max timestamp so far, its relative offset) to the time index
    when that max grew since the last time entry."""

    def __init__(self, base_offset: int, interval: int):
        self.base_offset = base_offset
        self.interval = interval
        self.offsets: list[tuple[int, int]] = []
        self.times: list[tuple[int, int]] = []
        self.bytes_since_entry = 0
        self.max_timestamp = -1
        self.offset_of_max_timestamp = -1

    def add(self, infos: list[BatchInfo]) -> None:
        for b in infos:
            if b.max_timestamp > self.max_timestamp:
                self.max_timestamp = b.max_timestamp
                self.offset_of_max_timestamp = b.last_offset
            if self.bytes_since_entry >= self.interval:
                self.offsets.append((b.base_offset - self.base_offset, b.position))
                if not self.times or self.max_timestamp > self.times[-1][0]:
                    self.times.append((self.max_timestamp,
                                       self.offset_of_max_timestamp - self.base_offset))
                self.bytes_since_entry = 0
            self.bytes_since_entry += b.size

    def seal(self) -> None:
        if self.max_timestamp >= 0 and (not self.times or self.max_timestamp > self.times[-1][0]):
            self.times.append((self.max_timestamp, self.offset_of_max_timestamp - self.base_offset))


def pack_offset_index(entries, capacity: int | None = None) -> bytearray:
    out = bytearray(OFFSET_ENTRY.size * (len(entries) if capacity is None else capacity))
    for i, e in enumerate(entries):
        OFFSET_ENTRY.pack_into(out, i * OFFSET_ENTRY.size, *e)
    return out


def pack_time_index(entries, capacity: int | None = None) -> bytearray:
    out = bytearray(TIME_ENTRY.size * (len(entries) if capacity is None else capacity))
    for i, e in enumerate(entries):
        TIME_ENTRY.pack_into(out, i * TIME_ENTRY.size, *e)
    return out


def unpack_offset_index(buf, entries: int) -> list[tuple[int, int]]:
    return [OFFSET_ENTRY.unpack_from(buf, i * OFFSET_ENTRY.size) for i in range(entries)]


def unpack_time_index(buf, entries: int) -> list[tuple[int, int]]:
    return [TIME_ENTRY.unpack_from(buf, i * TIME_ENTRY.size) for i in range(entries)]


def floor(keys: list[int], target: int, strict: bool = False) -> int:
    """pb_index_floor: the last slot whose key is <= target (< when strict), -1 if none."""
    return (bisect.bisect_left if strict else bisect.bisect_right)(keys, target) - 1


def check_index(entries, kind: str, max_relative: int, log_size: int) -> int:
    """pb_index_check: the first slot breaking the invariants, -1 when none does."""
    prev_key, prev_value = None, -1
    for i, (key, value) in enumerate(entries):
        if kind == "offset":
            ok = (prev_key is None or key > prev_key) and value > prev_value \
                and key <= max_relative and value < log_size
        else:
            ok = (prev_key is None or key > prev_key) and value >= prev_value \
                and value <= max_relative
        if not ok:
            return i
        prev_key, prev_value = key, value
    return -1


# --- pb_segment_seek -----------------------------------------------------------------------

def seek(infos: list[BatchInfo], by_time: bool, target: int, end_pos: int) -> BatchInfo | None:
    """The first whole batch ending at or before end_pos that holds offset target (last
    offset >= target), or by_time the first whose maxTimestamp >= target; None if none."""
    for b in infos:
        if b.position + b.size > end_pos:
            return None
        if (b.max_timestamp if by_time else b.last_offset) >= target:
            return b
    return None


# --- pb_sendfile ---------------------------------------------------------------------------

def read_send(sock, fd: int, position: int, count: int) -> int:
    """pb_sendfile by pread() + sendall() on a blocking socket: bytes sent; stops early
    when the file ends (the C core then reports TRUNCATED)."""
    sent = 0
    while sent < count:
        chunk = os.pread(fd, min(65536, count - sent), position + sent)
        if not chunk:
            break
        sock.sendall(chunk)
        sent += len(chunk)
    return sent
