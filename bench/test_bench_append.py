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
Each variant writes the same number of bytes (BUDGET_BYTES at most) into a fresh
directory, deleted afterwards, so page-cache writeback weighs on all alike.
"""
import os

import pytest

from conftest import KiB, MiB, record
from pybroker import core
from pybroker.log import LogConfig, PartitionLog
from pybroker.records import build_batch

VALUE_BYTES = 200
RECORDS = [1, 50, 1000]
BUDGET_BYTES = 48 * MiB     # written per variant and batch size, at most
ROUND_BYTES = 256 * KiB     # per timed round: 256 appends of 270 B, 24 of 10.5 KB, 1 of 210 KB
MAX_ITERATIONS = 256        # appends per round
MAX_ROUNDS = 400            # keeps the 1-record variants near a second each
TARGETS_50 = ({"metric": "msgs/s", "min": 1_000_000}, {"vs": "os_write", "min": 0.5})
TUNED = LogConfig(flush_messages=1 << 62, flush_ms=1 << 62)


@pytest.fixture(params=RECORDS, ids=lambda n: f"{n}rec")
def batch(request):
    n = request.param
    return bytearray(build_batch([b"v" * VALUE_BYTES] * n,
                                 timestamps=[1_700_000_000_000 + i for i in range(n)]))


def _records(batch) -> int:
    return core.scan_batches(batch).records


def _shape(batch) -> tuple[int, int]:
    """(iterations per round, rounds) for a fixed byte budget."""
    iterations = max(1, min(MAX_ITERATIONS, ROUND_BYTES // len(batch)))
    rounds = max(20, min(MAX_ROUNDS, BUDGET_BYTES // (iterations * len(batch))))
    return iterations, rounds


def _run(benchmark, batch, fn, *args) -> None:
    iterations, rounds = _shape(batch)
    benchmark.pedantic(fn, args=args, iterations=iterations, rounds=rounds, warmup_rounds=1)


def _record(benchmark, batch, role, **kw):
    n = _records(batch)
    record(benchmark, f"append {n}x{VALUE_BYTES}B", role, nbytes=len(batch), messages=n,
           **kw)


def test_append_tuned(benchmark, batch, bench_dir):
    _record(benchmark, batch, "path", targets=TARGETS_50 if _records(batch) == 50 else ())
    with PartitionLog(os.path.join(bench_dir, "tuned-0"), TUNED) as log:
        _run(benchmark, batch, log.append, batch)
        assert log.flush_count == 0


def test_append_default(benchmark, batch, bench_dir):
    _record(benchmark, batch, "path")
    with PartitionLog(os.path.join(bench_dir, "default-0")) as log:
        def append():
            log.append(batch)
            log.maybe_flush()

        _run(benchmark, batch, append)
        benchmark.extra_info["fdatasyncs"] = log.flush_count


def test_os_write(benchmark, batch, bench_dir):
    _record(benchmark, batch, "floor")
    fd = os.open(os.path.join(bench_dir, "plain.log"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                 0o644)
    try:
        _run(benchmark, batch, os.write, fd, batch)
    finally:
        os.close(fd)


def test_core_append(benchmark, batch, bench_dir):
    _record(benchmark, batch, "reference")
    interval = LogConfig().index_interval_bytes
    entries = BUDGET_BYTES * 2 // max(interval, len(batch)) + 16  # warmup round included
    offset_index = core.Pinned(bytearray(entries * core.OFFSET_ENTRY_SIZE))
    time_index = core.Pinned(bytearray(entries * core.TIME_ENTRY_SIZE))
    cursor = core.new_index_cursor(entries, entries)
    fd = os.open(os.path.join(bench_dir, "core.log"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
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
