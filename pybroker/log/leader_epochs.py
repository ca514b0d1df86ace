"""The leader-epoch cache of one partition: which leader epoch wrote which offsets.

This is Kafka's LeaderEpochFileCache and its `leader-epoch-checkpoint` file, in Kafka's
format, so a directory reads the same in either broker:
    0\\n                         format version
    <count>\\n                   number of entries
    <epoch> <start_offset>\\n    one line per entry, ascending
An entry (epoch, start_offset) says that the leader of `epoch` wrote its first message
at start_offset; that epoch's messages run up to the next entry's start offset, the
latest epoch's up to the log end. A follower whose log diverged from its leader's asks
the leader for the end of its own latest epoch (end_offset_for) and truncates there.

Invariants: epochs and start offsets both strictly increase down the list; every
epoch and start offset is >= 0. The file is replaced atomically and durably
(files.write_atomic) by each operation that changed the entries, and only then; the
entries in memory change only once that write succeeded, so they always equal the
file. A missing file reads as empty; an unreadable one is logged and read as empty (the
next change overwrites it): a follower with no epochs then truncates to its high
watermark, as in Kafka, which is safe. Owned by the partition log's owner; not
thread-safe.
"""
from __future__ import annotations

import bisect
import logging
import os

from pybroker.log import files

log = logging.getLogger("pybroker.log")
FORMAT_VERSION = 0
UNDEFINED_EPOCH = -1          # Kafka's OffsetsForLeaderEpochResponse.UNDEFINED_EPOCH
UNDEFINED_EPOCH_OFFSET = -1   # ... and UNDEFINED_EPOCH_OFFSET


