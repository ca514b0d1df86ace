"""The shared-memory control block: a fixed-layout table in an mmapped file that the
supervisor and its workers all map (`<data-dir>/control.block`).

Layout (little-endian; every row kind is declared once, in the RowLayout tables below,
and its struct, size and offsets derive from that table):

  header           HEADER.slot bytes                 written once, before publication
  supervisor part  SUPERVISOR_ROW.slot x workers     forked pid, restarts, fork time
  worker part      WORKER_ROW.slot x workers         heartbeat, loop progress, counters
  partitions       PARTITION_ROW.slot x workers x partition_slots
  histograms       HISTOGRAM_ROW.slot x workers x (API_ROWS + 1): per worker one
                   latency row per api key 0..63, then its fsync row

`workers` and `partition_slots` come from the header, so the file is sized by the
worker count actually configured (MAX_WORKERS only bounds it).

Ownership (single writer per row, so no two processes ever write the same bytes):
  - the header: the supervisor, once, before the file is visible under its name;
  - supervisor part i: the supervisor (forked pid, restarts, fork time);
  - worker part i, worker i's partition rows and histogram rows: worker i's heartbeat
    thread (pybroker.server.heartbeat) and nothing else;
  - `pybroker stats`, the metrics endpoint and the supervisor's checks only read.

Torn reads: every row but the header starts with a sequence counter (a seqlock). The
writer bumps it to odd, writes the row, bumps it to even; a reader copies the row and
accepts it only if the counter was even and unchanged across the copy, else it retries.
After READ_ATTEMPTS it gives up and returns the last copy flagged torn (a writer
stopped mid-row, e.g. by SIGSTOP, leaves its counter odd until it runs again). The
ordering this needs (the odd store visible before the row, the row before the even
store, and the reverse for loads) is what x86-64's TSO gives every plain store and
load; CPython offers no fence to make it hold on weaker memory models.

Never truncated while mapped: a new block is written under a temporary name, sized,
given its header, then os.replace()d into place. Processes still mapping the old file
keep the old inode (and valid contents) until they unmap it; nothing is ever
truncated under a mapping (which would SIGBUS its readers). The block is runtime
state only: it is never fsynced, and each supervisor start creates a fresh one.
"""
from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass

from pybroker.server.partition_state import PartitionState
from pybroker.server.stats import LATENCY_BUCKETS, MAX_API_KEY

MAGIC = b"PBCTRL01"
LAYOUT_VERSION = 5        # 3: seqlocked single-writer rows, supervisor part, sized header; 4: appends;
                          # 5: replication (leader, replicas, ISR, lag; ISR changes)
MAX_WORKERS = 64
PARTITION_SLOTS = 4096    # per worker: 2,000-partition topics on one worker must fit
TOPIC_MAX_BYTES = 249     # Kafka's longest legal topic name (ASCII, so 249 bytes too)
FILE_NAME = "control.block"
READ_ATTEMPTS = 200       # seqlock retries before a read is returned flagged torn
READ_BACKOFF_AFTER = 8    # attempts spun before each further one yields the CPU (0.2 ms)

STATES = {0: "starting", 1: "serving", 2: "stopping", 3: "stopped"}
STARTING, SERVING, STOPPING, STOPPED = 0, 1, 2, 3

API_ROWS = MAX_API_KEY + 1


class RowLayout:
    """One row kind: its fields (name, struct code, meaning) in order, after an int64
    sequence counter when seqlocked, packed little-endian without padding into a slot
    of `slot` bytes. Invariant, checked here at import: the packed row fits its slot."""

    def __init__(self, name: str, slot: int, fields: tuple, seqlocked: bool = True):
        self.name = name
        self.slot = slot
        self.seqlocked = seqlocked
        self.fields = tuple(f[0] for f in fields)
        self.meaning = {f[0]: f[2] for f in fields}
        self.body = struct.Struct("<" + "".join(f[1] for f in fields))
        self.size = (8 if seqlocked else 0) + self.body.size
        if self.size > slot:  # not `assert`: python -O must not drop the check
            raise AssertionError(f"control block {name} row packs to {self.size} bytes, "
                                 f"more than its {slot}-byte slot")
        self.offsets = {}  # field -> byte offset inside the slot
        at = 8 if seqlocked else 0
        for fname, code, _ in fields:
            self.offsets[fname] = at
            at += struct.calcsize("<" + code)


