"""The worker's storage owner in process: partition states, owner-driven flushes on the
flusher thread, failed opens and failed syncs isolated to their partition. Real files,
a real asyncio loop and real threads; faults come from failpoints (pybroker.failpoints)
or from damage written into real segment files."""
from __future__ import annotations

import asyncio
import time
import os

import pytest

from pybroker import failpoints
from pybroker.config import BrokerConfig
from pybroker.coord.registry import ClusterState, initial_info
from pybroker.errors import CorruptLogError, LogSyncFailedError
from pybroker.log import LogConfig, PartitionLog, checkpoint, files
from pybroker.protocol import ErrorCode
from pybroker.records import build_batch
from pybroker.server.log_manager import LogManager
from pybroker.server.partition_state import PartitionState

NODE = 7


@pytest.fixture(autouse=True)
def no_failpoints():
    yield
    failpoints.configure("")


def batch(value: bytes = b"v" * 10) -> bytearray:
    return bytearray(build_batch([value]))


SEGMENT = 2 * len(batch()) + 10   # two batches fit a segment, a third rolls


def assigned(*partitions: tuple[str, int]) -> ClusterState:
    topics: dict = {}
    for topic, p in partitions:
        topics.setdefault(topic, {})[p] = NODE
    return ClusterState(topics=topics, partitions={
        tp: initial_info((NODE,)) for tp in partitions})


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def settled(manager: LogManager, tps) -> None:
    """Until none of tps is OPENING or CLOSING (bounded by run's timeout)."""
    while any(manager.partitions.get(tp) is None or manager.partitions[tp].state in
              (PartitionState.OPENING, PartitionState.CLOSING) for tp in tps):
        await asyncio.sleep(0.005)


def manager_for(data_dir, **settings) -> LogManager:
    config = BrokerConfig({"log.dirs": str(data_dir), **settings})
    return LogManager(str(data_dir), config, NODE, asyncio.get_running_loop())


def cut_inside_last_batch_after_clean_stop(directory: str) -> str:
    """A log with two batches, closed cleanly, then cut 5 bytes into its last batch;
    returns the segment file's path."""
    log = PartitionLog(directory, LogConfig(), name=os.path.basename(directory))
    log.append(batch())
    log.append(batch())
    log.close()
    path = files.segment_paths(directory, 0)[0]
    os.truncate(path, os.path.getsize(path) - 5)
    return path


# --- owner-driven flushes in PartitionLog -------------------------------------------------

def test_owner_driven_roll_defers_the_sync_to_one_ticket_for_both_segments(tmp_path):
    due = []
    log = PartitionLog(str(tmp_path / "t-0"), LogConfig(segment_bytes=SEGMENT, flush_ms=10**6,
                                                        flush_messages=10**6),
                       on_flush_due=lambda: due.append(1))
    size = len(batch())
    for _ in range(3):
        log.append(batch())
    assert log.segment_bases() == [0, 2]
    assert log.high_watermark == 0 and log.read(0, 1 << 20) is None  # the roll did not sync
    ticket = log.begin_flush()
    assert [path for _fd, path, _covers in ticket.syncs] == [
        files.segment_paths(log.directory, 0)[0], files.segment_paths(log.directory, 2)[0]]
    assert ticket.directory == log.directory        # the new segment's entry is synced too
    ticket.sync()
    assert log.end_flush(ticket) and log.high_watermark == 3
    assert log.read(0, 1 << 20).length == 2 * size  # the sealed segment, whole
    assert log.read(2, 1 << 20).length == size
    log.append(batch())
    assert log.read(3, 1 << 20) is None and log.read(2, 1 << 20).length == size
    log.close()


def test_owner_driven_retention_keeps_a_segment_that_is_not_flushed(tmp_path):
    log = PartitionLog(str(tmp_path / "t-0"), LogConfig(segment_bytes=SEGMENT, flush_ms=10**6,
                                                        flush_messages=10**6,
                                                        retention_bytes=0, retention_ms=-1),
                       on_flush_due=lambda: None)
    for _ in range(5):
        log.append(batch())
    assert len(log.segment_bases()) == 3
    assert log.enforce_retention() == 0 and log.log_start_offset == 0  # nothing flushed
    ticket = log.begin_flush()
    ticket.sync()
    log.end_flush(ticket)
    assert log.enforce_retention() == 2 and log.log_start_offset == 4
    log.close()


