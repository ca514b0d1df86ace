"""Failpoints: named places in the storage code where a fault test makes the process
fail for real, chosen by one environment variable read once, here.

    PYBROKER_FAILPOINTS="roll.after_seal=kill,fdatasync=eio"

Actions: `kill` (SIGKILL this process at once: a crash between two steps), `eio` and
`enospc` (raise OSError with that errno, as a failing disk would). Unset (production),
`hit(name)` is one dict lookup in an empty dict.

The points, each named where it is hit:
  roll.after_seal, roll.after_create          PartitionLog.roll
  retention.after_log_unlink                  LogSegment.delete (log gone, indexes not)
  retention.after_delete                      PartitionLog.enforce_retention
  checkpoint.before_rename, checkpoint.after_rename   files.write_atomic
  fdatasync                                   files.fdatasync
"""
from __future__ import annotations

import errno
import os
import signal

ENV = "PYBROKER_FAILPOINTS"
ACTIONS = ("kill", "eio", "enospc")


def _parse(spec: str) -> dict[str, str]:
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        if action not in ACTIONS:
            raise ValueError(f"{ENV}: {item!r}: the action must be one of {', '.join(ACTIONS)}")
        points[name] = action
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
    action = _POINTS.get(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "eio":
        raise OSError(errno.EIO, f"{os.strerror(errno.EIO)} (failpoint {name})")
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (failpoint {name})")
