"""Random sequences of log operations against helpers.LogModel (plain lists).

Segments are tiny (128-700 bytes, i.e. 1-10 batches of 61 + 17 n bytes) and the index
interval 0-200 bytes, so rolls, index entries, retention and reopening happen in almost
every sequence. Every read is compared byte for byte with the model, and every step
checks the log's offsets and segment table. A "crash" drops the log without closing it
(helpers.abandon), as SIGKILL would: the page cache keeps every write, so recovery must
keep them all; sometimes the recovery point is also rewound to 0 so recovery scans
every segment.
"""
import os
import shutil
import tempfile

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from helpers import (FakeClock, LogModel, abandon, assert_log_matches_disk, make_unclean,
                     value_for)
from pybroker.errors import LogSyncFailedError, OffsetOutOfRange
from pybroker.log import LogConfig, PartitionLog
from pybroker.records import build_batch


class LogMachine(RuleBasedStateMachine):
    @initialize(segment_bytes=st.sampled_from([128, 250, 400, 700]),
                index_interval=st.sampled_from([0, 1, 100, 200]),
                flush_messages=st.integers(1, 12),
                flush_ms=st.sampled_from([0, 5, 50, 10**9]),
                segment_ms=st.sampled_from([30, 200, 10**9]),
                retention_bytes=st.sampled_from([-1, 0, 300, 1000]),
                retention_ms=st.sampled_from([-1, 100, 10**9]))
    def setup(self, segment_bytes, index_interval, flush_messages, flush_ms, segment_ms,
              retention_bytes, retention_ms):
        self.dir = tempfile.mkdtemp(prefix="log-property-")
        self.config = LogConfig(segment_bytes=segment_bytes, index_interval_bytes=index_interval,
                                flush_messages=flush_messages, flush_ms=flush_ms,
                                segment_ms=segment_ms, retention_bytes=retention_bytes,
                                retention_ms=retention_ms, index_max_bytes=4096,
                                recovery_checkpoint_ms=20)
        self.clock = FakeClock(1_000_000)
        self.model = LogModel(self.config)
        self.log = self._open()

    def _open(self):
        return PartitionLog(self.dir, self.config, name="prop-0", clock=self.clock)

    def teardown(self):
        self._drop_ticket()
        if getattr(self, "log", None) is not None:
            event(f"segments at the end: {min(len(self.model.segments), 5)}+")
            if not self.log.closed:
                self.log.flush()
                assert self.log.verify() == []
                assert_log_matches_disk(self.log, self.dir)
                self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- operations ---------------------------------------------------------------------

    @rule(appends=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 40), st.integers(1, 2)),
                           min_size=1, max_size=8))
    def append_several(self, appends):
        for records, extra, batches in appends:
            self.append(records, extra, batches)

    @rule(records=st.integers(1, 4), extra=st.integers(0, 40), batches=st.integers(1, 2))
    def append(self, records, extra, batches):
        buf, first = bytearray(), self.model.end
        offset = first
        for _ in range(batches):
            values = [value_for(offset + i) + b"." * extra for i in range(records)]
            buf += build_batch(values, timestamps=[self.clock.ms] * records)
            offset += records
        result = self.log.append(buf)
        assert (result.base_offset, result.last_offset, result.records) == \
            (first, offset - 1, records * batches)
        size = len(buf) // batches  # the batches of one append are alike
        stamped = [(bytes(buf[i * size:(i + 1) * size]), records, self.clock.ms)
                   for i in range(batches)]
        self.model.append(stamped, self.clock.ms)

    @rule(ms=st.sampled_from([1, 4, 5, 20, 60, 250]))
    def advance_time_and_maybe_flush(self, ms):
        self.clock.ms += ms
        assert self.log.maybe_flush() == self.model.maybe_flush(self.clock.ms)

    @rule()
    def flush(self):
        self.model.flush()
        assert self.log.flush() == self.model.hw

    @rule()
    def begin_flush(self):
        ticket, expected = self.log.begin_flush(), self.model.begin_flush()
        assert (ticket is None) == (expected is None)
        if ticket is not None:
            assert ticket.offset == expected
            self.ticket = ticket

    @rule(failed=st.booleans())
    def end_flush(self, failed):
        ticket, self.ticket = getattr(self, "ticket", None), None
        if ticket is None:
            return
        event(f"end_flush: {'failed' if failed else 'synced'}")
        if not failed:
            ticket.sync()
            assert self.log.end_flush(ticket) == self.model.end_flush()
            return
        # as if the fdatasync had failed: nothing more becomes visible, appends are refused,
        # and only a reopen (recovery; the page cache kept the writes) brings the log back
        ticket.release()
        assert self.log.end_flush(ticket, OSError(5, "Input/output error")) is False
        assert self.log.high_watermark == self.model.hw
        with pytest.raises(LogSyncFailedError):
            self.log.append(build_batch([b"refused"]))
        self.log.close()
        self.model.reopen()
        self.log = self._open()

    def _drop_ticket(self):
        ticket, self.ticket = getattr(self, "ticket", None), None
        if ticket is not None:
            ticket.release()

    @rule()
    def roll(self):
        self.log.roll()
        self.model.roll()

    @rule()
    def enforce_retention(self):
        deleted = self.log.enforce_retention()
        event(f"retention deleted {min(deleted, 2)}+ segments")
        assert deleted == self.model.enforce_retention(self.clock.ms)

    @rule(data=st.data())
    def read_several(self, data):
        for _ in range(data.draw(st.integers(1, 6))):
            self.read(data)

    @rule(data=st.data())
    def read(self, data):
        # mostly inside the log, sometimes just outside it
        offset = data.draw(st.integers(self.model.log_start, self.model.end) |
                           st.integers(self.model.log_start - 2, self.model.end + 2))
        max_bytes = data.draw(st.sampled_from([0, 1, 77, 78, 200, 1000, 100_000]))
        try:
            expected = self.model.read(offset, max_bytes)
        except OffsetOutOfRange:
            event("read: out of range")
            try:
                self.log.read(offset, max_bytes)
            except OffsetOutOfRange:
                return
            raise AssertionError(f"read({offset}) outside the log did not raise")
        got = self.log.read(offset, max_bytes)
        event("read: nothing yet" if expected is None else "read: batches")
        if expected is None:
            assert got is None
        else:
            assert got is not None, f"read({offset}, {max_bytes}) returned None"
            assert (got.base_offset, got.read_bytes()) == expected

    @rule(data=st.data())
    def offset_for_time(self, data):
        ts = data.draw(st.integers(self.clock.ms - 300, self.clock.ms + 1))
        assert self.log.offset_for_time(ts) == self.model.offset_for_time(ts)

    @rule()
    def close_and_reopen(self):
        ticket, self.ticket = getattr(self, "ticket", None), None
        self.log.close()
        if ticket is not None:  # close flushed everything: the ticket's end changes nothing
            ticket.sync()
            assert self.log.end_flush(ticket) is False
        self.model.reopen()
        self.log = self._open()

    @rule(rewind=st.booleans())
    def crash_and_reopen(self, rewind):
        self._drop_ticket()
        abandon(self.log)
        if rewind:
            make_unclean(self.dir, recovery_point=0)
        self.model.reopen()
        self.log = self._open()
        assert self.log.verify() == []

    @rule()
    def check_everything_against_a_full_scan(self):
        self.log.flush()
        self.model.flush()
        assert_log_matches_disk(self.log, self.dir)

    @invariant()
    def offsets_and_segments_agree(self):
        if getattr(self, "log", None) is None:
            return
        assert (self.log.log_start_offset, self.log.high_watermark, self.log.log_end_offset) \
            == (self.model.log_start, self.model.hw, self.model.end)
        assert self.log.segment_bases() == self.model.bases()


LogMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40,
                                        deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
test_log_against_model = LogMachine.TestCase
