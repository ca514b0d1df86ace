"""Damaged partition directories: recovery truncates at the first bad batch above the
recovery point, refuses to touch damaged durable data, and rebuilds damaged indexes.

Layout of every test here (helpers.py has the batch arithmetic):
  28 batches of 1 record, 78 bytes each (61-byte header + a 17-byte record);
  segment_bytes 624 = 8 batches, so segments 0, 8, 16 hold 8 batches (624 bytes) and the
  active segment 24 holds 4 (312 bytes): batch b of segment s sits at byte 78 * b of
  s's file and holds offset s + b;
  index_interval_bytes 156: an offset-index entry before every second batch after the
  first two, i.e. (2, 156), (4, 312), (6, 468) in each full segment.
The "crashed" copy was never closed: no clean-shutdown marker, the active segment's
indexes still preallocated, recovery point 24 (checkpointed at the last roll). The
"closed" copy was closed cleanly: recovery point 28.
Rounds are seeded, so a failure names the seed that reproduces it.
"""
import dataclasses
import logging
import os
import random
import shutil
import struct

import pytest

from helpers import (BATCH_BYTES, OFF_EPOCH, OFF_LENGTH, abandon, append_values,
                     assert_log_matches_disk, assert_values, flip_bit, index_path,
                     log_files, log_path, make_unclean, overwrite, read_file, time_index_path,
                     write_file)
from pybroker.errors import CorruptLogError
from pybroker.log import LogConfig, PartitionLog, checkpoint, files

CONFIG = LogConfig(segment_bytes=8 * BATCH_BYTES, index_interval_bytes=2 * BATCH_BYTES,
                   flush_messages=10**9, flush_ms=10**9)
BATCHES = 28
BASES = [0, 8, 16, 24]
PER_SEGMENT = 8
LAST_SIZE = 4 * BATCH_BYTES  # 312
ROUNDS = 24
WARNING = logging.WARNING


def _build(directory, crash: bool) -> None:
    log = PartitionLog(directory, CONFIG, name="orders-0")
    append_values(log, BATCHES)
    log.flush()
    assert log.segment_bases() == BASES
    if crash:
        abandon(log)
    else:
        log.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    dirs = {"crashed": str(root / "crashed"), "closed": str(root / "closed")}
    _build(dirs["crashed"], crash=True)
    _build(dirs["closed"], crash=False)
    assert checkpoint.read_recovery_point(dirs["crashed"]) == 24
    assert checkpoint.read_recovery_point(dirs["closed"]) == 28
    # the crashed copy's active index is still preallocated (10 MiB default)
    assert os.path.getsize(index_path(dirs["crashed"], 24)) == CONFIG.index_max_bytes
    return dirs


@pytest.fixture
def copy(pristine, tmp_path):
    def make(kind: str) -> str:
        target = str(tmp_path / f"{kind}-orders-0")
        shutil.copytree(pristine[kind], target)
        return target
    return make


def position_of(offset: int) -> tuple[int, int]:
    """(segment base, byte position) of the batch holding offset."""
    base = max(b for b in BASES if b <= offset)
    return base, (offset - base) * BATCH_BYTES


