"""The only importer of the compiled C core (pybroker._core).

Every call is validated here before it reaches C, and every status code becomes a
Python exception right after, in `_check`. Nothing else in pybroker touches `ffi`;
the rest of the package sees plain ints, buffers, named tuples and three opaque handles
(`Pinned`, a buffer pinned for C, `IndexCursor`, the cursor struct with int fields, and
`BatchInfos`, the per-batch output array of a scan).
"""
from __future__ import annotations

import errno as errno_mod
import os
import struct
import threading
from typing import NamedTuple

import pybroker
from pybroker.errors import CoreBuildError, CoreError, CoreIOError, CorruptRecordError

try:
    from pybroker import _core
except ImportError as exc:  # pragma: no cover - exercised by a broken install only
    raise CoreBuildError(
        "pybroker's C core is not built: run `pip install -e .` (needs gcc and the "
        f"Python headers): {exc}"
    ) from exc

ffi, lib = _core.ffi, _core.lib

CORE_VERSION = ffi.string(lib.pb_core_version()).decode()
if CORE_VERSION != pybroker.__version__:
    raise CoreBuildError(
        f"stale C core: built for pybroker {CORE_VERSION}, package is {pybroker.__version__}; "
        "rebuild with `pip install -e .`"
    )

BATCH_HEADER_SIZE = lib.PB_BATCH_HEADER_SIZE
BATCH_LOG_OVERHEAD = lib.PB_BATCH_LOG_OVERHEAD  # baseOffset + batchLength, before the header
OFFSET_ENTRY_SIZE = lib.PB_OFFSET_ENTRY_SIZE
TIME_ENTRY_SIZE = lib.PB_TIME_ENTRY_SIZE
INDEX_OFFSET = lib.PB_INDEX_OFFSET
INDEX_TIME = lib.PB_INDEX_TIME
assert (INDEX_OFFSET, INDEX_TIME) == (0, 1)  # segment_seek passes by_time as the kind
ATTR_LOG_APPEND_TIME = lib.PB_ATTR_LOG_APPEND_TIME
# Where each RecordBatch header field starts (csrc/batch.h): pybroker/records.py derives
# its own from its struct declaration and checks them against these.
BATCH_FIELD_OFFSETS = {name[len("PB_OFF_"):].lower(): getattr(lib, name)
                       for name in dir(lib) if name.startswith("PB_OFF_")}

_RECORD_ERRORS = {
    lib.PB_E_TRUNCATED,
    lib.PB_E_BAD_LENGTH,
    lib.PB_E_BAD_MAGIC,
    lib.PB_E_BAD_CRC,
    lib.PB_E_BAD_COUNT,
    lib.PB_E_TOO_LARGE,
    lib.PB_E_BAD_OFFSET,
}


def strerror(code: int) -> str:
    return ffi.string(lib.pb_strerror(code)).decode()


def _check(code: int, what: str, position: int = -1, scan=None) -> None:
    """Turn a C status code into the matching exception (the one place that does)."""
    if code == 0:
        return
    message = f"{what}: {strerror(code)}"
    if code == lib.PB_E_IO:
        err = ffi.errno
        raise CoreIOError(code, f"{message}: {errno_mod.errorcode.get(err, err)} "
                                f"({os.strerror(err)})", err) from OSError(err, os.strerror(err))
    if code in _RECORD_ERRORS:
        raise _record_error(code, message, position, scan)
    raise CoreError(code, message)


def _record_error(code: int, message: str, position: int, scan) -> CorruptRecordError:
    if position >= 0:
        message += f" at byte {position}"
    exc = CorruptRecordError(code, message, position)
    exc.scan = scan
    return exc


def is_code(exc: BaseException, name: str) -> bool:
    """True when exc carries the C status PB_E_<name>, e.g. is_code(e, "BAD_CRC")."""
    return isinstance(exc, CoreError) and exc.code == getattr(lib, "PB_E_" + name)


# --- CRC-32C ---------------------------------------------------------------------------

