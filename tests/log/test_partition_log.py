"""PartitionLog, one operation at a time, on real files.

Layouts: value_for() records are 10 bytes, so a 1-record batch is 61 + 17 = 78 bytes
(helpers.py shows the arithmetic); most tests size segments in multiples of 78.
"""
import logging
import os
import struct

import pytest

from helpers import (BATCH_BYTES, CRC_COVERED_FROM, FakeClock, append_values,
                     assert_log_matches_disk, assert_values, batch_for, batch_of_size,
                     flip_bit, index_path, log_path, make_unclean, parse_slice, read_file,
                     scan_directory, time_index_path, value_for)
from pybroker import core
from pybroker.errors import (CorruptRecordError, LogClosedError, LogSyncFailedError,
                             MessageTooLarge, OffsetOutOfRange, PyBrokerError)
from pybroker.log import LogConfig, PartitionLog, checkpoint, files
from pybroker.records import parse_records

NO_AUTO_FLUSH = dict(flush_messages=10**9, flush_ms=10**9)


@pytest.fixture
def log_dir(tmp_path):
    return str(tmp_path / "orders-0")


def open_log(directory, clock=None, **config):
    cfg = LogConfig(**{**NO_AUTO_FLUSH, **config})
    return PartitionLog(directory, cfg, name="orders-0", clock=clock or FakeClock())


# --- empty log and offsets ----------------------------------------------------------------

def test_empty_log(log_dir):
    log = open_log(log_dir)
    assert (log.log_start_offset, log.high_watermark, log.log_end_offset) == (0, 0, 0)
    assert log.segment_bases() == [0]
    assert os.path.getsize(log_path(log_dir, 0)) == 0
    assert log.read(0, 1000) is None  # at the log end: nothing yet, not an error
    for outside in (-1, 1):
        with pytest.raises(OffsetOutOfRange):
            log.read(outside, 1000)
    assert log.offset_for_time(0) is None
    assert log.flush() == 0 and log.flush_count == 0  # no sync when nothing happened
    assert log.roll() is None and log.segment_bases() == [0]  # an empty segment never rolls
    assert log.enforce_retention() == 0
    assert log.verify() == []
    log.close()
    log = open_log(log_dir)
    assert (log.log_start_offset, log.high_watermark, log.log_end_offset) == (0, 0, 0)
    assert log.segment_bases() == [0]
    log.close()


def test_append_assigns_offsets_and_reads_return_them(log_dir):
    log = open_log(log_dir)
    results = [log.append(batch_for(log.log_end_offset, n, timestamp=100 * n))
               for n in (1, 2, 3)]
    assert [tuple(r) for r in results] == [(0, 0, 1, 100), (1, 2, 2, 200), (3, 5, 3, 300)]
    assert log.log_end_offset == 6
    assert log.high_watermark == 0 and log.read(0, 10_000) is None  # not flushed: invisible
    assert log.flush() == 6
    whole = log.read(0, 10_000)
    # 78 + 95 + 112 bytes: 61 + 17 n per batch
    assert (whole.position, whole.length, whole.base_offset) == (0, 78 + 95 + 112, 0)
    batches = parse_slice(whole)
    assert [(b.base_offset, b.last_offset) for b in batches] == [(0, 0), (1, 2), (3, 5)]
    records = [r for b in batches for r in parse_records(b)]
    assert [(r.offset, r.value) for r in records] == [(o, value_for(o)) for o in range(6)]
    # an offset inside a batch finds the batch holding it
    inner = log.read(4, 1)
    assert (inner.position, inner.length, inner.base_offset) == (78 + 95, 112, 3)
    log.close()


def test_one_buffer_of_several_batches_is_one_append(log_dir):
    log = open_log(log_dir)
    buf = batch_for(0, 2) + batch_for(2, 1) + batch_for(3, 4)
    assert tuple(log.append(buf)) == (0, 6, 7, 0)
    assert struct.unpack_from(">q", buf, 95)[0] == 2  # offsets stamped into the buffer
    log.flush()
    assert [b.base_offset for b in parse_slice(log.read(0, 10_000))] == [0, 2, 3]
    log.close()


