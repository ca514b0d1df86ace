"""The Kafka protocol's primitive types spelled out by hand with struct, independent of
pybroker's codec: byte-exact test vectors of a message are built from these and the
message's spec, then compared with what the codec writes and reads."""
from __future__ import annotations

import struct


def i8(v: int) -> bytes:
    return struct.pack(">b", v)


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def uvarint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def string(s: str | None, flexible: bool) -> bytes:
    """A (nullable) string: int16 length, or compact (unsigned varint length + 1)."""
    if s is None:
        return uvarint(0) if flexible else i16(-1)
    raw = s.encode()
    return uvarint(len(raw) + 1) + raw if flexible else i16(len(raw)) + raw


def array(items: list[bytes] | None, flexible: bool) -> bytes:
    """A (nullable) array of already-encoded items: int32 count, or compact."""
    if items is None:
        return uvarint(0) if flexible else i32(-1)
    count = uvarint(len(items) + 1) if flexible else i32(len(items))
    return count + b"".join(items)


def tags(flexible: bool) -> bytes:
    """An empty tagged-fields section (flexible versions only)."""
    return b"\x00" if flexible else b""