def test_message_bound_asks_the_owner_instead_of_syncing_in_place(tmp_path):
    due = []
    log = PartitionLog(str(tmp_path / "t-0"), LogConfig(flush_messages=2, flush_ms=10**6),
                       on_flush_due=lambda: due.append(log.log_end_offset))
    log.append(batch())
    log.append(batch())
    assert due == [2] and log.high_watermark == 0 and log.flush_count == 0
    log.close()


def test_a_sync_that_succeeds_after_a_failed_one_does_not_advance_the_fenced_log(tmp_path):
    """Defect 6: Linux reports a writeback error once, so a later fdatasync can succeed
    without the lost pages; the fenced log's high watermark must not move."""
    log = PartitionLog(str(tmp_path / "t-0"), LogConfig(flush_messages=10**6, flush_ms=10**6))
    log.append(batch())
    earlier = log.begin_flush()       # out on the flusher thread
    log.append(batch())
    failpoints.configure("fdatasync=eio")
    with pytest.raises(OSError):
        log.flush()                   # the in-place flush fails: fenced
    failpoints.configure("")
    earlier.sync()                    # then the earlier ticket's sync "succeeds"
    assert log.end_flush(earlier) is False
    assert log.high_watermark == 0 and log.sync_failed
    with pytest.raises(LogSyncFailedError):
        log.append(batch())
    log.close()


# --- LogManager: states ----------------------------------------------------------------------

def test_partitions_open_off_the_loop_and_go_online(tmp_path):
    async def main():
        manager = manager_for(tmp_path)
        tps = [("t", 0), ("t", 1)]
        assert manager.sync(assigned(*tps))
        assert {manager.partitions[tp].state for tp in tps} == {PartitionState.OPENING}
        assert manager.error_for(("t", 0)) == ErrorCode.LEADER_NOT_AVAILABLE  # retriable
        assert manager.logs == {}
        await settled(manager, tps)
        assert set(manager.logs) == set(tps) and manager.error_for(("t", 0)) is None
        assert sorted(manager.online_names()) == ["t-0", "t-1"]
        await manager.close_all()
        assert manager.partitions == {}
    run(main())
    assert checkpoint.has_clean_shutdown_marker(str(tmp_path / "t-0"))


def test_a_partition_that_fails_to_open_goes_offline_alone_and_keeps_its_marker(tmp_path, caplog):
    """Defect 3: a cut inside the last batch after a clean stop took every partition of
    the worker offline, and the clean-shutdown marker was removed by the failed open."""
    damaged = str(tmp_path / "t-1")
    path = cut_inside_last_batch_after_clean_stop(damaged)

    async def main():
        manager = manager_for(tmp_path)
        tps = [("t", 0), ("t", 1), ("u", 0)]
        manager.sync(assigned(*tps))
        await settled(manager, tps)
        bad = manager.partitions[("t", 1)]
        assert bad.state == PartitionState.OFFLINE and path in bad.reason
        assert manager.error_for(("t", 1)) == ErrorCode.KAFKA_STORAGE_ERROR
        assert set(manager.logs) == {("t", 0), ("u", 0)}   # the rest serves on
        manager.logs[("t", 0)].append(batch())
        await manager.close_all()
    run(main())
    assert checkpoint.has_clean_shutdown_marker(damaged)   # the next open fails the same way
    lines = [r.getMessage() for r in caplog.records if "opening -> offline" in r.getMessage()]
    assert len(lines) == 1 and "t-1" in lines[0] and path in lines[0]