def test_reads_stop_at_the_high_watermark(log_dir):
    log = open_log(log_dir)
    append_values(log, 2)
    log.flush()
    append_values(log, 3)  # offsets 2..4 written, not flushed
    assert (log.high_watermark, log.log_end_offset) == (2, 5)
    got = log.read(0, 10_000)
    assert got.length == 2 * BATCH_BYTES
    assert log.read(2, 10_000) is None  # written but not yet durable
    assert log.read(5, 10_000) is None  # the log end
    with pytest.raises(OffsetOutOfRange, match="offset 6 is outside"):
        log.read(6, 10_000)
    log.close()


def test_a_batch_larger_than_max_bytes_is_returned_whole(log_dir):
    log = open_log(log_dir)
    log.append(batch_of_size(500))
    log.append(batch_for(1))
    log.flush()
    for max_bytes in (0, 1, 60, 499):
        got = log.read(0, max_bytes)
        assert (got.position, got.length) == (0, 500)
        assert len(parse_slice(got)) == 1
    log.close()


def test_max_bytes_may_end_a_read_inside_a_batch(log_dir):
    log = open_log(log_dir)
    append_values(log, 3)
    log.flush()
    got = log.read(0, 100)  # one 78-byte batch and 22 bytes of the next
    assert got.length == 100
    assert [b.base_offset for b in parse_slice(got)] == [0]  # the partial batch is ignored
    log.close()


def test_read_stays_within_one_segment(log_dir):
    log = open_log(log_dir, segment_bytes=3 * BATCH_BYTES)
    append_values(log, 5)  # segments [0,1,2] [3,4]
    log.flush()
    got = log.read(1, 10_000)
    assert (got.file.path, got.position, got.length) == (log_path(log_dir, 0), 78, 2 * 78)
    nxt = log.read(3, 10_000)
    assert (nxt.file.path, nxt.position, nxt.length) == (log_path(log_dir, 3), 0, 2 * 78)
    log.close()


def test_append_time_is_stamped_and_covered_by_the_crc(log_dir):
    log = open_log(log_dir)
    log.append(batch_for(0, 2, timestamp=5), append_time=77_000)
    log.flush()
    [batch] = parse_slice(log.read(0, 1000))  # parse_batches checks the CRC
    assert batch.attributes & core.ATTR_LOG_APPEND_TIME
    assert batch.max_timestamp == 77_000
    assert log.offset_for_time(77_000) == 0
    log.close()


# --- rejected appends ------------------------------------------------------------------------

def zero_record_batch() -> bytearray:
    """A 61-byte batch with recordCount 0 and lastOffsetDelta -1, CRC correct."""
    out = bytearray(61)
    struct.pack_into(">qiibIhiqqqhii", out, 0, 0, 49, -1, 2, 0, 0, -1, 0, 0, -1, -1, -1, 0)
    struct.pack_into(">I", out, 17, core.crc32c(bytes(out[21:])))
    return out


def assert_nothing_written(log, log_dir, end):
    assert log.log_end_offset == end
    assert os.path.getsize(log_path(log_dir, log.segment_bases()[-1])) == \
        sum(d.batch.size for d in scan_directory(log_dir) if d.segment == log.segment_bases()[-1])
    log.flush()
    assert_log_matches_disk(log, log_dir)


@pytest.mark.parametrize("bad", [
    pytest.param(lambda: zero_record_batch(), id="zero-records"),
    pytest.param(lambda: batch_for(0)[:-1], id="one-byte-short"),
    pytest.param(lambda: batch_for(0) + batch_for(1)[:-1], id="second-batch-one-byte-short"),
    pytest.param(lambda: batch_for(0)[:11], id="shorter-than-length-field"),
    pytest.param(lambda: batch_for(0, 3)[:-17], id="record-missing"),
])
def test_bad_buffers_are_rejected_and_nothing_is_written(log_dir, bad):
    log = open_log(log_dir)
    append_values(log, 2)
    size = os.path.getsize(log_path(log_dir, 0))
    with pytest.raises(CorruptRecordError):
        log.append(bad())
    assert os.path.getsize(log_path(log_dir, 0)) == size == 2 * BATCH_BYTES
    assert_nothing_written(log, log_dir, 2)
    assert log.append(batch_for(2)).base_offset == 2  # the log goes on at the same offset
    log.close()


