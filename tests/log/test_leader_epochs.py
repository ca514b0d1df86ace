"""LeaderEpochCache: Kafka's leader-epoch-checkpoint file and LeaderEpochFileCache rules.

The end_offset_for cases restate the examples of Kafka's LeaderEpochFileCacheTest (the
entries and answers, not its code); the file is read back from disk in each test.
"""
import logging
import os
import random

import pytest

from pybroker.log import files, leader_epochs
from pybroker.log.leader_epochs import LeaderEpochCache

UNDEFINED = (-1, -1)


def _path(directory) -> str:
    return os.path.join(directory, files.LEADER_EPOCH_FILE)


def _file(directory) -> bytes:
    with open(_path(directory), "rb") as f:
        return f.read()


def _cache(tmp_path, *entries) -> LeaderEpochCache:
    cache = LeaderEpochCache(str(tmp_path), "tp=t-0")
    for epoch, start in entries:
        assert cache.assign(epoch, start)
    return cache


@pytest.fixture
def writes(monkeypatch):
    """Paths written through files.write_atomic, in order."""
    seen = []
    real = files.write_atomic

    def counting(path, data):
        seen.append(path)
        real(path, data)

    monkeypatch.setattr(files, "write_atomic", counting)
    return seen


# --- the file ---------------------------------------------------------------------------

def test_file_format_is_kafkas(tmp_path):
    _cache(tmp_path, (0, 0), (3, 120), (10, 4000))
    assert _file(tmp_path) == b"0\n3\n0 0\n3 120\n10 4000\n"
    assert LeaderEpochCache(str(tmp_path), "tp=t-0").entries() == [(0, 0), (3, 120), (10, 4000)]


def test_a_missing_file_is_empty_and_not_created(tmp_path):
    cache = LeaderEpochCache(str(tmp_path), "tp=t-0")
    assert (cache.entries(), cache.latest_epoch()) == ([], -1)
    assert not os.path.exists(_path(tmp_path))


def test_writes_are_atomic_and_leave_no_temp_file(tmp_path, writes):
    _cache(tmp_path, (1, 5))
    assert writes == [_path(tmp_path)]
    assert sorted(os.listdir(tmp_path)) == [files.LEADER_EPOCH_FILE]


def test_kafka_written_file_reads(tmp_path):
    # what Kafka's CheckpointFile writes: version, count, "epoch offset" lines
    with open(_path(tmp_path), "w") as f:
        f.write("0\n2\n4 0\n7 1500\n")
    cache = LeaderEpochCache(str(tmp_path), "tp=t-0")
    assert (cache.entries(), cache.latest_epoch()) == ([(4, 0), (7, 1500)], 7)


@pytest.mark.parametrize("text", [
    "",                       # no header
    "1\n1\n0 0\n",            # unknown version
    "0\n2\n0 0\n",            # count says 2, one entry
    "0\n1\n0 0\n5 9\n",       # count says 1, two entries
    "0\n1\n0\n",              # one field
    "0\n1\nx 0\n",            # not a number
    "0\n2\n3 10\n2 20\n",     # epochs go down
    "0\n2\n3 10\n4 10\n",     # start offsets do not increase
    "0\n1\n-1 0\n",           # negative epoch
    "\xff\xfe",               # not ASCII
])
def test_an_unreadable_file_is_logged_and_read_as_empty(tmp_path, caplog, text):
    with open(_path(tmp_path), "w", encoding="latin-1") as f:
        f.write(text)
    with caplog.at_level(logging.WARNING, logger="pybroker.log"):
        cache = LeaderEpochCache(str(tmp_path), "tp=t-0")
    assert cache.entries() == []
    assert "tp=t-0" in caplog.text and "unreadable leader-epoch checkpoint" in caplog.text
    cache.assign(2, 40)  # the next change replaces it
    assert _file(tmp_path) == b"0\n1\n2 40\n"


def test_a_failed_write_changes_nothing(tmp_path, monkeypatch):
    cache = _cache(tmp_path, (1, 0))

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_atomic", full_disk)
    with pytest.raises(OSError):
        cache.assign(2, 10)
    with pytest.raises(OSError):
        cache.truncate_from_end(0)
    assert cache.entries() == [(1, 0)] and cache.latest_epoch() == 1
    assert _file(tmp_path) == b"0\n1\n1 0\n"


