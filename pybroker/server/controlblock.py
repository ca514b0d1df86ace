"""The shared-memory control block: a fixed-layout table in an mmapped file that the
supervisor and its workers all map (`<data-dir>/control.block`).

Layout (little-endian):
  header        64 bytes   magic "PBCTRL01", layout version, worker slots, partition
                           slots per worker, supervisor pid, start time (ms)
  worker slot   128 bytes  x MAX_WORKERS: the WORKER_FIELDS below, int64 each
  partition     128 bytes  x MAX_WORKERS x PARTITIONS_PER_WORKER: topic (64 bytes,
                           UTF-8, NUL-padded), then the PARTITION_FIELDS, int64 each
  histograms    HIST_ROW x (API_ROWS + 1) x MAX_WORKERS: per worker one latency row per
                api key 0..63, then its fsync row; a row is count, sum (us), then one
                count per bucket of stats.LATENCY_BUCKETS and +Inf, int64 each
Ownership: worker i writes only worker slot i and its own run of partition slots, so
there are no cross-process write races; the supervisor writes `restarts` and reads
`heartbeat_ms` to find hung workers; `pybroker stats` and the metrics endpoint only
read. Readers may see a row mid-update (fields are independent counters), never a
torn 8-byte field on x86-64/aarch64 (aligned stores).
"""
from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass

from pybroker.server.stats import LATENCY_BUCKETS, MAX_API_KEY

MAGIC = b"PBCTRL01"
LAYOUT_VERSION = 2
MAX_WORKERS = 64
PARTITIONS_PER_WORKER = 256
HEADER = struct.Struct("<8sIIIIq")
HEADER_SIZE = 64
WORKER_SLOT = 128
PARTITION_SLOT = 128
TOPIC_BYTES = 64
FILE_NAME = "control.block"

WORKER_FIELDS = ("pid", "node_id", "port", "state", "heartbeat_ms", "restarts",
                 "connections", "requests", "bytes_in", "bytes_out", "messages_in",
                 "partitions", "flushes")
PARTITION_FIELDS = ("used", "partition", "log_start", "log_end", "high_watermark",
                    "messages_in", "bytes_in", "bytes_out", "flushes")
_WORKER = struct.Struct("<" + "q" * len(WORKER_FIELDS))
_PARTITION = struct.Struct(f"<{TOPIC_BYTES}s" + "q" * len(PARTITION_FIELDS))
STATES = {0: "starting", 1: "serving", 2: "stopping", 3: "stopped"}
SERVING, STOPPING, STOPPED = 1, 2, 3

API_ROWS = MAX_API_KEY + 1
HIST_FIELDS = 2 + len(LATENCY_BUCKETS) + 1
_HIST = struct.Struct("<" + "q" * HIST_FIELDS)
HIST_ROW = _HIST.size
HIST_BASE = HEADER_SIZE + MAX_WORKERS * WORKER_SLOT + MAX_WORKERS * PARTITIONS_PER_WORKER * PARTITION_SLOT
SIZE = HIST_BASE + MAX_WORKERS * (API_ROWS + 1) * HIST_ROW


@dataclass
class PartitionRow:
    topic: str
    partition: int
    node_id: int
    log_start: int
    log_end: int
    high_watermark: int
    messages_in: int
    bytes_in: int
    bytes_out: int
    flushes: int