def reopen_truncated(directory, caplog, offset: int, reason: str | None = None,
                     base: int | None = None) -> None:
    """Reopen after damage at the batch of `offset` (in segment `base`, by default the one
    holding offset): recovery truncates there, logs file, position and reason once,
    deletes every later segment, and the log (its lookups, its indexes, its values) then
    matches a full scan; appends go on from that offset."""
    if base is None:
        base = position_of(offset)[0]
    position = (offset - base) * BATCH_BYTES
    path = log_path(directory, base)
    with caplog.at_level(WARNING, logger="pybroker.log"):
        log = PartitionLog(directory, CONFIG, name="orders-0")
    lines = [r.getMessage() for r in caplog.records
             if r.levelno == WARNING and "truncated" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert f"file={path} position={position}:" in lines[0]
    if reason:
        assert reason in lines[0]
    assert os.path.getsize(path) == position
    later = [b for b in BASES if b > base]
    for b in later:
        assert not os.path.exists(log_path(directory, b))
        assert f"seg={files.segment_name(b)} deleted" in caplog.text
    assert (log.log_start_offset, log.high_watermark, log.log_end_offset) == (0, offset, offset)
    assert log.segment_bases() == [b for b in BASES if b <= base]
    assert_values(assert_log_matches_disk(log, directory))
    assert log.verify() == []
    append_values(log, 3)
    log.flush()
    assert_values(assert_log_matches_disk(log, directory))
    log.close()
    log = PartitionLog(directory, CONFIG, name="orders-0")  # and it stays so
    assert log.log_end_offset == offset + 3
    assert_values(assert_log_matches_disk(log, directory))
    log.close()


# --- damage above the recovery point: truncated ----------------------------------------------

@pytest.mark.parametrize("seed", range(ROUNDS))
def test_torn_last_batch(copy, caplog, seed):
    rng = random.Random(seed)
    d = copy("crashed")
    cut = rng.randint(1, BATCH_BYTES - 1)  # 312 - cut: batch 27 (at 234) is torn
    os.truncate(log_path(d, 24), LAST_SIZE - cut)
    make_unclean(d, recovery_point=rng.choice([None, 0, 8, 27]))
    reopen_truncated(d, caplog, 27, "runs past the end")


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_random_bytes_after_the_last_batch(copy, caplog, seed):
    rng = random.Random(seed)
    d = copy("crashed")
    # garbage after the last whole batch of a random segment; before the active one it
    # also means every later segment follows damage. The recovery point goes back to 0
    # so that recovery may cut anywhere.
    base = rng.choice(BASES)
    garbage = rng.randbytes(rng.randint(1, 1024))
    with open(log_path(d, base), "ab") as f:
        f.write(garbage)
    make_unclean(d, recovery_point=0)
    end = base + (PER_SEGMENT if base != 24 else 4)
    # the truncation point is the old end of the file: 624 (or 312 for the active one)
    reopen_truncated(d, caplog, end, base=base)


@pytest.mark.parametrize("seed", range(ROUNDS // 2))
def test_zero_filled_tail(copy, caplog, seed):
    rng = random.Random(seed)
    d = copy("crashed")
    if seed % 2:
        # a file extended by zeros (delayed allocation after a crash): batchLength 0
        zeros = rng.randint(1, 8192)
        with open(log_path(d, 24), "ab") as f:
            f.write(bytes(zeros))
        reason = "runs past the end" if zeros < 12 else "length field out of range"
        reopen_truncated(d, caplog, 28, reason)
    else:
        # the last j batches never reached the disk but the size did: 312 - 78 j valid
        j = rng.randint(1, 4)
        overwrite(log_path(d, 24), LAST_SIZE - j * BATCH_BYTES, bytes(j * BATCH_BYTES))
        reopen_truncated(d, caplog, 28 - j, "length field out of range")


# bytes 8..11 (batchLength), 16 (magic), 17..20 (crc) and 21..77 (CRC-covered); the base
# offset (0..7) and leader epoch (12..15) are not covered by the CRC: see the base-offset
# tests below
FLIPPABLE = [*range(OFF_LENGTH, OFF_EPOCH), *range(16, BATCH_BYTES)]


@pytest.mark.parametrize("seed", range(3 * ROUNDS))
def test_bit_flip_in_a_batch(copy, caplog, seed):
    rng = random.Random(seed)
    d = copy("crashed")
    offset = rng.randrange(BATCHES)
    base, position = position_of(offset)
    flip_bit(log_path(d, base), position + rng.choice(FLIPPABLE), rng.randrange(8))
    make_unclean(d, recovery_point=rng.randint(0, offset))  # damage at or after it
    reopen_truncated(d, caplog, offset)


@pytest.mark.parametrize("length,reason", [(1, "length field out of range"),
                                           (2**31 - 1, "runs past the end")])
@pytest.mark.parametrize("offset", [0, 5, 8, 21, 27])
def test_batch_length_field(copy, caplog, length, reason, offset):
    d = copy("crashed")
    base, position = position_of(offset)
    overwrite(log_path(d, base), position + OFF_LENGTH, struct.pack(">i", length))
    make_unclean(d, recovery_point=0)
    reopen_truncated(d, caplog, offset, reason)


def test_base_offset_going_backwards(copy, caplog):
    d = copy("crashed")
    base, position = position_of(13)
    overwrite(log_path(d, base), position, struct.pack(">q", 12))  # not covered by the CRC
    make_unclean(d, recovery_point=0)
    reopen_truncated(d, caplog, 13, "base offset goes backwards")


@pytest.mark.parametrize("offset", [27, 20, 16])
def test_base_offset_raised_by_a_bit_flip(copy, caplog, offset):
    """The base offset lies outside the CRC and the C scan only demands base offsets that
    do not go backwards; this log never has gaps, so a batch whose base offset is not one
    past the previous batch's last offset is damage and recovery cuts there. Before the
    fix in segment.py (offsets_contiguous), offset 27 -> 31 was kept as a gap (log end 32,
    read(27) returned offset 31), and 20 -> 20 + 2**62 made the open raise CoreError
    (OFFSET_OVERFLOW) from the index rebuild. 16 is the first batch of its segment."""
    d = copy("crashed")
    base, position = position_of(offset)
    bit = {27: 2, 20: 62, 16: 0}[offset]
    flip_bit(log_path(d, base), position + 7 - bit // 8, bit % 8)  # big-endian i64
    make_unclean(d, recovery_point=0)
    reopen_truncated(d, caplog, offset, f"is not {offset}, one past the previous batch")


def test_garbled_checkpoint_means_recovery_from_zero(copy, caplog):
    d = copy("crashed")
    write_file(os.path.join(d, files.RECOVERY_POINT_FILE), b"\xff\xfegarbage")
    flip_bit(log_path(d, 8), 3 * BATCH_BYTES + 40, 1)  # offset 11, below the old point 24
    reopen_truncated(d, caplog, 11)
    assert "unreadable recovery point checkpoint" in caplog.text


def test_stray_files_are_removed(copy, caplog):
    d = copy("closed")
    write_file(os.path.join(d, files.RECOVERY_POINT_FILE + files.TEMP_SUFFIX), b"0\n99\n")
    write_file(index_path(d, 400), bytes(16))       # an index whose log is gone
    write_file(time_index_path(d, 400), bytes(24))
    with caplog.at_level(WARNING, logger="pybroker.log"):
        log = PartitionLog(d, CONFIG, name="orders-0")
    assert caplog.text.count("removing stray file") == 3
    assert sorted(n for n in os.listdir(d) if "400" in n or n.endswith(".tmp")) == []
    assert log.log_end_offset == BATCHES
    log.close()


# --- indexes ------------------------------------------------------------------------------

def _damage_index(rng, path):
    size = os.path.getsize(path)
    how = rng.choice(["delete", "truncate", "garble", "extend", "empty-when-full"])
    if how == "delete":
        os.unlink(path)
    elif how == "truncate":
        os.truncate(path, rng.randrange(1, size) if size > 1 else 0)
        if os.path.getsize(path) % (8 if path.endswith(".index") else 12) == 0:
            write_file(path, read_file(path) + b"\x01")  # not a whole number of entries
    elif how == "garble":
        write_file(path, rng.randbytes(size))
    elif how == "extend":
        # one more entry beyond the end of the log: position 10_000 > the file's size
        entry = struct.pack("<II", 7, 10_000) if path.endswith(".index") else \
            struct.pack("<qI", 2**40, 2**31)
        write_file(path, read_file(path) + entry)
    else:
        write_file(path, bytes(size) + bytes(8))  # zeros: keys do not increase
    return how


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_damaged_index_after_clean_close_is_rebuilt(copy, caplog, seed):
    rng = random.Random(seed)
    d = copy("closed")
    base = rng.choice(BASES[:-1])  # sealed segments; the active one is tested below
    path = rng.choice([index_path(d, base), time_index_path(d, base)])
    good = {p: read_file(p) for p in (index_path(d, base), time_index_path(d, base))}
    how = _damage_index(rng, path)
    with caplog.at_level(WARNING, logger="pybroker.log"):
        log = PartitionLog(d, CONFIG, name="orders-0")
        assert caplog.text == ""  # sealed indexes load on first use
        assert_values(assert_log_matches_disk(log, d))  # first use of every index
    assert f"seg={files.segment_name(base)} " in caplog.text
    assert "rebuilding it from the log" in caplog.text, (how, caplog.text)
    assert log.offset_for_time(0) == 0
    log.close()
    for p, data in good.items():
        assert read_file(p) == data, f"{how}: {p} not rebuilt as it was"


@pytest.mark.parametrize("damage", ["offset-index-garbled", "time-index-deleted",
                                    "time-index-entry-beyond-the-log"])
def test_damaged_active_index_after_clean_close_is_rebuilt(copy, caplog, damage):
    """The active segment's indexes load at open. Its time index holds one entry,
    (0, 0): timestamp 0 at relative offset 0. The third case: an extra entry
    (2**40, 2**31) passes the load-time check, which allows any relative offset up to
    2**32 - 1 because the active segment's end is not known before the tail scan. Before
    the fix (LogSegment.load_as_active checks again after the tail scan) it was kept: the
    segment's max timestamp became 2**40 and time retention never deleted it."""
    d = copy("closed")
    good = {p: read_file(p) for p in (index_path(d, 24), time_index_path(d, 24))}
    assert good[time_index_path(d, 24)] == struct.pack("<qI", 0, 0)
    if damage == "offset-index-garbled":
        write_file(index_path(d, 24), b"\xff" * 8)  # position 2**32 - 1 > the 312-byte log
    elif damage == "time-index-deleted":
        os.unlink(time_index_path(d, 24))
    else:
        write_file(time_index_path(d, 24),
                   good[time_index_path(d, 24)] + struct.pack("<qI", 2**40, 2**31))
    config = dataclasses.replace(CONFIG, retention_ms=1000)
    with caplog.at_level(WARNING, logger="pybroker.log"):
        log = PartitionLog(d, config, name="orders-0")
    assert "seg=00000000000000000024 " in caplog.text
    assert "rebuilding it from the log" in caplog.text
    assert_values(assert_log_matches_disk(log, d))
    # every batch has timestamp 0: at time 10**7 all of them are past retention, the
    # active segment is rolled and every segment deleted
    log.enforce_retention(10**7)
    assert (log.log_start_offset, log.log_end_offset) == (BATCHES, BATCHES)
    log.close()


def test_damaged_active_index_after_a_crash_is_rebuilt(copy, caplog):
    d = copy("crashed")
    good = read_file(index_path(d, 8))
    write_file(index_path(d, 24), os.urandom(4096))
    os.unlink(time_index_path(d, 24))
    os.unlink(index_path(d, 8))  # below the recovery point: rebuilt on first use
    log = PartitionLog(d, CONFIG, name="orders-0")
    assert log.log_end_offset == BATCHES
    assert_values(assert_log_matches_disk(log, d))
    log.close()
    assert read_file(index_path(d, 8)) == good


def test_wrong_but_ordered_index_is_not_trusted(copy, caplog):
    """An index whose entries keep every invariant the check tests (ordered, inside the
    segment) but point at the wrong batches: each key one below the truth, so (1, 156)
    says offset 1 is where offset 2 is. Before the fix in LogSegment.seek, read(1)
    returned the batch of offset 2: the seek scans forward from the index position for
    the first batch whose last offset is >= 1, and nothing checked that the batch it
    lands on starts at or before the target. Now that sends the index to a rebuild."""
    d = copy("closed")
    path = index_path(d, 0)
    good = read_file(path)
    entries = [struct.unpack_from("<II", good, i) for i in range(0, 24, 8)]
    assert entries == [(2, 156), (4, 312), (6, 468)]
    write_file(path, b"".join(struct.pack("<II", rel - 1, pos) for rel, pos in entries))
    log = PartitionLog(d, CONFIG, name="orders-0")
    with caplog.at_level(WARNING, logger="pybroker.log"):
        assert_values(assert_log_matches_disk(log, d))
    assert "sends offset 1 to the batch at position 156 holding offset 2" in caplog.text
    log.close()
    assert read_file(path) == good


# --- damage below the recovery point: refused ------------------------------------------------

def test_damage_below_the_recovery_point_after_clean_close(copy, caplog):
    d = copy("closed")
    before = log_files(d)
    flip_bit(log_path(d, 0), 3 * BATCH_BYTES + 50, 4)  # offset 3, a value byte
    damaged = log_files(d)
    os.unlink(index_path(d, 0))  # segment 0 must be rebuilt, which scans it
    log = PartitionLog(d, CONFIG, name="orders-0")  # a clean open does not scan
    with pytest.raises(CorruptLogError) as info:
        log.read(5, 1000)
    message = str(info.value)
    assert f"file={log_path(d, 0)} position=234:" in message
    assert "CRC" in message and "Nothing was truncated" in message
    assert log_files(d) == damaged != before
    assert log.read(8, 1).base_offset == 8  # other segments are still served
    log.close()
    assert log_files(d) == damaged


@pytest.mark.parametrize("offset", [16, 17, 18])
def test_damage_below_the_recovery_point_after_a_crash(copy, offset):
    # recovery point 19 lies in segment 16: its batches 0..2 (offsets 16..18) are durable
    d = copy("crashed")
    base, position = position_of(offset)
    flip_bit(log_path(d, base), position + 30, 0)
    make_unclean(d, recovery_point=19)
    damaged = log_files(d)
    with pytest.raises(CorruptLogError) as info:
        PartitionLog(d, CONFIG, name="orders-0")
    assert f"file={log_path(d, 16)} position={position}:" in str(info.value)
    assert f"offsets from {offset} are below the recovery point 19" in str(info.value)
    assert log_files(d) == damaged  # nothing truncated, no segment deleted


@pytest.mark.parametrize("offset", [19, 20, 23])
def test_damage_at_or_after_the_recovery_point_in_the_same_segment(copy, caplog, offset):
    d = copy("crashed")
    base, position = position_of(offset)
    flip_bit(log_path(d, base), position + 30, 0)
    make_unclean(d, recovery_point=19)
    reopen_truncated(d, caplog, offset)


def test_torn_last_batch_after_clean_close_is_refused(copy):
    d = copy("closed")
    os.truncate(log_path(d, 24), LAST_SIZE - 10)
    damaged = log_files(d)
    with pytest.raises(CorruptLogError, match=f"file={log_path(d, 24)} position=234:"):
        PartitionLog(d, CONFIG, name="orders-0")
    assert log_files(d) == damaged


@pytest.mark.parametrize("kind", ["closed", "crashed"])
def test_lost_durable_tail_is_refused(copy, kind):
    """The last whole batch (offset 27) is gone, cut exactly at a batch boundary, though
    the checkpoint says every offset below 28 was durable (the crashed copy gets point 28
    as well). Before the fix in PartitionLog._open the log opened with log end 27 and
    rewrote the checkpoint to 27, silently losing a message acknowledged as durable."""
    d = copy(kind)
    os.truncate(log_path(d, 24), LAST_SIZE - BATCH_BYTES)
    if kind == "crashed":
        make_unclean(d, recovery_point=28)
    with pytest.raises(CorruptLogError, match="recovery point"):
        log = PartitionLog(d, CONFIG, name="orders-0")
        log.close()
    assert checkpoint.read_recovery_point(d) == 28


def test_base_offset_gap_below_the_recovery_point_is_refused(copy, caplog):
    """A raised base offset in a sealed segment after a clean close (offset 11 -> 15, at
    234 in segment 8). Reading offset 11 lands on "15": the index is suspected and rebuilt
    from the log, whose scan finds the gap below the recovery point (16, all of a sealed
    segment) and refuses. Before the contiguity check, that rebuild cut segment 8 to 312
    bytes without a word (the batch at 312 "goes backwards" from 15, and 16 is not below
    the recovery point 16), deleting offsets 12..15 that were durable."""
    d = copy("closed")
    flip_bit(log_path(d, 8), 3 * BATCH_BYTES + 7, 2)  # 11 ^ 4 = 15
    damaged = log_files(d)
    log = PartitionLog(d, CONFIG, name="orders-0")
    [problem] = log.verify()
    assert f"file={log_path(d, 8)} position=234: batch base offset 15 is not 11" in problem
    assert log.read(10, 1).base_offset == 10
    assert log.read(12, 1).base_offset == 12
    with caplog.at_level(WARNING, logger="pybroker.log"):
        with pytest.raises(CorruptLogError, match=f"file={log_path(d, 8)} position=234: "
                                                  "batch base offset 15 is not 11"):
            log.read(11, 1)
    assert "rebuilding it from the log" in caplog.text
    assert log_files(d) == damaged
    log.close()
    assert log_files(d) == damaged


def test_base_offset_gap_in_the_active_segment_after_clean_close_is_refused(copy):
    d = copy("closed")
    flip_bit(log_path(d, 24), 3 * BATCH_BYTES + 7, 2)  # offset 27 -> 31, after the last
    damaged = log_files(d)                             # index entry (2, 156)
    with pytest.raises(CorruptLogError, match="position=234: batch base offset 31 is not 27"):
        PartitionLog(d, CONFIG, name="orders-0")
    assert log_files(d) == damaged


def test_verify_reports_a_file_shorter_than_the_log_knows(copy):
    d = copy("closed")
    log = PartitionLog(d, CONFIG, name="orders-0")
    os.truncate(log_path(d, 8), 300)  # behind the open log's back
    [problem] = log.verify()
    assert f"file={log_path(d, 8)} position=234:" in problem
    os.truncate(log_path(d, 16), 0)
    problems = log.verify()
    assert f"file={log_path(d, 16)} position=0: the file ends 624 bytes early" in problems[1]
    log.close()
