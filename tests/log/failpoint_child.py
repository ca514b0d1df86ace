"""The child process of test_failpoints.py: appends, flushes, rolls, deletes by
retention and checkpoints until a failpoint (PYBROKER_FAILPOINTS) kills it.

    python failpoint_child.py DIRECTORY

Every append is one 1-record batch with helpers.value_for(offset) and is flushed at
once; before each checkpoint attempt it prints "checkpoint <offset>", after each flush
"flushed <high watermark>" (the parent reads the pipe as it comes). 261-byte segments
hold three 78-byte batches, so a roll comes every third append; retention keeps about
four segments; the recovery point is written at every flush that moved it.
"""
import sys

from helpers import batch_for
from pybroker.log import LogConfig, PartitionLog

CONFIG = LogConfig(segment_bytes=261, index_interval_bytes=0, index_max_bytes=1024,
                   flush_messages=1, flush_ms=10**9, recovery_checkpoint_ms=0,
                   retention_bytes=1000, retention_ms=-1)
APPENDS = 2_000


def main() -> None:
    log = PartitionLog(sys.argv[1], CONFIG, name="fail-0")
    out = sys.stdout
    for _ in range(APPENDS):
        log.append(batch_for(log.log_end_offset))      # flush_messages=1: flushed here
        out.write(f"flushed {log.high_watermark}\n")
        out.write(f"checkpoint {log.high_watermark}\n")
        out.flush()
        log.maybe_checkpoint()
        log.enforce_retention()
    out.write("done\n")
    out.flush()


if __name__ == "__main__":
    main()
