"""Mutated real-client frames over sockets against a real 2-worker broker.

Seeds are the request frames confluent-kafka, kafka-python and kcat sent through a
recording proxy (pybroker.testing.frames; tests/data/frames/clients.json). Mutants
are pipelined in bounded batches over several connections; the broker may answer a
mutant, or close its connection with a named reason (malformed, unsupported...), and
we reconnect. Afterwards: no worker died or was restarted, no request handler raised
(the "internal error in a request handler" close reason) and no traceback reached the
broker log, each worker's RSS stayed within 2x of its start, and a plain produce +
fetch still works.
"""
from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest

from pybroker.protocol import ApiKey
from pybroker.records import build_batch, parse_batches, parse_records
from pybroker.testing.frames import (SEED_TOPICS, RecordingProxy, capture_clients,
                                     load_frames, save_frames, select_frames)
from pybroker.testing.mutate import FUZZ_SETTINGS, Mutator, mutant_batches
from pybroker.testing.poll import wait_for

FRAMES_FILE = Path(__file__).parent.parent / "data" / "frames" / "clients.json"
# Every API a client sent through the proxy in the capture; the capture test checks
# the recording still covers them (a client upgrade that stops sending one shows).
CAPTURED_APIS = {ApiKey.API_VERSIONS, ApiKey.METADATA, ApiKey.PRODUCE, ApiKey.FETCH,
                 ApiKey.LIST_OFFSETS, ApiKey.FIND_COORDINATOR, ApiKey.JOIN_GROUP,
                 ApiKey.SYNC_GROUP, ApiKey.HEARTBEAT, ApiKey.OFFSET_COMMIT,
                 ApiKey.OFFSET_FETCH, ApiKey.LEAVE_GROUP, ApiKey.CREATE_TOPICS,
                 ApiKey.DELETE_TOPICS, ApiKey.DESCRIBE_CONFIGS, ApiKey.INIT_PRODUCER_ID,
                 ApiKey.INCREMENTAL_ALTER_CONFIGS}


@pytest.mark.slow
def test_capture_client_frames(broker):
    """Real clients through the recording proxy; with PYBROKER_WRITE_FRAMES=1 the
    selection is written to tests/data/frames/clients.json."""
    with RecordingProxy(broker.ports) as proxy:
        capture_clients(proxy)
        frames = select_frames(proxy.frames)
    apis = {f.api_key for f in frames}
    assert CAPTURED_APIS <= apis, f"not captured: {sorted(CAPTURED_APIS - apis)}"
    assert {f.client for f in frames} == {"confluent", "kafka-python", "kcat"}
    if os.environ.get("PYBROKER_WRITE_FRAMES") == "1":
        FRAMES_FILE.parent.mkdir(parents=True, exist_ok=True)
        save_frames(frames, FRAMES_FILE)


# --- fuzzing a live broker --------------------------------------------------------------

LANES = 4                 # connections at a time, two per worker
BATCH = 20                # decodable mutants pipelined per round trip (bounded batches)
SOCKET_TIMEOUT_S = 5.0    # a batch not answered by then holds a long wait (a fetch's
                          # max_wait_ms, a join's rebalance timeout): reconnect, go on


def _seed() -> int:
    return int(os.environ.get("PYBROKER_FUZZ_SEED") or time.time_ns() % 2**32)


def _vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _tracebacks(log: str) -> list[str]:
    """Each distinct traceback in a broker log, with the log line before it (it names
    the node, the peer, the api and version); distinct by their last lines."""
    lines = log.splitlines()
    found: dict[str, str] = {}
    for i, line in enumerate(lines):
        if not line.startswith("Traceback"):
            continue
        end = i + 1
        while end < len(lines) and not lines[end][:4].isdigit() and \
                not lines[end].startswith("==="):
            end += 1
        block = lines[max(0, i - 1):end]
        found.setdefault("\n".join(block[-3:]), "\n".join(block))
    return list(found.values())


class Lane:
    """One connection to one worker, reopened whenever the broker closes it."""

    def __init__(self, port: int, number: int):
        self.port = port
        self.number = number
        self.sock: socket.socket | None = None
        self.sentinels = 0
        self.stats = {"batches": 0, "answered": 0, "closed": 0, "stalled": 0}

    def _connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock.settimeout(SOCKET_TIMEOUT_S)

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def run(self, frames: list[bytes]) -> None:
        """Send frames then an ApiVersions sentinel in one write; read answers until the
        sentinel's (answers come in request order) or until the broker closes."""
        if self.sock is None:
            self._connect()
        self.sentinels += 1
        sentinel = -(self.number * 1_000_000 + self.sentinels)   # mutants' ids are >= 0
        header = (struct.pack(">hhi", ApiKey.API_VERSIONS, 0, sentinel) +
                  struct.pack(">h", 4) + b"fuzz")
        wire = b"".join(struct.pack(">i", len(f)) + f for f in frames)
        wire += struct.pack(">i", len(header)) + header
        self.stats["batches"] += 1
        try:
            self.sock.sendall(wire)
            while True:
                prefix = self._recv_exact(4)
                body = prefix and self._recv_exact(struct.unpack(">i", prefix)[0])
                if not body:
                    self.stats["closed"] += 1
                    self._drop()
                    return
                (cid,) = struct.unpack_from(">i", body)
                if cid == sentinel:
                    return
                self.stats["answered"] += 1
        except socket.timeout:
            self.stats["stalled"] += 1
            self._drop()
        except OSError:   # reset while we were still sending: the broker closed it
            self.stats["closed"] += 1
            self._drop()


