"""Primitive codecs: byte-exact encodings from the protocol spec, and bad input."""

import struct
import tracemalloc
import uuid

import pytest

from pybroker.errors import PyBrokerError
from pybroker.protocol import types as t
from pybroker.protocol.errors import DecodeError, EncodeError, ProtocolError


def enc(writer, value) -> bytes:
    out = []
    writer(value, out)
    return b"".join(out)


def dec(reader, data: bytes):
    value, end = reader(memoryview(data), 0)
    assert end == len(data), "reader must consume exactly the encoding"
    return value


# --- fixed width ----------------------------------------------------------------------

@pytest.mark.parametrize("reader, writer, value, hexstr", [
    (t.read_int8, t.write_int8, -1, "ff"),
    (t.read_int16, t.write_int16, 258, "0102"),
    (t.read_int32, t.write_int32, -2, "fffffffe"),
    (t.read_int64, t.write_int64, 1 << 40, "0000010000000000"),
    (t.read_uint16, t.write_uint16, 0xFFFE, "fffe"),
    (t.read_uint32, t.write_uint32, 0xFFFFFFFE, "fffffffe"),
    (t.read_float64, t.write_float64, 1.5, "3ff8000000000000"),
    (t.read_bool, t.write_bool, True, "01"),
    (t.read_bool, t.write_bool, False, "00"),
    (t.read_uuid, t.write_uuid, uuid.UUID("00010203-0405-0607-0809-0a0b0c0d0e0f"),
     "000102030405060708090a0b0c0d0e0f"),
])
def test_fixed_width_vectors(reader, writer, value, hexstr):
    assert enc(writer, value).hex() == hexstr
    assert dec(reader, bytes.fromhex(hexstr)) == value


def test_bool_reads_any_nonzero_byte_as_true():
    assert dec(t.read_bool, b"\x07") is True


@pytest.mark.parametrize("reader, size", [
    (t.read_int8, 1), (t.read_int16, 2), (t.read_int32, 4), (t.read_int64, 8),
    (t.read_uint16, 2), (t.read_uint32, 4), (t.read_float64, 8), (t.read_bool, 1),
    (t.read_uuid, 16),
])
def test_fixed_width_truncated(reader, size):
    for cut in range(size):
        with pytest.raises(DecodeError, match="truncated"):
            reader(memoryview(bytes(cut)), 0)


# --- varints --------------------------------------------------------------------------

@pytest.mark.parametrize("value, hexstr", [
    (0, "00"), (1, "01"), (127, "7f"),
    (128, "8001"),            # 0b1_0000000 -> low group 0 with continuation, then 1
    (300, "ac02"),            # the protobuf documentation's example
    (0xFFFFFFFF, "ffffffff0f"),
])
def test_unsigned_varint(value, hexstr):
    assert t.encode_uvarint(value).hex() == hexstr
    assert dec(t.read_uvarint, bytes.fromhex(hexstr)) == value


@pytest.mark.parametrize("value, hexstr", [
    (0, "00"), (-1, "01"), (1, "02"), (-2, "03"),  # zigzag: 0,-1,1,-2 -> 0,1,2,3
    (63, "7e"), (-64, "7f"), (64, "8001"),
    (2**31 - 1, "feffffff0f"), (-2**31, "ffffffff0f"),
])
def test_zigzag_varint(value, hexstr):
    assert t.encode_varint(value).hex() == hexstr
    assert dec(t.read_varint, bytes.fromhex(hexstr)) == value


def test_zigzag_varlong_extremes():
    for value in (2**63 - 1, -2**63, 0, -1, 1 << 40):
        assert dec(t.read_varlong, t.encode_varlong(value)) == value
    assert t.encode_varlong(-2**63).hex() == "ffffffffffffffffff01"


def test_varint_range_checked_on_encode():
    with pytest.raises(EncodeError):
        t.encode_varint(2**31)
    with pytest.raises(EncodeError):
        t.encode_varlong(-2**63 - 1)
    with pytest.raises(EncodeError):
        t.encode_uvarint(-1)


