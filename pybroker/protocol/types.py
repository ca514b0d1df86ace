"""Primitive codecs of the Kafka wire protocol.

Every multi-byte integer is big-endian. Two families of length prefixes exist:

* classic: strings have an int16 length (-1 = null), bytes and arrays an int32 length
  (-1 = null);
* compact (flexible versions): an unsigned varint holding length + 1 (0 = null).

Contracts shared by all functions here:

* a reader is `read_x(buf, pos) -> (value, new_pos)`; `buf` is a memoryview (or
  bytes); a reader never reads past `len(buf)` and raises `DecodeError` for
  truncated input, negative or impossible lengths, null where null is not allowed,
  invalid UTF-8 and over-long varints; it checks a length against the bytes left
  *before* slicing or allocating, so a hostile length costs nothing;
* a writer is `write_x(value, out)`; it appends parts to the list `out`: bytes-like
  objects whose len() is their byte length, or file references (see `as_chunk`);
  it assumes a value of the right Python type (the codec turns the TypeError /
  struct.error of a wrong one into an `EncodeError` that names the field) but checks
  lengths that the wire cannot represent.
"""

from __future__ import annotations

import struct
import uuid as _uuid
from typing import Any, Callable

from .errors import DecodeError, EncodeError

Reader = Callable[[Any, int], tuple[Any, int]]
Writer = Callable[[Any, list], None]

# Fixed-width types and their struct format characters. The codec packs runs of
# consecutive fixed-width fields with one struct call, so these live in one table.
FIXED_FORMATS = {
    "int8": "b", "int16": "h", "int32": "i", "int64": "q",
    "uint16": "H", "uint32": "I", "float64": "d", "bool": "?",
}

INT8 = struct.Struct(">b")
INT16 = struct.Struct(">h")
INT32 = struct.Struct(">i")
INT64 = struct.Struct(">q")
UINT16 = struct.Struct(">H")
UINT32 = struct.Struct(">I")
FLOAT64 = struct.Struct(">d")

_NULL16 = INT16.pack(-1)
_NULL32 = INT32.pack(-1)
_MAX_INT16 = 0x7FFF
ZERO_UUID = _uuid.UUID(int=0)
BYTES_TYPES = (bytes, bytearray, memoryview)


def _truncated(what: str, pos: int, need: int, buf) -> DecodeError:
    return DecodeError(f"truncated {what}: needs {need} bytes, {max(len(buf) - pos, 0)} left",
                       pos)


# --- fixed-width numbers --------------------------------------------------------------

def _fixed_reader(name: str, s: struct.Struct) -> Reader:
    unpack_from, size = s.unpack_from, s.size

    def read(buf, pos):
        try:
            return unpack_from(buf, pos)[0], pos + size
        except struct.error:
            raise _truncated(name, pos, size, buf) from None
    read.__name__ = f"read_{name}"
    return read


def _fixed_writer(name: str, s: struct.Struct) -> Writer:
    pack = s.pack

    def write(value, out):
        out.append(pack(value))
    write.__name__ = f"write_{name}"
    return write


read_int8 = _fixed_reader("int8", INT8)
read_int16 = _fixed_reader("int16", INT16)
read_int32 = _fixed_reader("int32", INT32)
read_int64 = _fixed_reader("int64", INT64)
read_uint16 = _fixed_reader("uint16", UINT16)
read_uint32 = _fixed_reader("uint32", UINT32)
read_float64 = _fixed_reader("float64", FLOAT64)
write_int8 = _fixed_writer("int8", INT8)
write_int16 = _fixed_writer("int16", INT16)
write_int32 = _fixed_writer("int32", INT32)
write_int64 = _fixed_writer("int64", INT64)
write_uint16 = _fixed_writer("uint16", UINT16)
write_uint32 = _fixed_writer("uint32", UINT32)
write_float64 = _fixed_writer("float64", FLOAT64)


