"""pb_batches_scan (core.scan_batches) against the Python scanner in oracles.scan.

Sizes in comments: a batch is 61 header bytes + payload; make_batch(payload=b"") is the
smallest legal batch, 61 bytes with batchLength 49.
"""
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracles
from oracles import (OFF_ATTRS, OFF_BASE_TS, OFF_COUNT, OFF_CRC, OFF_LENGTH, OFF_MAGIC,
                     OFF_MAX_TS, get_i16, get_i64, get_u32, make_batch)
from pybroker import core, records
from pybroker.errors import CoreError, CorruptRecordError


def _scan_error(buf, **kw) -> CorruptRecordError:
    with pytest.raises(CorruptRecordError) as info:
        core.scan_batches(buf, **kw)
    return info.value


def _code_name(exc: CoreError) -> str:
    for name in ("TRUNCATED", "BAD_LENGTH", "BAD_MAGIC", "BAD_CRC", "BAD_COUNT", "TOO_LARGE",
                 "BAD_OFFSET"):
        if core.is_code(exc, name):
            return name
    raise AssertionError(f"unexpected code {exc.code}: {exc}")


def _three_batches(base: int = 0) -> tuple[bytearray, list[int]]:
    """Batches of 1, 3 and 2 records with distinct timestamps; returns (buf, sizes)."""
    parts = [
        make_batch(1, base_offset=base, base_timestamp=1000, payload=b"a" * 10),
        make_batch(3, base_offset=base + 1, base_timestamp=900, max_timestamp=2000,
                   attributes=1, payload=b"b" * 30),
        make_batch(2, base_offset=base + 4, base_timestamp=1500, max_timestamp=1999,
                   attributes=4, payload=b"c" * 5),
    ]
    return bytearray().join(parts), [len(p) for p in parts]


def _assert_crc_ok(buf, pos: int, size: int) -> None:
    assert get_u32(buf, pos + OFF_CRC) == oracles.crc32c(bytes(buf[pos + 21:pos + size]))


# --- whole buffers -----------------------------------------------------------------------

def test_multi_batch_buffer():
    buf, sizes = _three_batches(base=10)
    got = core.scan_batches(bytes(buf))
    assert got == core.Scan(batches=3, records=6, valid_bytes=sum(sizes), first_offset=10,
                            last_offset=15, max_timestamp=2000, offset_of_max_timestamp=13,
                            max_batch_bytes=max(sizes), attributes_or=1 | 4)
    want, err, _ = oracles.scan(buf)
    assert err is None and tuple(got) == tuple(want)


def test_batches_from_records_module_scan_clean():
    # records.build_batch (real encoded records) is what clients send
    buf = records.build_batch([b"v1", None, b"v3"], keys=[b"k", b"k", None],
                              timestamps=[5, 7, 6], base_offset=42)
    got = core.scan_batches(buf)
    assert (got.batches, got.records, got.first_offset, got.last_offset) == (1, 3, 42, 44)
    assert (got.max_timestamp, got.offset_of_max_timestamp) == (7, 44)
    _assert_crc_ok(buf, 0, len(buf))


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")])
def test_empty_buffer_is_zero_batches(empty):
    assert core.scan_batches(empty) == core.Scan(0, 0, 0, -1, -1, -1, -1, 0, 0)
    assert core.scan_batches(bytearray(), stamp_offset=7, append_time=1) == \
        core.Scan(0, 0, 0, -1, -1, -1, -1, 0, 0)


def test_smallest_legal_batch_has_length_49():
    b = make_batch(1, payload=b"")
    assert len(b) == 61 and struct.unpack_from(">i", b, OFF_LENGTH)[0] == 49
    assert core.scan_batches(b).valid_bytes == 61


# --- stamping ------------------------------------------------------------------------------

