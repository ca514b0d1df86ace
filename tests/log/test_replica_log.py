"""PartitionLog as a replica: leader epochs, the replication bound, follower appends,
truncation and reset, on real files.

Layouts: value_for() records are 10 bytes, so a 1-record batch is 61 + 17 = 78 bytes
(helpers.py shows the arithmetic). THREE_PER_SEGMENT is 3 * 78 = 234 bytes: the fourth
batch would pass it, so each segment holds offsets 3k..3k+2 and 8 batches make the
segments [0, 3, 6] with the log end at 8.
"""
import os

import pytest

from helpers import (BATCH_BYTES, OFF_EPOCH, FakeClock, abandon, append_values,
                     assert_log_matches_disk, assert_values, batch_for, get_i32, log_files,
                     log_path, make_unclean, read_file, scan_directory, value_for)
from pybroker import core
from pybroker.errors import CorruptRecordError, LogSyncFailedError, OffsetOutOfRange
from pybroker.log import (FlushInProgress, LogConfig, LogTruncatedError, PartitionLog,
                          ReplicaOffsetMismatch, checkpoint, files, whole_batches)
from pybroker.log.leader_epochs import LeaderEpochCache
from pybroker.log.segment import LogSegment
from pybroker.records import parse_records

NO_AUTO_FLUSH = dict(flush_messages=10**9, flush_ms=10**9)
THREE_PER_SEGMENT = 3 * BATCH_BYTES


@pytest.fixture
def log_dir(tmp_path):
    return str(tmp_path / "orders-0")


@pytest.fixture
def follower_dir(tmp_path):
    return str(tmp_path / "follower" / "orders-0")


def open_log(directory, **kw):
    config = {**NO_AUTO_FLUSH, **{k: v for k, v in kw.items() if k in LogConfig.names()}}
    options = {k: v for k, v in kw.items() if k not in config}
    return PartitionLog(directory, LogConfig(**config), name="orders-0", clock=FakeClock(),
                        **options)


def stamped(first_offset: int, records: int = 1, epoch: int = 0) -> bytearray:
    """A batch as a leader of `epoch` stored it at first_offset."""
    buf = batch_for(first_offset, records)
    core.scan_batches(buf, stamp_offset=first_offset, leader_epoch=epoch)
    return buf


def copy(leader, follower, max_bytes: int = 1 << 20):
    """One fetch: the leader's bytes from the follower's log end, whole batches only."""
    piece = leader.read(follower.log_end_offset, max_bytes, to_log_end=True)
    data = piece.read_bytes()
    return follower.append_replica(memoryview(data)[:whole_batches(data)])


def recovery_point_on_disk(directory) -> int:
    return checkpoint.read_recovery_point(directory)


def waiter(log, offset, fired):
    log.when_durable(offset, lambda error: fired.append((offset, error)))


# --- leader epochs ------------------------------------------------------------------------

def test_append_stamps_the_leader_epoch_into_bytes_12_to_15(log_dir):
    log = open_log(log_dir)
    log.append(batch_for(0, 2), leader_epoch=5)
    log.append(batch_for(2), leader_epoch=5)
    log.append(batch_for(3, 3), leader_epoch=7)
    log.close()
    disk = scan_directory(log_dir)  # parse_batches checks each CRC: still valid
    assert [(d.batch.base_offset, get_i32(d.raw, OFF_EPOCH)) for d in disk] == \
        [(0, 5), (2, 5), (3, 7)]
    assert all(core.scan_batches(d.raw) for d in disk)  # the C CRC check passes too
    assert read_file(os.path.join(log_dir, files.LEADER_EPOCH_FILE)) == b"0\n2\n5 0\n7 3\n"
    assert open_log(log_dir).epochs.entries() == [(5, 0), (7, 3)]


