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


def _read_offset(directory: str, name: str, what: str) -> int | None:
    """The offset stored in one of the "0\n<offset>\n" files; None when it is missing
    or unreadable (logged)."""
    try:
        with open(os.path.join(directory, name), encoding="ascii") as f:
            version, offset = f.read().split()
        if int(version) != FORMAT_VERSION or int(offset) < 0:
            raise ValueError(f"version {version} offset {offset}")
        return int(offset)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("dir=%s unreadable %s checkpoint (%s)", directory, what, exc)
        return None


def _write_offset(directory: str, name: str, offset: int) -> None:
    files.write_atomic(os.path.join(directory, name),
                       f"{FORMAT_VERSION}\n{offset}\n".encode("ascii"))


def read_recovery_point(directory: str) -> int:
    """The recovery point; 0 (recover everything) when missing or unreadable."""
    point = _read_offset(directory, files.RECOVERY_POINT_FILE, "recovery point")
    return 0 if point is None else point


def write_recovery_point(directory: str, offset: int) -> None:
    _write_offset(directory, files.RECOVERY_POINT_FILE, offset)


def read_high_watermark(directory: str) -> int | None:
    """The last stored high watermark of a replica, or None when there is none."""
    return _read_offset(directory, HIGH_WATERMARK_FILE, "high watermark")


def write_high_watermark(directory: str, offset: int) -> None:
    _write_offset(directory, HIGH_WATERMARK_FILE, offset)


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