def read_bool(buf, pos):
    """Any non-zero byte is true, as in Kafka's readers."""
    try:
        return buf[pos] != 0, pos + 1
    except IndexError:
        raise _truncated("bool", pos, 1, buf) from None


def write_bool(value, out):
    out.append(b"\x01" if value else b"\x00")


# --- varints ------------------------------------------------------------------------
# Unsigned varint: 7 bits per byte, least significant group first, high bit set on
# every byte but the last. Kafka bounds them: 5 bytes for 32-bit, 10 for 64-bit.
# Signed varints (record fields) are zigzag-encoded first: 0,-1,1,-2 -> 0,1,2,3.

_UVARINT_SMALL = [bytes((i,)) for i in range(128)]  # lengths below 127: the common case


def _read_uvarint_bounded(buf, pos, max_bytes: int, what: str):
    start = pos
    result = 0
    shift = 0
    try:
        while True:
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos
            shift += 7
            if pos - start >= max_bytes:
                raise DecodeError(f"{what} longer than {max_bytes} bytes", start)
    except IndexError:
        raise DecodeError(f"truncated {what}", start) from None


def read_uvarint(buf, pos):
    """Unsigned varint of at most 5 bytes (Kafka's readUnsignedVarint)."""
    try:
        b = buf[pos]
    except IndexError:
        raise _truncated("unsigned varint", pos, 1, buf) from None
    if b < 0x80:
        return b, pos + 1
    return _read_uvarint_bounded(buf, pos, 5, "unsigned varint")


def encode_uvarint(n: int) -> bytes:
    """The unsigned varint encoding of 0 <= n < 2**64."""
    if 0 <= n < 0x80:
        return _UVARINT_SMALL[n]
    if n < 0 or n >= 1 << 64:
        raise EncodeError(f"unsigned varint {n} out of range")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def write_uvarint(value, out):
    out.append(encode_uvarint(value))


def read_varint(buf, pos):
    """Zigzag-encoded signed 32-bit varint."""
    n, pos = _read_uvarint_bounded(buf, pos, 5, "varint")
    return (n >> 1) ^ -(n & 1), pos


def read_varlong(buf, pos):
    """Zigzag-encoded signed 64-bit varint."""
    n, pos = _read_uvarint_bounded(buf, pos, 10, "varlong")
    return (n >> 1) ^ -(n & 1), pos


def encode_varint(n: int) -> bytes:
    if not -0x80000000 <= n <= 0x7FFFFFFF:
        raise EncodeError(f"varint {n} out of int32 range")
    return encode_uvarint(((n << 1) ^ (n >> 31)) & 0xFFFFFFFF)