def test_append_without_an_epoch_leaves_the_batch_and_the_cache(log_dir):
    log = open_log(log_dir)
    log.append(batch_for(0))
    log.close()
    assert get_i32(scan_directory(log_dir)[0].raw, OFF_EPOCH) == -1  # as the producer sent it
    assert not os.path.exists(os.path.join(log_dir, files.LEADER_EPOCH_FILE))


def test_open_drops_epochs_at_or_past_the_log_end(log_dir):
    log = open_log(log_dir)
    log.append(batch_for(0, 2), leader_epoch=1)
    log.epochs.assign(4, 2)   # epochs whose first batches a crash lost: the log ends at 2
    log.epochs.assign(6, 30)
    log.close()
    reopened = open_log(log_dir)
    assert reopened.epochs.entries() == [(1, 0)]
    assert read_file(os.path.join(log_dir, files.LEADER_EPOCH_FILE)) == b"0\n1\n1 0\n"


# --- whole_batches ------------------------------------------------------------------------

def test_whole_batches_counts_leading_whole_batches():
    a, b, c = batch_for(0), batch_for(1, 3), batch_for(4)
    buf = bytes(a + b + c)
    assert whole_batches(buf) == len(buf)
    assert whole_batches(b"") == 0
    assert whole_batches(buf[:len(a) + len(b) + 20]) == len(a) + len(b)  # ends inside c
    assert whole_batches(buf[:len(a) + 5]) == len(a)   # inside b's 12-byte prefix
    assert whole_batches(buf[:len(a) - 1]) == 0
    assert whole_batches(memoryview(buf)[len(a):]) == len(b) + len(c)


def test_whole_batches_stops_at_an_impossible_length():
    a, b = batch_for(0), bytearray(batch_for(1))
    b[8:12] = (48).to_bytes(4, "big")  # below the 49 bytes of a header without records
    assert whole_batches(bytes(a + b)) == len(a)


# --- follower appends ---------------------------------------------------------------------

def test_append_replica_copies_the_leaders_batches_and_epochs(log_dir, follower_dir):
    leader = open_log(log_dir)
    for epoch, records in ((1, 1), (1, 2), (2, 1), (4, 3)):
        leader.append(batch_for(leader.log_end_offset, records), leader_epoch=epoch)
    follower = open_log(follower_dir)
    got = copy(leader, follower)  # unflushed on the leader: followers copy before its fsync
    assert leader.high_watermark == 0 and follower.log_end_offset == leader.log_end_offset == 7
    assert (got.base_offset, got.last_offset, got.records) == (0, 6, 7)
    assert follower.epochs.entries() == leader.epochs.entries() == [(1, 0), (2, 3), (4, 4)]
    leader.close()
    follower.close()
    assert log_files(follower_dir) == log_files(log_dir)  # byte for byte
    reopened = open_log(follower_dir)
    assert_values(assert_log_matches_disk(reopened, follower_dir))
    assert reopened.epochs.entries() == [(1, 0), (2, 3), (4, 4)]


def test_append_replica_of_one_epoch_assigns_it_once(log_dir, follower_dir):
    leader = open_log(log_dir)
    leader.append(batch_for(0), leader_epoch=3)
    follower = open_log(follower_dir)
    copy(leader, follower)
    for _ in range(3):
        leader.append(batch_for(leader.log_end_offset, 2), leader_epoch=3)
    copy(leader, follower)
    leader.append(batch_for(leader.log_end_offset), leader_epoch=8)
    copy(leader, follower)
    assert follower.epochs.entries() == [(3, 0), (8, 7)]


def test_append_replica_ignores_unstamped_epochs(follower_dir):
    follower = open_log(follower_dir)
    buf = batch_for(0)
    core.scan_batches(buf, stamp_offset=0)  # epoch -1: a log written before replication
    follower.append_replica(bytes(buf))
    assert follower.epochs.entries() == [] and follower.log_end_offset == 1