def test_stamp_offsets_in_place_keeps_crc():
    buf, sizes = _three_batches(base=0)
    crcs_before = [get_u32(buf, pos + OFF_CRC) for pos in (0, sizes[0], sizes[0] + sizes[1])]
    got = core.scan_batches(buf, stamp_offset=1000)
    assert (got.first_offset, got.last_offset, got.records) == (1000, 1005, 6)
    positions = [0, sizes[0], sizes[0] + sizes[1]]
    assert [get_i64(buf, p) for p in positions] == [1000, 1001, 1004]
    # baseOffset lies outside the CRC: the stored CRCs are unchanged and still right
    assert [get_u32(buf, p + OFF_CRC) for p in positions] == crcs_before
    for p, s in zip(positions, sizes):
        _assert_crc_ok(buf, p, s)
    assert core.scan_batches(bytes(buf), min_offset=1000) == got
    _, err, stamped = oracles.scan(_three_batches(base=0)[0], stamp_offset=1000)
    assert err is None and stamped == buf


def test_stamp_through_memoryview_slice_of_larger_buffer():
    buf, sizes = _three_batches()
    backing = bytearray(b"\xee" * 5) + buf + bytearray(b"\xdd" * 5)
    view = memoryview(backing)[5:5 + len(buf)]
    core.scan_batches(view, stamp_offset=77)
    assert get_i64(backing, 5) == 77
    assert backing[:5] == b"\xee" * 5 and backing[-5:] == b"\xdd" * 5  # nothing outside


def test_log_append_time_stamping():
    buf, sizes = _three_batches()
    original = bytes(buf)
    got = core.scan_batches(buf, stamp_offset=0, append_time=123_456_789)
    pos = 0
    for i, size in enumerate(sizes):
        attrs = get_i16(buf, pos + OFF_ATTRS)
        assert attrs & core.ATTR_LOG_APPEND_TIME
        assert attrs & ~core.ATTR_LOG_APPEND_TIME == get_i16(original, pos + OFF_ATTRS)
        assert get_i64(buf, pos + OFF_MAX_TS) == 123_456_789
        # baseTimestamp is left alone: record timestamps stay as the producer sent them
        assert get_i64(buf, pos + OFF_BASE_TS) == get_i64(original, pos + OFF_BASE_TS)
        _assert_crc_ok(buf, pos, size)  # re-CRC'd, since attributes and maxTimestamp moved
        pos += size
    assert got.max_timestamp == 123_456_789
    assert got.offset_of_max_timestamp == 0  # the first batch holding the largest value
    assert got.attributes_or & core.ATTR_LOG_APPEND_TIME
    _, err, want = oracles.scan(original, stamp_offset=0, append_time=123_456_789)
    assert err is None and want == buf
    assert core.scan_batches(bytes(buf)) == got  # the stamped buffer validates as is


def test_stamping_read_only_buffer_is_a_clear_error():
    buf = bytes(_three_batches()[0])
    before = bytes(buf)
    for kw in ({"stamp_offset": 5}, {"append_time": 1}):
        for obj in (buf, memoryview(buf)):
            with pytest.raises(BufferError, match="not writable"):
                core.scan_batches(obj, **kw)
    assert buf == before


def test_negative_stamp_offset_is_rejected_before_c():
    with pytest.raises(ValueError, match="stamp_offset"):
        core.scan_batches(bytearray(make_batch()), stamp_offset=-1)


# --- leader epochs -------------------------------------------------------------------------

OFF_EPOCH = 12  # partitionLeaderEpoch i32, outside the CRC (which covers bytes 21..end)


def _with_epochs(epochs: list[int]) -> tuple[bytearray, list[int]]:
    """One 2-record batch per epoch, offsets 0, 2, 4, ...; returns (buf, positions).
    The epoch lies outside the CRC, so it is written without a re-CRC."""
    buf, positions = bytearray(), []
    for i, epoch in enumerate(epochs):
        batch = make_batch(2, base_offset=2 * i, payload=b"p" * (i + 3))
        struct.pack_into(">i", batch, OFF_EPOCH, epoch)
        positions.append(len(buf))
        buf += batch
    return buf, positions


