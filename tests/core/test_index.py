"""pb_index_add / _seal / _floor / _entry / _check (csrc/index.h) against oracles.IndexModel
and bisect, plus lookups in a segment of 1,000,000 index entries."""
import os
import random
import struct

import pytest

import oracles
from oracles import make_batch
from pybroker import core
from pybroker.errors import CoreError, CorruptRecordError

OFF, TIME = core.INDEX_OFFSET, core.INDEX_TIME
SENTINEL = 0xAA  # fill byte of fresh index buffers, so stray writes show


def _indexes(capacity: int, time_capacity: int):
    oi = core.Pinned(bytearray([SENTINEL]) * (capacity * core.OFFSET_ENTRY_SIZE))
    ti = core.Pinned(bytearray([SENTINEL]) * (time_capacity * core.TIME_ENTRY_SIZE))
    return oi, ti, core.new_index_cursor(capacity, time_capacity)


def _cursor(c) -> tuple:
    return (c.entries, c.capacity, c.time_entries, c.time_capacity, c.bytes_since_entry,
            c.max_timestamp, c.offset_of_max_timestamp)


def _batches(specs, base_offset: int = 0) -> bytearray:
    """specs: (record count, payload bytes, max timestamp) per batch, offsets contiguous."""
    buf, offset = bytearray(), base_offset
    for count, payload_len, ts in specs:
        buf += make_batch(count, base_offset=offset, base_timestamp=ts, payload=b"r" * payload_len)
        offset += count
    return buf


def _random_specs(rng, n: int):
    return [(rng.randint(1, 4), rng.randrange(0, 150), rng.randrange(-1, 10_000))
            for _ in range(n)]


def _assert_matches_model(model, oi, ti, cur):
    assert oracles.unpack_offset_index(oi.obj, cur.entries) == model.offsets
    assert oracles.unpack_time_index(ti.obj, cur.time_entries) == model.times
    assert (cur.bytes_since_entry, cur.max_timestamp, cur.offset_of_max_timestamp) == \
        (model.bytes_since_entry, model.max_timestamp, model.offset_of_max_timestamp)
    # slots past the entries in use were never written
    assert set(oi.obj[cur.entries * 8:]) <= {SENTINEL}
    assert set(ti.obj[cur.time_entries * 12:]) <= {SENTINEL}


# --- the sparse interval rule --------------------------------------------------------------

def test_interval_rule_by_hand():
    # five 61-byte batches at 0, 61, 122, 183, 244 with interval 100: the segment start
    # counts as an entry, so the first batch starting >= 100 bytes after it is the one at
    # 122; the next >= 100 bytes after 122 is at 244.
    buf = _batches([(1, 0, 10)] * 5, base_offset=1000)
    oi, ti, cur = _indexes(10, 10)
    core.index_add(buf, 0, 1000, 100, oi, ti, cur)
    assert oracles.unpack_offset_index(oi.obj, cur.entries) == [(2, 122), (4, 244)]
    assert oracles.unpack_time_index(ti.obj, cur.time_entries) == [(10, 0)]
    assert cur.bytes_since_entry == 61


def test_interval_zero_indexes_every_batch():
    buf = _batches([(2, 5, 1), (1, 0, 2), (3, 9, 3)])
    oi, ti, cur = _indexes(10, 10)
    core.index_add(buf, 0, 0, 0, oi, ti, cur)
    assert oracles.unpack_offset_index(oi.obj, cur.entries) == [(0, 0), (2, 66), (3, 127)]
    assert oracles.unpack_time_index(ti.obj, cur.time_entries) == [(1, 1), (2, 2), (3, 5)]


def test_time_entries_only_when_max_timestamp_grows():
    ts = [5, 3, 5, 9, 2, 9, 10]
    buf = _batches([(1, 0, t) for t in ts])
    oi, ti, cur = _indexes(10, 10)
    core.index_add(buf, 0, 0, 0, oi, ti, cur)
    assert cur.entries == 7
    assert oracles.unpack_time_index(ti.obj, cur.time_entries) == [(5, 0), (9, 3), (10, 6)]
    assert (cur.max_timestamp, cur.offset_of_max_timestamp) == (10, 6)