def test_append_replica_rolls_and_flushes_like_append(follower_dir):
    follower = open_log(follower_dir, segment_bytes=THREE_PER_SEGMENT, flush_messages=4)
    for offset in range(8):
        follower.append_replica(bytes(stamped(offset)))
    # standalone, each roll (at 3 and at 6) flushes first and restarts the message count,
    # which then reaches only 3 (offsets 3..5) and 2 (6..7): durable up to 6
    assert follower.segment_bases() == [0, 3, 6]
    assert follower.durable_offset == 6 and follower.log_end_offset == 8
    follower.close()
    assert_values(assert_log_matches_disk(open_log(follower_dir), follower_dir))


@pytest.mark.parametrize("first_offset", [2, 4, 0])  # overlap, gap, far below
def test_append_replica_refuses_offsets_that_do_not_continue_the_log(follower_dir,
                                                                     first_offset):
    follower = open_log(follower_dir)
    for offset in range(3):
        follower.append_replica(bytes(stamped(offset, epoch=1)))
    before = log_files(follower_dir)
    with pytest.raises(ReplicaOffsetMismatch, match=f"offset {first_offset}.*log end offset is 3"):
        follower.append_replica(bytes(stamped(first_offset, epoch=9)))
    assert log_files(follower_dir) == before and follower.log_end_offset == 3
    assert follower.epochs.entries() == [(1, 0)]


def test_append_replica_refuses_a_gap_inside_the_batches(follower_dir):
    follower = open_log(follower_dir)
    buf = bytes(stamped(0, 2) + stamped(3))  # offsets 0-1, then 3: offset 2 is missing
    with pytest.raises(ReplicaOffsetMismatch, match="hold 3 records but end at offset 3"):
        follower.append_replica(buf)
    assert follower.log_end_offset == 0 and os.path.getsize(log_path(follower_dir, 0)) == 0


def test_append_replica_refuses_offsets_that_go_back(follower_dir):
    follower = open_log(follower_dir)
    buf = bytes(stamped(0, 2) + stamped(1))
    with pytest.raises(ReplicaOffsetMismatch, match="byte 95 has base offset 1, below 2"):
        follower.append_replica(buf)
    assert follower.log_end_offset == 0 and os.path.getsize(log_path(follower_dir, 0)) == 0


def test_append_replica_validates_the_crc(follower_dir):
    follower = open_log(follower_dir)
    buf = bytearray(stamped(0, epoch=2) + stamped(1, epoch=3))
    buf[BATCH_BYTES + 70] ^= 1  # a value byte of the second batch
    with pytest.raises(CorruptRecordError, match="at byte 78"):
        follower.append_replica(bytes(buf))
    assert follower.log_end_offset == 0 and follower.epochs.entries() == []
    assert os.path.getsize(log_path(follower_dir, 0)) == 0


def test_append_replica_of_nothing_is_an_error(follower_dir):
    with pytest.raises(ValueError, match="nothing to append"):
        open_log(follower_dir).append_replica(b"")


def test_a_failed_replica_write_drops_the_epoch_it_recorded(follower_dir, monkeypatch):
    follower = open_log(follower_dir)
    follower.append_replica(bytes(stamped(0, epoch=1)))

    def full_disk(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LogSegment, "append", full_disk)
    with pytest.raises(OSError):
        follower.append_replica(bytes(stamped(1, epoch=2)))
    assert follower.epochs.entries() == [(1, 0)] and follower.log_end_offset == 1


# --- the replication bound ----------------------------------------------------------------

def test_no_bound_keeps_the_high_watermark_at_the_durable_offset(log_dir):
    log = open_log(log_dir)
    append_values(log, 3)
    assert (log.high_watermark, log.durable_offset, log.replication_bound) == (0, 0, None)
    log.flush()
    assert log.high_watermark == log.durable_offset == 3


