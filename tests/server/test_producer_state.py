"""ProducerStates on real PartitionLogs in a temp dir: the sequence rules, read from the
C scan inside PartitionLog.append's check; hostile records refused before any header
byte is read in Python; replay through the C walk compared with the live table; and
snapshots taken only when the table changed or the log rolled past them.

Sizes: build_batch of one 1-byte value is 69 bytes (61 header + 8 record bytes).
"""
from __future__ import annotations

import json
import os
import random
import struct

import pytest

from pybroker.errors import CorruptLogError, CorruptRecordError, MessageTooLarge
from pybroker.log import LogConfig, PartitionLog
from pybroker.protocol import ErrorCode
from pybroker.records import FIELD_OFFSETS, build_batch, parse_batches
from pybroker.server import producer_state
from pybroker.server.producer_state import (SNAPSHOT_FILE, ProducerStates, SequenceError,
                                            is_idempotent, write_snapshot)

TP = ("t", 0)


def batch(pid: int, seq: int, n: int = 1, epoch: int = 0) -> bytearray:
    return build_batch([b"v%d" % i for i in range(n)], producer_id=pid, producer_epoch=epoch,
                       base_sequence=seq)


def table_of(states: ProducerStates, tp=TP) -> dict:
    """A comparable copy of tp's table: {pid: (epoch, [batch ranges])}."""
    return {pid: (p.epoch, list(p.batches)) for pid, p in states._tables[tp].producers.items()}


@pytest.fixture
def plog(tmp_path):
    with PartitionLog(str(tmp_path / "t-0"), LogConfig(segment_bytes=4096)) as log:
        yield log


@pytest.fixture
def states(plog):
    s = ProducerStates()
    s.load(TP, plog)
    return s


def refused(states, plog, records) -> int:
    end = plog.log_end_offset
    with pytest.raises(SequenceError) as info:
        states.append(TP, plog, records)
    assert plog.log_end_offset == end, "a refused append wrote something"
    return info.value.error_code


# --- the rules -----------------------------------------------------------------------------

def test_sequences_duplicates_gaps_and_epochs(states, plog):
    assert states.append(TP, plog, batch(9, 0, 3)) == (0, 2, True)
    assert states.append(TP, plog, build_batch([b"plain"])) == (3, 3, True)
    assert states.append(TP, plog, batch(9, 3, 2)) == (4, 5, True)
    assert states.append(TP, plog, batch(9, 0, 3)) == (0, 2, False)  # retried: first offsets
    assert plog.log_end_offset == 6
    assert refused(states, plog, batch(9, 6, 1)) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert refused(states, plog, batch(9, 5, 1, epoch=-1)) == ErrorCode.INVALID_PRODUCER_EPOCH
    assert refused(states, plog, batch(9, 4, 1, epoch=1)) == \
        ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER  # a new epoch starts at 0
    assert refused(states, plog, batch(10, 4)) == ErrorCode.UNKNOWN_PRODUCER_ID
    assert states.append(TP, plog, batch(9, 5, 1)) == (6, 6, True)
    assert states.append(TP, plog, batch(9, 0, 1, epoch=1)) == (7, 7, True)
    assert table_of(states) == {9: (1, [(0, 0, 7, 7)])}


def test_sequence_wraps_at_int32(states, plog):
    top = 2**31 - 1
    states._tables[TP].producers[4] = producer_state._Producer(0)
    states._tables[TP].producers[4].batches.append((top - 1, top - 1, 0, 0))
    assert states.append(TP, plog, batch(4, top, 2))[2]  # covers 2**31-1 and 0
    assert table_of(states)[4][1][-1][:2] == (top, 0)
    assert states.append(TP, plog, batch(4, 1, 1))[2]


def test_more_than_one_batch_is_invalid_record_like_kafka(states, plog):
    two = batch(3, 0) + batch(3, 1)
    assert refused(states, plog, two) == ErrorCode.INVALID_RECORD
    assert refused(states, plog, batch(3, 0) + build_batch([b"plain"])) == \
        ErrorCode.INVALID_RECORD
    assert 3 not in table_of(states)


def test_negative_base_sequence_is_invalid_record(states, plog):
    assert refused(states, plog, batch(3, -1)) == ErrorCode.INVALID_RECORD


# --- hostile bytes (defects 1 and 8) ---------------------------------------------------------

def hostile_records() -> bytes:
    """61 bytes: producerId 7 and batchLength -12, which made the old Python header walk
    step by 0 bytes forever."""
    buf = bytearray(61)
    struct.pack_into(">i", buf, FIELD_OFFSETS["batch_length"], -12)
    struct.pack_into(">q", buf, FIELD_OFFSETS["producer_id"], 7)
    return bytes(buf)