def test_bad_crc_is_rejected(log_dir):
    log = open_log(log_dir)
    buf = batch_for(0)
    buf[70] ^= 1  # a value byte
    with pytest.raises(CorruptRecordError, match="CRC"):
        log.append(buf)
    assert_nothing_written(log, log_dir, 0)
    log.close()


def test_empty_buffer_is_rejected(log_dir):
    log = open_log(log_dir)
    with pytest.raises(ValueError, match="nothing to append"):
        log.append(bytearray())
    assert_nothing_written(log, log_dir, 0)
    log.close()


def test_message_too_large(log_dir):
    log = open_log(log_dir, max_batch_bytes=200)
    assert log.append(batch_of_size(200)).base_offset == 0  # exactly the limit is allowed
    with pytest.raises(MessageTooLarge, match="200 bytes allowed") as info:
        log.append(batch_of_size(201))
    assert isinstance(info.value, ValueError) and isinstance(info.value, PyBrokerError)
    # a big batch behind a small one: the whole buffer is refused
    with pytest.raises(MessageTooLarge):
        log.append(batch_for(1) + batch_of_size(201))
    assert os.path.getsize(log_path(log_dir, 0)) == 200
    assert_nothing_written(log, log_dir, 1)
    log.close()


# --- rolling -------------------------------------------------------------------------------

def test_roll_by_segment_bytes(log_dir):
    # 234-byte segments hold three 78-byte batches: 7 appends -> 3 + 3 + 1
    log = open_log(log_dir, segment_bytes=3 * BATCH_BYTES)
    append_values(log, 7)
    assert log.segment_bases() == [0, 3, 6]
    assert [os.path.getsize(log_path(log_dir, b)) for b in (0, 3, 6)] == [234, 234, 78]
    # a roll flushes: only the active segment ever holds unflushed data
    assert log.high_watermark == 6
    # a batch larger than a whole segment still goes in, alone, into a fresh segment
    log.append(batch_of_size(300))
    log.append(batch_for(8))
    assert log.segment_bases() == [0, 3, 6, 7, 8]
    log.flush()
    assert_log_matches_disk(log, log_dir)
    log.close()


def test_roll_by_segment_ms_with_an_injected_clock(log_dir):
    clock = FakeClock(50_000)
    log = open_log(log_dir, clock=clock, segment_ms=1000)
    log.append(batch_for(0))          # the segment's first append at 50_000
    clock.ms = 50_999
    log.append(batch_for(1))
    assert log.segment_bases() == [0]
    clock.ms = 51_000                 # 1000 ms after the first append: roll first
    log.append(batch_for(2))
    assert log.segment_bases() == [0, 2]
    clock.ms = 51_999
    log.append(batch_for(3))
    clock.ms = 52_000                 # the new segment's age counts from 51_000
    log.append(batch_for(4))
    assert log.segment_bases() == [0, 2, 4]
    clock.ms = 60_000                 # time alone never rolls: only an append does
    assert log.segment_bases() == [0, 2, 4]
    log.close()


@pytest.mark.parametrize("timestamps,per_segment", [
    # index_max_bytes 64: 8 offset entries (8 bytes each); 64 // 12 = 5 time entries, the
    # last kept spare for the seal. Interval 0 indexes every batch, so with one timestamp
    # the offset index fills after 8 batches; with growing timestamps every batch also adds
    # a time entry, which fills after 4.
    pytest.param("constant", 8, id="offset-index-full"),
    pytest.param("growing", 4, id="time-index-full"),
])
def test_roll_when_the_index_is_full(log_dir, timestamps, per_segment):
    log = open_log(log_dir, index_interval_bytes=0, index_max_bytes=64)
    for i in range(20):
        log.append(batch_for(i, timestamp=1000 if timestamps == "constant" else 1000 + i))
    assert log.segment_bases() == list(range(0, 20, per_segment))
    log.flush()
    assert_log_matches_disk(log, log_dir)
    for seg in log.segment_bases()[:-1]:
        entries = os.path.getsize(index_path(log_dir, seg)) // 8  # trimmed on roll
        assert entries == per_segment
    log.close()
    log = open_log(log_dir, index_interval_bytes=0, index_max_bytes=64)
    assert log.log_end_offset == 20
    append_values(log, 5, timestamp=5000)
    log.flush()
    assert_values(assert_log_matches_disk(log, log_dir))
    log.close()