@pytest.mark.parametrize("interval", [0, 1, 61, 100, 250, 1000, 4096, 10 ** 9])
def test_random_appends_match_model(interval):
    rng = random.Random(interval)
    base_offset = rng.choice([0, 5000, 2 ** 40])
    buf = _batches(_random_specs(rng, 120), base_offset=base_offset)
    infos = oracles.batch_infos(buf)
    oi, ti, cur = _indexes(200, 200)
    model = oracles.IndexModel(base_offset, interval)
    # several index_add calls, as appends come: the cursor carries bytes_since_entry over
    i = 0
    while i < len(infos):
        j = min(len(infos), i + rng.randint(1, 10))
        start, end = infos[i].position, infos[j - 1].position + infos[j - 1].size
        core.index_add(memoryview(buf)[start:end], start, base_offset, interval, oi, ti, cur)
        model.add(infos[i:j])
        _assert_matches_model(model, oi, ti, cur)
        i = j
    assert core.index_check(oi, cur.entries, OFF, infos[-1].last_offset - base_offset,
                            len(buf)) == -1
    assert core.index_check(ti, cur.time_entries, TIME,
                            infos[-1].last_offset - base_offset, len(buf)) == -1


def test_add_of_nothing_changes_nothing():
    oi, ti, cur = _indexes(4, 4)
    before = _cursor(cur)
    core.index_add(b"", 0, 0, 0, oi, ti, cur)
    assert _cursor(cur) == before


def test_add_of_partial_batch_is_refused():
    buf = _batches([(1, 10, 1), (1, 10, 1)])
    oi, ti, cur = _indexes(4, 4)
    before = _cursor(cur)
    # two 71-byte batches: cut 1 byte into the second, or 20 bytes after the first
    for cut in (len(buf) - 1, 71 + 20):
        with pytest.raises(CorruptRecordError) as info:
            core.index_add(buf[:cut], 0, 0, 0, oi, ti, cur)
        # (pb_index_add reports a batch cut after its 61-byte header as BAD_LENGTH,
        # where pb_batches_scan says TRUNCATED; either names the damage)
        assert core.is_code(info.value, "TRUNCATED") or core.is_code(info.value, "BAD_LENGTH")
    assert _cursor(cur) == before


def test_negative_interval_or_position_is_invalid():
    buf = _batches([(1, 0, 1)])
    oi, ti, cur = _indexes(4, 4)
    for interval, pos in ((-1, 0), (0, -1)):
        with pytest.raises(CoreError) as info:
            core.index_add(buf, pos, 0, interval, oi, ti, cur)
        assert core.is_code(info.value, "INVALID_ARG")


# --- all or nothing ------------------------------------------------------------------------

def test_index_full_is_all_or_nothing():
    oi, ti, cur = _indexes(3, 10)
    core.index_add(_batches([(1, 0, 1), (1, 0, 2)]), 0, 0, 0, oi, ti, cur)  # 2 of 3 slots
    before_cursor, before_oi, before_ti = _cursor(cur), bytes(oi.obj), bytes(ti.obj)
    more = _batches([(1, 0, 3), (1, 0, 4)], base_offset=2)  # needs slots 3 and 4
    with pytest.raises(CoreError) as info:
        core.index_add(more, 122, 0, 0, oi, ti, cur)
    assert core.is_code(info.value, "INDEX_FULL")
    assert _cursor(cur) == before_cursor
    assert bytes(oi.obj) == before_oi and bytes(ti.obj) == before_ti
    core.index_add(more[:61], 122, 0, 0, oi, ti, cur)  # exactly the last slot fits
    assert cur.entries == 3


def test_time_index_keeps_its_last_slot_spare():
    # time capacity 3: add may use 2 slots, the third is pb_index_seal's
    oi, ti, cur = _indexes(10, 3)
    core.index_add(_batches([(1, 0, 1), (1, 0, 2)]), 0, 0, 0, oi, ti, cur)
    assert cur.time_entries == 2
    before_cursor, before_ti = _cursor(cur), bytes(ti.obj)
    with pytest.raises(CoreError) as info:
        core.index_add(_batches([(1, 0, 3)], base_offset=2), 122, 0, 0, oi, ti, cur)
    assert core.is_code(info.value, "INDEX_FULL")
    assert _cursor(cur) == before_cursor and bytes(ti.obj) == before_ti
    # a batch whose timestamp does not grow needs no time slot, so it still fits
    core.index_add(_batches([(1, 0, 2)], base_offset=2), 122, 0, 0, oi, ti, cur)
    assert (cur.entries, cur.time_entries) == (3, 2)