def test_stamp_leader_epoch_writes_bytes_12_to_15_and_keeps_crc():
    buf, sizes = _three_batches()
    original = bytes(buf)
    positions = [0, sizes[0], sizes[0] + sizes[1]]
    got = core.scan_batches(buf, stamp_offset=50, leader_epoch=0x01020304)
    for p, size in zip(positions, sizes):
        assert bytes(buf[p + 12:p + 16]) == b"\x01\x02\x03\x04"
        assert buf[p + 16:p + size] == original[p + 16:p + size]  # nothing else moved
        assert buf[p + 8:p + 12] == original[p + 8:p + 12]
        _assert_crc_ok(buf, p, size)  # the CRC still validates, unchanged
        assert get_u32(buf, p + OFF_CRC) == get_u32(original, p + OFF_CRC)
    assert (got.last_leader_epoch, got.epoch_changes) == (0x01020304, 0)
    rescanned = core.scan_batches(bytes(buf), min_offset=50)  # C CRC check passes too
    assert rescanned == got
    _, err, want = oracles.scan(original, stamp_offset=50, leader_epoch=0x01020304)
    assert err is None and want == buf


def test_stamp_leader_epoch_alone_leaves_offsets_and_times():
    buf, sizes = _three_batches(base=10)
    original = bytes(buf)
    got = core.scan_batches(buf, leader_epoch=7)
    assert (got.first_offset, got.last_offset, got.max_timestamp) == (10, 15, 2000)
    assert [get_i64(buf, p) for p in (0, sizes[0])] == [10, 11]
    changed = [i for i in range(len(buf)) if buf[i] != original[i]]
    # only the four epoch bytes of each header change: -1 is ff ff ff ff, 7 is 00 00 00 07
    assert changed == [p + k for p in (0, sizes[0], sizes[0] + sizes[1]) for k in range(12, 16)]


def test_scan_reports_the_last_epoch_and_how_often_it_changes():
    buf, _ = _with_epochs([3, 3, 5, 5, 5, 9])
    got = core.scan_batches(bytes(buf))
    assert (got.batches, got.last_leader_epoch, got.epoch_changes) == (6, 9, 2)
    want, err, _ = oracles.scan(buf)
    assert err is None and tuple(got) == tuple(want)
    one, _ = _with_epochs([4, 4, 4])
    assert core.scan_batches(bytes(one))[-2:] == (4, 0)
    # an epoch that goes back counts as a change too (the follower then walks the batches)
    back, _ = _with_epochs([6, 2, 6])
    assert core.scan_batches(bytes(back))[-2:] == (6, 2)


def test_empty_scan_has_no_epoch():
    got = core.scan_batches(b"")
    assert (got.last_leader_epoch, got.epoch_changes) == (-1, 0)


def test_epoch_fields_describe_the_batches_before_an_error():
    buf, positions = _with_epochs([1, 2, 3])
    buf[positions[2] + 30] ^= 0x10  # a payload bit of the third batch: BAD_CRC
    original = bytes(buf)
    exc = _scan_error(buf, leader_epoch=8)
    assert core.is_code(exc, "BAD_CRC") and exc.position == positions[2]
    assert (exc.scan.batches, exc.scan.last_leader_epoch, exc.scan.epoch_changes) == (2, 8, 0)
    assert buf[positions[2]:] == original[positions[2]:]  # the bad batch is untouched
    assert struct.unpack_from(">i", buf, positions[1] + OFF_EPOCH)[0] == 8


@pytest.mark.parametrize("epoch", [-1, -5, 2**31])
def test_out_of_range_leader_epoch_is_rejected_before_c(epoch):
    buf = bytearray(make_batch())
    before = bytes(buf)
    with pytest.raises(ValueError, match="leader_epoch"):
        core.scan_batches(buf, leader_epoch=epoch)
    assert buf == before


