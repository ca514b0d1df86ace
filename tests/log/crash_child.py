"""The child process of test_log_crash.py: appends and flushes until it is killed.

    python crash_child.py DIRECTORY SEED [--skip-fsync]

Opens (or recovers) the partition log in DIRECTORY and follows `plan(seed, log end)`:
rounds of 1-4 appends of 1-5 records each, whose values are helpers.value_for(offset),
each round usually ended by a flush. After every flush it writes the high watermark as
a line to stdout, so every reported number is an offset below which everything was
fdatasynced (the parent reads the pipe live; the report itself needs no fsync). The
first line is "open <log end offset>". Segment and index sizes are tiny so rolls happen
during the run, and the recovery point is checkpointed every few milliseconds. Stops
appending at MAX_OFFSET and waits to be killed.

--skip-fsync replaces the segments' fdatasync by a no-op: the log still reports flushes, but
nothing reaches the disk, and the sync log (PYBROKER_SYNC_LOG) records none of it. The
power-loss test runs it to show that its check catches a missing fsync.
"""
import random
import sys
import time

from helpers import batch_for
from pybroker.log import LogConfig, PartitionLog

# 61 + 17 n bytes per batch of n records: 2 KiB segments hold 13-26 batches
CONFIG = LogConfig(segment_bytes=2048, index_interval_bytes=256, index_max_bytes=1024,
                   flush_messages=10**9, flush_ms=10**9, recovery_checkpoint_ms=3)
MAX_OFFSET = 50_000


def plan(seed: int, start: int):
    """The child's steps from log end `start`: ("append", first offset, records) and
    ("flush", offset), the same sequence in the child and in the parent's check."""
    rng = random.Random(seed)
    offset = start
    while offset < MAX_OFFSET:
        for _ in range(rng.randint(1, 4)):
            records = rng.randint(1, 5)
            yield "append", offset, records
            offset += records
        if rng.random() < 0.8:
            yield "flush", offset


def main() -> None:
    directory, seed = sys.argv[1], int(sys.argv[2])
    if "--skip-fsync" in sys.argv[3:]:
        from pybroker.log import files
        files.fdatasync = lambda fd, path, covers=None: None
    log = PartitionLog(directory, CONFIG, name="crash-0")
    out = sys.stdout
    out.write(f"open {log.log_end_offset}\n")
    out.flush()
    for step in plan(seed, log.log_end_offset):
        if step[0] == "append":
            result = log.append(batch_for(step[1], step[2]))
            assert result.base_offset == step[1], (result, step)
        else:
            hw = log.flush()
            log.maybe_flush()  # the periodic recovery-point checkpoint
            out.write(f"{hw}\n")
            out.flush()
    while True:  # pragma: no cover - killed here if the parent waits this long
        time.sleep(1)


if __name__ == "__main__":
    main()
