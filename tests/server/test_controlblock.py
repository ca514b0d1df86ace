"""The control block on real files and real processes: its declared layout, torn-read
protection (seqlock), publication by rename, single-writer rows; the heartbeat thread;
the supervisor's hung-worker rule."""
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import pybroker
from pybroker.server import controlblock
from pybroker.server.controlblock import (
    HEADER, HISTOGRAM_ROW, PARTITION_ROW, PARTITION_SLOTS, SUPERVISOR_ROW, TOPIC_MAX_BYTES,
    WORKER_ROW, ControlBlock, PartitionRow, RowLayout, layout_size, monotonic_ms)
from pybroker.server.heartbeat import Heartbeat, stale_reason
from pybroker.server.partition_state import PartitionState
from pybroker.server.stats import Histogram
from pybroker.testing.poll import wait_for

COUNTERS = ("connections", "requests", "bytes_in", "bytes_out", "messages_in", "flushes")


def new_block(tmp_path, workers=2) -> ControlBlock:
    os.makedirs(tmp_path, exist_ok=True)
    return ControlBlock.in_dir(str(tmp_path), create=True, workers=workers)


def row(topic="t", partition=0, flushes=0, state=PartitionState.ONLINE, n=0) -> PartitionRow:
    return PartitionRow(topic, partition, 0, n, n, n, n, n, n, flushes, state=state)


# --- layout ------------------------------------------------------------------------------

def test_every_row_kind_fits_its_slot_and_the_check_runs_at_declaration():
    for layout in (HEADER, SUPERVISOR_ROW, WORKER_ROW, PARTITION_ROW, HISTOGRAM_ROW):
        assert layout.size <= layout.slot, layout.name
    # the old partition record: a 64-byte topic and 9 int64s (136 bytes) in 128
    with pytest.raises(AssertionError, match="136 bytes, more than its 128-byte slot"):
        RowLayout("old partition", 128, (("topic", "64s", ""),
                                          *((f"f{i}", "q", "") for i in range(9))),
                  seqlocked=False)
    # the topic field holds Kafka's longest name and keeps the int64s after it aligned
    assert PARTITION_ROW.offsets["partition"] - PARTITION_ROW.offsets["topic"] >= TOPIC_MAX_BYTES
    assert all(PARTITION_ROW.offsets[f] % 8 == 0 for f in PARTITION_ROW.fields)


def test_the_file_is_sized_by_the_configured_workers(tmp_path):
    block = new_block(tmp_path / "one", workers=1)
    three = new_block(tmp_path / "three", workers=3)
    assert os.path.getsize(block.path) == layout_size(1)
    assert os.path.getsize(three.path) == layout_size(3)
    assert block.partition_slots == PARTITION_SLOTS >= 4096
    assert (block.workers, three.workers) == (1, 3)
    with pytest.raises(IndexError, match="worker index 1 outside 0..0"):
        block.read_worker(1)
    with pytest.raises(ValueError, match="1..64"):
        new_block(tmp_path / "many", workers=65)


def test_a_249_byte_topic_and_a_large_flush_count_round_trip(tmp_path):
    block = new_block(tmp_path)
    topic = "t" * TOPIC_MAX_BYTES
    block.write_partitions(1, [row(topic, 7, flushes=2 ** 62 + 3, n=2 ** 40)])
    [back] = block.partitions()
    assert (back.topic, back.partition, back.flushes, back.log_end) == \
        (topic, 7, 2 ** 62 + 3, 2 ** 40)
    with pytest.raises(ValueError, match="250 bytes, above Kafka's 249"):
        block.write_partitions(1, [row("t" * 250)])


def test_flushes_of_a_slot_never_read_the_next_slots_topic(tmp_path):
    """Defect 9: with 136-byte records in 128-byte slots, slot 0's `flushes` was read
    from the first 8 bytes of slot 1's topic name."""
    block = new_block(tmp_path)
    block.write_partitions(0, [row("a-topic", 0, flushes=5), row("zzzzzzzz-next", 1, flushes=9)])
    rows = {(r.topic, r.partition): r.flushes for r in ControlBlock(block.path).partitions()}
    assert rows == {("a-topic", 0): 5, ("zzzzzzzz-next", 1): 9}
    assert int.from_bytes(b"zzzzzzzz", "little") not in rows.values()


def test_2000_partitions_of_one_worker_fit(tmp_path):
    block = new_block(tmp_path, workers=1)
    block.write_partitions(0, [row("wide", p, n=p) for p in range(2000)])
    rows = ControlBlock(block.path).partitions()
    assert [(r.partition, r.log_end) for r in rows] == [(p, p) for p in range(2000)]