def parse(text: str) -> list[tuple[int, int]]:
    """The entries of a checkpoint file's text; ValueError when it breaks the format or
    the invariants."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if len(lines) < 2:
        raise ValueError(f"{len(lines)} lines, a header needs 2")
    version, count = int(lines[0]), int(lines[1])
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version}, expected {FORMAT_VERSION}")
    if count != len(lines) - 2:
        raise ValueError(f"the header says {count} entries, the file holds {len(lines) - 2}")
    entries = []
    for n, line in enumerate(lines[2:], start=3):
        fields = line.split(" ")
        if len(fields) != 2:
            raise ValueError(f"line {n} is {line!r}, not '<epoch> <start_offset>'")
        entries.append((int(fields[0]), int(fields[1])))
    problem = check_entries(entries)
    if problem is not None:
        raise ValueError(problem)
    return entries


def format_entries(entries: list[tuple[int, int]]) -> bytes:
    body = "".join(f"{epoch} {start}\n" for epoch, start in entries)
    return f"{FORMAT_VERSION}\n{len(entries)}\n{body}".encode("ascii")


def check_entries(entries: list[tuple[int, int]]) -> str | None:
    """A description of the first broken invariant, or None."""
    for i, (epoch, start) in enumerate(entries):
        if epoch < 0 or start < 0:
            return f"entry {i} ({epoch}, {start}) is negative"
        if i and not (epoch > entries[i - 1][0] and start > entries[i - 1][1]):
            return (f"entry {i} ({epoch}, {start}) does not follow entry {i - 1} "
                    f"{entries[i - 1]}: epochs and start offsets must both increase")
    return None


class LeaderEpochCache:
    def __init__(self, directory: str, owner: str):
        self.path = os.path.join(directory, files.LEADER_EPOCH_FILE)
        self.owner = owner  # for log lines: "tp=orders-3"
        self._entries: list[tuple[int, int]] = self._read()
        self._epochs = [epoch for epoch, _start in self._entries]  # for bisect

    def __repr__(self):
        return f"LeaderEpochCache({self.owner}, {self._entries})"

    def _read(self) -> list[tuple[int, int]]:
        try:
            with open(self.path, encoding="ascii") as f:
                return parse(f.read())
        except FileNotFoundError:
            return []
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("%s file=%s unreadable leader-epoch checkpoint (%s); reading it as "
                        "empty", self.owner, self.path, exc)
            return []

    def _store(self, entries: list[tuple[int, int]]) -> None:
        """Persist entries, then adopt them: an OSError (a full disk) leaves both the
        file and the entries in memory as they were."""
        files.write_atomic(self.path, format_entries(entries))
        self._entries = entries
        self._epochs = [epoch for epoch, _start in entries]

    # --- queries ---------------------------------------------------------------------

    def entries(self) -> list[tuple[int, int]]:
        """(epoch, start_offset) pairs, ascending; a copy."""
        return list(self._entries)

    def latest_epoch(self) -> int:
        """The epoch of the last entry, -1 (UNDEFINED_EPOCH) when there is none."""
        return self._entries[-1][0] if self._entries else UNDEFINED_EPOCH

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """(epoch, end offset) for a requested epoch, exactly as Kafka's
        LeaderEpochFileCache.endOffsetFor (Kafka 2.1 on, KIP-279):
        - requested UNDEFINED_EPOCH (-1), or nothing known: (-1, -1);
        - requested == the latest epoch: (latest, log_end_offset);
        - no known epoch is above the requested one (it is above the latest): (-1, -1);
        - requested below every known epoch: (requested, start offset of the first
          entry): that data was deleted, and the follower should replicate from there
          (Kafka before 2.1 answered (-1, -1) here);
        - otherwise: (the largest known epoch <= requested, the start offset of the
          first known epoch > requested).
        """
        if epoch == UNDEFINED_EPOCH or not self._entries:
            return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET
        if epoch == self._entries[-1][0]:
            return epoch, log_end_offset
        higher = bisect.bisect_right(self._epochs, epoch)  # first entry with epoch > requested
        if higher == len(self._entries):
            return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET
        end = self._entries[higher][1]
        if higher == 0:
            return epoch, end
        return self._entries[higher - 1][0], end

    # --- changes ---------------------------------------------------------------------

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that the leader of `epoch` wrote its first message at start_offset.
        No-op (False) when epoch <= the latest epoch: an epoch is assigned once, when its
        first batch is appended (Kafka would instead replace a same-or-later epoch's
        entries here; our logs truncate the cache with the log, so that case does not
        arise). Otherwise entries starting at or after start_offset are dropped first,
        as Kafka does (an epoch that wrote nothing there), and the new entry is appended
        and persisted: True. ValueError for a negative epoch or offset."""
        if epoch < 0 or start_offset < 0:
            raise ValueError(f"{self.owner}: invalid leader epoch entry ({epoch}, {start_offset})")
        if epoch <= self.latest_epoch():
            return False
        keep = self._entries
        while keep and keep[-1][1] >= start_offset:
            keep = keep[:-1]
        dropped = self._entries[len(keep):]
        if len(dropped) > 1 or (dropped and dropped[0][1] != start_offset):
            # an entry at start_offset itself only means that epoch wrote nothing
            log.warning("%s leader epoch %d at offset %d drops the later entries %s",
                        self.owner, epoch, start_offset, dropped)
        self._store(keep + [(epoch, start_offset)])
        return True

    def truncate_from_end(self, end_offset: int) -> bool:
        """Drop the entries with start_offset >= end_offset (the log was cut there, or a
        crash lost its tail); True if any were."""
        if end_offset < 0 or not self._entries or self._entries[-1][1] < end_offset:
            return False
        self._store([e for e in self._entries if e[1] < end_offset])
        return True

    def truncate_from_start(self, start_offset: int) -> bool:
        """The log now starts at start_offset (retention): drop the entries wholly below
        it and start the last of them, the epoch that holds start_offset, there (Kafka's
        rule: an entry at start_offset itself is kept). True if anything changed."""
        below = bisect.bisect_right([start for _epoch, start in self._entries], start_offset)
        if below == 0:
            return False
        entries = [(self._entries[below - 1][0], start_offset)] + self._entries[below:]
        if entries == self._entries:
            return False
        self._store(entries)
        return True

    def clear(self) -> bool:
        """Drop every entry (the log was emptied and restarted elsewhere); True if any."""
        if not self._entries:
            return False
        self._store([])
        return True