def encode_varlong(n: int) -> bytes:
    if not -0x8000000000000000 <= n <= 0x7FFFFFFFFFFFFFFF:
        raise EncodeError(f"varlong {n} out of int64 range")
    return encode_uvarint(((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF)


def write_varint(value, out):
    out.append(encode_varint(value))


def write_varlong(value, out):
    out.append(encode_varlong(value))


# --- length-prefixed items: strings, bytes, records -----------------------------------
# One factory makes every reader: classic (int16/int32 length, -1 = null) or compact
# (uvarint length + 1, 0 = null), nullable or not, converting the slice to str, to an
# owned bytes, or leaving it a memoryview. The length is checked against the bytes
# left before slicing.

def _read_compact_len(buf, pos, what):
    """Compact length: uvarint(length + 1); returns -1 for null."""
    try:
        b = buf[pos]
    except IndexError:
        raise _truncated(f"{what} length", pos, 1, buf) from None
    if b < 0x80:
        return b - 1, pos + 1
    n, pos = _read_uvarint_bounded(buf, pos, 5, f"{what} length")
    return n - 1, pos


def _bad_span(what, n, nullable, start, p, buf):
    """The slow path of a span reader: null (allowed or not), negative, too long."""
    if n == -1:
        if nullable:
            return None, p
        raise DecodeError(f"null {what} in a non-nullable field", start)
    if n < 0:
        raise DecodeError(f"{what} has negative length {n}", start)
    raise DecodeError(f"{what} of length {n} runs past the end of the buffer "
                      f"({len(buf) - p} bytes left)", start)


def _utf8(view):
    return str(view, "utf-8")


def _make_span_reader(what: str, length: struct.Struct | None, nullable: bool, convert):
    """Reader of a length-prefixed item; `length` None means compact; `convert`
    None leaves the slice a zero-copy memoryview."""
    if length is None:
        def read(buf, pos):
            n, p = _read_compact_len(buf, pos, what)
            end = p + n
            if n < 0 or end > len(buf):
                return _bad_span(what, n, nullable, pos, p, buf)
            if convert is None:
                return buf[p:end], end
            try:
                return convert(buf[p:end]), end
            except UnicodeDecodeError as e:
                raise DecodeError(f"{what} is not valid UTF-8 ({e.reason})", pos) from None
    else:
        unpack_from, size = length.unpack_from, length.size

        def read(buf, pos):  # as above, with the classic length read inlined (hot path)
            try:
                n = unpack_from(buf, pos)[0]
            except struct.error:
                raise _truncated(f"{what} length", pos, size, buf) from None
            p = pos + size
            end = p + n
            if n < 0 or end > len(buf):
                return _bad_span(what, n, nullable, pos, p, buf)
            if convert is None:
                return buf[p:end], end
            try:
                return convert(buf[p:end]), end
            except UnicodeDecodeError as e:
                raise DecodeError(f"{what} is not valid UTF-8 ({e.reason})", pos) from None
    read.__name__ = ("read_" + ("compact_" if length is None else "")
                     + ("nullable_" if nullable else "") + what)
    return read


read_string = _make_span_reader("string", INT16, False, _utf8)
read_nullable_string = _make_span_reader("string", INT16, True, _utf8)
read_compact_string = _make_span_reader("string", None, False, _utf8)
read_compact_nullable_string = _make_span_reader("string", None, True, _utf8)

# "bytes" fields (group metadata, assignments) are small and kept by handlers, so
# they decode to an owned `bytes`. "records" fields decode to a memoryview slice of
# the input (zero-copy; writable when the input is a bytearray, so the broker can
# stamp offsets in place).
read_bytes = _make_span_reader("bytes", INT32, False, bytes)
read_nullable_bytes = _make_span_reader("bytes", INT32, True, bytes)
read_compact_bytes = _make_span_reader("bytes", None, False, bytes)
read_compact_nullable_bytes = _make_span_reader("bytes", None, True, bytes)
read_records = _make_span_reader("records", INT32, True, None)
read_compact_records = _make_span_reader("records", None, True, None)


def write_string(value, out):
    b = value.encode("utf-8")
    if len(b) > _MAX_INT16:
        raise EncodeError(f"string of {len(b)} UTF-8 bytes exceeds the int16 length limit")
    out.append(INT16.pack(len(b)) + b)


def write_nullable_string(value, out):
    if value is None:
        out.append(_NULL16)
    else:
        write_string(value, out)


def write_compact_string(value, out):
    b = value.encode("utf-8")
    out.append(encode_uvarint(len(b) + 1) + b)


def write_compact_nullable_string(value, out):
    if value is None:
        out.append(b"\x00")
    else:
        write_compact_string(value, out)


_BUFFER_TYPES: dict[type, bool] = {bytes: True, bytearray: True, memoryview: True}


def is_bytes_like(value) -> bool:
    """True if `value` supports the buffer protocol (cached per type, so a file
    reference costs one failed memoryview() per type, not one per call)."""
    t = type(value)
    known = _BUFFER_TYPES.get(t)
    if known is None:
        try:
            memoryview(value)
            known = True
        except TypeError:
            known = False
        _BUFFER_TYPES[t] = known
    return known


def as_chunk(value) -> tuple[Any, int]:
    """(part, byte length) for a bytes-like value or a file reference.

    bytes and bytearray stay as they are, other buffers become a flat byte-format
    memoryview (so len() of every bytes-like part is its byte length), and a file
    reference, any object that is not bytes-like and has a non-negative integer
    attribute `length` (a file range the server sends with sendfile), stays whole.
    Anything else raises EncodeError.
    """
    t = type(value)
    if t is bytes or t is bytearray:
        return value, len(value)
    if is_bytes_like(value):
        mv = memoryview(value)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        return mv, len(mv)
    length = getattr(value, "length", None)
    if type(length) is int and length >= 0:
        return value, length
    raise EncodeError(f"expected bytes-like or an object with an integer .length, "
                      f"got {t.__name__}")


def byte_length(chunk) -> int:
    """Byte length of an output part (bytes-like, or a file reference)."""
    t = type(chunk)
    if t is bytes or t is bytearray or (t is memoryview and chunk.itemsize == 1):
        return len(chunk)
    if is_bytes_like(chunk):
        return memoryview(chunk).nbytes
    return chunk.length


def _write_sized(value, out, prefix):
    """Append prefix(length) and the value as a part of its own (never copied)."""
    chunk, n = as_chunk(value)
    out.append(prefix(n))
    out.append(chunk)


def _compact_prefix(n: int) -> bytes:
    return encode_uvarint(n + 1)


_int32_prefix = INT32.pack


def write_bytes(value, out):
    if type(value) is bytes:  # the fast path: group metadata, assignments (small)
        out.append(INT32.pack(len(value)) + value)
    else:
        _write_sized(value, out, _int32_prefix)


def write_nullable_bytes(value, out):
    if value is None:
        out.append(_NULL32)
    else:
        write_bytes(value, out)


def write_compact_bytes(value, out):
    if type(value) is bytes:
        out.append(encode_uvarint(len(value) + 1) + value)
    else:
        _write_sized(value, out, _compact_prefix)


def write_compact_nullable_bytes(value, out):
    if value is None:
        out.append(b"\x00")
    else:
        write_compact_bytes(value, out)


def write_records(value, out):
    """Records: nullable bytes whose payload is never copied into the prefix (it may
    be megabytes, or a file reference, which stays a part of its own)."""
    if value is None:
        out.append(_NULL32)
    else:
        _write_sized(value, out, _int32_prefix)


def write_compact_records(value, out):
    if value is None:
        out.append(b"\x00")
    else:
        _write_sized(value, out, _compact_prefix)


# --- uuid ---------------------------------------------------------------------------

def read_uuid(buf, pos):
    end = pos + 16
    if end > len(buf):
        raise _truncated("uuid", pos, 16, buf)
    return _uuid.UUID(bytes=bytes(buf[pos:end])), end


def write_uuid(value, out):
    out.append(value.bytes)


# --- arrays and tagged fields ---------------------------------------------------------

def read_array_length(buf, pos):
    """Classic array count: int32, -1 = null (returned as -1)."""
    try:
        return INT32.unpack_from(buf, pos)[0], pos + 4
    except struct.error:
        raise _truncated("array length", pos, 4, buf) from None


def read_compact_array_length(buf, pos):
    """Compact array count: uvarint(count + 1), 0 = null (returned as -1)."""
    return _read_compact_len(buf, pos, "array")


def encode_array_length(n: int | None) -> bytes:
    return _NULL32 if n is None else INT32.pack(n)


def encode_compact_array_length(n: int | None) -> bytes:
    return b"\x00" if n is None else encode_uvarint(n + 1)


def read_tagged_fields(buf, pos, readers: dict):
    """Read a tagged-fields section: uvarint count, then per field uvarint tag,
    uvarint size and the value. Known tags are decoded with `readers[tag]`, which
    must consume exactly `size` bytes; unknown tags are skipped, as the spec requires.

    Returns ({tag: value}, new_pos).
    """
    start = pos
    count, pos = read_uvarint(buf, pos)
    if count > (len(buf) - pos) // 2:  # each entry takes at least 2 bytes (tag, size)
        raise DecodeError(f"tagged field count {count} exceeds what the {len(buf) - pos} "
                          f"bytes left can hold", start)
    values = {}
    for _ in range(count):
        entry = pos
        tag, pos = _read_uvarint_bounded(buf, pos, 5, "tag")
        size, pos = _read_uvarint_bounded(buf, pos, 5, "tagged field size")
        if size > len(buf) - pos:
            raise DecodeError(f"tagged field {tag} of size {size} runs past the end of "
                              f"the buffer ({len(buf) - pos} bytes left)", entry)
        end = pos + size
        reader = readers.get(tag)
        if reader is not None:
            value, p = reader(buf[:end], pos)  # a bounded view: cannot read past `size`
            if p != end:
                raise DecodeError(f"tagged field {tag} declares {size} bytes but its "
                                  f"value takes {p - pos}", entry)
            values[tag] = value
        pos = end
    return values, pos


def write_tagged_fields(entries: list[tuple[int, bytes]], out) -> None:
    """Write a tagged-fields section from (tag, encoded value) pairs, which must be
    in ascending tag order (as the spec requires)."""
    if not entries:
        out.append(b"\x00")
        return
    out.append(encode_uvarint(len(entries)))
    for tag, payload in entries:
        out.append(encode_uvarint(tag) + encode_uvarint(len(payload)))
        out.append(payload)


# --- lookup ---------------------------------------------------------------------------

_VARIABLE = {
    # type: ((classic, classic nullable, compact, compact nullable) as (reader, writer))
    "string": ((read_string, write_string), (read_nullable_string, write_nullable_string),
               (read_compact_string, write_compact_string),
               (read_compact_nullable_string, write_compact_nullable_string)),
    "bytes": ((read_bytes, write_bytes), (read_nullable_bytes, write_nullable_bytes),
              (read_compact_bytes, write_compact_bytes),
              (read_compact_nullable_bytes, write_compact_nullable_bytes)),
    "records": ((read_records, write_records), (read_records, write_records),
                (read_compact_records, write_compact_records),
                (read_compact_records, write_compact_records)),
}

_FIXED_CODECS = {
    "int8": (read_int8, write_int8), "int16": (read_int16, write_int16),
    "int32": (read_int32, write_int32), "int64": (read_int64, write_int64),
    "uint16": (read_uint16, write_uint16), "uint32": (read_uint32, write_uint32),
    "float64": (read_float64, write_float64), "bool": (read_bool, write_bool),
    "uuid": (read_uuid, write_uuid),
}

# Smallest encoding of each fixed type, used to bound array counts before allocating.
_MIN_SIZE = {"int8": 1, "int16": 2, "int32": 4, "int64": 8, "uint16": 2, "uint32": 4,
             "float64": 8, "bool": 1, "uuid": 16}


def primitive_codec(type_name: str, nullable: bool, compact: bool) -> tuple[Reader, Writer, int]:
    """(reader, writer, minimum encoded size) for a primitive type.

    "records" reads and writes null whatever `nullable` says: the spec declares it
    nullable in every API, and a broker must accept a null record set.
    """
    if type_name in _FIXED_CODECS:
        reader, writer = _FIXED_CODECS[type_name]
        return reader, writer, _MIN_SIZE[type_name]
    variants = _VARIABLE[type_name]
    reader, writer = variants[(2 if compact else 0) + (1 if nullable else 0)]
    if compact:
        min_size = 1
    else:
        min_size = 2 if type_name == "string" else 4
    return reader, writer, min_size