HEADER = RowLayout("header", 128, (
    ("magic", "8s", "MAGIC"),
    ("version", "q", "LAYOUT_VERSION"),
    ("workers", "q", "worker slots in this file (the configured worker count)"),
    ("partition_slots", "q", "partition slots per worker"),
    ("api_rows", "q", "latency histogram rows per worker, before its fsync row"),
    ("supervisor_pid", "q", "pid of the supervisor that created the block"),
    ("started_ms", "q", "wall-clock ms of creation (for display only)"),
    ("size", "q", "file size in bytes"),
), seqlocked=False)

SUPERVISOR_ROW = RowLayout("supervisor part", 64, (
    ("forked_pid", "q", "pid of the process last forked for this worker slot"),
    ("restarts", "q", "times this slot's worker was forked again after it exited"),
    ("forked_ms", "q", "monotonic ms of that fork"),
))

WORKER_ROW = RowLayout("worker part", 256, (
    ("pid", "q", "the worker's own pid (written by the worker)"),
    ("node_id", "q", "Kafka node id"),
    ("port", "q", "listening port"),
    ("state", "q", "STATES key"),
    ("heartbeat_ms", "q", "monotonic ms of the heartbeat thread's last publish"),
    ("loop_ms", "q", "monotonic ms of the event loop's last recorded progress"),
    ("connections", "q", "open client connections"),
    ("requests", "q", "requests read"),
    ("bytes_in", "q", "record bytes appended"),
    ("bytes_out", "q", "record bytes sent"),
    ("messages_in", "q", "messages appended"),
    ("partitions", "q", "partitions this worker owns"),
    ("opening", "q", "of those, in state OPENING"),
    ("offline", "q", "of those, in state OFFLINE"),
    ("flushes", "q", "fdatasyncs (group commits) over all its partitions"),
    ("partition_slots", "q", "high-water mark of its partition slots: readers scan "
                             "slots [0, partition_slots)"),
    ("isr_shrinks", "q", "ISR shrinks written as leader"),
    ("isr_expands", "q", "ISR expansions written as leader"),
))

PARTITION_ROW = RowLayout("partition", 384, (
    # 256, not 249: the int64s after the topic stay 8-byte aligned
    ("topic", "256s", "UTF-8, NUL-padded, at most TOPIC_MAX_BYTES"),
    ("partition", "q", "partition number"),
    ("state", "q", "PartitionState value; 0: free slot"),
    ("log_start", "q", "first retained offset"),
    ("log_end", "q", "next offset to assign"),
    ("high_watermark", "q", "one past the last flushed offset"),
    ("messages_in", "q", "messages appended"),
    ("bytes_in", "q", "record bytes appended"),
    ("bytes_out", "q", "record bytes fetched"),
    ("flushes", "q", "fdatasyncs"),
    ("appends", "q", "appends to the log (a coalesced run of requests is one)"),
    ("leader", "q", "1 if this node leads the partition, 0 if it follows it"),
    ("replicas", "q", "replicas assigned"),
    ("isr", "q", "in-sync replicas (as the leader knows them; on a follower, the view's)"),
    ("replica_lag", "q", "messages behind: on the leader, its log end minus the slowest "
                         "in-sync follower's fetch offset; on a follower, the leader's high "
                         "watermark minus its log end"),
))

HISTOGRAM_ROW = RowLayout("histogram", 128, (
    ("count", "q", "observations"),
    ("sum_us", "q", "sum of observations, microseconds"),
    *((f"bucket_{i}", "q", f"observations <= {bound} s, above the previous bound")
      for i, bound in enumerate(LATENCY_BUCKETS)),
    ("bucket_inf", "q", "observations above the last bound"),
))

SUPERVISOR_FIELDS = SUPERVISOR_ROW.fields
WORKER_FIELDS = WORKER_ROW.fields
PARTITION_FIELDS = PARTITION_ROW.fields
_SEQ = struct.Struct("<q")
_FREE_PARTITION = (b"", *([0] * (len(PARTITION_FIELDS) - 1)))  # state 0: a free slot


def layout_size(workers: int, partition_slots: int = PARTITION_SLOTS) -> int:
    """Bytes of a block for `workers` workers."""
    return (HEADER.slot + workers * (SUPERVISOR_ROW.slot + WORKER_ROW.slot
                                     + partition_slots * PARTITION_ROW.slot
                                     + (API_ROWS + 1) * HISTOGRAM_ROW.slot))