def _bytes(data):
    """A uint8_t view of any buffer; len() of it counts bytes, not items."""
    return ffi.from_buffer("uint8_t[]", data)


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C of a bytes-like object, continuing `crc`."""
    cbuf = _bytes(data)
    return lib.pb_crc32c(crc, cbuf, len(cbuf))


def crc32c_sw(data, crc: int = 0) -> int:
    """CRC-32C by the portable table path (the oracle for the hardware path)."""
    cbuf = _bytes(data)
    return lib.pb_crc32c_sw(crc, cbuf, len(cbuf))


def crc32c_hardware() -> bool:
    return bool(lib.pb_crc32c_hw_available())


# --- record batches --------------------------------------------------------------------

class _Outs(threading.local):
    """Output structs reused by the hot calls (scan, seek), one set per thread: a
    worker's event loop, storage, flusher and scrub threads all scan, and cffi releases
    the GIL during the C call. Each call copies the fields out before returning."""

    def __init__(self):  # (struct, its buffer): one thread-local lookup a call
        scan, seek = ffi.new("pb_scan *"), ffi.new("pb_batch_pos *")
        self.scan = (scan, ffi.buffer(scan))
        self.seek = (seek, ffi.buffer(seek))


_OUTS = _Outs()
_BATCH_POS_LAYOUT = struct.Struct("=5q")  # pb_batch_pos: five int64 (csrc/segment.h)
assert _BATCH_POS_LAYOUT.size == ffi.sizeof("pb_batch_pos")
_tuple_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__


class Scan(NamedTuple):
    """What pb_batches_scan found (see csrc/batch.h). The producer fields are the first
    batch's, -1 when there is none; last_leader_epoch is the last batch's
    partitionLeaderEpoch (-1 when there is none), and epoch_changes counts the batches
    whose epoch differs from the batch before (0: every batch carries
    last_leader_epoch). They default so that the nine-field form still builds a Scan."""

    batches: int
    records: int
    valid_bytes: int
    first_offset: int
    last_offset: int
    max_timestamp: int
    offset_of_max_timestamp: int
    max_batch_bytes: int
    attributes_or: int
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1
    last_leader_epoch: int = -1
    epoch_changes: int = 0


# pb_scan as bytes: seven int64, two int32, one int64, four int32 (csrc/batch.h), one unpack
_SCAN_LAYOUT = struct.Struct("=7q2iq4i")
assert _SCAN_LAYOUT.size == ffi.sizeof("pb_scan")
assert len(Scan._fields) == len(_SCAN_LAYOUT.unpack(bytes(_SCAN_LAYOUT.size)))


def _scan_tuple(buffer) -> Scan:
    return _tuple_new(Scan, _SCAN_LAYOUT.unpack(buffer))


INT32_MAX = 2**31 - 1


def scan_batches(buf, *, stamp_offset: int | None = None, append_time: int | None = None,
                 max_batch: int = 0, min_offset: int = -1,
                 leader_epoch: int | None = None) -> Scan:
    """Validate every RecordBatch v2 in buf; optionally stamp offsets, LogAppendTime and
    the partitionLeaderEpoch (leader_epoch, 0..2**31-1: a leader stamps its epoch).

    Stamping writes into buf, which must then be writable (bytearray, mmap, or a
    memoryview of one). Raises CorruptRecordError naming the reason and byte position of
    the first bad batch; its `.scan` holds what was valid before it.
    """
    flags = 0
    if stamp_offset is not None:
        if stamp_offset < 0:
            raise ValueError(f"stamp_offset must be >= 0, got {stamp_offset}")
        flags |= lib.PB_SCAN_STAMP_OFFSETS
    if append_time is not None:
        flags |= lib.PB_SCAN_STAMP_TIME
    if leader_epoch is not None:
        if not 0 <= leader_epoch <= INT32_MAX:
            raise ValueError(f"leader_epoch must be in 0..{INT32_MAX}, got {leader_epoch}")
        flags |= lib.PB_SCAN_STAMP_EPOCH
    writable = flags != 0
    out, out_buffer = _OUTS.scan
    next_offset = stamp_offset if stamp_offset is not None else min_offset
    # `with` releases the buffer export at once, so an mmap can be closed right after
    with ffi.from_buffer("uint8_t[]", buf, require_writable=writable) as cbuf:
        code = lib.pb_batches_scan(cbuf, len(cbuf), flags, next_offset,
                                   append_time if append_time is not None else -1,
                                   leader_epoch if leader_epoch is not None else -1,
                                   max_batch, out, ffi.NULL, 0)
    if code:
        _check(code, "record batch", out.valid_bytes, _scan_tuple(out_buffer))
    return _scan_tuple(out_buffer)


class BatchInfo(NamedTuple):
    """One batch's header fields as pb_batch_info carries them (csrc/batch.h)."""

    base_offset: int
    producer_id: int
    last_offset_delta: int
    base_sequence: int
    producer_epoch: int
    attributes: int
    batch_length: int  # the batch is batch_length + BATCH_LOG_OVERHEAD bytes