class ControlBlock:
    def __init__(self, path: str, create: bool = False, workers: int = 0):
        self.path = path
        if create:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(fd, SIZE)
        else:
            fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, SIZE, access=mmap.ACCESS_WRITE)
        finally:
            os.close(fd)
        if create:
            HEADER.pack_into(self._map, 0, MAGIC, LAYOUT_VERSION, workers,
                             PARTITIONS_PER_WORKER, os.getpid(), int(time.time() * 1000))
        magic, version, self.workers, _per, self.supervisor_pid, self.started_ms = \
            HEADER.unpack_from(self._map, 0)
        if magic != MAGIC or version != LAYOUT_VERSION:
            raise ValueError(f"{path} is not a pybroker control block (layout {LAYOUT_VERSION})")

    @classmethod
    def in_dir(cls, data_dir: str, create: bool = False, workers: int = 0) -> "ControlBlock":
        return cls(os.path.join(data_dir, FILE_NAME), create, workers)

    def close(self) -> None:
        self._map.close()

    # --- worker slots ----------------------------------------------------------------

    def _worker_offset(self, index: int) -> int:
        if not 0 <= index < MAX_WORKERS:
            raise IndexError(f"worker index {index} outside 0..{MAX_WORKERS - 1}")
        return HEADER_SIZE + index * WORKER_SLOT

    def read_worker(self, index: int) -> dict:
        return dict(zip(WORKER_FIELDS, _WORKER.unpack_from(self._map, self._worker_offset(index))))

    def write_worker(self, index: int, **fields) -> None:
        row = self.read_worker(index)
        row.update(fields)
        _WORKER.pack_into(self._map, self._worker_offset(index),
                          *(row[f] for f in WORKER_FIELDS))

    # --- partition slots -------------------------------------------------------------

    def _partition_offset(self, worker: int, slot: int) -> int:
        if not 0 <= slot < PARTITIONS_PER_WORKER:
            raise IndexError(f"partition slot {slot} outside 0..{PARTITIONS_PER_WORKER - 1}")
        return (HEADER_SIZE + MAX_WORKERS * WORKER_SLOT +
                (worker * PARTITIONS_PER_WORKER + slot) * PARTITION_SLOT)

    def write_partitions(self, worker: int, rows: list[tuple]) -> None:
        """Replace worker's partition rows: (topic, partition, log_start, log_end, hw,
        messages_in, bytes_in, bytes_out, flushes) each; extra rows beyond the slots are
        left out of the block (the logs are unaffected)."""
        for slot in range(PARTITIONS_PER_WORKER):
            offset = self._partition_offset(worker, slot)
            if slot < len(rows):
                topic, *values = rows[slot]
                _PARTITION.pack_into(self._map, offset, topic.encode()[:TOPIC_BYTES], 1, *values)
            elif self._map[offset + TOPIC_BYTES:offset + TOPIC_BYTES + 8] != b"\0" * 8:
                _PARTITION.pack_into(self._map, offset, b"", *([0] * len(PARTITION_FIELDS)))
            else:
                break

    # --- histograms ------------------------------------------------------------------

    def _hist_offset(self, worker: int, row: int) -> int:
        return HIST_BASE + (worker * (API_ROWS + 1) + row) * HIST_ROW

    def write_histograms(self, worker: int, by_api: dict, fsync) -> None:
        """by_api: api key -> stats.Histogram; fsync: a stats.Histogram."""
        for api_key, hist in by_api.items():
            if 0 <= api_key <= MAX_API_KEY:
                _HIST.pack_into(self._map, self._hist_offset(worker, api_key), *hist.row())
        _HIST.pack_into(self._map, self._hist_offset(worker, API_ROWS), *fsync.row())

    def read_histograms(self, worker: int) -> tuple[dict[int, tuple], tuple]:
        """({api key: (count, sum_us, buckets...)} for keys seen, fsync row)."""
        rows = {}
        for api_key in range(API_ROWS):
            row = _HIST.unpack_from(self._map, self._hist_offset(worker, api_key))
            if row[0]:
                rows[api_key] = row
        return rows, _HIST.unpack_from(self._map, self._hist_offset(worker, API_ROWS))

    def partitions(self) -> list[PartitionRow]:
        rows = []
        for worker in range(self.workers):
            node_id = self.read_worker(worker)["node_id"]
            for slot in range(PARTITIONS_PER_WORKER):
                topic, used, *values = _PARTITION.unpack_from(
                    self._map, self._partition_offset(worker, slot))
                if not used:
                    break
                partition, *counters = values
                rows.append(PartitionRow(topic.rstrip(b"\0").decode(), partition, node_id,
                                         *counters))
        return rows