def test_the_bound_hides_flushed_data_and_holds_acks_all(log_dir):
    moves = []
    log = open_log(log_dir, replication_bound=0, on_hw=moves.append)
    append_values(log, 4)               # offsets 0..3, 78 bytes each
    fired = []
    for offset in (0, 1, 3):
        waiter(log, offset, fired)
    log.flush()
    assert (log.durable_offset, log.high_watermark) == (4, 0)
    assert log.read(0, 1 << 20) is None and fired == [] and moves == []
    assert log.offset_for_time(0) is None
    assert log.set_replication_bound(2)  # the followers fetched 0..1
    assert log.high_watermark == 2 and moves == [2]
    piece = log.read(0, 1 << 20)
    assert (piece.position, piece.length) == (0, 2 * BATCH_BYTES)  # stops at the bound
    assert log.read(2, 1 << 20) is None
    assert fired == [(0, None), (1, None)]
    assert not log.set_replication_bound(1)  # monotonic: never down
    assert log.high_watermark == 2
    assert log.set_replication_bound(10)  # ahead of the durable offset: capped by it
    assert log.high_watermark == 4 and moves == [2, 4]
    assert fired == [(0, None), (1, None), (3, None)]
    assert log.read(2, 1 << 20).length == 2 * BATCH_BYTES


def test_a_bound_ahead_of_the_flush_waits_for_the_flush(log_dir):
    log = open_log(log_dir, replication_bound=0)
    append_values(log, 2)
    fired = []
    waiter(log, 1, fired)
    log.set_replication_bound(2)       # followers copied before the leader's fsync
    assert log.high_watermark == 0 and fired == []
    log.flush()
    assert log.high_watermark == 2 and fired == [(1, None)]


def test_a_bound_inside_a_batch_is_refused(log_dir):
    log = open_log(log_dir, replication_bound=0)
    log.append(batch_for(0, 3))
    log.append(batch_for(3))
    log.flush()
    with pytest.raises(ValueError, match="offset 1 is inside the batch of offsets 0..2"):
        log.set_replication_bound(1)
    assert (log.high_watermark, log.replication_bound) == (0, 0)
    assert log.set_replication_bound(3) and log.high_watermark == 3


def test_removing_the_bound_shows_everything_flushed(log_dir):
    log = open_log(log_dir, replication_bound=0)
    append_values(log, 3)
    log.flush()
    assert log.set_replication_bound(None) and log.high_watermark == 3


def test_the_bound_at_open_starts_the_high_watermark_there(log_dir):
    log = open_log(log_dir)
    append_values(log, 5)
    log.close()
    log = open_log(log_dir, replication_bound=2)
    assert (log.high_watermark, log.durable_offset, log.log_end_offset) == (2, 5, 5)
    assert log.read(0, 1 << 20).length == 2 * BATCH_BYTES
    log.close()
    assert open_log(log_dir, replication_bound=99).high_watermark == 5


def test_a_bound_inside_a_batch_at_open_stops_at_its_start(log_dir):
    log = open_log(log_dir)
    log.append(batch_for(0))
    log.append(batch_for(1, 3))  # offsets 1..3
    log.close()
    log = open_log(log_dir, replication_bound=2)
    assert log.high_watermark == 1 and log.read(0, 1 << 20).length == BATCH_BYTES


def test_a_checked_bound_that_a_truncation_left_inside_a_batch(log_dir):
    log = open_log(log_dir, replication_bound=0)
    append_values(log, 4)
    log.flush()
    log.set_replication_bound(3)
    log.truncate_to(1)                 # the follower side of a leader change
    log.append(batch_for(1, 4))        # offsets 1..4: the bound 3 is inside it now
    log.append(batch_for(5))
    log.flush()                        # must not raise in the flush path
    assert log.high_watermark == 1     # stops at the start of the batch holding 3
    log.set_replication_bound(5)
    assert log.high_watermark == 5


def test_a_bound_is_checked_when_it_is_set(log_dir):
    log = open_log(log_dir, replication_bound=0)
    log.append(batch_for(0, 3))
    with pytest.raises(ValueError, match="offset 2 is inside"):  # checked before the flush
        log.set_replication_bound(2)
    log.flush()
    assert log.high_watermark == 0