def test_stamping_an_epoch_needs_a_writable_buffer():
    buf = bytes(make_batch())
    with pytest.raises(BufferError, match="not writable"):
        core.scan_batches(buf, leader_epoch=1)


@settings(max_examples=100, deadline=None, database=None)
@given(epochs=st.lists(st.integers(-1, 2**31 - 1), max_size=6),
       stamp=st.none() | st.integers(0, 2**31 - 1))
def test_random_epochs_match_oracle(epochs, stamp):
    buf, _ = _with_epochs(epochs)
    want, err, want_buf = oracles.scan(buf, leader_epoch=stamp)
    mine = bytearray(buf)
    got = core.scan_batches(mine, leader_epoch=stamp)
    assert err is None and tuple(got) == tuple(want) and mine == want_buf


# --- truncation and lengths ----------------------------------------------------------------

def test_one_byte_short_is_truncated_at_last_batch():
    buf, sizes = _three_batches()
    exc = _scan_error(bytes(buf[:-1]))
    assert core.is_code(exc, "TRUNCATED")
    assert exc.position == sizes[0] + sizes[1]
    assert exc.scan.batches == 2 and exc.scan.valid_bytes == exc.position
    assert exc.scan.last_offset == 3
    assert f"at byte {exc.position}" in str(exc)


@pytest.mark.parametrize("n", [1, 7, 11, 12, 20, 60])
def test_short_buffers_are_truncated_at_zero(n):
    # 1..11 bytes cannot hold batchLength; 12..60 hold a valid one that runs past the end
    exc = _scan_error(bytes(make_batch(payload=b"x" * 10)[:n]))
    assert core.is_code(exc, "TRUNCATED") and exc.position == 0
    assert exc.scan.batches == 0 and exc.scan.first_offset == -1


@pytest.mark.parametrize("length, code", [
    (-(2 ** 31), "BAD_LENGTH"), (-1, "BAD_LENGTH"), (0, "BAD_LENGTH"), (1, "BAD_LENGTH"),
    (48, "BAD_LENGTH"),  # one below the 49 bytes of header after batchLength
    (2 ** 31 - 1, "TRUNCATED"),  # plausible but runs past the end of the buffer
])
def test_batch_length_field(length, code):
    good = make_batch(1, payload=b"p" * 20)
    bad = make_batch(1, base_offset=1, payload=b"p" * 20)
    struct.pack_into(">i", bad, OFF_LENGTH, length)
    exc = _scan_error(bytes(good + bad))
    assert _code_name(exc) == code
    assert exc.position == len(good) and exc.scan.batches == 1


def test_huge_length_with_limit_is_too_large():
    bad = make_batch(1)
    struct.pack_into(">i", bad, OFF_LENGTH, 2 ** 31 - 1)
    exc = _scan_error(bytes(bad), max_batch=1 << 20)
    assert core.is_code(exc, "TOO_LARGE") and exc.position == 0


# --- field checks --------------------------------------------------------------------------

@pytest.mark.parametrize("magic", [0, 1, 3, 0x7F, 0xFF])
def test_wrong_magic(magic):
    good = make_batch(2)
    bad = make_batch(1, base_offset=2)
    bad[OFF_MAGIC] = magic  # magic sits before the CRC'd range, so the CRC still matches
    exc = _scan_error(bytes(good + bad))
    assert core.is_code(exc, "BAD_MAGIC") and exc.position == len(good)


def test_flipped_payload_bit_is_bad_crc():
    good = make_batch(1, payload=b"q" * 16)
    bad = make_batch(1, base_offset=1, payload=b"q" * 16)
    bad[-3] ^= 0x10
    exc = _scan_error(bytes(good + bad))
    assert core.is_code(exc, "BAD_CRC") and exc.position == len(good)
    assert exc.scan.batches == 1 and exc.scan.records == 1