@pytest.mark.parametrize("first, count, file_pos, ok", [
    (2 ** 32 - 1, 1, 0, True),        # last relative offset 2^32-1: fits u32
    (2 ** 32 - 2, 2, 0, True),
    (2 ** 32 - 1, 2, 0, False),       # last relative offset 2^32
    (2 ** 32, 1, 0, False),
    (0, 1, 2 ** 32 - 1 - 61, True),   # batch ends at position 2^32-1
    (0, 1, 2 ** 32 - 61, False),      # batch ends past it
])
def test_offset_overflow(first, count, file_pos, ok):
    buf = make_batch(count, base_offset=first)
    oi, ti, cur = _indexes(4, 4)
    before = _cursor(cur)
    if ok:
        core.index_add(buf, file_pos, 0, 0, oi, ti, cur)
        assert oracles.unpack_offset_index(oi.obj, 1) == [(first, file_pos)]
        return
    with pytest.raises(CoreError) as info:
        core.index_add(buf, file_pos, 0, 0, oi, ti, cur)
    assert core.is_code(info.value, "OFFSET_OVERFLOW")
    assert _cursor(cur) == before and set(oi.obj) == {SENTINEL}


def test_batch_below_segment_base_is_overflow():
    oi, ti, cur = _indexes(4, 4)
    with pytest.raises(CoreError) as info:
        core.index_add(make_batch(1, base_offset=99), 0, 100, 0, oi, ti, cur)
    assert core.is_code(info.value, "OFFSET_OVERFLOW")


# --- seal ----------------------------------------------------------------------------------

def test_seal_adds_max_timestamp_entry_once():
    # interval too large for any entry: only the seal records the max timestamp
    buf = _batches([(1, 0, 5), (2, 0, 9), (1, 0, 7)], base_offset=100)
    oi, ti, cur = _indexes(4, 1)  # a single time slot: the spare one
    core.index_add(buf, 0, 100, 10 ** 9, oi, ti, cur)
    assert (cur.entries, cur.time_entries, cur.max_timestamp) == (0, 0, 9)
    core.index_seal(ti, 100, cur)
    assert oracles.unpack_time_index(ti.obj, cur.time_entries) == [(9, 2)]
    core.index_seal(ti, 100, cur)
    assert cur.time_entries == 1
    model = oracles.IndexModel(100, 10 ** 9)
    model.add(oracles.batch_infos(buf))
    model.seal()
    assert model.times == [(9, 2)]


def test_seal_is_a_no_op_when_last_entry_holds_the_max():
    oi, ti, cur = _indexes(4, 4)
    core.index_add(_batches([(1, 0, 1), (1, 0, 2)]), 0, 0, 0, oi, ti, cur)
    before, image = _cursor(cur), bytes(ti.obj)
    core.index_seal(ti, 0, cur)
    assert _cursor(cur) == before and bytes(ti.obj) == image


def test_seal_of_empty_segment_adds_nothing():
    oi, ti, cur = _indexes(4, 4)
    core.index_seal(ti, 0, cur)
    assert cur.time_entries == 0 and set(ti.obj) == {SENTINEL}


def test_seal_after_random_appends_matches_model():
    rng = random.Random(3)
    buf = _batches(_random_specs(rng, 80), base_offset=7)
    oi, ti, cur = _indexes(100, 101)
    core.index_add(buf, 0, 7, 500, oi, ti, cur)
    core.index_seal(ti, 7, cur)
    model = oracles.IndexModel(7, 500)
    model.add(oracles.batch_infos(buf))
    model.seal()
    _assert_matches_model(model, oi, ti, cur)


# --- floor ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [OFF, TIME])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 1000])
def test_floor_against_bisect(kind, n):
    rng = random.Random(n * 2 + kind)
    if kind == OFF:
        keys = sorted(rng.sample(range(2 ** 32), n))
        entries = [(k, i * 10) for i, k in enumerate(keys)]
        index = core.Pinned(oracles.pack_offset_index(entries))
        lo, hi = -5, 2 ** 32 + 5
    else:
        keys = sorted(rng.sample(range(-1000, 2 ** 45), n))
        entries = [(k, i) for i, k in enumerate(keys)]
        index = core.Pinned(oracles.pack_time_index(entries))
        lo, hi = -2 ** 63, 2 ** 63 - 1
    targets = [lo, hi, 0, -1] + [rng.randrange(lo, hi) for _ in range(50)]
    for k in keys[:50]:
        targets += [k - 1, k, k + 1]
    for t in targets:
        for strict in (False, True):
            assert core.index_floor(index, n, kind, t, strict) == \
                oracles.floor(keys, t, strict), (t, strict)