# pb_batch_info as bytes: two int64, two int32, two int16, one int32 (csrc/batch.h)
BATCH_INFO_LAYOUT = struct.Struct("=2q2i2hi")
assert BATCH_INFO_LAYOUT.size == ffi.sizeof("pb_batch_info")
assert len(BatchInfo._fields) == len(BATCH_INFO_LAYOUT.unpack(bytes(BATCH_INFO_LAYOUT.size)))


class BatchInfos:
    """An output array for scan_batch_infos, sized for buffers up to max_bytes; one per
    thread (a storage thread's replay), reused across calls."""

    __slots__ = ("max_bytes", "capacity", "_array", "_view")

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.capacity = max_bytes // BATCH_HEADER_SIZE  # the most batches that many bytes hold
        self._array = ffi.new("pb_batch_info[]", max(self.capacity, 1))
        self._view = memoryview(ffi.buffer(self._array))


def scan_batch_infos(buf, infos: BatchInfos) -> tuple[Scan, memoryview,
                                                      CorruptRecordError | None]:
    """Validate buf (len(buf) <= infos.max_bytes) without changing it, as scan_batches does
    with no stamping, and return (scan, packed, error): packed holds scan.batches entries
    of BATCH_INFO_LAYOUT (read them with BATCH_INFO_LAYOUT.iter_unpack), one per valid
    batch; error is the CorruptRecordError of the first bad batch (scan and packed then
    describe the batches before it), None when all of buf is whole valid batches.
    packed is a view of infos, valid until its next use."""
    with ffi.from_buffer("uint8_t[]", buf) as cbuf:
        if len(cbuf) > infos.max_bytes:
            raise ValueError(f"{len(cbuf)} bytes exceed the {infos.max_bytes} the infos "
                             "array is sized for")
        out, out_buffer = _OUTS.scan
        code = lib.pb_batches_scan(cbuf, len(cbuf), 0, -1, -1, -1, 0, out, infos._array,
                                   infos.capacity)
    scan = _scan_tuple(out_buffer)
    packed = infos._view[:scan.batches * BATCH_INFO_LAYOUT.size]
    if not code:
        return scan, packed, None
    if code not in _RECORD_ERRORS:
        _check(code, "record batch")
    return scan, packed, _record_error(code, f"record batch: {strerror(code)}",
                                       scan.valid_bytes, scan)


# --- indexes and segments --------------------------------------------------------------

class Pinned:
    """A buffer (an mmap, a bytearray) pinned as a C pointer; keep it while C may use it."""

    __slots__ = ("obj", "ptr", "size")

    def __init__(self, obj):
        self.obj = obj
        self.ptr = ffi.from_buffer("uint8_t[]", obj, require_writable=True)
        self.size = len(self.ptr)

    def release(self) -> None:
        """Drop the pointer so the underlying mmap can be closed."""
        if self.obj is not None:
            ffi.release(self.ptr)
            self.obj = None
            self.size = 0


def new_index_cursor(capacity: int, time_capacity: int):
    """An IndexCursor: cdata struct whose int fields are read and set like attributes."""
    if not (0 <= capacity < 2**32 and 0 < time_capacity < 2**32):
        raise ValueError(f"index capacities out of range: {capacity}, {time_capacity}")
    cur = ffi.new("pb_index_cursor *")
    cur.capacity = capacity
    cur.time_capacity = time_capacity
    cur.max_timestamp = -1
    cur.offset_of_max_timestamp = -1
    return cur


def index_add(batches, file_pos: int, base_offset: int, interval: int,
              offset_index: Pinned, time_index: Pinned, cursor) -> None:
    with _bytes(batches) as cbuf:
        code = lib.pb_index_add(cbuf, len(cbuf), file_pos, base_offset, interval,
                                offset_index.ptr, time_index.ptr, cursor)
    _check(code, f"index of segment {base_offset} at position {file_pos}")


