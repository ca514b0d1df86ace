"""The producer fields of pb_batches_scan: the first batch's in pb_scan, and one
pb_batch_info per batch (core.scan_batch_infos), against pybroker.records.parse_batches
on valid input and against oracles.scan's verdict on hostile input.

Sizes in comments: a batch is 61 header bytes + records; build_batch of one 1-byte value
is 69 bytes (8 bytes of record).
"""
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracles
from pybroker import core, records
from pybroker.errors import CorruptRecordError

OFF_LENGTH = records.FIELD_OFFSETS["batch_length"]
OFF_PRODUCER_ID = records.FIELD_OFFSETS["producer_id"]


def _random_batches(rng: random.Random, n: int) -> bytearray:
    parts, offset = [], rng.randrange(0, 1 << 40)
    for _ in range(n):
        count = rng.randrange(1, 6)
        pid = rng.choice([-1, 0, rng.randrange(1 << 62)])
        parts.append(records.build_batch(
            [rng.randbytes(rng.randrange(0, 40)) for _ in range(count)],
            base_offset=offset, producer_id=pid,
            producer_epoch=rng.randrange(-1, 1 << 15), base_sequence=rng.randrange(-1, 1 << 31),
            attributes=rng.randrange(0, 1 << 15)))
        offset += count + rng.randrange(0, 3)
    return bytearray().join(parts)


def _expected(buf) -> list[core.BatchInfo]:
    return [core.BatchInfo(b.base_offset, b.producer_id, b.last_offset_delta, b.base_sequence,
                           b.producer_epoch, b.attributes, b.size - core.BATCH_LOG_OVERHEAD)
            for b in records.parse_batches(buf)]


def _infos(buf) -> tuple[core.Scan, list[core.BatchInfo], CorruptRecordError | None]:
    scan, packed, error = core.scan_batch_infos(buf, core.BatchInfos(len(buf)))
    got = [core.BatchInfo(*t) for t in core.BATCH_INFO_LAYOUT.iter_unpack(packed)]
    assert len(got) == scan.batches
    return scan, got, error


def test_layout_declared_once_per_side_agrees():
    assert records.HEADER.size == core.BATCH_HEADER_SIZE == 61
    assert records.FIELD_OFFSETS == core.BATCH_FIELD_OFFSETS
    assert records.FIELD_OFFSETS["producer_id"] == 43


@pytest.mark.parametrize("seed", range(20))
def test_random_valid_batches_match_parse_batches(seed):
    rng = random.Random(seed)
    buf = _random_batches(rng, rng.randrange(1, 40))
    want = _expected(buf)
    scan, got, error = _infos(bytes(buf))
    assert error is None
    assert got == want
    assert (scan.producer_id, scan.producer_epoch, scan.base_sequence) == \
        (want[0].producer_id, want[0].producer_epoch, want[0].base_sequence)
    assert scan == core.scan_batches(bytes(buf))  # the same walk, with or without infos


def test_stamping_scan_reports_the_first_batch_producer_fields():
    buf = (records.build_batch([b"a", b"b"], producer_id=77, producer_epoch=3, base_sequence=9)
           + records.build_batch([b"c"], producer_id=5, producer_epoch=1, base_sequence=0))
    scan = core.scan_batches(buf, stamp_offset=100)
    assert (scan.producer_id, scan.producer_epoch, scan.base_sequence) == (77, 3, 9)
    assert (scan.batches, scan.records, scan.first_offset) == (2, 3, 100)


def test_no_batch_means_producer_fields_minus_one():
    scan = core.scan_batches(b"")
    assert (scan.producer_id, scan.producer_epoch, scan.base_sequence) == (-1, -1, -1)
    scan, got, error = _infos(b"")
    assert (scan.batches, got, error) == (0, [], None)