def test_negative_batch_length_is_corrupt_not_a_hang(states, plog):
    records = bytearray(hostile_records())
    assert is_idempotent(records)
    with pytest.raises(CorruptRecordError):
        states.append(TP, plog, records)
    assert plog.log_end_offset == 0 and table_of(states) == {}


def test_mutated_idempotent_batches_get_refusals_only(states, plog):
    rng = random.Random(8)
    good = batch(5, 0, 2)
    appended = 0
    for i in range(300):
        buf = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        buf = buf[:rng.randrange(1, len(buf) + 1)]
        try:
            base, last, new = states.append(TP, plog, buf)
        except (CorruptRecordError, MessageTooLarge, SequenceError):
            continue  # anything else (struct.error, IndexError) fails the test
        appended += new
    # the mutations that kept the batch valid touched only baseOffset / leaderEpoch
    assert plog.log_end_offset == 2 * appended


@pytest.mark.parametrize("size", [0, 1, 42, 60, 61, 62, 200])
def test_is_idempotent_is_safe_on_any_bytes(size):
    rng = random.Random(size)
    for _ in range(50):
        data = rng.randbytes(size)
        want = size >= 61 and struct.unpack_from(">q", data, 43)[0] >= 0
        assert is_idempotent(data) == want
        assert is_idempotent(memoryview(data)) == want


# --- replay ------------------------------------------------------------------------------------

def _random_traffic(states, plog, rng: random.Random, appends: int,
                    producers: dict | None = None) -> None:
    """Appends from a few producers (with epoch bumps, retries, plain batches);
    producers carries their (epoch, next sequence) from one call to the next."""
    producers = {} if producers is None else producers
    next_seq = producers.setdefault("next_seq", {})
    epochs = producers.setdefault("epochs", {})
    for _ in range(appends):
        pid = rng.randrange(6)
        if pid == 5:
            states.append(TP, plog, build_batch([b"p"] * rng.randrange(1, 4)))
            continue
        if rng.random() < 0.05:
            epochs[pid] = epochs.get(pid, 0) + 1
            next_seq[pid] = 0
        seq = next_seq.get(pid, 0)
        n = rng.randrange(1, 4)
        states.append(TP, plog, batch(pid, seq, n, epoch=epochs.get(pid, 0)))
        next_seq[pid] = (seq + n) % 2**31
        if rng.random() < 0.1:  # a retry of that same batch
            assert not states.append(TP, plog, batch(pid, seq, n, epoch=epochs.get(pid, 0)))[2]


@pytest.mark.parametrize("seed", range(4))
def test_replay_from_nothing_rebuilds_the_live_table(tmp_path, seed):
    rng = random.Random(seed)
    with PartitionLog(str(tmp_path / "t-0"), LogConfig(segment_bytes=2048)) as plog:
        live = ProducerStates()
        live.load(TP, plog)
        _random_traffic(live, plog, rng, 400)
        plog.flush()
        assert len(plog.segment_bases()) > 3  # replay crosses segments
        replayed = ProducerStates()
        replayed.load(TP, plog)
        assert table_of(replayed) == table_of(live)


def test_replay_after_snapshot_reads_only_what_follows(tmp_path):
    rng = random.Random(11)
    directory = str(tmp_path / "t-0")
    with PartitionLog(directory, LogConfig(segment_bytes=2048)) as plog:
        live = ProducerStates()
        live.load(TP, plog)
        producers = {}
        _random_traffic(live, plog, rng, 200, producers)
        plog.flush()
        write_snapshot(directory, live.snapshot(TP, plog))
        _random_traffic(live, plog, rng, 200, producers)
        plog.flush()
        want = table_of(live)
    with PartitionLog(directory, LogConfig(segment_bytes=2048)) as plog:
        replayed = ProducerStates()
        replayed.load(TP, plog)
        assert table_of(replayed) == want


def test_replay_matches_the_python_parse_of_the_log(tmp_path, plog):
    """The C walk's fields, applied, equal the old Python header parse, applied."""
    rng = random.Random(3)
    live = ProducerStates()
    live.load(TP, plog)
    _random_traffic(live, plog, rng, 150)
    plog.flush()
    want = {}
    for seg in sorted(f for f in os.listdir(plog.directory) if f.endswith(".log")):
        with open(os.path.join(plog.directory, seg), "rb") as f:
            for b in parse_batches(f.read()):
                if b.producer_id < 0:
                    continue
                entry = want.get(b.producer_id)
                if entry is None or entry[0] != b.producer_epoch:
                    entry = want[b.producer_id] = (b.producer_epoch, [])
                entry[1].append((b.base_sequence, (b.base_sequence + b.last_offset_delta)
                                 % 2**31, b.base_offset, b.last_offset))
    want = {pid: (epoch, ranges[-5:]) for pid, (epoch, ranges) in want.items()}
    replayed = ProducerStates()
    replayed.load(TP, plog)
    assert table_of(replayed) == want