def test_overlong_varints_rejected():
    with pytest.raises(DecodeError, match="longer than 5"):
        t.read_uvarint(memoryview(b"\x80" * 5 + b"\x01"), 0)
    with pytest.raises(DecodeError, match="longer than 10"):
        t.read_varlong(memoryview(b"\xff" * 10 + b"\x01"), 0)


def test_truncated_varint():
    for data in (b"", b"\x80", b"\xff\xff"):
        with pytest.raises(DecodeError, match="truncated"):
            t.read_uvarint(memoryview(data), 0)


# --- strings --------------------------------------------------------------------------

def test_classic_strings():
    assert enc(t.write_string, "ab").hex() == "0002" "6162"        # int16 length, UTF-8
    assert enc(t.write_string, "").hex() == "0000"
    assert enc(t.write_nullable_string, None).hex() == "ffff"       # -1 = null
    assert enc(t.write_string, "é").hex() == "0002" "c3a9"          # length in bytes
    assert dec(t.read_nullable_string, bytes.fromhex("ffff")) is None
    assert dec(t.read_nullable_string, bytes.fromhex("0000")) == ""
    assert dec(t.read_string, bytes.fromhex("0002c3a9")) == "é"


def test_compact_nullable_string_null_vs_empty():
    assert enc(t.write_compact_nullable_string, None).hex() == "00"  # 0 = null
    assert enc(t.write_compact_nullable_string, "").hex() == "01"    # length 0 + 1
    assert enc(t.write_compact_string, "abc").hex() == "04" "616263"
    assert dec(t.read_compact_nullable_string, b"\x00") is None
    assert dec(t.read_compact_nullable_string, b"\x01") == ""
    with pytest.raises(DecodeError, match="null string in a non-nullable field"):
        t.read_compact_string(memoryview(b"\x00"), 0)


def test_long_compact_string_uses_multibyte_varint():
    s = "x" * 200
    data = enc(t.write_compact_string, s)
    assert data[:2].hex() == "c901"  # 201 = 0b1_1001001 -> c9 01
    assert dec(t.read_compact_string, data) == s


def test_string_errors():
    with pytest.raises(DecodeError, match="null string"):
        t.read_string(memoryview(b"\xff\xff"), 0)
    with pytest.raises(DecodeError, match="negative length -2"):
        t.read_nullable_string(memoryview(b"\xff\xfe"), 0)
    with pytest.raises(DecodeError, match="runs past the end"):
        t.read_string(memoryview(b"\x00\x05abc"), 0)
    with pytest.raises(DecodeError, match="UTF-8"):
        t.read_string(memoryview(b"\x00\x01\xff"), 0)
    with pytest.raises(EncodeError, match="int16 length"):
        enc(t.write_string, "x" * 40000)


# --- bytes and records ----------------------------------------------------------------

def test_bytes_vectors():
    assert enc(t.write_bytes, b"\x01\x02").hex() == "00000002" "0102"
    assert enc(t.write_nullable_bytes, None).hex() == "ffffffff"
    assert enc(t.write_compact_bytes, b"\x01").hex() == "02" "01"
    assert enc(t.write_compact_nullable_bytes, None).hex() == "00"
    value = dec(t.read_bytes, bytes.fromhex("000000020102"))
    assert type(value) is bytes and value == b"\x01\x02"


def test_records_decode_is_a_zero_copy_writable_view():
    buf = bytearray(bytes.fromhex("00000003") + b"abc")
    view, end = t.read_records(memoryview(buf), 0)
    assert end == 7 and isinstance(view, memoryview) and view == b"abc"
    view[0] = ord("X")                      # the broker stamps offsets in place
    assert buf[4:] == b"Xbc"


def test_records_null_and_compact():
    assert dec(t.read_records, bytes.fromhex("ffffffff")) is None
    assert dec(t.read_compact_records, b"\x00") is None
    assert bytes(dec(t.read_compact_records, b"\x03ab")) == b"ab"