def monotonic_ms() -> int:
    """CLOCK_MONOTONIC in ms: system-wide on Linux, so the supervisor and its workers
    compare each other's values directly, and a wall-clock step moves nothing."""
    return int(time.monotonic() * 1000)


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
    appends: int = 0
    leader: int = 1
    replicas: int = 1
    isr: int = 1
    replica_lag: int = 0
    state: int = PartitionState.ONLINE
    torn: bool = False  # the seqlock never read the row whole (see the module doc)

    @property
    def state_label(self) -> str:
        try:
            return PartitionState(self.state).label
        except ValueError:
            return f"state{self.state}"


class ControlBlock:
    """A mapping of one control block file. Open an existing block with
    ControlBlock(path); create (and publish) a new one with create=True."""

    def __init__(self, path: str, create: bool = False, workers: int = 0):
        self.path = path
        if create:
            self._map = _create(path, workers)
        else:
            self._map = _open(path)
        header = dict(zip(HEADER.fields, HEADER.body.unpack_from(self._map, 0)))
        if header["magic"] != MAGIC or header["version"] != LAYOUT_VERSION:
            self._map.close()
            raise ValueError(f"{path} is not a pybroker control block of layout "
                             f"{LAYOUT_VERSION} (magic {header['magic']!r}, layout "
                             f"{header['version']})")
        self.workers = header["workers"]
        self.partition_slots = header["partition_slots"]
        self.supervisor_pid = header["supervisor_pid"]
        self.started_ms = header["started_ms"]
        if header["size"] != len(self._map) or header["api_rows"] != API_ROWS or \
                len(self._map) != layout_size(self.workers, self.partition_slots):
            size = len(self._map)
            self._map.close()
            raise ValueError(f"{path}: {size} bytes, header says {header['size']} for "
                             f"{self.workers} workers x {self.partition_slots} slots")
        self._supervisor_base = HEADER.slot
        self._worker_base = self._supervisor_base + self.workers * SUPERVISOR_ROW.slot
        self._partition_base = self._worker_base + self.workers * WORKER_ROW.slot
        self._hist_base = self._partition_base + (self.workers * self.partition_slots
                                                  * PARTITION_ROW.slot)
        # writer side: per worker index (topic, partition) -> slot, and per row offset
        # the values last written there (an unchanged row is not rewritten)
        self._slots: dict[int, dict[tuple[str, int], int]] = {}
        self._written: dict[int, tuple] = {}

    @classmethod
    def in_dir(cls, data_dir: str, create: bool = False, workers: int = 0) -> "ControlBlock":
        return cls(os.path.join(data_dir, FILE_NAME), create, workers)

    def close(self) -> None:
        self._map.close()

    # --- seqlocked rows ----------------------------------------------------------------

    def _write(self, layout: RowLayout, offset: int, values) -> None:
        seq = _SEQ.unpack_from(self._map, offset)[0]
        if seq & 1:  # a predecessor died mid-row: make the counter even again first
            seq += 1
        _SEQ.pack_into(self._map, offset, seq + 1)
        layout.body.pack_into(self._map, offset + 8, *values)
        _SEQ.pack_into(self._map, offset, seq + 2)

    def _write_once(self, layout: RowLayout, offset: int, values: tuple) -> None:
        """_write unless these values are what this mapping last wrote there."""
        if self._written.get(offset) != values:
            self._write(layout, offset, values)
            self._written[offset] = values

    def _read(self, layout: RowLayout, offset: int) -> tuple[tuple, bool]:
        """(the row's values, torn): torn when READ_ATTEMPTS copies all overlapped a
        write; the values are then the last copy."""
        for attempt in range(READ_ATTEMPTS):
            seq = _SEQ.unpack_from(self._map, offset)[0]
            values = layout.body.unpack_from(self._map, offset + 8)
            if not seq & 1 and _SEQ.unpack_from(self._map, offset)[0] == seq:
                return values, False
            if attempt >= READ_BACKOFF_AFTER:
                time.sleep(0.0002)  # the writer may be descheduled mid-row: let it run
        return values, True

    # --- supervisor part ---------------------------------------------------------------

    def _supervisor_offset(self, index: int) -> int:
        self._check_worker(index)
        return self._supervisor_base + index * SUPERVISOR_ROW.slot

    def read_supervisor(self, index: int) -> dict:
        values, torn = self._read(SUPERVISOR_ROW, self._supervisor_offset(index))
        return {**dict(zip(SUPERVISOR_FIELDS, values)), "torn": torn}

    def write_supervisor(self, index: int, **fields) -> None:
        """Update fields of supervisor part `index`; only the supervisor calls this."""
        self._update(SUPERVISOR_ROW, self._supervisor_offset(index), fields)

    # --- worker part -------------------------------------------------------------------

    def _check_worker(self, index: int) -> None:
        if not 0 <= index < self.workers:
            raise IndexError(f"worker index {index} outside 0..{self.workers - 1} of "
                             f"{self.path}")

    def _worker_offset(self, index: int) -> int:
        self._check_worker(index)
        return self._worker_base + index * WORKER_ROW.slot

    def read_worker(self, index: int) -> dict:
        """Worker part `index` merged with its supervisor part (forked_pid, restarts,
        forked_ms); "torn" is true when either could not be read whole."""
        values, torn = self._read(WORKER_ROW, self._worker_offset(index))
        row = dict(zip(WORKER_FIELDS, values))
        supervisor = self.read_supervisor(index)
        row.update(supervisor, torn=torn or supervisor["torn"])
        return row

    def write_worker(self, index: int, **fields) -> None:
        """Update fields of worker part `index`. Only that worker's heartbeat thread
        calls this (read-modify-write of its own row: safe with one writer)."""
        self._update(WORKER_ROW, self._worker_offset(index), fields)

    def _update(self, layout: RowLayout, offset: int, fields: dict) -> None:
        unknown = set(fields) - set(layout.fields)
        if unknown:
            raise KeyError(f"{sorted(unknown)} are not fields of the control block's "
                           f"{layout.name} row ({', '.join(layout.fields)})")
        values, _torn = self._read(layout, offset)  # our own row: never torn here
        row = dict(zip(layout.fields, values))
        row.update(fields)
        self._write(layout, offset, [row[f] for f in layout.fields])

    # --- partition rows ----------------------------------------------------------------

    def _partition_offset(self, worker: int, slot: int) -> int:
        self._check_worker(worker)
        if not 0 <= slot < self.partition_slots:
            raise IndexError(f"partition slot {slot} outside 0..{self.partition_slots - 1}")
        return self._partition_base + (worker * self.partition_slots + slot) * PARTITION_ROW.slot

    def write_partitions(self, worker: int, rows: list) -> None:
        """Publish worker's partition rows (PartitionRow each; node_id and torn are not
        stored). A partition keeps its slot while it stays in `rows`, so a reader never
        misses or doubles a row that exists before and after a write; slots of
        partitions no longer in `rows` are freed; rows beyond partition_slots are left
        out of the block (the logs are unaffected). Only worker's heartbeat thread
        calls this: the slot map lives in this mapping."""
        slots = self._slots.get(worker)
        if slots is None:  # first write in this process: free the predecessor's rows
            slots = self._slots[worker] = {}
            for slot in range(self._slot_high_water(worker)):
                self._write_once(PARTITION_ROW, self._partition_offset(worker, slot),
                                 _FREE_PARTITION)
            self.write_worker(worker, partition_slots=0)
        wanted = {(r.topic, r.partition): r for r in rows}
        for tp in [tp for tp in slots if tp not in wanted]:
            self._write_once(PARTITION_ROW, self._partition_offset(worker, slots.pop(tp)),
                             _FREE_PARTITION)
        free = None  # the free slots, lowest last; computed when a new partition needs one
        high_water = self._slot_high_water(worker)
        for tp, r in wanted.items():
            slot = slots.get(tp)
            if slot is None:
                if free is None:
                    free = sorted(set(range(self.partition_slots)) - set(slots.values()),
                                  reverse=True)
                if not free:
                    continue
                slot = slots[tp] = free.pop()
            topic = r.topic.encode()
            if len(topic) > TOPIC_MAX_BYTES:
                raise ValueError(f"topic {r.topic[:40]!r}... is {len(topic)} bytes, above "
                                 f"Kafka's {TOPIC_MAX_BYTES}")
            self._write_once(PARTITION_ROW, self._partition_offset(worker, slot), (
                topic, r.partition, int(r.state), r.log_start, r.log_end, r.high_watermark,
                r.messages_in, r.bytes_in, r.bytes_out, r.flushes, r.appends, r.leader,
                r.replicas, r.isr, r.replica_lag))
            high_water = max(high_water, slot + 1)
        # raised after the rows are written, so a reader scanning [0, high water) finds
        # every slot in use
        if high_water != self._slot_high_water(worker):
            self.write_worker(worker, partition_slots=high_water)

    def _slot_high_water(self, worker: int) -> int:
        values, _torn = self._read(WORKER_ROW, self._worker_offset(worker))
        used = values[WORKER_FIELDS.index("partition_slots")]
        return min(max(used, 0), self.partition_slots)

    def read_partitions(self, worker: int) -> list[PartitionRow]:
        """Worker's partition rows (node_id from its worker part), by topic and
        partition."""
        node_id = self.read_worker(worker)["node_id"]
        rows = []
        for slot in range(self._slot_high_water(worker)):
            values, torn = self._read(PARTITION_ROW, self._partition_offset(worker, slot))
            topic, partition, state, *counters = values
            if state:
                rows.append(PartitionRow(topic.rstrip(b"\0").decode(errors="replace"),
                                         partition, node_id, *counters, state=state,
                                         torn=torn))
        rows.sort(key=lambda r: (r.topic, r.partition))
        return rows

    def partitions(self) -> list[PartitionRow]:
        """Every worker's partition rows, worker by worker."""
        return [row for worker in range(self.workers) for row in self.read_partitions(worker)]

    # --- histograms --------------------------------------------------------------------

    def _hist_offset(self, worker: int, row: int) -> int:
        self._check_worker(worker)
        return self._hist_base + (worker * (API_ROWS + 1) + row) * HISTOGRAM_ROW.slot

    def write_histograms(self, worker: int, by_api: dict, fsync) -> None:
        """by_api: api key -> stats.Histogram; fsync: a stats.Histogram. Unchanged
        rows are not rewritten."""
        for api_key, hist in list(by_api.items()):
            if 0 <= api_key <= MAX_API_KEY:
                self._write_once(HISTOGRAM_ROW, self._hist_offset(worker, api_key),
                                 tuple(hist.row()))
        self._write_once(HISTOGRAM_ROW, self._hist_offset(worker, API_ROWS),
                         tuple(fsync.row()))

    def read_histograms(self, worker: int) -> tuple[dict[int, tuple], tuple]:
        """({api key: (count, sum_us, buckets...)} for keys seen, fsync row); a row
        that could not be read whole is returned as last copied."""
        rows = {}
        for api_key in range(API_ROWS):
            row, _torn = self._read(HISTOGRAM_ROW, self._hist_offset(worker, api_key))
            if row[0]:
                rows[api_key] = row
        return rows, self._read(HISTOGRAM_ROW, self._hist_offset(worker, API_ROWS))[0]