def test_explicit_roll(log_dir):
    log = open_log(log_dir)
    append_values(log, 2)
    log.roll()
    assert log.segment_bases() == [0, 2]
    assert log.high_watermark == 2  # the roll flushed
    assert checkpoint.read_recovery_point(log_dir) == 2  # and checkpointed
    log.roll()  # the new segment is empty: nothing to roll
    assert log.segment_bases() == [0, 2]
    append_values(log, 1)
    log.flush()
    assert_log_matches_disk(log, log_dir)
    log.close()


# --- flush policy ----------------------------------------------------------------------------

def test_flush_by_message_count(log_dir):
    log = open_log(log_dir, flush_messages=5)
    append_values(log, 2, records=2)  # 4 messages: below the bound
    assert (log.high_watermark, log.flush_count) == (0, 0)
    append_values(log, 1, records=2)  # 6 >= 5: one group commit for all three batches
    assert (log.high_watermark, log.flush_count) == (6, 1)
    append_values(log, 4)             # the count restarted at the flush
    assert (log.high_watermark, log.flush_count) == (6, 1)
    append_values(log, 1)
    assert (log.high_watermark, log.flush_count) == (11, 2)
    log.close()


def test_flush_by_time_via_maybe_flush(log_dir):
    clock = FakeClock(10_000)
    log = open_log(log_dir, clock=clock, flush_messages=10**9, flush_ms=10)
    assert log.flush_deadline_ms() is None
    assert log.maybe_flush(20_000) is False
    log.append(batch_for(0))          # first unflushed append at 10_000: deadline 10_010
    clock.ms = 10_005
    log.append(batch_for(1))          # does not move the deadline
    assert log.flush_deadline_ms() == 10_010
    assert log.maybe_flush(10_009) is False and log.high_watermark == 0
    assert log.maybe_flush(10_010) is True and log.high_watermark == 2
    assert log.flush_deadline_ms() is None and log.flush_count == 1
    assert log.maybe_flush(99_999) is False and log.flush_count == 1
    clock.ms = 11_000
    log.append(batch_for(2))
    assert log.flush_deadline_ms() == 11_010
    clock.ms = 11_010
    assert log.maybe_flush() is True  # without an argument it reads the injected clock
    assert log.high_watermark == 3
    log.close()


def test_flush_ms_zero_flushes_every_append(log_dir):
    log = open_log(log_dir, flush_messages=10**9, flush_ms=0)
    for i in range(3):
        log.append(batch_for(i))
        assert log.high_watermark == i + 1
    assert log.flush_count == 3
    log.close()


def test_a_flush_begun_off_thread_covers_the_log_end_of_its_start(log_dir):
    clock = FakeClock(10_000)
    log = open_log(log_dir, clock=clock, flush_messages=10**9, flush_ms=10)
    assert log.begin_flush() is None               # nothing unflushed
    append_values(log, 2)
    woken = []
    log.when_durable(1, lambda error: woken.append(error or log.high_watermark))
    ticket = log.begin_flush()
    assert ticket.offset == 2 and log.flushing and log.begin_flush() is None
    assert log.flush_deadline_ms() is None         # the ticket took the pending appends
    append_values(log, 1)                          # during the sync: the next flush's
    ticket.sync()
    assert log.high_watermark == 0 and woken == []  # visible only once ended
    assert log.end_flush(ticket) is True
    assert (log.high_watermark, log.flush_count, woken) == (2, 1, [2])
    got = log.read(0, 1 << 20)
    assert (got.base_offset, got.length) == (0, 2 * len(batch_for(0)))  # the two flushed
    assert log.read(2, 1 << 20) is None            # offset 2 still waits for a flush
    assert log.flush_deadline_ms() == 10_010 and not log.flushing
    log.close()