def test_floor_with_duplicate_keys():
    # not a valid index (keys must grow) but the search stays well defined
    keys = [1, 3, 3, 3, 8]
    index = core.Pinned(oracles.pack_offset_index([(k, i) for i, k in enumerate(keys)]))
    for t in range(0, 10):
        for strict in (False, True):
            assert core.index_floor(index, 5, OFF, t, strict) == oracles.floor(keys, t, strict)


def test_floor_of_empty_index_and_entry_count_checks():
    empty = core.Pinned(bytearray())
    assert core.index_floor(empty, 0, OFF, 123) == -1
    assert core.index_floor(empty, 0, TIME, 123, strict=True) == -1
    small = core.Pinned(bytearray(16))
    with pytest.raises(ValueError, match="exceed"):
        core.index_floor(small, 3, OFF, 1)  # 3 x 8 bytes > 16
    with pytest.raises(ValueError, match="exceed"):
        core.index_floor(small, 2, TIME, 1)  # 2 x 12 bytes > 16


def test_floor_rejects_unknown_kind():
    with pytest.raises(CoreError) as info:
        core.index_floor(core.Pinned(bytearray(8)), 1, 7, 0)
    assert core.is_code(info.value, "INVALID_ARG")


# --- entry ---------------------------------------------------------------------------------

def test_entry_bounds():
    offsets = core.Pinned(oracles.pack_offset_index([(0, 0), (5, 100), (9, 300)], capacity=4))
    assert core.index_entry(offsets, 3, OFF, 0) == (0, 0)
    assert core.index_entry(offsets, 3, OFF, 2) == (9, 300)
    times = core.Pinned(oracles.pack_time_index([(-7, 0), (2 ** 62, 4)]))
    assert core.index_entry(times, 2, TIME, 0) == (-7, 0)
    assert core.index_entry(times, 2, TIME, 1) == (2 ** 62, 4)
    for slot in (-1, 3, 4, 2 ** 40):
        with pytest.raises(CoreError) as info:
            core.index_entry(offsets, 3, OFF, slot)
        assert core.is_code(info.value, "INVALID_ARG"), slot
    with pytest.raises(ValueError):
        core.index_entry(offsets, 5, OFF, 0)  # more entries than the buffer holds


def test_entries_hold_u32_values_unsigned():
    index = core.Pinned(oracles.pack_offset_index([(2 ** 32 - 1, 2 ** 32 - 2)]))
    assert core.index_entry(index, 1, OFF, 0) == (2 ** 32 - 1, 2 ** 32 - 2)


# --- check ---------------------------------------------------------------------------------

def _valid_offsets(n=20):
    return [(i * 3, i * 100) for i in range(n)]  # relative offsets 0..57, positions 0..1900


def _valid_times(n=20):
    return [(1000 + i * 10, i * 3 + (i % 2)) for i in range(n)]


@pytest.mark.parametrize("slot, entry, why", [
    (0, (0, 2000), "position == log size"),
    (5, (12, 500), "key equal to the previous"),
    (5, (11, 500), "key below the previous"),
    (5, (15, 400), "position equal to the previous"),
    (19, (58, 1900), "key above max_relative"),
    (19, (57, 1800), "position back to the previous"),
    (0, (0, 2 ** 32 - 1), "position far past the log"),
])
def test_check_offset_index_finds_bad_slot(slot, entry, why):
    entries = _valid_offsets()
    assert core.index_check(core.Pinned(oracles.pack_offset_index(entries)), 20, OFF, 57,
                            2000) == -1
    entries[slot] = entry
    index = core.Pinned(oracles.pack_offset_index(entries))
    assert core.index_check(index, 20, OFF, 57, 2000) == slot, why
    assert oracles.check_index(entries, "offset", 57, 2000) == slot


@pytest.mark.parametrize("slot, entry, why", [
    (4, (1030, 12), "timestamp equal to the previous"),
    (4, (1001, 12), "timestamp below the previous"),
    (4, (1040, 9), "offset below the previous"),
    (19, (1190, 60), "offset above max_relative"),
])
def test_check_time_index_finds_bad_slot(slot, entry, why):
    entries = _valid_times()
    assert core.index_check(core.Pinned(oracles.pack_time_index(entries)), 20, TIME, 58,
                            10 ** 6) == -1
    entries[slot] = entry
    index = core.Pinned(oracles.pack_time_index(entries))
    assert core.index_check(index, 20, TIME, 58, 10 ** 6) == slot, why
    assert oracles.check_index(entries, "time", 58, 10 ** 6) == slot


def test_time_entries_may_repeat_an_offset():
    entries = [(10, 0), (20, 0), (30, 4)]
    assert core.index_check(core.Pinned(oracles.pack_time_index(entries)), 3, TIME, 4, 1) == -1