def test_a_failed_fdatasync_takes_its_partition_offline_and_answers_its_waiters(tmp_path):
    async def main():
        manager = manager_for(tmp_path, **{"log.flush.interval.ms": 1})
        tps = [("t", 0), ("t", 1)]
        manager.sync(assigned(*tps))
        await settled(manager, tps)
        plog = manager.logs[("t", 0)]
        answered = asyncio.get_running_loop().create_future()
        failpoints.configure("fdatasync=eio")
        result = plog.append(batch())
        plog.when_durable(result.last_offset, answered.set_result)
        manager.appended(("t", 0))
        error = await answered                      # at once, not at a client's timeout
        assert isinstance(error, LogSyncFailedError)
        part = manager.partitions[("t", 0)]
        assert part.state == PartitionState.OFFLINE and "fdatasync failed" in part.reason
        assert manager.error_for(("t", 0)) == ErrorCode.KAFKA_STORAGE_ERROR
        assert ("t", 0) not in manager.logs and plog.high_watermark == 0
        failpoints.configure("")
        other = manager.logs[("t", 1)]               # the other partition flushes on
        durable = asyncio.get_running_loop().create_future()
        other.when_durable(other.append(batch()).last_offset, durable.set_result)
        manager.appended(("t", 1))
        assert await durable is None and other.high_watermark == 1
        await manager.close_all()
    run(main())
    # fenced: no clean-shutdown marker, so the next open recovers
    assert not checkpoint.has_clean_shutdown_marker(str(tmp_path / "t-0"))
    assert checkpoint.has_clean_shutdown_marker(str(tmp_path / "t-1"))


def test_unassigned_and_deleted_partitions_close_off_the_loop(tmp_path):
    async def main():
        manager = manager_for(tmp_path)
        manager.sync(assigned(("t", 0), ("gone", 0)))
        await settled(manager, [("t", 0), ("gone", 0)])
        manager.logs[("gone", 0)].append(batch())
        manager.sync(assigned(("t", 0)))             # topic "gone" deleted
        assert manager.partitions[("gone", 0)].state == PartitionState.CLOSING
        assert manager.error_for(("gone", 0)) == ErrorCode.NOT_LEADER_OR_FOLLOWER
        while ("gone", 0) in manager.partitions:
            await asyncio.sleep(0.005)
        await manager.close_all()
    run(main())
    assert not any(name.startswith("gone-0") for name in os.listdir(tmp_path))


def test_a_topic_deleted_and_created_again_reopens_empty(tmp_path):
    async def main():
        manager = manager_for(tmp_path)
        manager.sync(assigned(("t", 0)))
        await settled(manager, [("t", 0)])
        manager.logs[("t", 0)].append(batch())
        manager.sync(ClusterState())                 # deleted...
        manager.sync(assigned(("t", 0)))             # ...and created again at once
        await settled(manager, [("t", 0)])
        while manager._replaced:
            await asyncio.sleep(0.005)
        assert manager.logs[("t", 0)].log_end_offset == 0
        await manager.close_all()
    run(main())


def test_checkpoints_are_written_off_the_loop_and_only_when_changed(tmp_path):
    async def main():
        manager = manager_for(tmp_path, **{"log.flush.interval.ms": 1})
        manager.sync(assigned(("t", 0)))
        await settled(manager, [("t", 0)])
        plog = manager.logs[("t", 0)]
        path = os.path.join(plog.directory, files.RECOVERY_POINT_FILE)
        durable = asyncio.get_running_loop().create_future()
        plog.when_durable(plog.append(batch()).last_offset, durable.set_result)
        manager.appended(("t", 0))
        await durable
        manager.checkpoint()
        while plog.recovery_point != 1:
            await asyncio.sleep(0.005)
        assert checkpoint.read_recovery_point(plog.directory) == 1
        written = os.stat(path).st_mtime_ns
        manager.checkpoint()                         # nothing changed: nothing written
        assert not manager._checkpointing and os.stat(path).st_mtime_ns == written
        await manager.close_all()
    run(main())


# --- scrubbing ---------------------------------------------------------------------------