def test_damage_below_the_high_watermark_fails_the_load_and_publishes_nothing(tmp_path):
    directory = str(tmp_path / "t-0")
    with PartitionLog(directory) as plog:
        states = ProducerStates()
        states.load(TP, plog)
        states.append(TP, plog, batch(1, 0))
        states.append(TP, plog, batch(1, 1))
        plog.flush()
        log_file = os.path.join(directory, "00000000000000000000.log")
        with open(log_file, "r+b") as f:  # the last record byte of the second batch
            f.seek(2 * 69 - 1)
            byte = f.read(1)
            f.seek(2 * 69 - 1)
            f.write(bytes([byte[0] ^ 0xFF]))
        fresh = ProducerStates()
        with pytest.raises(CorruptLogError, match="producer-state replay at offset 1"):
            fresh.load(TP, plog)
        assert TP not in fresh._tables


def test_snapshot_beyond_the_log_end_is_ignored(tmp_path, plog):
    states = ProducerStates()
    states.load(TP, plog)
    states.append(TP, plog, batch(1, 0))
    plog.flush()
    write_snapshot(plog.directory, json.dumps(
        {"offset": 99, "producers": {"1": {"epoch": 0, "batches": [[0, 50, 0, 50]]}}}).encode())
    fresh = ProducerStates()
    fresh.load(TP, plog)
    assert table_of(fresh) == {1: (0, [(0, 0, 0, 0)])}


@pytest.mark.parametrize("text", [b"{", b"[]", b'{"offset": 0}', b'{"offset": "x"}',
                                  b'{"offset": 0, "producers": {"1": 5}}'])
def test_unreadable_snapshot_replays_the_whole_log(plog, text):
    states = ProducerStates()
    states.load(TP, plog)
    states.append(TP, plog, batch(1, 0))
    plog.flush()
    write_snapshot(plog.directory, text)
    fresh = ProducerStates()
    fresh.load(TP, plog)
    assert table_of(fresh) == {1: (0, [(0, 0, 0, 0)])}


# --- snapshots -----------------------------------------------------------------------------------

def test_snapshot_only_when_changed_or_rolled(tmp_path):
    directory = str(tmp_path / "t-0")
    with PartitionLog(directory, LogConfig(segment_bytes=1024)) as plog:
        states = ProducerStates()
        states.load(TP, plog)
        first = states.snapshot(TP, plog)
        assert first is not None  # none stored yet
        assert states.snapshot(TP, plog) is None
        states.append(TP, plog, batch(2, 0))
        data = states.snapshot(TP, plog)
        assert json.loads(data) == {"offset": 1,
                                    "producers": {"2": {"epoch": 0, "batches": [[0, 0, 0, 0]]}}}
        assert states.snapshot(TP, plog) is None
        states.append(TP, plog, build_batch([b"plain"]))  # same segment: still good enough
        assert states.snapshot(TP, plog) is None
        while len(plog.segment_bases()) == 1:
            states.append(TP, plog, build_batch([b"x" * 100]))
        data = states.snapshot(TP, plog)  # rolled past the stored offset
        assert data is not None and json.loads(data)["offset"] == plog.log_end_offset
        assert states.snapshot(TP, plog) is None
        states.append(TP, plog, batch(2, 0))  # a duplicate changes nothing
        assert states.snapshot(TP, plog) is None


def test_load_after_a_current_snapshot_needs_no_new_one(tmp_path):
    directory = str(tmp_path / "t-0")
    with PartitionLog(directory) as plog:
        states = ProducerStates()
        states.load(TP, plog)
        states.append(TP, plog, batch(2, 0))
        plog.flush()
        states.save(TP, plog)
        assert os.path.exists(os.path.join(directory, SNAPSHOT_FILE))
    with PartitionLog(directory) as plog:
        states = ProducerStates()
        states.load(TP, plog)
        assert table_of(states) == {2: (0, [(0, 0, 0, 0)])}
        assert states.snapshot(TP, plog) is None
        states.append(TP, plog, build_batch([b"plain"]))
        plog.flush()
    with PartitionLog(directory) as plog:
        states = ProducerStates()
        states.load(TP, plog)  # replayed one plain batch: the table did not change
        assert states.snapshot(TP, plog) is None
        states.append(TP, plog, batch(2, 1))
        plog.flush()
    with PartitionLog(directory) as plog:
        states = ProducerStates()
        states.load(TP, plog)  # replayed an idempotent batch the snapshot lacks
        assert states.snapshot(TP, plog) is not None