@pytest.mark.parametrize("overtaken", [False, True])
def test_a_failed_off_thread_flush_fences_the_log_until_reopened(log_dir, overtaken):
    clock = FakeClock(10_000)
    log = open_log(log_dir, clock=clock, flush_messages=10**9, flush_ms=10)
    append_values(log, 2)
    ticket = log.begin_flush()
    ticket.release()                               # as if the fdatasync had failed
    if overtaken:
        log.flush()                                # a synchronous flush got there first
    append_values(log, 1)
    assert log.end_flush(ticket, OSError(5, "Input/output error")) is False
    hw = log.high_watermark
    assert hw == (2 if overtaken else 0) and log.sync_failed
    # not retried: a later fdatasync could succeed without the pages the failed one lost
    assert log.flush_deadline_ms() is None and log.begin_flush() is None
    with pytest.raises(LogSyncFailedError):
        append_values(log, 1)
    with pytest.raises(LogSyncFailedError):
        log.flush()
    assert isinstance(LogSyncFailedError("x"), OSError)  # produce answers KAFKA_STORAGE_ERROR
    assert log.high_watermark == hw
    log.close()                                    # no clean-shutdown marker: recovery runs
    assert not os.path.exists(os.path.join(log_dir, files.CLEAN_SHUTDOWN_FILE))
    reopened = open_log(log_dir, clock=clock)
    assert (reopened.high_watermark, reopened.log_end_offset) == (3, 3)
    append_values(reopened, 1)
    reopened.close()


def test_a_flush_ticket_outlives_its_log(log_dir):
    log = open_log(log_dir)
    append_values(log, 3)
    ticket = log.begin_flush()
    log.flush()                                    # a synchronous flush overtakes it
    log.close()                                    # and the segment's fd is closed
    ticket.sync()                                  # its own fd still works
    assert log.end_flush(ticket) is False
    assert log.high_watermark == 3


def test_flush_without_new_data_does_not_sync(log_dir):
    log = open_log(log_dir)
    append_values(log, 1)
    assert log.flush() == 1 and log.flush_count == 1
    assert log.flush() == 1 and log.flush_count == 1
    log.close()


def test_maybe_flush_checkpoints_the_recovery_point(log_dir):
    clock = FakeClock(0)
    log = open_log(log_dir, clock=clock, recovery_checkpoint_ms=1000)
    append_values(log, 3)
    log.flush()
    assert checkpoint.read_recovery_point(log_dir) == 0  # written at open
    log.maybe_flush(999)
    assert checkpoint.read_recovery_point(log_dir) == 0
    log.maybe_flush(1000)
    assert checkpoint.read_recovery_point(log_dir) == 3 == log.recovery_point
    log.close()


# --- acks=all: when_durable ------------------------------------------------------------------

def test_when_durable_fires_once_each_in_order(log_dir):
    log = open_log(log_dir, flush_messages=7)
    fired = []

    def waiter(name):  # success is callback(None): record the high watermark then
        return lambda error: fired.append((name, error or log.high_watermark))

    for name in "abc":
        result = log.append(batch_for(log.log_end_offset, 2))
        assert log.when_durable(result.last_offset, waiter(name)) is False
    assert fired == []
    result = log.append(batch_for(6))           # 7 messages >= 7: flushed
    log.when_durable(result.last_offset, waiter("d"))  # registered after its flush: at once
    assert fired == [("a", 7), ("b", 7), ("c", 7), ("d", 7)]
    log.append(batch_for(7))
    assert log.when_durable(7, waiter("e")) is False
    log.flush()
    log.flush()
    log.roll()
    log.close()
    assert fired == [("a", 7), ("b", 7), ("c", 7), ("d", 7), ("e", 8)]


def test_when_durable_partial_flush_wakes_only_the_flushed(log_dir):
    log = open_log(log_dir)
    fired = []
    hw = lambda error: fired.append(error or log.high_watermark)  # noqa: E731
    log.append(batch_for(0))
    log.when_durable(0, hw)
    log.flush()
    log.append(batch_for(1))
    log.when_durable(1, hw)
    assert fired == [1]
    log.roll()  # a roll flushes too
    assert fired == [1, 2]
    # an offset not yet written waits for its own flush, not for the next one
    log.append(batch_for(2))
    log.when_durable(3, hw)
    log.flush()  # high watermark 3: offset 3 does not exist yet
    assert fired == [1, 2]
    log.append(batch_for(3))
    log.flush()
    assert fired == [1, 2, 4]
    log.close()


