"""Offset lookup in a segment whose offset index holds 1,000,000 entries.

Target (2-core bench machine): a lookup <= 2 us (2,000 ns/op) from Python, through
PartitionLog.read (the fetch path).

The segment holds 1,000,000 one-record batches of 68 bytes (68 MB) with
index_interval_bytes=0, so every batch gets an index entry: 1M entries, 8 MB of index,
a binary search of 20 steps. It is built in one append of a repeated batch (the CRC
does not cover the base offset, so identical batches are valid; the append stamps
their offsets), about 0.2 s. Each benchmark call does LOOKUPS lookups of the same
random offsets; the table reports ns per lookup. The file is in the page cache.
- path:      log_read      PartitionLog.read(offset, 1 MiB) on its active segment:
                           offset checks, bisect of segment bases, LogSegment.seek,
                           a FileSlice
             segment_seek  LogSegment.seek on a sealed segment (index trimmed, as after
                           a roll): C binary search of the mmapped index + one pread of
                           the batch header
             index_floor   core.index_floor: the C binary search alone, through cffi
- floor:     pread_header  os.pread of the 43 header bytes a seek reads, at the same
                           batch positions: the syscall every lookup makes
- reference: bisect        bisect.bisect_right on Python lists of the same 1M entries
"""
import bisect
import os
import random
import shutil
from array import array
from types import SimpleNamespace

import pytest

from pybroker import core
from pybroker.log import LogConfig, PartitionLog
from pybroker.log.segment import LogSegment
from pybroker.records import build_batch

MiB = 1 << 20
ENTRIES = 1_000_000
LOOKUPS = 1000      # per benchmark call
SEEK_HEADER = 43    # bytes of batch header pb_segment_seek reads (csrc/segment.c)
CONFIG = LogConfig(index_interval_bytes=0)  # an index entry for every batch
TARGET = ({"metric": "ns/op", "max": 2000},)


@pytest.fixture(scope="module", params=[pytest.param(ENTRIES, id="1M-entries")])
def segment(request, make_bench_dir):
    """A PartitionLog and a sealed LogSegment, each of `entries` one-record batches."""
    entries = request.param
    directory = make_bench_dir("lookup")
    one = build_batch([b""], timestamps=[1_700_000_000_000])
    batches = bytearray(bytes(one) * entries)
    log = PartitionLog(os.path.join(directory, "bench-0"), CONFIG)
    log.append(batches)
    log.flush()
    seg = LogSegment.create(directory, 0, CONFIG, "bench")
    seg.append(batches, core.scan_batches(batches, stamp_offset=0), 0)
    seg.seal()
    assert seg.cursor.entries == entries, seg.cursor.entries
    with open(seg.offset_index.path, "rb") as f:
        raw = array("I", f.read())  # relative offset u32 | position u32, host order
    rng = random.Random(1)
    targets = [rng.randrange(entries) for _ in range(LOOKUPS)]
    yield SimpleNamespace(log=log, seg=seg, entries=entries, targets=targets,
                          keys=raw[0::2].tolist(), positions=raw[1::2].tolist())
    log.close()
    seg.close()
    shutil.rmtree(directory)


def _pread_lookups(segment):
    """The floor: os.pread of the 43 header bytes at each looked-up batch's position."""
    fd = segment.seg.file.fd
    positions = [segment.positions[t] for t in segment.targets]

    def lookups():
        for position in positions:
            os.pread(fd, SEEK_HEADER, position)

    return lookups


def test_log_read(benchmark, record, segment):
    record("lookup", "path", lookups=LOOKUPS, targets=TARGET,
           index_entries=segment.entries, floor=_pread_lookups(segment))
    read, targets = segment.log.read, segment.targets

    def lookups():
        for offset in targets:
            read(offset, MiB)

    benchmark(lookups)
    assert read(targets[0], MiB).base_offset == targets[0]


def test_segment_seek(benchmark, record, segment):
    record("lookup", "path", lookups=LOOKUPS, index_entries=segment.entries,
           floor=_pread_lookups(segment))
    seek, targets, end = segment.seg.seek, segment.targets, segment.seg.size

    def lookups():
        for offset in targets:
            seek(offset, end)

    benchmark(lookups)
    assert seek(targets[0], end).base_offset == targets[0]


def test_index_floor(benchmark, record, segment):
    record("lookup", "path", lookups=LOOKUPS, index_entries=segment.entries,
           floor=_pread_lookups(segment))
    seg, targets = segment.seg, segment.targets
    pinned, entries = seg.offset_index.pinned, seg.cursor.entries

    def lookups():
        for offset in targets:
            core.index_floor(pinned, entries, core.INDEX_OFFSET, offset)

    benchmark(lookups)
    assert core.index_floor(pinned, entries, core.INDEX_OFFSET, targets[0]) == targets[0]


def test_pread_header(benchmark, record, segment):
    record("lookup", "floor", lookups=LOOKUPS)
    benchmark(_pread_lookups(segment))


def test_bisect(benchmark, record, segment):
    record("lookup", "reference", lookups=LOOKUPS, floor=_pread_lookups(segment), guard=False)
    keys, positions, targets = segment.keys, segment.positions, segment.targets
    bisect_right = bisect.bisect_right

    def lookups():
        for offset in targets:
            positions[bisect_right(keys, offset) - 1]

    benchmark(lookups)
    assert positions[bisect_right(keys, targets[0]) - 1] == segment.positions[targets[0]]