def test_bound_moves_across_segments(log_dir):
    log = open_log(log_dir, replication_bound=0, segment_bytes=THREE_PER_SEGMENT)
    append_values(log, 8)
    log.flush()
    for bound in (3, 5, 6, 8):
        log.set_replication_bound(bound)
        assert log.high_watermark == bound
        assert_log_matches_disk(log, log_dir)  # reads every offset below it
        assert log.read(bound, 1 << 20) is None
        # the last visible batch, offset bound - 1, is slot (bound - 1) % 3 of its segment:
        # the read of it ends right after it
        below = log.read(bound - 1, 1 << 20)
        assert below.position + below.length == ((bound - 1) % 3 + 1) * BATCH_BYTES


def test_retention_keeps_what_the_bound_hides(log_dir):
    log = open_log(log_dir, replication_bound=0, segment_bytes=THREE_PER_SEGMENT,
                   retention_bytes=0)
    append_values(log, 8)
    log.flush()
    assert log.enforce_retention() == 0 and log.segment_bases() == [0, 3, 6]
    log.set_replication_bound(6)
    assert log.enforce_retention() == 2 and log.segment_bases() == [6]


def test_on_flush_reports_the_durable_offset(log_dir):
    flushes = []
    log = open_log(log_dir, replication_bound=0, on_flush=lambda d, s: flushes.append(d))
    append_values(log, 2)
    log.flush()
    assert flushes == [2] and log.high_watermark == 0


# --- reads to the log end -----------------------------------------------------------------

def test_to_log_end_reads_unflushed_bytes(log_dir):
    log = open_log(log_dir, segment_bytes=THREE_PER_SEGMENT)
    append_values(log, 2)
    log.flush()
    append_values(log, 5)  # offsets 2..6, unflushed; rolls at 3 and 6 flush (standalone)
    log.append(batch_for(7))   # offset 7, unflushed
    assert (log.high_watermark, log.log_end_offset) == (6, 8)
    assert log.read(6, 1 << 20) is None
    piece = log.read(6, 1 << 20, to_log_end=True)
    assert (piece.base_offset, piece.length) == (6, 2 * BATCH_BYTES)
    assert piece.read_bytes() == read_file(log_path(log_dir, 6))
    assert log.read(8, 1 << 20, to_log_end=True) is None  # at the log end
    with pytest.raises(OffsetOutOfRange):
        log.read(9, 1 << 20, to_log_end=True)
    whole = log.read(0, 1 << 20, to_log_end=True)
    assert whole.length == THREE_PER_SEGMENT  # a read stays in one segment


def test_to_log_end_on_an_owner_driven_log(log_dir):
    due = []
    log = open_log(log_dir, flush_messages=1, on_flush_due=lambda: due.append(1))
    append_values(log, 3)
    assert log.high_watermark == 0 and due
    assert log.read(0, 1 << 20, to_log_end=True).length == 3 * BATCH_BYTES


# --- truncate_to --------------------------------------------------------------------------