def test_every_single_bit_flip_against_oracle():
    # a 61 + 9 = 70 byte batch, one bit flipped at each byte: bytes 0..11 and 12..16
    # change offset/length/epoch/magic, 17..69 are under (or are) the CRC
    base = make_batch(2, base_offset=4, base_timestamp=10, max_timestamp=20, payload=b"x" * 9)
    for i in range(len(base)):
        buf = bytearray(base)
        buf[i] ^= 1 << (i % 8)
        want, err, _ = oracles.scan(buf, min_offset=0)
        if err is None:
            assert tuple(core.scan_batches(bytes(buf), min_offset=0)) == tuple(want), i
            assert i < 17 and i != OFF_MAGIC, i  # only the un-CRC'd prefix can change
        else:
            exc = _scan_error(bytes(buf), min_offset=0)
            assert (_code_name(exc), exc.position) == (err, want.valid_bytes), i
            if i >= 17:
                assert err == "BAD_CRC", i


@pytest.mark.parametrize("count, last_delta", [(0, -1), (0, 0), (-5, -6), (3, 1), (1, 1),
                                               (2, 0)])
def test_bad_record_count(count, last_delta):
    good = make_batch(3)
    bad = make_batch(count, base_offset=3, last_offset_delta=last_delta)  # CRC is right
    exc = _scan_error(bytes(good + bad))
    assert core.is_code(exc, "BAD_COUNT") and exc.position == len(good)
    assert get_u32(bad, OFF_COUNT) == count & 0xFFFFFFFF


def test_max_batch_limit():
    small = make_batch(1, payload=b"s" * 10)   # 71 bytes
    large = make_batch(1, base_offset=1, payload=b"L" * 50)  # 111 bytes
    buf = bytes(small + large)
    assert core.scan_batches(buf, max_batch=len(large)).max_batch_bytes == len(large)
    exc = _scan_error(buf, max_batch=len(large) - 1)
    assert core.is_code(exc, "TOO_LARGE") and exc.position == len(small)
    assert exc.scan.max_batch_bytes == len(small)
    exc = _scan_error(buf, max_batch=len(small) - 1)
    assert core.is_code(exc, "TOO_LARGE") and exc.position == 0


def test_min_offset_checks():
    a = make_batch(3, base_offset=10)  # offsets 10..12
    assert core.scan_batches(bytes(a), min_offset=10).first_offset == 10
    exc = _scan_error(bytes(a), min_offset=11)
    assert core.is_code(exc, "BAD_OFFSET") and exc.position == 0
    overlap = make_batch(1, base_offset=12)  # 12 was already the last offset of a
    exc = _scan_error(bytes(a + overlap), min_offset=0)
    assert core.is_code(exc, "BAD_OFFSET") and exc.position == len(a)
    gap = make_batch(1, base_offset=20)  # gaps (compaction) are fine
    assert core.scan_batches(bytes(a + gap), min_offset=0).last_offset == 20


def test_default_min_offset_accepts_increasing_offsets_from_anywhere():
    buf = make_batch(1, base_offset=2 ** 40) + make_batch(2, base_offset=2 ** 40 + 1)
    assert core.scan_batches(bytes(buf)).last_offset == 2 ** 40 + 2


def test_min_offset_minus_one_skips_the_offset_check():
    # two batches as producers send them, each with base offset 0, validated unstamped
    buf = bytes(make_batch(1) + make_batch(1))
    want, err, _ = oracles.scan(buf)
    assert err is None
    assert tuple(core.scan_batches(buf)) == tuple(want)


@pytest.mark.parametrize("garbage", [b"\x00", b"\x00" * 11, b"\x00" * 12, b"\xff" * 100,
                                     bytes(range(256)), b"G" * 61])
def test_good_batch_then_garbage(garbage):
    good = make_batch(2, base_offset=5, payload=b"ok")
    buf = bytes(good + garbage)
    exc = _scan_error(buf)
    assert exc.position == len(good)
    assert exc.scan.batches == 1 and exc.scan.valid_bytes == len(good)
    assert (exc.scan.first_offset, exc.scan.last_offset) == (5, 6)
    want, err, _ = oracles.scan(buf)
    assert (_code_name(exc), tuple(exc.scan)) == (err, tuple(want))