def test_when_durable_waiters_of_a_fenced_log_are_answered_with_the_error(log_dir):
    log = open_log(log_dir, flush_messages=10**9, flush_ms=10**9)
    fired = []
    log.append(batch_for(0))
    log.when_durable(0, fired.append)
    ticket = log.begin_flush()
    ticket.release()                              # as if the fdatasync had failed
    log.end_flush(ticket, OSError(5, "Input/output error"))
    assert len(fired) == 1 and isinstance(fired[0], LogSyncFailedError)
    assert log.when_durable(0, fired.append) is True  # known at once now
    assert isinstance(fired[1], LogSyncFailedError) and log.high_watermark == 0
    log.close()


# --- retention and rewind ----------------------------------------------------------------------

def test_retention_by_time_deletes_whole_old_segments(log_dir):
    clock = FakeClock(100_000)
    # segments of three 78-byte batches; batch timestamps 1000 * i
    log = open_log(log_dir, clock=clock, segment_bytes=3 * BATCH_BYTES, retention_ms=5000)
    for i in range(8):
        log.append(batch_for(i, timestamp=1000 * i))
    log.flush()
    assert log.segment_bases() == [0, 3, 6]
    # segment max timestamps 2000, 5000, 7000 (active). now 7001: cutoff 2001
    assert log.enforce_retention(7001) == 1
    assert (log.segment_bases(), log.log_start_offset) == ([3, 6], 3)
    assert not os.path.exists(log_path(log_dir, 0))
    assert not os.path.exists(index_path(log_dir, 0))
    assert not os.path.exists(time_index_path(log_dir, 0))
    with pytest.raises(OffsetOutOfRange):
        log.read(2, 1000)
    assert log.read(3, 1).base_offset == 3
    assert log.offset_for_time(0) == 3  # the first retained batch
    assert log.enforce_retention(10_000) == 0  # cutoff 5000: segment 3 holds 5000, kept
    # cutoff 7001: everything expired; the active segment is rolled, then deleted too
    assert log.enforce_retention(12_001) == 2
    assert (log.segment_bases(), log.log_start_offset, log.log_end_offset) == ([8], 8, 8)
    assert log.read(8, 1000) is None
    log.append(batch_for(8, timestamp=12_001))
    log.flush()
    assert_log_matches_disk(log, log_dir)
    log.close()
    log = open_log(log_dir)
    assert (log.log_start_offset, log.log_end_offset) == (8, 9)
    log.close()


def test_retention_by_bytes(log_dir):
    # 234-byte segments (3 batches); 11 batches -> 234 * 3 + 156 = 858 bytes in 4 segments.
    # retention_bytes 400: delete the oldest while what remains still holds >= 400:
    # 858 - 234 = 624 >= 400 (delete), 624 - 234 = 390 < 400 (keep): one deleted.
    log = open_log(log_dir, segment_bytes=3 * BATCH_BYTES, retention_bytes=400, retention_ms=-1)
    append_values(log, 11)
    log.flush()
    assert log.size_bytes() == 858
    assert log.enforce_retention() == 1
    assert (log.segment_bases(), log.log_start_offset, log.size_bytes()) == ([3, 6, 9], 3, 624)
    assert log.enforce_retention() == 0
    assert_log_matches_disk(log, log_dir)
    log.close()


def test_retention_never_deletes_the_active_segment(log_dir):
    log = open_log(log_dir, retention_bytes=0, retention_ms=-1)
    append_values(log, 4)
    log.flush()
    assert log.enforce_retention() == 0
    assert log.log_start_offset == 0 and log.read(0, 1).base_offset == 0
    log.roll()
    append_values(log, 1)
    assert log.enforce_retention() == 1  # retention_bytes 0: every non-active segment goes
    assert log.segment_bases() == [4]
    log.close()


