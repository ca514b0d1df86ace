"""One index file of a segment: the sparse offset index or the time index.

Entry layouts live in csrc/index.h. While the segment is active the file is extended
to its full preallocated size and mapped read-write; on roll and close it is trimmed to
the entries in use, so a closed index's size alone gives its entry count. The file is
not checksummed: after a crash the active index's length means nothing and recovery
rebuilds it; a damaged closed index is caught by `check` and rebuilt from the log.
Owned by one segment; not thread-safe.
"""
from __future__ import annotations

import mmap
import os

from pybroker import core

_EMPTY_CAPACITY = 16  # bytes of the stand-in buffer while an index file is empty
RESERVE_STEP = 64 << 10  # index bytes allocated ahead at a time (8,192 offset entries)


class MappedIndex:
    def __init__(self, path: str, kind: int, max_bytes: int):
        self.path = path
        self.kind = kind
        self.entry_size = core.TIME_ENTRY_SIZE if kind == core.INDEX_TIME else core.OFFSET_ENTRY_SIZE
        self.max_entries = max_bytes // self.entry_size
        self._fd = -1
        self._map: mmap.mmap | None = None
        self.pinned: core.Pinned | None = None
        self.reserved = 0

    @property
    def loaded(self) -> bool:
        return self.pinned is not None

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def stored_entries(self) -> int | None:
        """Entries in a trimmed file, or None if its size is not a whole number of them."""
        size = os.path.getsize(self.path)
        return None if size % self.entry_size else size // self.entry_size

    def load(self, entries: int, preallocate: bool) -> None:
        """Map the file, first extended to full capacity when preallocate (active segment)."""
        self.unload()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        length = self.max_entries * self.entry_size if preallocate else entries * self.entry_size
        if preallocate:
            os.ftruncate(self._fd, length)
        self.reserved = entries * self.entry_size  # bytes backed by allocated blocks
        if length:
            self._map = mmap.mmap(self._fd, length, access=mmap.ACCESS_WRITE)
            self.pinned = core.Pinned(self._map)
        else:
            self.pinned = core.Pinned(bytearray(_EMPTY_CAPACITY))

    def ensure_room(self, entries: int) -> None:
        """Allocate disk blocks for `entries` entries before C writes them through the
        map: the preallocated file is sparse, and storing to an unbacked page of a
        mapping on a full disk kills the process with SIGBUS instead of failing. Raises
        OSError (ENOSPC) instead, before anything is written."""
        need = entries * self.entry_size
        if need <= self.reserved:
            return
        end = min(max(need, self.reserved + RESERVE_STEP), self.pinned.size)
        if end > self.reserved:
            os.posix_fallocate(self._fd, self.reserved, end - self.reserved)
            self.reserved = end

    def capacity(self) -> int:
        return self.pinned.size // self.entry_size if self.pinned else 0

    def check(self, entries: int, max_relative: int, log_size: int) -> int:
        """-1 if entries keep the invariants, else the first bad slot."""
        return core.index_check(self.pinned, entries, self.kind, max_relative, log_size)

    def floor(self, entries: int, target: int, strict: bool = False) -> int:
        return core.index_floor(self.pinned, entries, self.kind, target, strict)

    def entry(self, entries: int, slot: int) -> tuple[int, int]:
        return core.index_entry(self.pinned, entries, self.kind, slot)

    def trim(self, entries: int) -> None:
        """Unmap and cut the file to the entries in use (roll, close)."""
        self.unload()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, entries * self.entry_size)
        finally:
            os.close(fd)

    def unload(self) -> None:
        if self.pinned is not None:
            self.pinned.release()
            self.pinned = None
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def delete(self) -> None:
        self.unload()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
