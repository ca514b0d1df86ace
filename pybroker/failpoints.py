"""Failpoints: named places in the storage code where a fault test makes the process
fail for real, chosen by one environment variable read once, here.

    PYBROKER_FAILPOINTS="roll.after_seal=kill,fdatasync=eio,checkpoint.after_rename=kill@3"

Actions: `kill` (SIGKILL this process at once: a crash between two steps), `eio` and
`enospc` (raise OSError with that errno, as a failing disk would), `stall<ms>` (sleep
that long in the calling thread: a slow disk or a long recovery); `@n` fires only on
the n-th hit of the point in this process (1-based). Unset (production), `hit(name)`
returns after one test of an empty dict.

The points, each named where it is hit:
  roll.after_seal, roll.after_create          PartitionLog.roll
  retention.after_log_unlink                  LogSegment.delete (log gone, indexes not)
  retention.after_delete                      PartitionLog.enforce_retention
  checkpoint.before_rename, checkpoint.after_rename   files.write_atomic
  fdatasync                                   files.fdatasync
  partition.open                              LogManager, on the storage thread
"""
from __future__ import annotations

import errno
import os
import re
import signal
import time

ENV = "PYBROKER_FAILPOINTS"
ACTIONS = ("kill", "eio", "enospc")


def _parse(spec: str) -> dict[str, list]:
    """{name: [action, fire on hit n (0: every hit), hits so far]}"""
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, nth = action.partition("@")
        if (action not in ACTIONS and not re.fullmatch(r"stall\d+", action)) or \
                (nth and not nth.isdigit()):
            raise ValueError(f"{ENV}: {item!r}: expected NAME=ACTION[@N], ACTION one of "
                             f"{', '.join(ACTIONS)} or stall<ms>")
        points[name] = [action, int(nth or 0), 0]
    return points


_POINTS = _parse(os.environ.get(ENV, ""))


def configure(spec: str) -> None:
    """Replace the active failpoints (in-process tests; processes use the variable)."""
    global _POINTS
    _POINTS = _parse(spec)


def hit(name: str) -> None:
    """Fail here if the environment asks for it."""
    if not _POINTS:
        return
    point = _POINTS.get(name)
    if point is None:
        return
    point[2] += 1
    action, nth, hits = point
    if nth and hits != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "eio":
        raise OSError(errno.EIO, f"{os.strerror(errno.EIO)} (failpoint {name})")
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (failpoint {name})")
    elif action.startswith("stall"):
        time.sleep(int(action[5:]) / 1000)
