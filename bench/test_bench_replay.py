"""Producer-state replay at partition open (issue 8): 3,000,000 one-record idempotent
batches, no snapshot, so ProducerStates.load replays the whole log.

Target (2-core bench machine): the 3M-batch replay well under the 10 s heartbeat
timeout a worker must keep while a partition opens; the table's msgs/s reads as
batches per second (1e9 / it = ns a batch). The Python header parse it replaced cost
about 3.1 us a batch, 9-12 s for these 3M.

The log is one 207 MB segment of 69-byte batches (61 header + 8 record bytes), from 100
producers (producerId i % 100, sequences rising), built as a block of 1,000 batches
by records.build_batch repeated 3,000 times and appended in joined buffers of 100,000
(the CRC does not cover the base offset, which the append stamps), about 1 s. The file
is in the page cache.
- path:      load          ProducerStates.load: a 4 MiB PartitionLog.read + pread,
                           one C walk filling a pb_batch_info per batch (CRC checked),
                           the Python loop applying them, per piece
- floor:     pread         os.pread of the same bytes in the same 4 MiB pieces
- reference: c_walk        core.scan_batch_infos of the same pieces: the C walk alone
             python_parse  the old replay (records.parse_batches + the same apply) on
                           the first 100,000 batches; per batch, so it compares as is
"""
import os
from types import SimpleNamespace

import pytest

from pybroker import core
from pybroker.log import PartitionLog
from pybroker.records import build_batch, parse_batches
from pybroker.server.producer_state import (REPLAY_READ_BYTES, SEQ_MODULO, ProducerStates,
                                            _Producer)

BATCHES = 3_000_000
BLOCK = 1_000             # distinct batches, repeated
APPEND = 100_000          # batches per append
SAMPLE = 100_000          # batches the Python parse reference replays
PRODUCERS = 100
TARGET = ({"metric": "msgs/s", "min": 1_000_000},)  # 3M in <= 3 s: a third of 10 s
TP = ("bench", 0)
ROUNDS = 5                # timed rounds of each (the path's is ~0.7 s)


@pytest.fixture(scope="module", params=[pytest.param(BATCHES, id="3M-batches")])
def replay_log(request, make_bench_dir):
    batches = request.param
    directory = make_bench_dir("replay")
    block = bytes(bytearray().join(
        build_batch([b"v"], producer_id=i % PRODUCERS, producer_epoch=0,
                    base_sequence=i // PRODUCERS) for i in range(BLOCK)))
    log = PartitionLog(os.path.join(directory, "bench-0"))
    for _ in range(batches // APPEND):
        log.append(bytearray(block * (APPEND // BLOCK)))
    log.flush()
    assert log.high_watermark == batches and len(log.segment_bases()) == 1
    pieces = []  # (fd, position, whole-batch length) of each replay read, for baselines
    infos = core.BatchInfos(REPLAY_READ_BYTES)
    offset = 0
    while offset < log.high_watermark:
        piece = log.read(offset, REPLAY_READ_BYTES)
        scan, _, _ = core.scan_batch_infos(piece.read_bytes(), infos)  # cut in a batch
        pieces.append((piece.fd, piece.position, scan.valid_bytes))
        offset = scan.last_offset + 1
    yield SimpleNamespace(log=log, batches=batches, nbytes=log.size_bytes(), pieces=pieces)
    log.close()


def _reader(replay_log):
    """The floor: os.pread of the same bytes in the same 4 MiB pieces."""
    def read_all():
        return sum(len(os.pread(fd, length, position))
                   for fd, position, length in replay_log.pieces)
    return read_all


def test_load(benchmark, record, replay_log):
    # the floor (9 ms) runs about as long as the path's round (0.7 s) before each
    record("replay", "path", nbytes=replay_log.nbytes, messages=replay_log.batches,
           targets=TARGET, floor=_reader(replay_log), floor_max_factor=100)

    def load():
        states = ProducerStates()
        states.load(TP, replay_log.log)
        return states

    states = benchmark.pedantic(load, rounds=ROUNDS, iterations=1)
    producers = states._tables[TP].producers
    assert len(producers) == PRODUCERS
    last = replay_log.batches - 1
    assert producers[last % PRODUCERS].batches[-1][2:] == (last, last)


def test_pread(benchmark, record, replay_log):
    record("replay", "floor", nbytes=replay_log.nbytes, messages=replay_log.batches)
    assert benchmark.pedantic(_reader(replay_log), rounds=ROUNDS,
                              iterations=1) == replay_log.nbytes


def test_c_walk(benchmark, record, replay_log):
    # the walk reads 207 MB just copied, through a cache other tenants of the host
    # share; over ten same-commit runs its ratio ranged 3.3-5.2 (one run) while the
    # pread floor stayed put: flagged beyond +60% only
    record("replay", "reference", nbytes=replay_log.nbytes, messages=replay_log.batches,
           floor=_reader(replay_log), floor_max_factor=100, guard_threshold=0.6)
    infos = core.BatchInfos(REPLAY_READ_BYTES)

    def walk():
        return sum(core.scan_batch_infos(os.pread(fd, length, position), infos)[0].batches
                   for fd, position, length in replay_log.pieces)

    assert benchmark.pedantic(walk, rounds=3 * ROUNDS, iterations=1) == replay_log.batches


def test_python_parse(benchmark, record, replay_log):
    """The replay this replaced (producer_state._replay before issue 8), on a sample."""
    nbytes = SAMPLE * 69
    record("replay", "reference", nbytes=nbytes, messages=SAMPLE, floor=_reader(replay_log),
           guard=False)  # code no longer in pybroker
    fd, position, _ = replay_log.pieces[0]
    data = os.pread(fd, nbytes, position)

    def old_replay():
        table = {}
        for b in parse_batches(data):
            if b.producer_id >= 0:
                producer = table.get(b.producer_id)
                if producer is None or producer.epoch != b.producer_epoch:
                    producer = table[b.producer_id] = _Producer(b.producer_epoch)
                producer.batches.append((b.base_sequence,
                                         (b.base_sequence + b.last_offset_delta) % SEQ_MODULO,
                                         b.base_offset, b.last_offset))
        return table

    assert len(benchmark.pedantic(old_replay, rounds=ROUNDS, iterations=1)) == PRODUCERS
