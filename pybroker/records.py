"""Kafka RecordBatch v2 (magic 2) in plain Python: building and parsing batches.

Used by pybroker's own client and by the tests as the reference for the C core. The
byte layout is documented in csrc/batch.h; records inside an uncompressed batch are
  length varint | attributes i8 | timestampDelta varlong | offsetDelta varint |
  keyLength varint | key | valueLength varint | value | headerCount varint | headers
(varints zigzag-encoded, length -1 = null).
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Sequence

from pybroker import core

# The 61-byte batch header, declared once for Python (csrc/batch.h declares it for C):
# every Python reader of header fields takes its struct and offsets from here.
HEADER_FIELDS = (
    ("base_offset", "q"), ("batch_length", "i"), ("leader_epoch", "i"), ("magic", "B"),
    ("crc", "I"), ("attributes", "h"), ("last_offset_delta", "i"), ("base_timestamp", "q"),
    ("max_timestamp", "q"), ("producer_id", "q"), ("producer_epoch", "h"),
    ("base_sequence", "i"), ("record_count", "i"),
)
HEADER = struct.Struct(">" + "".join(code for _, code in HEADER_FIELDS))
FIELD_OFFSETS = {name: struct.calcsize(">" + "".join(c for _, c in HEADER_FIELDS[:i]))
                 for i, (name, _) in enumerate(HEADER_FIELDS)}
FIELDS = {name: struct.Struct(">" + code) for name, code in HEADER_FIELDS}  # one field each
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == core.BATCH_HEADER_SIZE, (HEADER_SIZE, core.BATCH_HEADER_SIZE)
assert FIELD_OFFSETS == core.BATCH_FIELD_OFFSETS, (FIELD_OFFSETS, core.BATCH_FIELD_OFFSETS)
PRODUCER_ID_AT = FIELD_OFFSETS["producer_id"]
_HEADER = HEADER  # the older private name
COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_BIT = 0x08
TRANSACTIONAL_BIT = 0x10
CONTROL_BIT = 0x20


class Record(NamedTuple):
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple = ()


class Batch(NamedTuple):
    base_offset: int
    size: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int
    crc: int
    payload: bytes  # the records section, compressed or not

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def write_varint(out: bytearray, n: int) -> None:
    v = _zigzag(n) & 0xFFFFFFFFFFFFFFFF
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def read_varint(buf, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise ValueError(f"varint runs past the end of the buffer at {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError(f"varint longer than 10 bytes at {pos}")


def _write_bytes(out: bytearray, data: bytes | None) -> None:
    if data is None:
        write_varint(out, -1)
    else:
        write_varint(out, len(data))
        out += data


def encode_record(out: bytearray, offset_delta: int, timestamp_delta: int,
                  key: bytes | None, value: bytes | None, headers: Sequence = ()) -> None:
    body = bytearray(b"\x00")  # attributes
    write_varint(body, timestamp_delta)
    write_varint(body, offset_delta)
    _write_bytes(body, key)
    _write_bytes(body, value)
    write_varint(body, len(headers))
    for hkey, hvalue in headers:
        _write_bytes(body, hkey.encode() if isinstance(hkey, str) else hkey)
        _write_bytes(body, hvalue)
    write_varint(out, len(body))
    out += body


def build_batch(values: Sequence[bytes | None], *, keys: Sequence[bytes | None] | None = None,
                timestamps: Sequence[int] | None = None, base_offset: int = 0,
                attributes: int = 0, producer_id: int = -1, producer_epoch: int = -1,
                base_sequence: int = -1, headers: Sequence[Sequence] | None = None,
                compressed_payload: bytes | None = None) -> bytearray:
    """One RecordBatch v2 holding len(values) records, CRC filled in.

    compressed_payload, if given, replaces the encoded records section (its codec named
    by attributes & 7); the record count still comes from values."""
    count = len(values)
    if count < 1:
        raise ValueError("a batch holds at least one record")
    keys = keys or [None] * count
    timestamps = timestamps or [0] * count
    base_ts = timestamps[0]
    if compressed_payload is None:
        payload = bytearray()
        for i, value in enumerate(values):
            encode_record(payload, i, timestamps[i] - base_ts, keys[i], value,
                          headers[i] if headers else ())
    else:
        payload = compressed_payload
    out = bytearray(_HEADER.size)
    out += payload
    _HEADER.pack_into(out, 0, base_offset, len(out) - 12, -1, 2, 0, attributes, count - 1,
                      base_ts, max(timestamps), producer_id, producer_epoch, base_sequence,
                      count)
    struct.pack_into(">I", out, 17, core.crc32c(memoryview(out)[21:]))
    return out


def parse_batches(buf) -> list[Batch]:
    """Every whole batch in buf (a trailing partial batch, as a fetch may end in, is
    ignored). Checks magic and CRC with the pure-Python-visible fields."""
    batches, pos, view = [], 0, memoryview(buf)
    while pos + _HEADER.size <= len(view):
        (base, length, _epoch, magic, crc, attrs, last_delta, base_ts, max_ts, pid, pepoch,
         seq, count) = _HEADER.unpack_from(view, pos)
        size = length + 12
        if pos + size > len(view):
            break
        if magic != 2:
            raise ValueError(f"batch at {pos}: magic {magic}")
        if core.crc32c(view[pos + 21:pos + size]) != crc:
            raise ValueError(f"batch at {pos}: CRC mismatch")
        batches.append(Batch(base, size, attrs, last_delta, base_ts, max_ts, pid, pepoch, seq,
                             count, crc, bytes(view[pos + _HEADER.size:pos + size])))
        pos += size
    return batches


def parse_records(batch: Batch, payload: bytes | None = None) -> list[Record]:
    """The records of a batch; pass the decompressed payload for compressed batches."""
    data = batch.payload if payload is None else payload
    if payload is None and batch.compression:
        raise ValueError(f"batch at offset {batch.base_offset} is compressed (codec "
                         f"{batch.compression}); pass its decompressed payload")
    records, pos = [], 0
    for _ in range(batch.record_count):
        length, pos = read_varint(data, pos)
        end = pos + length
        pos += 1  # attributes
        ts_delta, pos = read_varint(data, pos)
        off_delta, pos = read_varint(data, pos)
        key, pos = _read_bytes(data, pos)
        value, pos = _read_bytes(data, pos)
        nheaders, pos = read_varint(data, pos)
        headers = []
        for _h in range(nheaders):
            hkey, pos = _read_bytes(data, pos)
            hval, pos = _read_bytes(data, pos)
            headers.append((hkey.decode() if hkey is not None else None, hval))
        if pos != end:
            raise ValueError(f"record length {length} does not match its fields")
        records.append(Record(batch.base_offset + off_delta, batch.base_timestamp + ts_delta,
                              key, value, tuple(headers)))
    return records


def _read_bytes(data, pos: int) -> tuple[bytes | None, int]:
    n, pos = read_varint(data, pos)
    if n < 0:
        return None, pos
    if pos + n > len(data):
        raise ValueError(f"field of {n} bytes runs past the end at {pos}")
    return bytes(data[pos:pos + n]), pos + n