def test_rewind_reads_a_retained_offset_again(log_dir):
    log = open_log(log_dir, segment_bytes=3 * BATCH_BYTES, retention_bytes=500, retention_ms=-1)
    append_values(log, 4)
    log.flush()
    first = log.read(1, 10_000).read_bytes()
    append_values(log, 20)
    log.flush()
    log.enforce_retention()
    start = log.log_start_offset
    assert start > 1
    oldest = log.read(start, 10_000).read_bytes()
    append_values(log, 2)
    log.flush()
    assert log.read(start, 10_000).read_bytes() == oldest  # read again, same bytes
    assert log.read(start, 10_000).read_bytes() == oldest
    assert first[:78] != oldest[:78]
    log.close()


def test_a_slice_in_flight_survives_retention_of_its_segment(log_dir):
    log = open_log(log_dir, segment_bytes=3 * BATCH_BYTES, retention_bytes=0, retention_ms=-1)
    append_values(log, 4)
    log.flush()
    in_flight = log.read(0, 10_000)
    expected = read_file(log_path(log_dir, 0))
    assert log.enforce_retention() == 1
    assert not os.path.exists(log_path(log_dir, 0))
    assert in_flight.read_bytes() == expected  # the fd lives as long as the slice
    log.close()


def test_offset_for_time(log_dir):
    log = open_log(log_dir, segment_bytes=3 * BATCH_BYTES, index_interval_bytes=0)
    for i, ts in enumerate([100, 300, 200, 400, 500, 500, 700]):
        log.append(batch_for(i, timestamp=ts))
    # rolls flushed offsets 0..5; batch 6 (ts 700) is not flushed, so not found yet
    assert log.offset_for_time(600) is None
    log.flush()
    expected = {0: 0, 100: 0, 101: 1, 250: 1, 300: 1, 301: 3, 450: 4, 500: 4, 501: 6,
                700: 6, 701: None}
    assert {ts: log.offset_for_time(ts) for ts in expected} == expected
    log.close()
    log = open_log(log_dir, segment_bytes=3 * BATCH_BYTES, index_interval_bytes=0)
    assert {ts: log.offset_for_time(ts) for ts in expected} == expected  # from stored indexes
    log.close()


# --- reopening ----------------------------------------------------------------------------

def test_reopen_after_clean_close_keeps_everything(log_dir):
    config = dict(segment_bytes=5 * BATCH_BYTES, index_interval_bytes=2 * BATCH_BYTES)
    log = open_log(log_dir, **config)
    append_values(log, 23)
    log.close()
    assert os.path.exists(os.path.join(log_dir, files.CLEAN_SHUTDOWN_FILE))
    assert checkpoint.read_recovery_point(log_dir) == 23
    log = open_log(log_dir, **config)
    assert not os.path.exists(os.path.join(log_dir, files.CLEAN_SHUTDOWN_FILE))
    assert (log.log_start_offset, log.high_watermark, log.log_end_offset) == (0, 23, 23)
    assert log.segment_bases() == [0, 5, 10, 15, 20]
    assert log.append(batch_for(23)).base_offset == 23
    append_values(log, 6)
    log.flush()
    assert_values(assert_log_matches_disk(log, log_dir))
    assert log.verify() == []
    log.close()