def eight_in_three_segments(directory, **kw):
    """Offsets 0..7 in segments [0, 3, 6], flushed and checkpointed (recovery point 8),
    epoch 1 from offset 0, 2 from 3, 3 from 6."""
    log = open_log(directory, segment_bytes=THREE_PER_SEGMENT, **kw)
    for offset in range(8):
        log.append(batch_for(offset), leader_epoch=1 + offset // 3)
    log.flush()
    log.maybe_checkpoint(10**12)
    assert (log.segment_bases(), log.recovery_point, log.epochs.entries()) == \
        ([0, 3, 6], 8, [(1, 0), (2, 3), (3, 6)])
    return log


def assert_holds(log, directory, end):
    """The log holds exactly the offsets below end, each with its value."""
    assert log.log_end_offset == end
    disk = assert_log_matches_disk(log, directory)
    assert [d.batch.base_offset for d in disk] == list(range(log.log_start_offset, end))
    assert_values(disk)


def test_truncate_inside_a_segment_keeps_exactly_the_offsets_below(log_dir):
    log = eight_in_three_segments(log_dir)
    assert log.truncate_to(4) == 4 * BATCH_BYTES  # offsets 4, 5 of segment 3 and 6, 7
    assert recovery_point_on_disk(log_dir) == 4   # lowered before any file was touched
    assert log.segment_bases() == [0, 3]
    assert os.path.getsize(log_path(log_dir, 3)) == BATCH_BYTES
    assert not os.path.exists(log_path(log_dir, 6))
    assert (log.durable_offset, log.high_watermark) == (4, 4)
    assert log.epochs.entries() == [(1, 0), (2, 3)]
    assert_holds(log, log_dir, 4)
    assert log.read(4, 1 << 20) is None
    assert log.append(batch_for(4)).base_offset == 4  # appends go on at the cut
    log.flush()
    assert_holds(log, log_dir, 5)
    log.close()
    reopened = open_log(log_dir, segment_bytes=THREE_PER_SEGMENT)
    assert_holds(reopened, log_dir, 5)
    assert reopened.epochs.entries() == [(1, 0), (2, 3)]


def test_truncate_then_crash_reopens_at_the_cut(log_dir):
    log = eight_in_three_segments(log_dir)
    log.truncate_to(4)
    abandon(log)  # SIGKILL: no clean-shutdown marker, no trim, no checkpoint
    # without the lowered recovery point (8) this would be CorruptLogError: the log
    # would end at 4, below it
    reopened = open_log(log_dir, segment_bytes=THREE_PER_SEGMENT)
    assert_holds(reopened, log_dir, 4)
    reopened.append(batch_for(4))
    abandon(reopened)
    again = open_log(log_dir, segment_bytes=THREE_PER_SEGMENT)
    assert_holds(again, log_dir, 5)


def test_a_crash_after_the_deletions_before_the_cut_reopens(log_dir, monkeypatch):
    log = eight_in_three_segments(log_dir)

    def crash(self, position, next_offset):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(LogSegment, "truncate_to", crash)
    with pytest.raises(OSError):
        log.truncate_to(4)
    assert log.sync_failed  # a half-cut log takes nothing more
    with pytest.raises(LogSyncFailedError):
        log.append(batch_for(8))
    abandon(log)
    monkeypatch.undo()
    # segment 6 is gone, segment 3 still whole: a log ending at 6, above the point 4
    reopened = open_log(log_dir, segment_bytes=THREE_PER_SEGMENT)
    assert_holds(reopened, log_dir, 6)
    reopened.truncate_to(4)
    assert_holds(reopened, log_dir, 4)


@pytest.mark.parametrize("offset, bases", [(3, [0, 3]), (6, [0, 3, 6]), (0, [0])])
def test_truncate_at_a_segment_base_leaves_it_empty_and_active(log_dir, offset, bases):
    log = eight_in_three_segments(log_dir)
    log.truncate_to(offset)
    assert log.segment_bases() == bases
    assert os.path.getsize(log_path(log_dir, offset)) == 0
    assert_holds(log, log_dir, offset)
    log.append(batch_for(offset))
    log.close()
    assert_holds(open_log(log_dir, segment_bytes=THREE_PER_SEGMENT), log_dir, offset + 1)


def test_truncate_to_the_log_end_changes_nothing(log_dir):
    log = eight_in_three_segments(log_dir)
    before = log_files(log_dir)
    assert log.truncate_to(8) == 0
    assert log_files(log_dir) == before and recovery_point_on_disk(log_dir) == 8


def test_truncate_rebuilds_the_index_of_a_sealed_segment(log_dir):
    # one index entry per batch, so a stale entry past the cut would be found
    log = open_log(log_dir, segment_bytes=6 * BATCH_BYTES, index_interval_bytes=0)
    append_values(log, 10)  # segments [0, 6]
    log.flush()
    log.truncate_to(2)
    assert log.segment_bases() == [0]
    assert_holds(log, log_dir, 2)
    for _ in range(3):
        log.append(batch_for(log.log_end_offset))
    log.close()
    # a clean open checks the active index entries against the file (load_as_active)
    reopened = open_log(log_dir, segment_bytes=6 * BATCH_BYTES, index_interval_bytes=0)
    assert_holds(reopened, log_dir, 5)
    assert reopened.verify() == []


@pytest.mark.parametrize("offset", [1, 2])
def test_truncate_inside_a_batch_is_refused(log_dir, offset):
    log = open_log(log_dir)
    log.append(batch_for(0, 3))
    log.append(batch_for(3))
    log.flush()
    log.maybe_checkpoint(10**12)
    before = log_files(log_dir)
    with pytest.raises(ValueError, match=f"offset {offset} is inside the batch of offsets 0..2"):
        log.truncate_to(offset)
    assert log_files(log_dir) == before and log.log_end_offset == 4
    assert recovery_point_on_disk(log_dir) == 4


@pytest.mark.parametrize("offset", [-1, 9])
def test_truncate_outside_the_log_is_refused(log_dir, offset):
    log = eight_in_three_segments(log_dir)
    with pytest.raises(ValueError, match=rf"outside \[0, 8\]"):
        log.truncate_to(offset)
    assert log.log_end_offset == 8


def test_truncate_below_the_log_start_is_refused(log_dir):
    log = eight_in_three_segments(log_dir, retention_bytes=0)
    log.enforce_retention()
    assert log.log_start_offset == 6
    with pytest.raises(ValueError, match=r"outside \[6, 8\]"):
        log.truncate_to(5)


def test_truncate_is_refused_while_a_flush_ticket_is_out(log_dir):
    log = open_log(log_dir, on_flush_due=lambda: None)
    append_values(log, 3)
    ticket = log.begin_flush()
    with pytest.raises(FlushInProgress, match="flush ticket up to offset 3"):
        log.truncate_to(1)
    with pytest.raises(FlushInProgress):
        log.reset_to(10)
    ticket.sync()
    log.end_flush(ticket)
    log.truncate_to(1)
    assert log.log_end_offset == 1


def test_truncate_of_unflushed_data_keeps_the_durable_offset(log_dir):
    log = open_log(log_dir)
    append_values(log, 2)
    log.flush()
    append_values(log, 4)  # 2..5 unflushed
    assert log.truncate_to(4) == 2 * BATCH_BYTES
    assert (log.durable_offset, log.high_watermark, log.log_end_offset) == (2, 2, 4)
    log.flush()
    assert log.high_watermark == 4


def test_truncate_fails_the_waiters_of_cut_offsets(log_dir):
    log = open_log(log_dir)
    append_values(log, 6)
    fired = []
    for offset in (1, 4, 5):
        waiter(log, offset, fired)
    log.truncate_to(3)
    assert [o for o, _e in fired] == [4, 5]
    assert all(isinstance(e, LogTruncatedError) for _o, e in fired)
    log.flush()
    assert fired[2] == (1, None)


def test_truncate_lowers_the_high_watermark_under_a_bound(log_dir):
    log = open_log(log_dir, replication_bound=0)
    append_values(log, 6)
    log.flush()
    log.set_replication_bound(5)
    log.truncate_to(3)
    assert (log.high_watermark, log.durable_offset) == (3, 3)
    log.append(batch_for(3))
    log.flush()
    assert log.high_watermark == 4  # the bound (5) still allows what is flushed


def test_a_stale_recovery_point_written_after_a_truncation_is_rewritten(log_dir):
    log = eight_in_three_segments(log_dir)
    log.append(batch_for(8))
    log.flush()
    point = log.checkpoint_due()  # an owner computes 9 ...
    log.truncate_to(4)
    checkpoint.write_recovery_point(log_dir, point)  # ... and writes it after the cut
    log.checkpointed(point)
    assert recovery_point_on_disk(log_dir) == 4 == log.recovery_point
    abandon(log)
    assert_holds(open_log(log_dir, segment_bytes=THREE_PER_SEGMENT), log_dir, 4)


# --- reset_to -----------------------------------------------------------------------------

def test_reset_starts_empty_at_the_offset(log_dir):
    log = eight_in_three_segments(log_dir)
    fired = []
    waiter(log, 9, fired)
    assert log.reset_to(100) == 8 * BATCH_BYTES
    assert log.segment_bases() == [100]
    assert sorted(n for n in os.listdir(log_dir) if n.endswith(".log")) == \
        [files.segment_name(100) + ".log"]
    assert (log.log_start_offset, log.high_watermark, log.durable_offset,
            log.log_end_offset) == (100, 100, 100, 100)
    assert log.epochs.entries() == [] and recovery_point_on_disk(log_dir) == 100
    assert len(fired) == 1 and isinstance(fired[0][1], LogTruncatedError)
    assert log.read(100, 1 << 20) is None
    with pytest.raises(OffsetOutOfRange):
        log.read(99, 1 << 20)
    log.append_replica(bytes(stamped(100, 2, epoch=7)))
    assert log.epochs.entries() == [(7, 100)]
    log.close()
    reopened = open_log(log_dir, segment_bytes=THREE_PER_SEGMENT)
    assert (reopened.log_start_offset, reopened.log_end_offset) == (100, 102)
    assert reopened.epochs.entries() == [(7, 100)]
    assert [r.value for d in scan_directory(log_dir) for r in parse_records(d.batch)] == \
        [value_for(100), value_for(101)]


def test_reset_then_crash_reopens_at_the_offset(log_dir):
    log = eight_in_three_segments(log_dir)
    log.reset_to(50)
    log.append_replica(bytes(stamped(50)))
    abandon(log)
    reopened = open_log(log_dir, segment_bytes=THREE_PER_SEGMENT)
    assert (reopened.log_start_offset, reopened.log_end_offset) == (50, 51)


def test_reset_to_the_current_log_start_reuses_the_name(log_dir):
    log = eight_in_three_segments(log_dir)
    log.reset_to(0)
    assert log.segment_bases() == [0] and os.path.getsize(log_path(log_dir, 0)) == 0
    log.close()
    assert open_log(log_dir).log_end_offset == 0


def test_a_crash_between_deletion_and_creation_opens_empty(log_dir, monkeypatch):
    log = eight_in_three_segments(log_dir)

    def crash(*_args, **_kw):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(LogSegment, "create", crash)
    with pytest.raises(OSError):
        log.reset_to(100)
    assert recovery_point_on_disk(log_dir) == 0 and log.sync_failed
    abandon(log)
    monkeypatch.undo()
    # an empty directory: it opens at 0 (the lowered recovery point allows it), and the
    # follower's fetch from 0 is out of range again, so it resets again
    reopened = open_log(log_dir)
    assert (reopened.log_start_offset, reopened.log_end_offset) == (0, 0)
    reopened.reset_to(100)
    assert reopened.segment_bases() == [100]


def test_reset_below_zero_is_refused(log_dir):
    with pytest.raises(ValueError, match="cannot reset to offset -1"):
        open_log(log_dir).reset_to(-1)


def test_the_epoch_cache_file_follows_truncation(log_dir):
    log = eight_in_three_segments(log_dir)
    log.truncate_to(3)
    assert read_file(os.path.join(log_dir, files.LEADER_EPOCH_FILE)) == b"0\n1\n1 0\n"
    assert LeaderEpochCache(log_dir, "tp=x").entries() == [(1, 0)]
    make_unclean(log_dir)  # the cache needs no clean close
    assert open_log(log_dir).epochs.entries() == [(1, 0)]