# --- assign -----------------------------------------------------------------------------

def test_assign_appends_a_later_epoch(tmp_path):
    cache = _cache(tmp_path, (2, 10))
    assert cache.latest_epoch() == 2
    assert cache.end_offset_for(2, 11) == (2, 11)


def test_assign_of_an_older_or_the_same_epoch_is_a_no_op(tmp_path, writes):
    cache = _cache(tmp_path, (2, 6), (5, 20))
    del writes[:]
    assert not cache.assign(5, 30)   # the same epoch at a later offset: already known
    assert not cache.assign(5, 20)
    assert not cache.assign(3, 25)   # an older epoch
    assert cache.entries() == [(2, 6), (5, 20)] and writes == []


def test_assign_drops_entries_at_or_after_its_start_offset(tmp_path, caplog):
    cache = _cache(tmp_path, (5, 11), (6, 12), (7, 13))
    with caplog.at_level(logging.WARNING, logger="pybroker.log"):
        assert cache.assign(8, 12)
    assert cache.entries() == [(5, 11), (8, 12)]
    assert "drops the later entries [(6, 12), (7, 13)]" in caplog.text
    assert LeaderEpochCache(str(tmp_path), "tp=t-0").entries() == [(5, 11), (8, 12)]


def test_assign_at_an_empty_epochs_start_replaces_it_quietly(tmp_path, caplog):
    cache = _cache(tmp_path, (1, 0), (2, 50))  # epoch 2 wrote nothing before epoch 3
    with caplog.at_level(logging.WARNING, logger="pybroker.log"):
        assert cache.assign(3, 50)
    assert cache.entries() == [(1, 0), (3, 50)] and caplog.text == ""


@pytest.mark.parametrize("epoch, start", [(-1, 0), (0, -1)])
def test_assign_refuses_negative_values(tmp_path, epoch, start):
    with pytest.raises(ValueError, match="invalid leader epoch entry"):
        _cache(tmp_path).assign(epoch, start)


# --- end_offset_for ---------------------------------------------------------------------

def test_end_offset_for_nothing_known_is_undefined(tmp_path):
    cache = _cache(tmp_path)
    assert cache.end_offset_for(0, 0) == UNDEFINED
    assert cache.end_offset_for(-1, 73) == UNDEFINED


def test_end_offset_for_the_undefined_epoch_is_undefined(tmp_path):
    assert _cache(tmp_path, (0, 0), (1, 5)).end_offset_for(-1, 73) == UNDEFINED


def test_end_offset_for_the_latest_epoch_is_the_log_end(tmp_path):
    cache = _cache(tmp_path, (2, 6), (3, 8))
    assert cache.end_offset_for(3, 15) == (3, 15)
    assert cache.end_offset_for(3, 8) == (3, 8)


def test_end_offset_for_an_epoch_below_the_first_is_the_first_start(tmp_path):
    # Kafka: shouldReturnFirstEpochIfRequestedEpochLessThanFirstEpoch
    cache = _cache(tmp_path, (5, 11), (6, 12), (7, 13))
    assert cache.end_offset_for(4, 0) == (4, 11)
    assert cache.end_offset_for(0, 0) == (0, 11)


def test_end_offset_for_a_previous_epoch_is_the_next_epochs_start(tmp_path):
    # Kafka: shouldGetFirstOffsetOfSubsequentEpochWhenOffsetRequestedForPreviousEpoch
    cache = _cache(tmp_path, (1, 5), (2, 10))
    assert cache.end_offset_for(1, 17) == (1, 10)


def test_end_offset_for_an_unknown_epoch_between_known_ones(tmp_path):
    # Kafka: shouldReturnNextAvailableEpochIfThereIsNoExactEpochForTheOneRequested
    cache = _cache(tmp_path, (0, 10), (2, 13), (4, 17))
    assert cache.end_offset_for(1, 20) == (0, 13)
    assert cache.end_offset_for(2, 20) == (2, 17)
    assert cache.end_offset_for(3, 20) == (2, 17)
    assert cache.end_offset_for(4, 20) == (4, 20)