def _create(path: str, workers: int) -> mmap.mmap:
    """A new block for `workers` workers, published at `path` by os.replace() once
    sized and given its header (readers of a previous block keep their inode)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"control block for {workers} workers: 1..{MAX_WORKERS} allowed")
    size = layout_size(workers)
    directory, name = os.path.split(os.path.abspath(path))
    # temporaries left by a supervisor that crashed mid-create: only the supervisor
    # (one per data dir, under its flock) creates blocks, so none is in use
    for entry in os.listdir(directory):
        if entry.startswith(name + ".") and entry.endswith(".tmp"):
            os.unlink(os.path.join(directory, entry))
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)  # a new, empty inode: zeros, nobody maps it yet
        block = mmap.mmap(fd, size, access=mmap.ACCESS_WRITE)
    finally:
        os.close(fd)
    HEADER.body.pack_into(block, 0, MAGIC, LAYOUT_VERSION, workers, PARTITION_SLOTS,
                          API_ROWS, os.getpid(), int(time.time() * 1000), size)
    os.replace(tmp, path)
    return block


def _open(path: str) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size < HEADER.slot:
            raise ValueError(f"{path} is {size} bytes: not a pybroker control block")
        return mmap.mmap(fd, size, access=mmap.ACCESS_WRITE)
    finally:
        os.close(fd)