def test_a_partition_keeps_its_slot_and_a_new_worker_clears_its_predecessors_rows(tmp_path):
    block = new_block(tmp_path)
    block.write_worker(0, node_id=100)
    block.write_partitions(0, [row("t", p) for p in range(3)])
    block.write_partitions(0, [row("t", 0), row("t", 2)])  # t-1's slot is freed, not shifted
    assert block.read_worker(0)["partition_slots"] == 3
    block.write_partitions(0, [row("t", 0), row("t", 2), row("u", 0)])  # takes the freed slot
    assert block.read_worker(0)["partition_slots"] == 3
    reader = ControlBlock(block.path)
    assert [(r.topic, r.partition, r.node_id) for r in reader.partitions()] == \
        [("t", 0, 100), ("t", 2, 100), ("u", 0, 100)]
    # a restarted worker maps the block afresh; its first publish replaces every row
    successor = ControlBlock(block.path)
    successor.write_partitions(0, [row("v", 0)])
    assert [(r.topic, r.partition) for r in reader.partitions()] == [("v", 0)]
    assert reader.read_worker(0)["partition_slots"] == 1


def test_worker_and_supervisor_parts_are_separate_rows(tmp_path):
    block = new_block(tmp_path)
    block.write_worker(1, pid=41, state=controlblock.SERVING, heartbeat_ms=5)
    block.write_supervisor(1, forked_pid=41, restarts=2, forked_ms=3)
    block.write_worker(1, heartbeat_ms=6)  # rewriting the worker part keeps restarts
    got = ControlBlock(block.path).read_worker(1)
    assert (got["pid"], got["heartbeat_ms"], got["forked_pid"], got["restarts"],
            got["forked_ms"], got["torn"]) == (41, 6, 41, 2, 3, False)
    with pytest.raises(KeyError, match="restarts"):
        block.write_worker(1, restarts=3)  # the supervisor's field, not the worker's
    with pytest.raises(KeyError, match="heartbeat_ms"):
        block.write_supervisor(1, heartbeat_ms=3)


def test_an_old_layout_is_refused(tmp_path):
    block = new_block(tmp_path)
    HEADER.body.pack_into(block._map, 0, controlblock.MAGIC, 2, 2, PARTITION_SLOTS,
                          controlblock.API_ROWS, 1, 1, os.path.getsize(block.path))
    with pytest.raises(ValueError, match="layout 2"):
        ControlBlock(block.path)


# --- torn reads ----------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from pybroker.server.controlblock import ControlBlock, PartitionRow
    block = ControlBlock(sys.argv[1])
    counters = sys.argv[3].split(",")
    for n in range(1, int(sys.argv[2]) + 1):
        block.write_worker(0, **{f: n for f in counters})
        block.write_partitions(0, [PartitionRow("torn", 0, 0, n, n, n, n, n, n, n)])
    block.write_worker(0, state=3)  # the reader's signal to stop
""")

READER = textwrap.dedent("""
    import json, sys
    from pybroker.server.controlblock import WORKER_FIELDS, WORKER_ROW, ControlBlock
    block = ControlBlock(sys.argv[1])
    counters = sys.argv[2].split(",")
    reads = unequal = flagged = unguarded_unequal = 0
    offset = block._worker_offset(0) + 8
    while True:
        # the same bytes copied without the seqlock: how often a plain copy tears
        raw = dict(zip(WORKER_FIELDS, WORKER_ROW.body.unpack_from(block._map, offset)))
        unguarded_unequal += len({raw[f] for f in counters}) > 1
        row = block.read_worker(0)
        parts = block.read_partitions(0)
        reads += 1
        flagged += row["torn"] or any(p.torn for p in parts)
        # each row whole; the two rows are written one after the other, so they may
        # hold different n
        unequal += not row["torn"] and len({row[f] for f in counters}) > 1
        unequal += sum(not p.torn and len({p.log_start, p.log_end, p.high_watermark,
                                           p.messages_in, p.bytes_in, p.bytes_out,
                                           p.flushes}) > 1 for p in parts)
        if row["state"] == 3:
            break
    print(json.dumps({"reads": reads, "unequal": unequal, "flagged": flagged,
                      "unguarded_unequal": unguarded_unequal}))
