"""The two small metadata files of a partition directory.

recovery-point-offset-checkpoint: "0\n<offset>\n" (format version, then the offset
below which every message was flushed when it was written). A missing or unreadable
checkpoint reads as 0, which only makes recovery scan more. Written atomically.
high-watermark-checkpoint: the same format, the replica's high watermark when written.
.clean-shutdown: present only between a clean close and the next successful open; it
is removed durably when that open has succeeded, before any append, so a crash after
that is treated as unclean.
"""
from __future__ import annotations

import logging
import os

from pybroker.log import files

log = logging.getLogger("pybroker.log")
FORMAT_VERSION = 0
# Kafka keeps one replication-offset-checkpoint per data dir; one per partition here,
# beside its recovery point. Below it every record was in the whole ISR once, so a
# replica reopened after a crash shows nothing above it until its leader says so.
HIGH_WATERMARK_FILE = "high-watermark-checkpoint"


def read_recovery_point(directory: str) -> int:
    path = os.path.join(directory, files.RECOVERY_POINT_FILE)
    try:
        with open(path, encoding="ascii") as f:
            version, offset = f.read().split()
        if int(version) != FORMAT_VERSION or int(offset) < 0:
            raise ValueError(f"version {version} offset {offset}")
        return int(offset)
    except FileNotFoundError:
        return 0
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("dir=%s unreadable recovery point checkpoint (%s); recovering from 0",
                    directory, exc)
        return 0


def write_recovery_point(directory: str, offset: int) -> None:
    files.write_atomic(os.path.join(directory, files.RECOVERY_POINT_FILE),
                       f"{FORMAT_VERSION}\n{offset}\n".encode("ascii"))


def read_high_watermark(directory: str) -> int | None:
    """The last stored high watermark of a replica (high-watermark-checkpoint, same
    format), or None when there is none or it is unreadable."""
    path = os.path.join(directory, HIGH_WATERMARK_FILE)
    try:
        with open(path, encoding="ascii") as f:
            version, offset = f.read().split()
        if int(version) != FORMAT_VERSION or int(offset) < 0:
            raise ValueError(f"version {version} offset {offset}")
        return int(offset)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("dir=%s unreadable high watermark checkpoint (%s)", directory, exc)
        return None


def write_high_watermark(directory: str, offset: int) -> None:
    files.write_atomic(os.path.join(directory, HIGH_WATERMARK_FILE),
                       f"{FORMAT_VERSION}\n{offset}\n".encode("ascii"))


def mark_clean_shutdown(directory: str) -> None:
    files.write_atomic(os.path.join(directory, files.CLEAN_SHUTDOWN_FILE), b"")


def has_clean_shutdown_marker(directory: str) -> bool:
    """True if the last close was clean. The marker stays until the open that relies on
    it has succeeded (remove_clean_shutdown_marker), so a failed open fails the same
    way again instead of being retried as if after a crash."""
    return os.path.exists(os.path.join(directory, files.CLEAN_SHUTDOWN_FILE))


def remove_clean_shutdown_marker(directory: str) -> None:
    """Remove the marker durably: from now on a crash is an unclean stop."""
    files.remove_durably(os.path.join(directory, files.CLEAN_SHUTDOWN_FILE))