def test_infos_of_the_valid_prefix_survive_an_error():
    good = records.build_batch([b"x"], producer_id=1, producer_epoch=0, base_sequence=0)
    bad = bytearray(records.build_batch([b"y"], producer_id=1, producer_epoch=0,
                                        base_sequence=1, base_offset=1))
    bad[-1] ^= 0xFF  # a record byte: inside the CRC
    scan, got, error = _infos(bytes(good + bad))
    assert core.is_code(error, "BAD_CRC") and error.position == len(good)
    assert got == _expected(good) and scan.valid_bytes == len(good)


def test_infos_array_too_small_is_refused_before_c():
    buf = bytes(records.build_batch([b"x"]))
    with pytest.raises(ValueError):
        core.scan_batch_infos(buf + buf, core.BatchInfos(len(buf)))


# --- hostile input: an error code, never a hang, a crash or a struct.error ---------------

def _idempotent_header(batch_length: int, total: int) -> bytes:
    """total bytes (>= 61): an all-zero header with producerId 7, the given batchLength."""
    buf = bytearray(total)
    struct.pack_into(">i", buf, OFF_LENGTH, batch_length)
    struct.pack_into(">q", buf, OFF_PRODUCER_ID, 7)
    return bytes(buf)


@pytest.mark.parametrize("batch_length, want", [
    (-12, "BAD_LENGTH"),      # defect 1: 61 bytes with batchLength -12 looped forever in Python
    (-1, "BAD_LENGTH"),
    (-(2**31), "BAD_LENGTH"),
    (0, "BAD_LENGTH"),
    (48, "BAD_LENGTH"),       # one below the 49 bytes of header after batchLength
    (50, "TRUNCATED"),        # 62 bytes claimed, 61 there
    (2**31 - 1, "TRUNCATED"),
])
def test_hostile_batch_length_with_a_producer_id(batch_length, want):
    buf = _idempotent_header(batch_length, 61)
    _, err, _ = oracles.scan(buf)
    assert err == want
    scan, got, error = _infos(buf)
    assert core.is_code(error, want) and scan.batches == 0 and got == []
    with pytest.raises(CorruptRecordError) as info:
        core.scan_batches(bytearray(buf), stamp_offset=0)
    assert core.is_code(info.value, want)


def test_a_batch_cut_anywhere_is_truncated():
    whole = bytes(records.build_batch([b"value"], producer_id=3, producer_epoch=0,
                                      base_sequence=0))
    for cut in range(1, len(whole)):
        scan, got, error = _infos(whole[:cut])
        assert core.is_code(error, "TRUNCATED"), cut
        assert scan.batches == 0 and scan.producer_id == -1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_idempotent_batches_agree_with_the_oracle(data):
    """Any byte of two idempotent batches overwritten: C and the Python scanner agree on
    the verdict and on where it stopped; the infos cover exactly the valid prefix."""
    buf = bytearray(records.build_batch([b"a", b"bc"], producer_id=11, producer_epoch=2,
                                        base_sequence=0)
                    + records.build_batch([b"d"], producer_id=11, producer_epoch=2,
                                          base_sequence=2, base_offset=2))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    buf = bytes(buf[:cut])
    want, err, _ = oracles.scan(buf)
    scan, got, error = _infos(buf)
    assert (None if error is None else _code_name(error)) == err
    assert scan.valid_bytes == want.valid_bytes and scan.batches == want.batches
    assert got == _expected(buf[:want.valid_bytes])


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_random_bytes_with_a_producer_id_give_a_code(garbage):
    buf = bytearray(garbage.ljust(61, b"\0"))
    struct.pack_into(">q", buf, OFF_PRODUCER_ID, 5)
    _, err, _ = oracles.scan(bytes(buf))
    scan, got, error = _infos(bytes(buf))
    assert (None if error is None else _code_name(error)) == err
    assert len(got) == scan.batches


def _code_name(exc) -> str:
    for name in ("TRUNCATED", "BAD_LENGTH", "BAD_MAGIC", "BAD_CRC", "BAD_COUNT", "TOO_LARGE",
                 "BAD_OFFSET"):
        if core.is_code(exc, name):
            return name
    raise AssertionError(f"unexpected code {exc.code}: {exc}")