def index_seal(time_index: Pinned, base_offset: int, cursor) -> None:
    _check(lib.pb_index_seal(time_index.ptr, base_offset, cursor),
           f"seal time index of segment {base_offset}")


def segment_append(fd: int, batches, file_pos: int, base_offset: int, interval: int,
                   offset_index: Pinned, time_index: Pinned, cursor) -> None:
    """Write validated batches at file_pos and index them; all or nothing."""
    cbuf = _bytes(batches)
    code = lib.pb_segment_append(fd, cbuf, len(cbuf), file_pos, base_offset, interval,
                                 offset_index.ptr, time_index.ptr, cursor)
    if code:
        _check(code, f"append to segment {base_offset} at position {file_pos}")


class BatchPos(NamedTuple):
    position: int
    size: int
    base_offset: int
    last_offset: int
    max_timestamp: int


def _entries(pinned: Pinned, count: int, entry_size: int) -> int:
    if count * entry_size > pinned.size:
        raise ValueError(f"{count} entries of {entry_size} bytes exceed a {pinned.size}-byte index")
    return count


def segment_seek(fd: int, offset_index: Pinned, time_index: Pinned, cursor,
                 base_offset: int, by_time: bool, target: int, end_pos: int) -> BatchPos | None:
    """The first batch before end_pos holding offset `target` (or, by_time, the first with
    maxTimestamp >= target) among the entries cursor (an IndexCursor made for these
    buffers) says are in use; None when there is none."""
    out, out_buffer = _OUTS.seek
    code = lib.pb_segment_seek(fd, offset_index.ptr, time_index.ptr, cursor, base_offset,
                               by_time, target, end_pos, out)
    if code:
        if code == lib.PB_E_NOT_FOUND:
            return None
        _check(code, f"seek to {'time' if by_time else 'offset'} {target} in segment "
                     f"{base_offset}")
    # one unpack of the struct and tuple.__new__ (no NamedTuple __new__): a third of a lookup
    return _tuple_new(BatchPos, _BATCH_POS_LAYOUT.unpack(out_buffer))


def index_floor(index: Pinned, entries: int, kind: int, target: int, strict: bool = False) -> int:
    """Last slot with key <= target (< when strict), -1 if none."""
    size = TIME_ENTRY_SIZE if kind == INDEX_TIME else OFFSET_ENTRY_SIZE
    slot = ffi.new("int64_t *")
    _check(lib.pb_index_floor(index.ptr, _entries(index, entries, size), kind, target,
                              int(strict), slot), "index search")
    return slot[0]


def index_entry(index: Pinned, entries: int, kind: int, slot: int) -> tuple[int, int]:
    key, value = ffi.new("int64_t *"), ffi.new("int64_t *")
    size = TIME_ENTRY_SIZE if kind == INDEX_TIME else OFFSET_ENTRY_SIZE
    _check(lib.pb_index_entry(index.ptr, _entries(index, entries, size), kind, slot, key, value),
           f"index slot {slot} of {entries}")
    return key[0], value[0]


def index_check(index: Pinned, entries: int, kind: int, max_relative: int,
                log_size: int) -> int:
    """-1 when every entry keeps the index invariants, else the first bad slot."""
    size = TIME_ENTRY_SIZE if kind == INDEX_TIME else OFFSET_ENTRY_SIZE
    bad = ffi.new("int64_t *")
    code = lib.pb_index_check(index.ptr, _entries(index, entries, size), kind, max_relative,
                              log_size, bad)
    if code == lib.PB_E_INDEX_CORRUPT:
        return bad[0]
    _check(code, "index check")
    return -1


# --- sendfile --------------------------------------------------------------------------

def sendfile(out_fd: int, in_fd: int, position: int, count: int) -> tuple[int, bool]:
    """Send up to count bytes of in_fd at position to a non-blocking socket.

    Returns (bytes sent, complete). complete is False when the socket is full: wait
    until it is writable and call again from position + sent. Raises CoreError
    (TRUNCATED) when the file ends before count bytes.
    """
    sent = ffi.new("int64_t *")
    code = lib.pb_sendfile(out_fd, in_fd, position, count, sent)
    if not code:
        return sent[0], True
    if code == lib.PB_E_AGAIN:
        return sent[0], False
    _check(code, f"sendfile of {count} bytes at {position} (sent {sent[0]})")