def test_error_leaves_the_bad_batch_untouched_when_stamping():
    good = make_batch(1)
    bad = make_batch(1, payload=b"zz")
    bad[-1] ^= 1
    buf = good + bad
    exc = _scan_error(buf, stamp_offset=9, append_time=99)
    assert core.is_code(exc, "BAD_CRC")
    assert buf[len(good):] == bad  # C wrote nothing at or past the failing batch


# --- random buffers against the oracle -----------------------------------------------------

_spec = st.fixed_dictionaries({
    "count": st.integers(1, 5),
    "gap": st.integers(0, 3),
    "ts": st.integers(-2, 2 ** 42),
    "spread": st.integers(0, 1000),
    "attrs": st.integers(0, 0x3F),
    "payload": st.binary(max_size=40),
})


@st.composite
def _buffers(draw):
    specs = draw(st.lists(_spec, max_size=5))
    offset = draw(st.integers(0, 2 ** 40))
    buf = bytearray()
    for s in specs:
        buf += make_batch(s["count"], base_offset=offset, base_timestamp=s["ts"],
                          max_timestamp=s["ts"] + s["spread"], attributes=s["attrs"],
                          payload=s["payload"])
        offset += s["count"] + s["gap"]
    damage = draw(st.sampled_from(["none", "none", "cut", "flip", "garbage", "length"]))
    if damage == "cut" and buf:
        del buf[draw(st.integers(0, len(buf) - 1)):]
    elif damage == "flip" and buf:
        buf[draw(st.integers(0, len(buf) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif damage == "garbage":
        buf += draw(st.binary(min_size=1, max_size=80))
    elif damage == "length" and buf:
        starts = [b.position for b in oracles.batch_infos(buf)]
        struct.pack_into(">i", buf, draw(st.sampled_from(starts)) + OFF_LENGTH,
                         draw(st.integers(-(2 ** 31), 2 ** 31 - 1)))
    return buf


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(buf=_buffers(),
       stamp=st.none() | st.integers(0, 2 ** 50),
       append_time=st.none() | st.integers(-5, 2 ** 45),
       max_batch=st.sampled_from([0, 0, 80, 120]),
       # min_offset -1 (no offset check at all) has its own test:
       # test_min_offset_minus_one_skips_the_offset_check
       min_offset=st.integers(0, 2 ** 41))
def test_random_buffers_match_oracle(buf, stamp, append_time, max_batch, min_offset):
    kw = {"stamp_offset": stamp, "append_time": append_time, "max_batch": max_batch,
          "min_offset": min_offset}
    want, err, want_buf = oracles.scan(buf, **kw)
    mine = bytearray(buf)
    if err is None:
        assert tuple(core.scan_batches(mine, **kw)) == tuple(want)
        assert mine == want_buf
    else:
        exc = _scan_error(mine, **kw)
        assert (_code_name(exc), exc.position, tuple(exc.scan)) == \
            (err, want.valid_bytes, tuple(want))
        assert mine == want_buf
        assert mine[exc.position:] == buf[exc.position:]


def test_many_random_batches_stamped_and_rescanned():
    rng = random.Random(99)
    parts = [make_batch(rng.randint(1, 9), base_timestamp=rng.randrange(10 ** 12),
                        payload=rng.randbytes(rng.randrange(200))) for _ in range(300)]
    buf = bytearray().join(parts)
    got = core.scan_batches(buf, stamp_offset=500)
    infos = oracles.batch_infos(buf)
    assert len(infos) == 300 == got.batches
    assert infos[0].base_offset == 500 and got.last_offset == infos[-1].last_offset
    assert all(a.last_offset + 1 == b.base_offset for a, b in zip(infos, infos[1:]))
    assert got.max_timestamp == max(i.max_timestamp for i in infos)
    assert core.scan_batches(bytes(buf), min_offset=500) == got