class FileRange:
    """A stand-in for the server's sendfile reference: not bytes-like, has .length."""

    def __init__(self, length):
        self.length = length


def test_records_reference_is_a_separate_part():
    ref = FileRange(10)
    out = []
    t.write_records(ref, out)
    assert out == [bytes.fromhex("0000000a"), ref]
    out = []
    t.write_compact_records(ref, out)
    assert out == [bytes.fromhex("0b"), ref]


def test_records_accept_any_buffer():
    import array
    a = array.array("i", [1, 2])            # 8 bytes, itemsize 4
    out = []
    t.write_records(a, out)
    assert out[0].hex() == "00000008" and len(out[1]) == 8


def test_bytes_rejects_non_buffer_without_length():
    with pytest.raises(EncodeError, match="integer .length"):
        enc(t.write_bytes, object())


def test_absurd_bytes_length_fails_without_allocating():
    data = memoryview(bytes.fromhex("7fffffff") + b"x" * 10)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="runs past the end"):
            t.read_bytes(data, 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


# --- arrays and tagged fields ---------------------------------------------------------

def test_array_lengths():
    assert t.encode_array_length(3).hex() == "00000003"
    assert t.encode_array_length(None).hex() == "ffffffff"
    assert t.encode_compact_array_length(3).hex() == "04"
    assert t.encode_compact_array_length(None).hex() == "00"
    assert t.read_compact_array_length(memoryview(b"\x00"), 0) == (-1, 1)
    assert t.read_array_length(memoryview(b"\xff\xff\xff\xff"), 0) == (-1, 4)


def test_tagged_fields_section():
    out = []
    t.write_tagged_fields([(0, b"\x05"), (3, b"")], out)
    data = b"".join(out)
    # 02 entries | tag 0, size 1, value 05 | tag 3, size 0
    assert data.hex() == "02" "000105" "0300"
    values, end = t.read_tagged_fields(memoryview(data + b"tail"), 0,
                                       {0: t.read_int8})
    assert values == {0: 5} and end == len(data)   # tag 3 unknown: skipped
    assert b"".join(_w(t.write_tagged_fields, [])) == b"\x00"


def _w(writer, value):
    out = []
    writer(value, out)
    return out


def test_tagged_field_value_must_fill_its_size():
    data = bytes.fromhex("01" "0002" "0500")  # tag 0 says 2 bytes, int8 reads 1
    with pytest.raises(DecodeError, match="declares 2 bytes"):
        t.read_tagged_fields(memoryview(data), 0, {0: t.read_int8})


def test_tagged_field_cannot_read_past_its_size():
    data = bytes.fromhex("01" "0001" "00" "000000")  # int32 in a 1-byte field
    with pytest.raises(DecodeError):
        t.read_tagged_fields(memoryview(data), 0, {0: t.read_int32})


def test_tagged_field_count_and_size_bounds():
    with pytest.raises(DecodeError, match="count"):
        t.read_tagged_fields(memoryview(bytes.fromhex("ffffffff07")), 0, {})
    with pytest.raises(DecodeError, match="runs past the end"):
        t.read_tagged_fields(memoryview(bytes.fromhex("01" "00" "7f" "00")), 0, {})


def test_errors_belong_to_the_hierarchy():
    assert issubclass(DecodeError, ProtocolError)
    assert issubclass(ProtocolError, PyBrokerError)
    assert issubclass(ProtocolError, ValueError)


def test_struct_module_errors_never_leak_from_readers():
    readers = [getattr(t, name) for name in dir(t) if name.startswith("read_")
               and name not in ("read_tagged_fields",)]
    for reader in readers:
        for data in (b"", b"\xff", b"\x80\x80", b"\x00\x05ab", b"\xff\xff\xff\xf0"):
            try:
                reader(memoryview(data), 0)
            except DecodeError:
                pass
            except (struct.error, IndexError) as e:  # pragma: no cover - the failure
                pytest.fail(f"{reader.__name__} leaked {e!r} on {data.hex()}")
