"""File naming and durable file operations of a partition directory.

A partition directory `<data-dir>/<topic>-<partition>/` holds, per segment, three files
named by the segment's base offset, zero-padded to 20 digits so `ls` sorts them:
`00000000000000000000.log`, `.index`, `.timeindex`; plus the recovery-point checkpoint,
the leader-epoch checkpoint (Kafka's name and format, see leader_epochs.py) and, between a
clean close and the next open, the clean-shutdown marker.
"""
from __future__ import annotations

import os

from pybroker import failpoints

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
RECOVERY_POINT_FILE = "recovery-point-offset-checkpoint"
LEADER_EPOCH_FILE = "leader-epoch-checkpoint"
CLEAN_SHUTDOWN_FILE = ".clean-shutdown"
TEMP_SUFFIX = ".tmp"
BAD_SUFFIX = ".bad"
OFFSET_DIGITS = 20

# Power-loss tests set this to a file path: every fdatasync then appends
# "<path> <size>\n" to it, so the test can cut each file back to its last synced size.
SYNC_LOG_ENV = "PYBROKER_SYNC_LOG"
_sync_log_path = os.environ.get(SYNC_LOG_ENV)


def segment_name(base_offset: int) -> str:
    if not 0 <= base_offset < 10**OFFSET_DIGITS:
        raise ValueError(f"base offset {base_offset} out of range")
    return f"{base_offset:0{OFFSET_DIGITS}d}"


def segment_paths(directory: str, base_offset: int) -> tuple[str, str, str]:
    """(log, offset index, time index) paths of the segment at base_offset."""
    stem = os.path.join(directory, segment_name(base_offset))
    return stem + LOG_SUFFIX, stem + INDEX_SUFFIX, stem + TIME_INDEX_SUFFIX


def parse_base_offset(filename: str, suffix: str) -> int | None:
    """The base offset a segment file name encodes, or None if it is not one."""
    if not filename.endswith(suffix):
        return None
    stem = filename[: -len(suffix)]
    if len(stem) != OFFSET_DIGITS or not stem.isdigit():
        return None
    return int(stem)


def list_base_offsets(directory: str) -> list[int]:
    """Sorted base offsets of the `.log` files in directory."""
    found = (parse_base_offset(name, LOG_SUFFIX) for name in os.listdir(directory))
    return sorted(b for b in found if b is not None)


def fdatasync(fd: int, path: str, covers: int | None = None) -> None:
    """fdatasync(fd), reporting the synced size to the power-loss test hook if set: the
    file's size, or `covers` when appends may run during the sync (a flush off the event
    loop) and only the bytes below it count as synced."""
    failpoints.hit("fdatasync")
    os.fdatasync(fd)
    if _sync_log_path:
        size = os.fstat(fd).st_size if covers is None else covers
        with open(_sync_log_path, "a", encoding="utf-8") as f:
            f.write(f"{path} {size}\n")


def fsync_dir(directory: str) -> None:
    """Make created, renamed or removed directory entries durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """Replace path with data durably: temp file, fsync, rename, fsync the directory."""
    tmp = path + TEMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    failpoints.hit("checkpoint.before_rename")
    os.replace(tmp, path)
    failpoints.hit("checkpoint.after_rename")
    fsync_dir(os.path.dirname(path) or ".")


def remove_durably(path: str) -> bool:
    """Unlink path if present and make that durable; True if it existed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(os.path.dirname(path) or ".")
    return True