RETRIABLE = (3, 5, 6)   # UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER


def _produce_and_fetch(broker) -> None:
    """A plain produce + fetch on a new topic, retrying the retriable codes a client
    retries while the leader's own view catches up (its log opens on its storage
    thread a moment after Metadata elsewhere names it leader)."""
    broker.create_topic("after-fuzz", 1)
    produce = {"transactional_id": None, "acks": -1, "timeout_ms": 10_000,
               "topic_data": [{"name": "after-fuzz", "partition_data": [
                   {"index": 0, "records": bytes(build_batch([b"still", b"works"]))}]}]}

    last: list = []

    def produced():
        with broker.client() as c:
            body = c.request(ApiKey.METADATA, 8, {"topics": [{"name": "after-fuzz"}],
                                                  "allow_auto_topic_creation": False})
            last[:] = [body["topics"]]
            leader = body["topics"][0]["partitions"][0]["leader_id"]
        if leader < 0:
            return None
        with broker.client(broker.node_ids.index(leader)) as c:
            body = c.request(ApiKey.PRODUCE, 7, produce)
        answer = body["responses"][0]["partition_responses"][0]
        last.append(answer)
        assert answer["error_code"] in (0, *RETRIABLE), answer
        return (leader,) if answer["error_code"] == 0 else None   # node 0 is falsy
    (leader,) = wait_for(produced, "a produce to after-fuzz-0 answered without error", 30.0,
                      poll=0.2, detail=lambda: last)
    with broker.client(broker.node_ids.index(leader)) as c:
        body = c.request(ApiKey.FETCH, 11, {
            "replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20,
            "topics": [{"topic": "after-fuzz", "partitions": [
                {"partition": 0, "fetch_offset": 0, "partition_max_bytes": 1 << 20}]}]})
    answer = body["responses"][0]["partitions"][0]
    values = [r.value for b in parse_batches(answer["records"] or b"")
              for r in parse_records(b)]
    assert values == [b"still", b"works"], answer


def fuzz_broker(broker, count: int, seed: int) -> dict:
    for name, partitions in SEED_TOPICS.items():
        broker.create_topic(name, partitions)
    rows = broker.worker_rows()
    pids = [r["pid"] for r in rows]
    rss_start = {pid: _vm_rss_kib(pid) for pid in pids}
    lanes = [Lane(broker.ports[i % broker.workers], i) for i in range(LANES)]
    frames = 0
    mutator = Mutator([f.body for f in load_frames(FRAMES_FILE)], seed)
    for n, batch in enumerate(mutant_batches(mutator, count, BATCH)):
        lanes[n % LANES].run(batch)
        frames += len(batch)
    for lane in lanes:
        lane._drop()
    totals = {k: sum(lane.stats[k] for lane in lanes) for k in lanes[0].stats}
    rss_end = {pid: _vm_rss_kib(pid) for pid in pids}
    print(f"\nbroker fuzz seed={seed}: {frames} frames, {totals}, "
          f"worker RSS KiB start {rss_start} end {rss_end}")

    log = broker.log_text()
    handler_errors = [line for line in log.splitlines()
                      if "internal error in a request handler" in line]
    tracebacks = _tracebacks(log)
    # Findings in files other engineers own (the codec, connection.py, the produce,
    # fetch and group handlers) make these fail until they are fixed: a known failure
    # stays a failure. The close lines and the distinct tracebacks are in the message.
    assert not handler_errors and not tracebacks, (
        f"seed={seed}: {len(handler_errors)} handler errors, {len(tracebacks)} distinct "
        "tracebacks:\n" + "\n".join(handler_errors[:20]) + "\n\n" +
        "\n\n".join(tracebacks[:10]))
    after = broker.worker_rows()
    assert [r["pid"] for r in after] == pids, f"seed={seed}: workers replaced: {after}"
    assert [r["restarts"] for r in after] == [r["restarts"] for r in rows] == \
        [0] * broker.workers, f"seed={seed}: worker restarts: {after}"
    for pid in pids:
        assert rss_end[pid] <= 2 * rss_start[pid], \
            f"seed={seed}: worker pid {pid} RSS {rss_start[pid]} -> {rss_end[pid]} KiB"
    _produce_and_fetch(broker)
    return totals


def test_fuzz_broker(broker_factory):
    fuzz_broker(broker_factory(workers=2, settings=FUZZ_SETTINGS), 3_000, _seed())


@pytest.mark.slow
def test_fuzz_broker_20000(broker_factory):
    fuzz_broker(broker_factory(workers=2, settings=FUZZ_SETTINGS), 20_000, _seed())
