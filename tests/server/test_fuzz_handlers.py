"""Mutated real-client frames against a real Worker in this process: framing, decoding
and every request handler.

The Worker is the one the supervisor forks (its control block first, then
Worker(config, 0, zk_connect, data_dir, listen_socket)), on a socket bound to
127.0.0.1:0, with the test's ZooKeeper chroot and data under tmp_path. Its loop runs on
the main thread (it installs signal handlers); a client thread drives LANES
connections at once through a selector. Each round trip on a lane is one bounded
batch: the mutants of pybroker.testing.mutate.mutant_batches (seeded from
tests/data/frames/clients.json plus the well-formed requests below), a few well-formed
requests for the pre-created topic and group (so produce, fetch, offsets and the group
coordinator do real work), then an ApiVersions sentinel; answers come in request order,
so the sentinel's ends the batch. A broker that closes the connection (a mutant it
refuses) is reconnected; a batch still unanswered after STALL_S (a long poll, a join
waiting for its rebalance) is dropped by the client and the lane reconnects. Some
batches end in a frame with a broken size prefix, or are cut mid-frame by the client.
Every few seconds the client deletes the topics mutants created (see JANITOR_BATCHES).

Observed in process, on the loop's own thread: every close for "internal error in a
request handler" (CloseReason.HANDLER_ERROR), every logged traceback, every error
pybroker logs (failed on when it carries an exception, see FAILURES), every exception
the loop's exception handler receives, and every uncaught exception of another thread. Each is traced to its input: the frame body
being dispatched (Connection._dispatch's `body`), else the correlation id being
answered (every input has its own), else the batch in flight on that peer's
connection. Asserted: none of them; the process's VmRSS at the end within 2x of its
start; a plain produce + fetch afterwards; every API the worker serves received inputs.

Reproducible: the seed is printed (run with -s) and named in every failure message;
PYBROKER_FUZZ_SEED=<n> replays the inputs (the interleaving of lanes may differ).
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import selectors
import socket
import struct
import sys
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pybroker.config import BrokerConfig
from pybroker.protocol import APIS, SUPPORTED, ApiKey, encode_request
from pybroker.protocol.schema import Struct
from pybroker.records import build_batch, parse_batches, parse_records
from pybroker.server.connection import CloseReason
from pybroker.server.controlblock import ControlBlock
from pybroker.server.handlers import HANDLERS
from pybroker.server.worker import Worker
from pybroker.testing.broker_plugin import RawClient
from pybroker.testing.frames import SEED_TOPICS, load_frames
from pybroker.testing.mutate import (FUZZ_SETTINGS, Mutator, mutant_batches,
                                     with_correlation_id)
from pybroker.testing.poll import wait_for

FRAMES_FILE = Path(__file__).parent.parent / "data" / "frames" / "clients.json"
TOPIC, PARTITIONS = "fuzz-topic", 2   # the well-formed requests' topic
GROUP = "fuzz-group"
LANES = 64                # connections in flight at once: a stalled one does not stop the rest
BATCH = 20                # decodable mutants per batch (mutant_batches)
WELL_FORMED_PER_BATCH = 3
STALL_S = 1.0             # a batch unanswered this long is dropped (see the docstring)
BROKEN_FRAME_EVERY = 16   # one batch in this many ends in a broken frame
WELL_FORMED_CID = 1 << 30  # well-formed requests' correlation ids; the mutants' are below
SENTINEL_CID = -1          # per lane: -(lane number + 1)
START_S = 60.0            # worker start (first ZooKeeper view) and topic creation
# Mutated CreateTopics frames create topics (mutated names; 1-4 partitions each, see
# FUZZ_SETTINGS): measured, ~300 partitions in the first 7 minutes of a million-input
# run. That is state the worker must keep, not a leak, and it would outgrow the RSS
# bound on its own; so every JANITOR_BATCHES batches (~4,600 inputs, a few seconds) the
# client deletes every topic it did not create itself, with a well-formed Metadata +
# DeleteTopics, which exercises deletion under load too.
JANITOR_BATCHES = 200
# The janitor waits this long for each answer: a loaded worker accepts late (its backlog
# holds lanes' connections) and DeleteTopics waits on its one ZooKeeper thread (10 s
# seen exceeded at 560,000 inputs); the janitor is housekeeping, not under test.
JANITOR_TIMEOUT_S = 60.0
PROGRESS_INPUTS = 50_000  # a progress line (with -s) every this many inputs
# Correlation ids remembered to trace a deferred answer's failure to its input: an
# answer comes at most STALL_S after its batch began (then the connection is gone),
# about 2,000 inputs at the measured rate; a few MiB of bodies, not enough to move RSS.
RECENT_INPUTS = 20_000
DEFAULT_INPUTS = 20_000   # a few seconds' worth
SLOW_INPUTS = 1_000_000
RETRIABLE = (3, 5, 6)     # UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER


def _seed() -> int:
    return int(os.environ.get("PYBROKER_FUZZ_SEED") or time.time_ns() % 2**32)


def _vm_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


# --- well-formed requests ---------------------------------------------------------------

def _for_version(struct_, version: int, value):
    """value with the fields struct_ lacks at this version left out (the encoder refuses
    a non-default value in a field the version does not have)."""
    if not isinstance(value, dict):
        return value
    out = {}
    for f in struct_.fields:
        if f.name not in value or version not in f.versions:
            continue
        v, element = value[f.name], getattr(f.type, "element", None)
        if isinstance(element, Struct) and v is not None:
            v = [_for_version(element, version, item) for item in v]
        elif isinstance(f.type, Struct):
            v = _for_version(f.type, version, v)
        out[f.name] = v
    return out


def _encode(api_key: int, version: int, body: dict) -> bytes:
    """A request frame body (no size prefix); its correlation id is replaced when sent."""
    body = _for_version(APIS[api_key].request, version, body)
    return b"".join(bytes(c) for c in encode_request(api_key, version, 0, "fuzz-handlers",
                                                     body, framed=False))


def well_formed_requests() -> list[bytes]:
    """Requests a client would send for TOPIC and GROUP, each at every version the worker
    serves: they succeed (or fail with an error code), so the handlers' real paths run,
    and they are seeds for the mutator too."""
    parts = range(PARTITIONS)
    records = bytes(build_batch([b"fuzz-a", b"fuzz-b"], keys=[b"k", None]))
    bodies = {
        ApiKey.API_VERSIONS: [{"client_software_name": "fuzz",
                               "client_software_version": "1"}],
        ApiKey.METADATA: [{"topics": [{"name": TOPIC}], "allow_auto_topic_creation": False},
                          {"topics": []}],
        ApiKey.PRODUCE: [{"transactional_id": None, "acks": acks, "timeout_ms": 5000,
                          "topic_data": [{"name": TOPIC, "partition_data": [
                              {"index": p, "records": records} for p in parts]}]}
                         for acks in (1, -1, 0)],
        ApiKey.FETCH: [{"replica_id": -1, "max_wait_ms": 0, "min_bytes": 0,
                        "max_bytes": 1 << 16, "isolation_level": 0, "session_id": 0,
                        "session_epoch": -1, "topics": [{"topic": TOPIC, "partitions": [
                            {"partition": p, "current_leader_epoch": -1, "fetch_offset": 0,
                             "log_start_offset": -1, "partition_max_bytes": 1 << 15}
                            for p in parts]}], "forgotten_topics_data": [], "rack_id": ""}],
        ApiKey.LIST_OFFSETS: [{"replica_id": -1, "isolation_level": 0, "topics": [
            {"name": TOPIC, "partitions": [
                {"partition_index": p, "current_leader_epoch": -1, "timestamp": ts}
                for p in parts]}]} for ts in (-1, -2, 0)],
        ApiKey.CREATE_TOPICS: [{"topics": [{"name": TOPIC, "num_partitions": PARTITIONS,
                                            "replication_factor": 1, "assignments": [],
                                            "configs": []}],
                                "timeout_ms": 1000, "validate_only": validate}
                               for validate in (True, False)],
        ApiKey.DELETE_TOPICS: [{"topic_names": [TOPIC + "-absent"], "timeout_ms": 1000}],
        ApiKey.INIT_PRODUCER_ID: [{"transactional_id": None, "transaction_timeout_ms": -1}],
        ApiKey.OFFSET_FOR_LEADER_EPOCH: [{"replica_id": -1, "topics": [
            {"topic": TOPIC, "partitions": [
                {"partition": p, "current_leader_epoch": current, "leader_epoch": 0}
                for p in parts]}]} for current in (-1, 0)],
        ApiKey.CREATE_PARTITIONS: [{"topics": [{"name": TOPIC, "count": count,
                                                "assignments": None}],
                                    "timeout_ms": 1000, "validate_only": validate}
                                   for count, validate in ((PARTITIONS + 1, True),
                                                           (PARTITIONS, False))],
        ApiKey.ELECT_LEADERS: [{"election_type": kind, "topic_partitions": [
            {"topic": TOPIC, "partitions": list(parts)}], "timeout_ms": 1000}
            for kind in (0, 1)] + [{"election_type": 0, "topic_partitions": None,
                                    "timeout_ms": 1000}],
        # refused or cancelling nothing: the fuzzed broker's partitions stay put
        ApiKey.ALTER_PARTITION_REASSIGNMENTS: [{
            "timeout_ms": 1000, "allow_replication_factor_change": allow, "topics": [
                {"name": TOPIC, "partitions": [{"partition_index": p, "replicas": replicas}
                                               for p in parts]}]}
            for allow, replicas in ((True, None), (False, [987654]))],
        ApiKey.LIST_PARTITION_REASSIGNMENTS: [
            {"timeout_ms": 1000, "topics": None},
            {"timeout_ms": 1000, "topics": [{"name": TOPIC, "partition_indexes": list(parts)}]}],
        ApiKey.FIND_COORDINATOR: [{"key": GROUP, "key_type": 0}],
        ApiKey.DELETE_GROUPS: [{"groups_names": [GROUP, GROUP + "-absent", ""]}],
        ApiKey.OFFSET_DELETE: [{"group_id": GROUP, "topics": [
            {"name": TOPIC, "partitions": [{"partition_index": p} for p in parts]}]}],
        ApiKey.DESCRIBE_LOG_DIRS: [{"topics": None},
                                   {"topics": [{"topic": TOPIC, "partitions": list(parts)}]}],
        ApiKey.DESCRIBE_CLUSTER: [{"include_cluster_authorized_operations": False,
                                   "endpoint_type": kind, "include_fenced_brokers": True}
                                  for kind in (1, 2)],
        ApiKey.JOIN_GROUP: [{"group_id": GROUP, "session_timeout_ms": 1000,
                             "rebalance_timeout_ms": 1000, "member_id": "",
                             "group_instance_id": None, "protocol_type": "consumer",
                             "protocols": [{"name": "range", "metadata": b"\x00\x01"}]}],
        ApiKey.SYNC_GROUP: [{"group_id": GROUP, "generation_id": 1, "member_id": "m",
                             "group_instance_id": None,
                             "assignments": [{"member_id": "m", "assignment": b"\x00"}]}],
        ApiKey.HEARTBEAT: [{"group_id": GROUP, "generation_id": 1, "member_id": "m",
                            "group_instance_id": None}],
        ApiKey.LEAVE_GROUP: [{"group_id": GROUP, "member_id": "m",
                              "members": [{"member_id": "m", "group_instance_id": None}]}],
        ApiKey.OFFSET_COMMIT: [{"group_id": GROUP, "generation_id_or_member_epoch": -1,
                                "member_id": "", "group_instance_id": None,
                                "retention_time_ms": -1, "topics": [{"name": TOPIC,
                                    "partitions": [{"partition_index": p,
                                                    "committed_offset": 1,
                                                    "committed_leader_epoch": -1,
                                                    "committed_metadata": ""}
                                                   for p in parts]}]}],
        ApiKey.OFFSET_FETCH: [{"group_id": GROUP, "topics": [
            {"name": TOPIC, "partition_indexes": list(parts)}]}],
        ApiKey.LIST_GROUPS: [{}],
        ApiKey.DESCRIBE_GROUPS: [{"groups": [GROUP], "include_authorized_operations": False}],
        ApiKey.DESCRIBE_CONFIGS: [{"resources": [
            {"resource_type": 2, "resource_name": TOPIC, "configuration_keys": None},
            {"resource_type": 4, "resource_name": "0", "configuration_keys": None}],
            "include_synonyms": True}],
        ApiKey.ALTER_CONFIGS: [{"resources": [{"resource_type": 2, "resource_name": TOPIC,
                                               "configs": [{"name": "retention.ms",
                                                            "value": "3600000"}]}],
                                "validate_only": validate} for validate in (True, False)],
        ApiKey.INCREMENTAL_ALTER_CONFIGS: [{"resources": [
            {"resource_type": 2, "resource_name": TOPIC, "configs": [
                {"name": "retention.ms", "config_operation": 0, "value": "7200000"}]}],
            "validate_only": False}],
    }
    assert set(bodies) == set(HANDLERS), sorted(set(HANDLERS) ^ set(bodies))
    frames = []
    for api_key, variants in bodies.items():
        low, high = SUPPORTED[api_key]
        for version in range(low, high + 1):
            frames += [_encode(api_key, version, body) for body in variants]
    return frames


# --- observing the worker ---------------------------------------------------------------

# What the test fails on: a logged traceback, a HANDLER_ERROR close, an error logged with
# the exception that caused it (log.error("... %r", exc)), an exception the loop's
# handler got, an uncaught exception in a thread.
FAILURES = ("traceback", "handler error close", "error log with an exception", "loop",
            "thread")
# An error line without an exception is shown, not failed on: it is the broker's
# reported degradation, e.g. "ZooKeeper create of 1 topic(s) failed: no answer from
# ZooKeeper within 10 s" when its one ZooKeeper thread is behind a flood of mutated
# admin requests (seen in a run slowed 20x by tracemalloc).
NOTE = "error log"


@dataclass
class Finding:
    kind: str           # one of FAILURES, or NOTE
    summary: str        # what tells this failure apart from the others
    detail: str         # the traceback, or the log line
    inputs: list        # hex of the input, or of the batch in flight on that peer
    count: int = 1


@dataclass
class Inputs:
    """What the client sent recently, so a failure seen on the loop names its input.
    Written by the client thread, read by the loop thread (dict get/set under the GIL)."""
    by_cid: dict = field(default_factory=dict)         # correlation id -> frame body
    order: deque = field(default_factory=deque)
    batch_by_peer: dict = field(default_factory=dict)  # "127.0.0.1:port" -> bodies, while
                                                       # that connection is open

    def remember(self, cid: int, body: bytes) -> None:
        self.by_cid[cid] = body
        self.order.append(cid)
        if len(self.order) > RECENT_INPUTS:
            self.by_cid.pop(self.order.popleft(), None)


_PEER = re.compile(r"peer=(\S+)")
_NUMBERS = re.compile(r"\b(peer=\S+|node=\d+|0x[0-9a-f]+|\d+)\b")
_CONNECTION_PY = os.path.join("pybroker", "server", "connection.py")


class Observer(logging.Handler):
    """Records every failure the worker reports: a logging handler (on "pybroker",
    which stops propagating meanwhile, and on the root for other loggers' tracebacks),
    the loop's exception handler and threading.excepthook."""

    def __init__(self, inputs: Inputs):
        super().__init__(logging.DEBUG)
        self.inputs = inputs
        self.findings: dict[tuple, Finding] = {}
        self.closes: Counter = Counter()
        self._lock = threading.Lock()

    # -- logging
    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that does not format is a finding too
            message = f"{record.msg!r} % {record.args!r}"
        for reason in CloseReason:
            if "connection closed: " + reason.value in message:
                self.closes[reason.name] += 1
                break
        from_pybroker = record.name.startswith("pybroker")
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None and record.levelno >= logging.ERROR:   # log.error("... %r", exc)
            exc = next((a for a in (record.args or ()) if isinstance(a, BaseException)), None)
        if record.exc_info:
            kind = "traceback"
        elif CloseReason.HANDLER_ERROR.value in message:
            kind = "handler error close"
        elif from_pybroker and record.levelno >= logging.ERROR:
            kind = NOTE if exc is None else "error log with an exception"
        else:
            return
        detail = f"{record.name} {record.levelname}: {message}"
        if exc is not None:
            detail += "\n" + "".join(traceback.format_exception(exc))
        self._add(kind, self._summary(kind, message, exc), detail, self._inputs_of(message))

    def _inputs_of(self, message: str) -> list[str]:
        """The input being handled on this thread's stack, else that peer's batch."""
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename.endswith(_CONNECTION_PY):
                local = frame.f_locals
                body = local.get("body") if frame.f_code.co_name == "_dispatch" else None
                if isinstance(body, memoryview):
                    try:
                        return [bytes(body).hex()]
                    except ValueError:   # a released view
                        pass
                cid = local.get("correlation_id")
                if isinstance(cid, int) and cid in self.inputs.by_cid:
                    return [self.inputs.by_cid[cid].hex()]
            frame = frame.f_back
        match = _PEER.search(message)
        batch = self.inputs.batch_by_peer.get(match.group(1)) if match else None
        return [b.hex() for b in batch] if batch else []

    @staticmethod
    def _summary(kind: str, message: str, exc) -> str:
        if exc is not None:
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
            return f"{kind}: {type(exc).__name__}{where}"
        return f"{kind}: " + _NUMBERS.sub("N", message)[:200]

    def _add(self, kind: str, summary: str, detail: str, inputs: list) -> None:
        with self._lock:
            found = self.findings.get((kind, summary))
            if found is None:
                self.findings[(kind, summary)] = Finding(kind, summary, detail, inputs)
            else:
                found.count += 1

    # -- the loop and the threads
    def loop_exception(self, loop, context: dict) -> None:
        exc = context.get("exception")
        detail = context.get("message", "") + "\n" + "\n".join(
            f"{k}: {v!r}" for k, v in context.items() if k not in ("message", "exception"))
        if exc is not None:
            detail += "\n" + "".join(traceback.format_exception(exc))
        self._add("loop", self._summary("loop", context.get("message", ""), exc), detail,
                  self._inputs_of(""))

    def thread_exception(self, args) -> None:
        exc = args.exc_value
        detail = f"thread {args.thread.name if args.thread else '?'}:\n" + "".join(
            traceback.format_exception(args.exc_type, exc, args.exc_traceback))
        self._add("thread", self._summary("thread", "", exc), detail, [])

    def failures(self) -> list[Finding]:
        return [f for f in self.findings.values() if f.kind in FAILURES]

    def report(self, seed: int, kinds=FAILURES) -> str:
        shown = [f for f in self.findings.values() if f.kind in kinds]
        lines = [f"seed={seed}: {len(shown)} distinct {'/'.join(kinds)} "
                 f"({sum(f.count for f in shown)} in all):"]
        for f in shown:
            lines += ["", f"--- {f.summary} (x{f.count})", f.detail.rstrip(),
                      "input hex (the frame body)" if len(f.inputs) == 1 else
                      f"inputs in flight on that connection ({len(f.inputs)}; hex):",
                      *f.inputs[:30]]
        return "\n".join(lines)


# --- the client ---------------------------------------------------------------------------

class Lane:
    """One connection, driven without blocking by the client's selector."""

    def __init__(self, port: int, number: int, inputs: Inputs, stats: Counter):
        self.port = port
        self.sentinel = SENTINEL_CID - number
        self.inputs = inputs
        self.stats = stats
        self.sock: socket.socket | None = None
        self.peer = ""
        self.busy = False
        self._out = memoryview(b"")
        self._in = bytearray()
        self._deadline = 0.0
        self._hang_up = False
        self._answered = 0

    def start(self, sel: selectors.BaseSelector, frames: list[bytes], tail: bytes,
              hang_up: bool) -> None:
        """Send frames, then `tail` (raw bytes: a broken frame, or b""), then the
        sentinel, unless hang_up: then the client closes after the tail."""
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setblocking(False)
            self.peer = "%s:%d" % self.sock.getsockname()
            sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)
        else:
            sel.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)
        self.inputs.batch_by_peer[self.peer] = frames
        sentinel = b"" if hang_up else _frame(struct.pack(">hhih", ApiKey.API_VERSIONS, 0,
                                                          self.sentinel, 4) + b"fuzz")
        self._out = memoryview(b"".join(_frame(f) for f in frames) + tail + sentinel)
        self._in.clear()
        self._answered = 0
        self._hang_up = hang_up
        self._deadline = time.monotonic() + STALL_S
        self.busy = True
        self.stats["batches"] += 1

    def on_event(self, sel, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE and self._out:
                sent = self.sock.send(self._out)
                self._out = self._out[sent:]
                if not self._out:
                    if self._hang_up:
                        self._end(sel, "hung up")
                        return
                    sel.modify(self.sock, selectors.EVENT_READ, self)
            if mask & selectors.EVENT_READ:
                data = self.sock.recv(1 << 20)
                if not data:
                    self._end(sel, "closed")
                    return
                self._in += data
                self._read_answers(sel)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:   # reset while we were still sending: the broker closed it
            self._end(sel, "closed")

    def _read_answers(self, sel) -> None:
        buf, pos = self._in, 0
        while len(buf) - pos >= 8:
            (size,) = struct.unpack_from(">i", buf, pos)
            if len(buf) - pos - 4 < size:
                break
            (cid,) = struct.unpack_from(">i", buf, pos + 4)
            pos += 4 + size
            if cid == self.sentinel:
                self.busy = False
                self.stats["sentinels answered"] += 1
                sel.modify(self.sock, selectors.EVENT_READ, self)
                del buf[:pos]
                return
            self.stats["answers"] += 1
            self._answered += 1
        del buf[:pos]

    def check_stall(self, sel, now: float) -> None:
        if self.busy and now > self._deadline:
            frames = self.inputs.batch_by_peer.get(self.peer, [])
            if self._answered < len(frames):  # the first unanswered (acks=0 aside)
                head = frames[self._answered]
                self.stats["stalled on api %d" % struct.unpack_from(">h", head)[0]] += 1
            self._end(sel, "stalled")

    def _end(self, sel, how: str) -> None:
        self.stats[how] += 1
        self.busy = False
        # the worker logs a close before closing its socket: nothing names this peer now
        self.inputs.batch_by_peer.pop(self.peer, None)
        if self.sock is not None:
            sel.unregister(self.sock)
            self.sock.close()
        self.sock = None

    def close(self, sel) -> None:
        if self.sock is not None:
            self._end(sel, "left open at the end")


def _frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def _broken_frame(rng: random.Random, body: bytes, max_frame: int) -> tuple[bytes, bool]:
    """(raw bytes, hang up after them): a size prefix out of range (negative, above
    socket.request.max.bytes, zero), or the first part of a frame then the client
    closing. A prefix in range with missing bytes would only make the batch stall."""
    choice = rng.randrange(4)
    if choice == 0:
        return struct.pack(">i", rng.choice((-1, -2**31, -len(body)))) + body, False
    if choice == 1:
        return struct.pack(">i", rng.choice((max_frame + 1, 2**31 - 1))) + body, False
    if choice == 2:
        return struct.pack(">i", 0), False
    return _frame(body)[:rng.randrange(1, len(body) + 4)], True


@dataclass
class Run:
    """What the client thread measured; error is its exception, if any."""
    inputs: int = 0
    mutants: int = 0
    well_formed: int = 0
    broken_frames: int = 0
    elapsed: float = 0.0
    rss_start: int = 0
    rss_end: int = 0
    apis: Counter = field(default_factory=Counter)
    stats: Counter = field(default_factory=Counter)
    worker_end: str = ""   # _worker_state when the last input was answered
    error: BaseException | None = None
    error_text: str = ""


def _create_topic(port: int, name: str, partitions: int) -> None:
    """CreateTopics, then wait until a produce to every partition answers 0 (the worker
    opens the logs on its storage thread after ZooKeeper names it leader)."""
    with RawClient(port) as c:
        body = c.request(ApiKey.CREATE_TOPICS, 1, {
            "topics": [{"name": name, "num_partitions": partitions, "replication_factor": 1,
                        "assignments": [], "configs": []}],
            "timeout_ms": 30_000, "validate_only": False})
    assert body["topics"][0]["error_code"] == 0, body
    for p in range(partitions):
        _produce(port, name, p, [b"ready"])


def _produce(port: int, topic: str, partition: int, values: list[bytes]) -> int:
    """Produce (acks=all) until it answers without error; the base offset."""
    request = {"transactional_id": None, "acks": -1, "timeout_ms": 10_000,
               "topic_data": [{"name": topic, "partition_data": [
                   {"index": partition, "records": bytes(build_batch(values))}]}]}
    last: list = []

    def produced():
        with RawClient(port) as c:
            answer = c.request(ApiKey.PRODUCE, 7, request)["responses"][0][
                "partition_responses"][0]
        last[:] = [answer]
        assert answer["error_code"] in (0, *RETRIABLE), answer
        return answer if answer["error_code"] == 0 else None
    return wait_for(produced, f"a produce to {topic}-{partition} answered without error",
                    START_S, poll=0.1, detail=lambda: last)["base_offset"]


def _delete_mutant_topics(port: int, keep: set) -> int:
    """DeleteTopics of every topic the worker lists besides `keep`; how many it asked for.
    Error codes are not checked: a mutant may be deleting the same topic meanwhile."""
    with RawClient(port, timeout=JANITOR_TIMEOUT_S) as c:
        names = {t["name"] for t in c.request(ApiKey.METADATA, 1, {"topics": None})["topics"]}
        doomed = sorted(names - keep)
        if doomed:
            c.request(ApiKey.DELETE_TOPICS, 1, {"topic_names": doomed, "timeout_ms": 5000})
    return len(doomed)


def _produce_and_fetch(port: int) -> None:
    _create_topic(port, "after-fuzz", 1)
    base = _produce(port, "after-fuzz", 0, [b"still", b"works"])
    with RawClient(port) as c:
        body = c.request(ApiKey.FETCH, 11, {
            "replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20,
            "topics": [{"topic": "after-fuzz", "partitions": [
                {"partition": 0, "fetch_offset": base, "partition_max_bytes": 1 << 20}]}]})
    answer = body["responses"][0]["partitions"][0]
    values = [r.value for b in parse_batches(answer["records"] or b"")
              for r in parse_records(b)]
    assert answer["error_code"] == 0 and values == [b"still", b"works"], answer


def drive(worker: Worker, port: int, count: int, seed: int, inputs: Inputs, run: Run,
          worker_failed: threading.Event) -> None:
    """The client thread: set up the topics, send `count` mutants (and the well-formed
    requests and broken frames among them), then the produce + fetch; always stops the
    worker at the end."""
    try:
        wait_for(lambda: worker.serving or worker_failed.is_set(), "the worker serving",
                 START_S)
        if worker_failed.is_set():
            return
        for name, partitions in {**SEED_TOPICS, TOPIC: PARTITIONS}.items():
            _create_topic(port, name, partitions)
        extra = well_formed_requests()
        mutator = Mutator([f.body for f in load_frames(FRAMES_FILE)] + extra, seed)
        rng = random.Random(seed)
        max_frame = worker.config["socket.request.max.bytes"]
        _fuzz(worker, port, mutant_batches(mutator, count, BATCH), extra, rng, max_frame, inputs,
              run)
        _produce_and_fetch(port)
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        run.error, run.error_text = exc, traceback.format_exc()
    finally:
        try:
            worker.loop.call_soon_threadsafe(worker.stop)
        except (AttributeError, RuntimeError):   # it never started, or already ended
            pass


def _worker_state(worker: Worker) -> str:
    """What the worker holds now, for the progress lines (lengths read off the loop's
    thread: a snapshot, good enough to see what grows)."""
    coordinator = getattr(worker, "group_coordinator", None)
    groups = list(coordinator.groups.values()) if coordinator else []
    largest = max(groups, key=lambda g: len(g.members), default=None)
    biggest = "" if largest is None else (
        f" (largest {largest.group_id!r}: {largest.state.value}, {len(largest.members)} "
        f"members, rebalance timeout up to "
        f"{max((m.rebalance_timeout_s for m in largest.members.values()), default=0):,.0f} s)")
    return (f"connections {len(worker.connections)}, partitions "
            f"{len(worker.partitions.partitions)}, groups {len(groups)}{biggest}, "
            f"ZooKeeper calls queued {worker._zk_executor._work_queue.qsize()}")


def _fuzz(worker, port, batches, extra, rng, max_frame, inputs: Inputs, run: Run) -> None:
    sel = selectors.DefaultSelector()
    lanes = [Lane(port, n, inputs, run.stats) for n in range(LANES)]
    well_formed_cid = WELL_FORMED_CID
    keep = {*SEED_TOPICS, TOPIC}
    janitor_at, progress_at = JANITOR_BATCHES, PROGRESS_INPUTS
    run.rss_start = _vm_rss_kib()
    started = time.perf_counter()
    batches = iter(batches)
    more = True
    try:
        while True:
            for lane in lanes:
                if lane.busy or not more:
                    continue
                batch = next(batches, None)
                if batch is None:
                    more = False
                    break
                run.mutants += len(batch)
                for _ in range(WELL_FORMED_PER_BATCH):   # before a closing mutant, if any
                    well_formed_cid += 1
                    batch.insert(rng.randrange(len(batch) or 1),
                                 with_correlation_id(rng.choice(extra), well_formed_cid))
                    run.well_formed += 1
                tail, hang_up = b"", False
                if rng.randrange(BROKEN_FRAME_EVERY) == 0:
                    tail, hang_up = _broken_frame(rng, rng.choice(batch), max_frame)
                    run.broken_frames += 1
                for body in batch:
                    inputs.remember(struct.unpack_from(">i", body, 4)[0], body)
                    run.apis[struct.unpack_from(">h", body)[0]] += 1
                run.inputs += len(batch) + (1 if tail else 0)
                lane.start(sel, batch, tail, hang_up)
            if not more and not any(lane.busy for lane in lanes):
                break
            for key, mask in sel.select(0.1):
                key.data.on_event(sel, mask)
            now = time.monotonic()
            for lane in lanes:
                lane.check_stall(sel, now)
            if run.inputs >= progress_at:
                progress_at += PROGRESS_INPUTS
                elapsed = time.perf_counter() - started
                print(f"  {run.inputs} inputs in {elapsed:.0f} s "
                      f"({run.inputs / elapsed:,.0f}/s), VmRSS {_vm_rss_kib()} KiB, "
                      f"{_worker_state(worker)}", flush=True)
            if run.stats["batches"] >= janitor_at:
                janitor_at += JANITOR_BATCHES
                run.stats["topics deleted by the janitor"] += _delete_mutant_topics(port, keep)
    finally:
        for lane in lanes:
            lane.close(sel)
        sel.close()
        run.elapsed = time.perf_counter() - started
        run.rss_end = _vm_rss_kib()
        run.worker_end = _worker_state(worker)


# --- the test -------------------------------------------------------------------------------

def fuzz_worker(tmp_path: Path, zk_connect: str, count: int, seed: int) -> Run:
    data_dir = str(tmp_path / "data")
    os.makedirs(data_dir)
    ControlBlock.in_dir(data_dir, create=True, workers=1).close()
    listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen.bind(("127.0.0.1", 0))
    listen.listen(1024)
    port = listen.getsockname()[1]
    config = BrokerConfig({"log.dirs": data_dir, "port": port, "broker.id": 0,
                           "num.workers": 1, "zookeeper.connect": zk_connect,
                           "listeners.host": "127.0.0.1", **FUZZ_SETTINGS})
    worker = Worker(config, 0, zk_connect, data_dir, listen)

    inputs, run = Inputs(), Run()
    observer = Observer(inputs)
    pybroker_log, root = logging.getLogger("pybroker"), logging.getLogger()
    saved = pybroker_log.propagate, pybroker_log.level, threading.excepthook
    pybroker_log.addHandler(observer)
    pybroker_log.propagate = False   # tens of thousands of close lines: counted, not kept
    pybroker_log.setLevel(logging.WARNING)
    root.addHandler(observer)
    threading.excepthook = observer.thread_exception
    worker_failed = threading.Event()
    client = threading.Thread(target=drive, name="fuzz-client", daemon=True,
                              args=(worker, port, count, seed, inputs, run, worker_failed))

    async def main() -> int:
        asyncio.get_running_loop().set_exception_handler(observer.loop_exception)
        return await worker._main()

    print(f"\nhandler fuzz seed={seed} (PYBROKER_FUZZ_SEED={seed} replays it): "
          f"{count} mutants against worker node={worker.node_id} on 127.0.0.1:{port}")
    client.start()
    try:
        code = asyncio.run(main())
    except BaseException:
        worker_failed.set()
        raise
    finally:
        client.join(60)
        root.removeHandler(observer)
        pybroker_log.removeHandler(observer)
        pybroker_log.propagate, level, threading.excepthook = saved
        pybroker_log.setLevel(level)
    assert not client.is_alive(), f"seed={seed}: the client thread did not finish"
    rate = run.inputs / run.elapsed if run.elapsed else 0.0
    print(f"handler fuzz seed={seed}: {run.inputs} inputs ({run.mutants} mutants, "
          f"{run.well_formed} well-formed, {run.broken_frames} broken frames) in "
          f"{run.elapsed:.1f} s ({rate:,.0f}/s); worker requests {worker.stats.requests}; "
          f"VmRSS {run.rss_start} -> {run.rss_end} KiB\n  worker at the end: "
          f"{run.worker_end}\n  lanes {dict(run.stats)}\n"
          f"  closes {dict(observer.closes)}\n  inputs by api "
          f"{ {int(k): v for k, v in sorted(run.apis.items())} }")
    if observer.findings:
        print(observer.report(seed, FAILURES + (NOTE,)))
    client_failed = f"seed={seed}: the client failed:\n{run.error_text}" if run.error else ""
    assert not observer.failures(), observer.report(seed) + "\n\n" + client_failed
    assert not client_failed, client_failed
    assert code == 0, f"seed={seed}: the worker's run returned {code}"
    assert run.rss_end <= 2 * run.rss_start, \
        f"seed={seed}: VmRSS {run.rss_start} -> {run.rss_end} KiB over {run.inputs} inputs; " \
        f"the worker then held {run.worker_end}"
    missing = set(HANDLERS) - set(run.apis)
    assert not missing, f"seed={seed}: no input reached the handlers of {sorted(missing)}"
    return run


def test_fuzz_handlers_in_process(tmp_path, zk_connect):
    run = fuzz_worker(tmp_path, zk_connect, DEFAULT_INPUTS, _seed())
    assert run.mutants >= DEFAULT_INPUTS


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fuzz_handlers_in_process_million(tmp_path, zk_connect):
    run = fuzz_worker(tmp_path, zk_connect, SLOW_INPUTS, _seed())
    assert run.mutants >= SLOW_INPUTS