def test_check_random_corruptions_against_oracle():
    rng = random.Random(8)
    for _ in range(300):
        kind = rng.choice(["offset", "time"])
        entries = _valid_offsets(30) if kind == "offset" else _valid_times(30)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(30)
            k, v = entries[i]
            entries[i] = (k + rng.randint(-40, 40), v + rng.randint(-150, 150))
            if kind == "offset":
                entries[i] = (max(0, entries[i][0]), max(0, entries[i][1]))
            else:
                entries[i] = (entries[i][0], max(0, entries[i][1]))
        pack = oracles.pack_offset_index if kind == "offset" else oracles.pack_time_index
        got = core.index_check(core.Pinned(pack(entries)), 30,
                               OFF if kind == "offset" else TIME, 88, 3000)
        assert got == oracles.check_index(entries, kind, 88, 3000), entries


# --- a segment of 1,000,000 index entries --------------------------------------------------

N_BIG = 1_000_000


@pytest.fixture(scope="module")
def big_segment(tmp_path_factory):
    """1M one-record batches of 69 bytes (61 header + 8 payload), maxTimestamp 1000 + 2i,
    appended with interval 0, so both indexes hold 1M entries: a 69 MB log, an 8 MB offset
    index and a 12 MB time index."""
    tmpl = make_batch(1, base_timestamp=1000, payload=b"12345678")
    size = len(tmpl)
    buf = tmpl * N_BIG
    core.scan_batches(buf, stamp_offset=0)
    view, put_ts, put_crc = memoryview(buf), struct.Struct(">q").pack_into, \
        struct.Struct(">I").pack_into
    for i in range(N_BIG):  # distinct timestamps, each batch re-CRC'd (~1 s)
        p = i * size
        put_ts(buf, p + 35, 1000 + 2 * i)
        put_crc(buf, p + 17, core.crc32c(view[p + 21:p + size]))
    view.release()
    path = tmp_path_factory.mktemp("big") / "00000000000000000000.log"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    oi, ti, cur = _indexes(N_BIG, N_BIG + 1)
    core.segment_append(fd, buf, 0, 0, 0, oi, ti, cur)
    del buf
    yield fd, size, oi, ti, cur
    os.close(fd)


def test_big_index_is_full_and_valid(big_segment):
    fd, size, oi, ti, cur = big_segment
    assert (cur.entries, cur.time_entries) == (N_BIG, N_BIG)
    assert os.fstat(fd).st_size == N_BIG * size
    assert core.index_check(oi, N_BIG, OFF, N_BIG - 1, N_BIG * size) == -1
    assert core.index_check(ti, N_BIG, TIME, N_BIG - 1, N_BIG * size) == -1
    assert core.index_entry(oi, N_BIG, OFF, N_BIG - 1) == (N_BIG - 1, (N_BIG - 1) * size)
    assert core.index_entry(ti, N_BIG, TIME, N_BIG - 1) == (1000 + 2 * (N_BIG - 1), N_BIG - 1)
    assert core.scan_batches(os.pread(fd, 100 * size, 500_000 * size)).first_offset == 500_000


def test_big_index_random_lookups(big_segment):
    fd, size, oi, ti, cur = big_segment
    rng = random.Random(1)
    offset_keys = range(N_BIG)  # entry i: (i, i * size); bisect works on a range
    time_keys = range(1000, 1000 + 2 * N_BIG, 2)
    end = N_BIG * size
    assert (cur.entries, cur.time_entries) == (N_BIG, N_BIG)
    for _ in range(3000):
        t = rng.randrange(-10, N_BIG + 10)
        strict = rng.random() < 0.5
        assert core.index_floor(oi, N_BIG, OFF, t, strict) == oracles.floor(offset_keys, t, strict)
        got = core.segment_seek(fd, oi, ti, cur, 0, False, t, end)
        want = t if 0 <= t < N_BIG else (0 if t < 0 else None)
        if want is None:
            assert got is None, t
        else:
            assert got == (want * size, size, want, want, 1000 + 2 * want), t
        ts = rng.randrange(900, 1000 + 2 * N_BIG + 10)
        assert core.index_floor(ti, N_BIG, TIME, ts, strict) == oracles.floor(time_keys, ts, strict)
        got = core.segment_seek(fd, oi, ti, cur, 0, True, ts, end)
        first = max(0, (ts - 1000 + 1) // 2)  # first i with 1000 + 2i >= ts
        assert (got.base_offset if got else None) == (first if first < N_BIG else None), ts
