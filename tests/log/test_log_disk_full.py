"""A full disk (a 2 MiB tmpfs) during appends: the append fails with ENOSPC, the log
stays consistent, and appends work again once space is freed."""
import errno
import os
import subprocess

import pytest

from pybroker.log import LogConfig, PartitionLog
from pybroker.records import build_batch, parse_batches

TMPFS_BYTES = 2 << 20
# 200-byte values, 50 per batch: about 11 KB a batch, so ~190 batches fill 2 MiB.
VALUES = [b"v" * 200] * 50


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (tests run as root): {done.stderr}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(plog) -> int:
    """Append until the disk is full; the number of batches that made it."""
    for n in range(10_000):
        try:
            plog.append(build_batch(VALUES, timestamps=[n] * len(VALUES)))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            return n
    raise AssertionError("the disk never filled")


def test_full_disk_fails_the_append_and_keeps_the_log_consistent(small_disk):
    config = LogConfig(segment_bytes=512 << 10, index_max_bytes=64 << 10, flush_messages=500)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (256 << 10))  # space to give back later
    plog = PartitionLog(str(small_disk / "t-0"), config)
    appended = fill(plog)
    assert appended > 0
    end = plog.log_end_offset
    assert end == appended * len(VALUES)
    plog.flush()
    assert plog.verify() == []
    last = parse_batches(plog.read(end - 1, 1 << 20).read_bytes())[0]
    assert last.last_offset == end - 1

    os.unlink(filler)  # free space: the same log accepts appends again
    result = plog.append(build_batch(VALUES))
    assert result.base_offset == end
    plog.close()

    reopened = PartitionLog(str(small_disk / "t-0"), config)
    assert reopened.log_end_offset == end + len(VALUES)
    assert reopened.verify() == []
    reopened.close()


def test_unclean_stop_on_a_full_disk_recovers(small_disk):
    config = LogConfig(segment_bytes=512 << 10, index_max_bytes=64 << 10)
    plog = PartitionLog(str(small_disk / "t-0"), config)
    fill(plog)
    plog.flush()
    durable = plog.high_watermark
    # no close(): as after kill -9, with the disk still full
    reopened = PartitionLog(str(small_disk / "t-0"), config)
    assert reopened.log_end_offset >= durable
    assert reopened.verify() == []