def test_end_offset_for_an_epoch_above_the_latest_is_undefined(tmp_path):
    # Kafka: shouldReturnUnsupportedIfRequestedEpochGreaterThanLatest (never hit by a
    # leader, whose latest epoch is its own)
    assert _cache(tmp_path, (5, 11), (6, 12)).end_offset_for(7, 20) == UNDEFINED


# --- truncation -------------------------------------------------------------------------

@pytest.mark.parametrize("end, kept", [
    (12, [(2, 6), (3, 8), (4, 11)]),   # after the last start: nothing to drop
    (11, [(2, 6), (3, 8)]),            # an entry at the end offset goes
    (9, [(2, 6), (3, 8)]),
    (8, [(2, 6)]),
    (6, []),
    (0, []),
])
def test_truncate_from_end(tmp_path, writes, end, kept):
    cache = _cache(tmp_path, (2, 6), (3, 8), (4, 11))
    del writes[:]
    changed = len(kept) < 3
    assert cache.truncate_from_end(end) == changed
    assert cache.entries() == kept
    assert writes == ([_path(tmp_path)] if changed else [])  # persisted only if changed
    assert LeaderEpochCache(str(tmp_path), "tp=t-0").entries() == kept


@pytest.mark.parametrize("start, kept", [
    (5, [(2, 6), (3, 8), (4, 11)]),    # below every entry: nothing changes
    (6, [(2, 6), (3, 8), (4, 11)]),    # exactly the first start: kept as it is
    (7, [(2, 7), (3, 8), (4, 11)]),    # inside epoch 2: it now starts there
    (8, [(3, 8), (4, 11)]),
    (9, [(3, 9), (4, 11)]),
    (11, [(4, 11)]),
    (30, [(4, 30)]),                   # past every start: the latest epoch holds it
])
def test_truncate_from_start(tmp_path, writes, start, kept):
    cache = _cache(tmp_path, (2, 6), (3, 8), (4, 11))
    del writes[:]
    changed = kept != [(2, 6), (3, 8), (4, 11)]
    assert cache.truncate_from_start(start) == changed
    assert cache.entries() == kept
    assert writes == ([_path(tmp_path)] if changed else [])
    assert LeaderEpochCache(str(tmp_path), "tp=t-0").entries() == kept


def test_truncate_of_an_empty_cache_writes_nothing(tmp_path, writes):
    cache = _cache(tmp_path)
    assert not cache.truncate_from_end(0)
    assert not cache.truncate_from_start(10)
    assert not cache.clear()
    assert writes == [] and not os.path.exists(_path(tmp_path))


def test_clear(tmp_path):
    cache = _cache(tmp_path, (1, 0), (2, 9))
    assert cache.clear() and cache.entries() == [] and cache.latest_epoch() == -1
    assert _file(tmp_path) == b"0\n0\n"
    assert LeaderEpochCache(str(tmp_path), "tp=t-0").entries() == []


def test_random_operations_keep_the_invariants_and_the_file(tmp_path):
    rng = random.Random(7)
    cache = _cache(tmp_path)
    for _ in range(400):
        op = rng.randrange(4)
        if op == 0:
            cache.assign(rng.randrange(30), rng.randrange(500))
        elif op == 1:
            cache.truncate_from_end(rng.randrange(500))
        elif op == 2:
            cache.truncate_from_start(rng.randrange(500))
        else:
            epoch = rng.randrange(-1, 32)
            got = cache.end_offset_for(epoch, 600)
            entries = cache.entries()
            higher = [e for e in entries if e[0] > epoch]
            lower = [e for e in entries if e[0] <= epoch]
            if epoch == -1 or not entries or (not higher and epoch != entries[-1][0]):
                assert got == UNDEFINED
            elif epoch == entries[-1][0]:
                assert got == (epoch, 600)
            else:
                assert got == ((lower[-1][0] if lower else epoch), higher[0][1])
        assert leader_epochs.check_entries(cache.entries()) is None
        on_disk = (LeaderEpochCache(str(tmp_path), "tp=t-0").entries()
                   if os.path.exists(_path(tmp_path)) else [])
        assert on_disk == cache.entries()