def test_clean_open_scans_only_the_last_segment(log_dir, caplog):
    """Start-up after a clean close does not grow with the data: damage in the payload of
    every sealed segment goes unnoticed at open (only verify() finds it), while the same
    files opened as after a crash with recovery point 0 are truncated at the first damage."""
    config = dict(segment_bytes=4 * BATCH_BYTES, index_interval_bytes=BATCH_BYTES)
    log = open_log(log_dir, **config)
    append_values(log, 18)  # segments 0, 4, 8, 12 full, 16 holds 2
    log.close()
    damaged = []
    for base in (0, 4, 8, 12):
        # the value bytes of the segment's third batch: 2 * 78 + 70 (CRC-covered)
        flip_bit(log_path(log_dir, base), 2 * BATCH_BYTES + 70, 0)
        damaged.append((log_path(log_dir, base), 2 * BATCH_BYTES))
    with caplog.at_level(logging.WARNING, logger="pybroker.log"):
        log = open_log(log_dir, **config)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert (log.log_end_offset, log.segment_bases()) == (18, [0, 4, 8, 12, 16])
    problems = log.verify()
    assert len(problems) == 4
    for problem, (path, position) in zip(problems, damaged):
        assert f"file={path} position={position}:" in problem and "CRC" in problem
    log.close()

    make_unclean(log_dir, recovery_point=0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pybroker.log"):
        log = open_log(log_dir, **config)
    assert (log.log_end_offset, log.segment_bases()) == (2, [0])
    assert f"file={log_path(log_dir, 0)} position=156" in caplog.text
    assert log.verify() == []
    log.close()


def test_closed_log_refuses_work(log_dir):
    log = open_log(log_dir)
    append_values(log, 1)
    log.close()
    log.close()  # twice is fine
    for op in (lambda: log.append(batch_for(1)), lambda: log.read(0, 10), log.flush, log.roll,
               log.enforce_retention, lambda: log.offset_for_time(0)):
        with pytest.raises(LogClosedError):
            op()


def test_context_manager_closes_cleanly(log_dir):
    with open_log(log_dir) as log:
        append_values(log, 2)
    assert log.closed
    assert os.path.exists(os.path.join(log_dir, files.CLEAN_SHUTDOWN_FILE))


def test_config_rejects_out_of_range_values():
    with pytest.raises(ValueError, match="segment_bytes=100"):
        LogConfig(segment_bytes=100)
    with pytest.raises(ValueError, match="flush_messages=0"):
        LogConfig(flush_messages=0)


def test_verify_finds_damage_in_the_active_segment(log_dir):
    log = open_log(log_dir)
    append_values(log, 3)
    log.flush()
    assert log.verify() == []
    flip_bit(log_path(log_dir, 0), BATCH_BYTES + CRC_COVERED_FROM, 3)  # batch 1's attributes
    [problem] = log.verify()
    assert f"file={log_path(log_dir, 0)} position=78:" in problem
    log.close()


def test_an_emptied_sealed_segment_is_refused_not_skipped(tmp_path):
    """A sealed segment below the recovery point that lost its bytes (power loss on a
    disk that acknowledged the write) must stop the open, not leave a silent gap."""
    import os

    from pybroker.errors import CorruptLogError
    from pybroker.log import LogConfig, PartitionLog
    from pybroker.records import build_batch
    directory = str(tmp_path / "t-0")
    log = PartitionLog(directory, LogConfig(segment_bytes=300))
    for i in range(12):
        log.append(build_batch([b"%03d" % i]))
    log.close()
    bases = log.segment_bases()
    assert len(bases) >= 3
    middle = os.path.join(directory, f"{bases[1]:020d}.log")
    os.truncate(middle, 0)
    with pytest.raises(CorruptLogError, match=f"{bases[1]:020d}.log is empty"):
        PartitionLog(directory, LogConfig(segment_bytes=300))
    assert os.path.getsize(middle) == 0  # nothing changed


def test_a_sealed_segment_cut_short_is_skipped_loudly(tmp_path, caplog):
    """Offsets lost from the end of a sealed segment (cut after a clean close) must not
    leave consumers stuck below the high watermark: the read moves on to the next
    segment and says so; verify() reports the damage."""
    import os

    from pybroker.log import LogConfig, PartitionLog
    from pybroker.records import build_batch, parse_batches
    directory = str(tmp_path / "t-0")
    config = LogConfig(segment_bytes=300)
    log = PartitionLog(directory, config)
    for i in range(12):
        log.append(build_batch([b"%03d" % i]))
    log.close()
    bases = log.segment_bases()
    middle = os.path.join(directory, f"{bases[1]:020d}.log")
    size = os.path.getsize(middle)
    batch_size = size // (bases[2] - bases[1])   # one 1-record batch per offset here
    os.truncate(middle, batch_size)               # keep only the segment's first batch
    reopened = PartitionLog(directory, config)
    lost = bases[1] + 1
    piece = reopened.read(lost, 1 << 20)
    assert parse_batches(piece.read_bytes())[0].base_offset == bases[2]
    assert f"without offset {lost}: data lost" in caplog.text
    assert reopened.verify()  # the damage is reported