""")


def test_readers_in_another_process_never_see_a_torn_row(tmp_path):
    """A writer process rewrites worker row 0 and one partition row with every counter
    = n, for n = 1..WRITES; a reader process copies them meanwhile. Every copy it
    accepts (not flagged torn) must have all counters equal."""
    writes = 30_000  # ~1 s of writes on this machine; bounded either way
    block = new_block(tmp_path, workers=1)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(pybroker.__file__))}
    reader = subprocess.Popen([sys.executable, "-c", READER, block.path, ",".join(COUNTERS)],
                              stdout=subprocess.PIPE, env=env)
    writer = subprocess.run([sys.executable, "-c", WRITER, block.path, str(writes),
                             ",".join(COUNTERS)], env=env, timeout=300)
    assert writer.returncode == 0
    out, _ = reader.communicate(timeout=300)
    assert reader.returncode == 0
    result = json.loads(out)
    assert result["reads"] > 0
    assert result["unequal"] == 0, result
    assert block.read_worker(0)["requests"] == writes


def test_a_row_left_mid_write_is_returned_flagged_and_the_next_write_repairs_it(tmp_path):
    """A writer stopped between its two counter bumps (SIGSTOP, SIGKILL) leaves the row's
    counter odd: readers give up after READ_ATTEMPTS and flag the copy torn."""
    block = new_block(tmp_path)
    block.write_worker(0, requests=7)
    offset = block._worker_offset(0)
    seq = int.from_bytes(block._map[offset:offset + 8], "little")
    block._map[offset:offset + 8] = (seq + 1).to_bytes(8, "little")  # as a writer mid-row
    got = ControlBlock(block.path).read_worker(0)
    assert got["torn"] and got["requests"] == 7
    block.write_worker(0, requests=8)
    got = ControlBlock(block.path).read_worker(0)
    assert not got["torn"] and got["requests"] == 8


# --- publication ----------------------------------------------------------------------------

def test_a_new_block_never_truncates_one_still_mapped(tmp_path):
    old = new_block(tmp_path)
    (tmp_path / f"{controlblock.FILE_NAME}.999999.tmp").write_bytes(b"half-made")  # a crash
    old.write_worker(1, requests=123)
    old.write_partitions(1, [row("kept", 3, flushes=4)])
    reader = ControlBlock(old.path)  # e.g. `pybroker stats` or a worker mid-restart
    old_inode = os.stat(old.path).st_ino
    new = new_block(tmp_path, workers=1)
    assert os.stat(new.path).st_ino != old_inode
    # the old mapping still reads its own file whole (a truncation would SIGBUS here)
    assert reader.read_worker(1)["requests"] == 123
    assert [(r.topic, r.partition, r.flushes) for r in reader.partitions()] == [("kept", 3, 4)]
    fresh = ControlBlock(new.path)
    assert fresh.workers == 1 and fresh.partitions() == []
    assert os.listdir(tmp_path) == [controlblock.FILE_NAME]  # no temporary left behind


# --- heartbeat ------------------------------------------------------------------------------

def _collect(partitions):
    fsync = Histogram()
    return lambda: ({"pid": os.getpid(), "node_id": 3, "state": controlblock.SERVING},
                    list(partitions), ({}, fsync))


def test_the_heartbeat_thread_beats_while_the_event_loop_is_blocked(tmp_path):
    """The loop blocks inside a callback; the thread keeps heartbeat_ms fresh while
    loop_ms stays at the loop's last progress, which stale_reason calls a hung loop.
    Once the loop runs again, loop_ms moves and the same rule finds it healthy."""
    block = new_block(tmp_path, workers=1)
    reader = ControlBlock(block.path)
    hb = Heartbeat(block, 0, _collect([row("hb", 0, state=PartitionState.OPENING)]),
                   interval_s=0.02)
    blocked_ms = 2000   # the loop stays stuck until the thread has beaten this far past it
    timeout_ms = 1000   # between a stuck loop's age (>= 2000) and a running one's (~20)
    seen = {}

    def stuck():  # a callback that never yields, as a hung loop's would
        frozen = hb.loop_ms
        seen["stuck"] = wait_for(
            lambda: (r := reader.read_worker(0))["heartbeat_ms"] - frozen >= blocked_ms and r,
            "the heartbeat to run on while the loop is blocked", 60, poll=0.01)
        seen["frozen"] = frozen

    async def main():
        loop = asyncio.get_running_loop()
        hb.watch_loop(loop)
        hb.start()
        while not reader.read_worker(0)["loop_ms"]:
            await asyncio.sleep(0.01)
        stuck()
        frozen = seen["frozen"]
        for _ in range(6000):  # the loop runs again: its next tick is published
            if reader.read_worker(0)["loop_ms"] > frozen:
                break
            await asyncio.sleep(0.01)
        seen["running"] = reader.read_worker(0)

    asyncio.run(main())
    hb.stop(state=controlblock.STOPPED)
    stuck, running = seen["stuck"], seen["running"]
    assert stuck["loop_ms"] == seen["frozen"] and stuck["heartbeat_ms"] > stuck["loop_ms"]
    assert (stuck["opening"], stuck["partitions"], stuck["node_id"]) == (1, 1, 3)
    reason = stale_reason(stuck, os.getpid(), stuck["heartbeat_ms"], timeout_ms, 0)
    assert reason is not None and "event loop made no progress" in reason
    assert running["loop_ms"] > seen["frozen"]
    assert stale_reason(running, os.getpid(), running["heartbeat_ms"], timeout_ms, 0) is None
    assert reader.read_worker(0)["state"] == controlblock.STOPPED  # stop()'s final publish


def test_publish_now_and_a_failing_collect_do_not_stop_the_thread(tmp_path, caplog):
    block = new_block(tmp_path, workers=1)
    calls = []
    partitions = [row("p", 0)]

    def collect():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return _collect(partitions)()

    hb = Heartbeat(block, 0, collect, interval_s=3600)  # beats only when woken
    with caplog.at_level(logging.ERROR, logger="pybroker.server"):
        hb.start()
        wait_for(lambda: calls, "the first (failing) publish", 30)
        hb.publish_now()
        wait_for(lambda: hb.beats == 1, "a publish after the failure", 30)
        partitions.append(row("p", 1))
        hb.publish_now()
        wait_for(lambda: len(ControlBlock(block.path).partitions()) == 2,
                 "the new partition published at once", 30)
        hb.stop()
    assert "worker=0 heartbeat publish failed" in caplog.text
    assert ControlBlock(block.path).read_worker(0)["partitions"] == 2


def test_stale_reason_kills_on_either_age_and_spares_a_busy_worker():
    now, timeout, pid = 1_000_000, 10_000, 77

    def worker(heartbeat_age, loop_age, state=controlblock.SERVING, row_pid=pid):
        return {"pid": row_pid, "state": state, "heartbeat_ms": now - heartbeat_age,
                "loop_ms": now - loop_age}

    # busy (recovering, serving) but progressing: both fresh
    assert stale_reason(worker(250, 400), pid, now, timeout, 60_000) is None
    # the process is stopped: nothing beats, and the loop's last record is a little
    # older than the thread's; that is a stopped process, not a hung loop
    assert "heartbeat is 10001 ms old" in stale_reason(worker(10_001, 10_201), pid, now,
                                                       timeout, 60_000)
    # the loop is hung: the thread beats on, seeing the loop's record age
    assert "event loop made no progress for 10001 ms" in \
        stale_reason(worker(250, 10_251), pid, now, timeout, 60_000)
    assert stale_reason(worker(250, 10_250), pid, now, timeout, 60_000) is None
    # draining or exiting: left alone
    assert stale_reason(worker(50_000, 50_000, controlblock.STOPPING), pid, now, timeout,
                        60_000) is None
    # just forked, the row still its predecessor's: the start-up grace applies
    assert stale_reason(worker(50_000, 50_000, row_pid=5), pid, now, timeout, 29_000) is None
    assert "no heartbeat in 30001 ms" in stale_reason(worker(50_000, 50_000, row_pid=5), pid,
                                                      now, timeout, 30_001)
    # a worker that has not recorded loop progress yet is judged by its heartbeat alone
    assert stale_reason({**worker(250, 0), "loop_ms": 0}, pid, now, timeout, 60_000) is None


def test_monotonic_ms_is_the_clock_heartbeats_use():
    # CLOCK_MONOTONIC counts from boot: far below any wall-clock ms since 1970
    assert 0 < monotonic_ms() < 10 ** 12


# --- the supervisor --------------------------------------------------------------------------

def test_supervisor_kills_and_restarts_a_stopped_worker(broker_factory):
    """SIGSTOP freezes a worker: its heartbeat ages on the supervisor's monotonic clock
    past the timeout; the supervisor kills it, forks it again and counts the restart in
    its own part of the row."""
    broker = broker_factory(settings={"worker.heartbeat.timeout.ms": 1000})
    before = broker.worker_row(1)
    assert before["forked_pid"] == before["pid"]
    os.kill(before["pid"], signal.SIGSTOP)
    after = broker.wait_restarted(1, before)
    assert after["restarts"] == before["restarts"] + 1
    assert after["forked_pid"] == after["pid"] != before["pid"]
    assert broker.wait_log(lambda line: f"worker 1 (pid {before['pid']}): heartbeat is" in line
                           and "killing it" in line)
    assert broker.worker_row(0)["restarts"] == 0  # the other worker was left alone
