"""Appending produce batches: PartitionLog.append beside a plain os.write of the same bytes.

Targets (2-core bench machine), batches of 50 records of 200 bytes:
  >= 1,000,000 msgs/s through PartitionLog.append, and within 2x of the plain write
  (speed ratio vs os_write >= 0.5).

Batches of 1, 50 and 1000 records with 200-byte values (270 B, 10.5 KB, 210 KB a
batch). Each variant appends the same bytearray again and again: append stamps the
offsets into it in place, which is harmless to re-append.
- path:      append_tuned   PartitionLog.append, flush policy out of the way
                            (flush_messages and flush_ms huge: no fdatasync at all);
             append_default PartitionLog.append with LogConfig() defaults, plus the
                            maybe_flush() a worker's loop makes after each event (an
                            fdatasync per 20,000 messages or per 5 ms, whichever first)
- floor:     os_write       os.write of the same bytes to a plain file
- reference: core_append    the two C calls an append makes (scan_batches: validate,
                            CRC and stamp; segment_append: pwrite and index), with
                            none of the Python bookkeeping around them
Each variant writes the same bytes into a fresh directory, deleted afterwards (the
dirty pages of an unlinked file are dropped, not written back): up to 208 MiB, so
this measures appends into the page cache, as a broker's are between flushes. The
path and reference variants also os.write as much again to a file of their own, one
round of it before each of theirs: the floor paired with them in time (see
bench/conftest.py, record(floor=...)), which scripts/bench-guard divides by; the
default-policy variant's paired floor also fdatasyncs on the default policy's
schedule, so that both wait on the shared disk.
"""
import os
import time

import pytest

from pybroker import core
from pybroker.log import LogConfig, PartitionLog
from pybroker.records import build_batch

MiB = 1 << 20
VALUE_BYTES = 200
RECORDS = [pytest.param(n, id=f"{n}x{VALUE_BYTES}B") for n in (1, 50, 1000)]
# A timed round appends ROUND_BYTES (MAX_ITERATIONS appends at most): 4096 batches of
# 270 B (~25 ms), 798 of 10.5 KB (~10 ms), 39 of 210 KB (~3 ms). Long enough that
# every default-policy round holds its fdatasyncs (one per 5 ms or per 20,000
# messages), so the median round pays for them; the 1-record variants stay near a
# second in all. ROUNDS + 1 rounds of 8 MiB: 208 MiB per variant, deleted afterwards.
ROUND_BYTES = 8 * MiB
MAX_ITERATIONS = 4096
ROUNDS = 25
TARGETS_50 = ({"metric": "msgs/s", "min": 1_000_000}, {"vs": "os_write", "min": 0.5})
TUNED = LogConfig(flush_messages=1 << 62, flush_ms=1 << 62)


@pytest.fixture(params=RECORDS)
def batch(request):
    n = request.param
    return bytearray(build_batch([b"v" * VALUE_BYTES] * n,
                                 timestamps=[1_700_000_000_000 + i for i in range(n)]))


def _records(batch) -> int:
    return core.scan_batches(batch).records


def _iterations(batch) -> int:
    return max(1, min(MAX_ITERATIONS, ROUND_BYTES // len(batch)))


def _run(benchmark, batch, fn, *args) -> None:
    benchmark.pedantic(fn, args=args, iterations=_iterations(batch), rounds=ROUNDS,
                       warmup_rounds=1)


class _Writer:
    """The floor: os.write of the batch to a plain file of its own (a context manager
    that closes it)."""

    def __init__(self, batch, bench_dir, name="plain.log"):
        self.fd = os.open(os.path.join(bench_dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                          0o644)
        self.batch = batch

    def __call__(self):
        os.write(self.fd, self.batch)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


class _SyncingWriter(_Writer):
    """The floor of the default policy: os.write, and os.fdatasync as the default
    policy flushes (LogConfig(): after flush_messages messages or flush_ms after the
    first unsynced write, whichever first). The path's fdatasyncs wait on a disk other
    processes share; this floor waits on the same disk at the same moments."""

    def __init__(self, batch, bench_dir, name="synced.log"):
        super().__init__(batch, bench_dir, name)
        config = LogConfig()
        self.records, self.limit = _records(batch), config.flush_messages
        self.interval = config.flush_ms / 1000
        self.unsynced, self.since = 0, None

    def __call__(self):
        os.write(self.fd, self.batch)
        now = time.monotonic()
        self.unsynced += self.records
        if self.since is None:
            self.since = now
        if self.unsynced >= self.limit or now - self.since >= self.interval:
            os.fdatasync(self.fd)
            self.unsynced, self.since = 0, None


def test_append_tuned(benchmark, record, batch, bench_dir):
    with _Writer(batch, bench_dir) as floor, \
            PartitionLog(os.path.join(bench_dir, "tuned-0"), TUNED) as log:
        record("append", "path", nbytes=len(batch), messages=_records(batch),
               targets=TARGETS_50 if _records(batch) == 50 else (), floor=floor)
        _run(benchmark, batch, log.append, batch)
        assert log.flush_count == 0


def test_append_default(benchmark, record, batch, bench_dir):
    with _SyncingWriter(batch, bench_dir) as floor, \
            PartitionLog(os.path.join(bench_dir, "default-0")) as log:
        record("append", "path", nbytes=len(batch), messages=_records(batch), floor=floor)

        def append():
            log.append(batch)
            log.maybe_flush()

        _run(benchmark, batch, append)
        benchmark.extra_info["fdatasyncs"] = log.flush_count


def test_os_write(benchmark, record, batch, bench_dir):
    record("append", "floor", nbytes=len(batch), messages=_records(batch))
    with _Writer(batch, bench_dir) as write:
        _run(benchmark, batch, os.write, write.fd, batch)


def test_core_append(benchmark, record, batch, bench_dir):
    interval = LogConfig().index_interval_bytes
    written = (ROUNDS + 1) * _iterations(batch) * len(batch)  # warmup round included
    entries = written // max(interval, len(batch)) + 16
    offset_index = core.Pinned(bytearray(entries * core.OFFSET_ENTRY_SIZE))
    time_index = core.Pinned(bytearray(entries * core.TIME_ENTRY_SIZE))
    cursor = core.new_index_cursor(entries, entries)
    fd = os.open(os.path.join(bench_dir, "core.log"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    floor = _Writer(batch, bench_dir)
    record("append", "reference", nbytes=len(batch), messages=_records(batch), floor=floor)
    state = {"offset": 0, "position": 0}

    def append():
        scan = core.scan_batches(batch, stamp_offset=state["offset"])
        core.segment_append(fd, batch, state["position"], 0, interval, offset_index,
                            time_index, cursor)
        state["offset"] = scan.last_offset + 1
        state["position"] += len(batch)

    try:
        _run(benchmark, batch, append)
    finally:
        os.close(fd)
        floor.__exit__()