def flip_a_bit_in_the_first_sealed_segment(data_dir) -> str:
    """Partition t-0 with three segments, written and closed cleanly by a manager (so
    its producer-state snapshot covers them), then one bit flipped inside the
    CRC-covered part of the first segment's first batch; returns that file's path."""
    async def write():
        manager = manager_for(data_dir, **{"log.segment.bytes": SEGMENT})
        manager.sync(assigned(("t", 0)))
        await settled(manager, [("t", 0)])
        for _ in range(5):
            manager.logs[("t", 0)].append(batch())
        await manager.close_all()
    run(write())
    path = files.segment_paths(str(data_dir / "t-0"), 0)[0]
    with open(path, "r+b") as f:
        f.seek(70)                      # inside the first batch's records (CRC from 21)
        byte = f.read(1)
        f.seek(70)
        f.write(bytes([byte[0] ^ 0x01]))
    return path


def test_the_scrub_finds_a_bit_flip_in_a_sealed_segment_and_takes_it_offline(tmp_path, caplog):
    """Defect 11: after a clean stop a bit flip in a sealed segment was served silently."""
    path = flip_a_bit_in_the_first_sealed_segment(tmp_path)

    async def main():
        manager = manager_for(tmp_path, **{"log.scrub.interval.ms": 10})
        manager.sync(assigned(("t", 0), ("t", 1)))
        await settled(manager, [("t", 0), ("t", 1)])
        assert ("t", 0) in manager.logs    # a clean open does not read sealed segments
        manager.start_scrubbing()
        while manager.partitions[("t", 0)].state == PartitionState.ONLINE:
            await asyncio.sleep(0.005)
        part = manager.partitions[("t", 0)]
        assert part.state == PartitionState.OFFLINE
        assert "scrub found damaged durable data" in part.reason and path in part.reason
        assert "CRC" in part.reason
        assert manager.error_for(("t", 0)) == ErrorCode.KAFKA_STORAGE_ERROR
        assert ("t", 1) in manager.logs    # the other partition serves on
        await manager.close_all()
    run(main())
    assert any("online -> offline" in r.getMessage() and path in r.getMessage()
               for r in caplog.records)


def test_the_scrub_is_rate_limited_and_passes_an_intact_log(tmp_path):
    directory = str(tmp_path / "t-0")
    log = PartitionLog(directory, LogConfig(segment_bytes=SEGMENT), name="t-0")
    for _ in range(9):
        log.append(batch())
    sealed = sum(os.path.getsize(files.segment_paths(directory, b)[0])
                 for b in log.segment_bases()[:-1])
    log.close()

    async def main():
        manager = manager_for(tmp_path, **{"log.scrub.interval.ms": 10,
                                           "log.scrub.bytes.per.second": 1024})
        manager.sync(assigned(("t", 0)))
        await settled(manager, [("t", 0)])
        manager.start_scrubbing()
        while manager.scrub_passes < 1:
            await asyncio.sleep(0.01)
        assert manager.partitions[("t", 0)].state == PartitionState.ONLINE
        assert manager.scrubbed_bytes == sealed
        await manager.close_all()
    run(main())


def test_the_repair_the_error_names_brings_a_damaged_partition_back(tmp_path):
    directory = str(tmp_path / "t-1")
    cut_inside_last_batch_after_clean_stop(directory)
    with pytest.raises(CorruptLogError, match="clean-shutdown"):
        PartitionLog(directory, LogConfig())
    os.unlink(os.path.join(directory, files.RECOVERY_POINT_FILE))  # what the message says
    os.unlink(os.path.join(directory, files.CLEAN_SHUTDOWN_FILE))
    log = PartitionLog(directory, LogConfig())
    assert log.log_end_offset == 1    # recovery cut the torn second batch
    log.close()


def test_flush_deadlines_ignore_a_wall_clock_step(tmp_path):
    """Defect 7: flush deadlines on the wall clock stalled visibility and acks=all for
    the size of a step back. Here the wall clock steps back an hour after the append."""
    wall = [1_000_000.0]
    log = PartitionLog(str(tmp_path / "t-0"), LogConfig(flush_ms=5, flush_messages=10**6),
                       clock=lambda: wall[0], monotonic=time.monotonic,
                       on_flush_due=lambda: None)
    log.append(batch())
    wall[0] -= 3600
    due = log.flush_deadline_ms() - time.monotonic() * 1000
    assert due <= 5     # due within flush_ms on the monotonic clock, not in an hour
    log.close()
