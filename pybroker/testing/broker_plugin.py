"""pytest plugin: a real `python -m pybroker serve` per test, on free ports, joined to the
test's ZooKeeper chroot (pybroker.testing.zk_plugin).

Enable it next to the ZooKeeper plugin in the root conftest:
`pytest_plugins = ["pybroker.testing.zk_plugin", "pybroker.testing.broker_plugin"]`.

Fixtures
    broker_factory   test: `start(workers=2, settings=None, broker_id=0, zk_connect=None,
                     env=None, host=None, command_prefix=None) -> Broker` (env: extra
                     environment variables of the broker, e.g. PYBROKER_FAILPOINTS;
                     host: the address it listens on and advertises, 127.0.0.1 unless
                     given; command_prefix: argv run before `python -m pybroker serve`,
                     which must exec it, e.g. `ip netns exec NS` to start the broker in
                     a network namespace, pybroker.testing.netns). zk_connect defaults
                     to the test's chroot; "" runs the broker's private ZooKeeper (no
                     --zookeeper). Each call starts one supervisor (a subprocess) with
                     its own data dir under the test's tmp_path and waits until every
                     worker serves; all are stopped after the test (SIGTERM; exit code
                     0 is asserted).
    broker           test: a started 2-worker broker with default settings.
    cluster_factory  test: `start(brokers=3, workers=1, settings=None, zk_connect=None,
                     hosts=None) -> Cluster` (pybroker.testing.cluster): brokers with
                     ids 1..n through broker_factory, settings over
                     cluster.CLUSTER_SETTINGS; hosts: one placement per broker, an
                     object with `address` and `command_prefix` (a
                     pybroker.testing.netns.Host); SIGCONTs whatever the test left
                     stopped, and heals what it left isolated, before broker_factory
                     stops them.

A worker counts as serving when its control-block row says so (state 1, with the pid
of a child of our supervisor), its port accepts a connection, a Kafka ApiVersions
round trip on that port succeeds, and its Metadata lists every node of the broker (so a
topic created at once spreads over all of them). Readiness is always a condition polled
under a deadline, never a sleep. Settings are `--set key=value` overrides, e.g.
`{"log.flush.interval.ms": 50}`.

When a test that used a broker fails, the broker's stdout+stderr (its log, a file per
broker beside its data dir) is attached to the report as the section "pybroker log <n>".
Brokers still running when the test process exits are killed (atexit), by pid.

RawClient, the plain-socket Kafka client the readiness check uses, is also what the
protocol-level tests use to send hand-built requests with our codec.
"""
from __future__ import annotations

import atexit
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pybroker.protocol import ApiKey, decode_response, encode_request
from pybroker.server import controlblock

__all__ = ["broker_factory", "broker", "cluster_factory", "pytest_runtest_makereport",
           "Broker", "RawClient", "BrokerStartError", "free_port_run"]

START_TIMEOUT_S = 60.0    # supervisor start -> every worker serving (ZooKeeper, recovery)
STOP_TIMEOUT_S = 60.0     # SIGTERM -> exit; the supervisor gives workers 30 s, then kills
RESTART_TIMEOUT_S = 60.0  # killed worker -> its successor serving
POLL_S = 0.05
PROBE_TIMEOUT_S = 5.0     # one connect + ApiVersions round trip on loopback
START_ATTEMPTS = 3        # fresh ports tried when a picked port is taken before the bind
PORT_RANGE = (20_000, 32_000)  # below Linux's ephemeral range (32768+): no client collides
LOG_REPORT_BYTES = 64 * 1024
EXIT_USAGE = 2            # pybroker's exit code for bad usage, e.g. a port in use
_RETRIABLE = {3, 5, 6}     # UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER
_SIZE = struct.Struct(">i")
DEFAULT_HOST = "127.0.0.1"   # listen and advertised address unless a test names another

_BROKERS = pytest.StashKey[list]()


class BrokerStartError(RuntimeError):
    """The broker did not come up; the message carries the tail of its log."""


# --- a plain-socket Kafka client -------------------------------------------------------

class RawClient:
    """One TCP connection speaking the Kafka protocol through pybroker.protocol.

    request() sends one request and returns the decoded (header, body) of its response;
    send()/recv_frame() let a test pipeline requests or send arbitrary bytes.
    Timeouts are on every read, so a missing answer fails the test instead of hanging.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                 client_id: str | None = "pybroker-tests"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client_id = client_id
        self._next_correlation_id = 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def next_correlation_id(self) -> int:
        cid = self._next_correlation_id
        self._next_correlation_id += 1
        return cid

    def encode(self, api_key: int, version: int, body: dict,
               correlation_id: int | None = None) -> tuple[int, bytes]:
        """(correlation id, framed request bytes)."""
        cid = self.next_correlation_id() if correlation_id is None else correlation_id
        chunks = encode_request(api_key, version, cid, self.client_id, body)
        return cid, b"".join(bytes(c) for c in chunks)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self) -> bytes:
        (size,) = _SIZE.unpack(self.recv_exact(4))
        return self.recv_exact(size)

    def recv_response(self, api_key: int, version: int) -> tuple[dict, dict]:
        return decode_response(api_key, version, self.recv_frame())

    def request(self, api_key: int, version: int, body: dict) -> dict:
        """Send one request and return the body of its response (correlation checked)."""
        cid, data = self.encode(api_key, version, body)
        self.send(data)
        header, response = self.recv_response(api_key, version)
        if header["correlation_id"] != cid:
            raise AssertionError(f"response correlation id {header['correlation_id']}, "
                                 f"expected {cid}")
        return response

    def is_closed_by_peer(self, timeout: float = 10.0) -> bool:
        """True if the broker closed this connection (EOF or reset) within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def api_versions_ok(port: int, timeout: float = PROBE_TIMEOUT_S,
                    nodes: list[int] | None = None, host: str = DEFAULT_HOST) -> bool:
    """A connect + ApiVersions v0 round trip on port succeeds; with `nodes`, a Metadata
    v1 answer on the same connection must also list every one of them (the node's
    view of the cluster is complete, so topics created now spread over all nodes)."""
    try:
        with RawClient(port, host=host, timeout=timeout) as client:
            if client.request(ApiKey.API_VERSIONS, 0, {})["error_code"] != 0:
                return False
            if nodes is None:
                return True
            body = client.request(ApiKey.METADATA, 1, {"topics": []})
        return set(nodes) <= {b["node_id"] for b in body["brokers"]}
    except (OSError, ConnectionError, AssertionError):
        return False


# --- ports -----------------------------------------------------------------------------

def _port_free(port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def free_port_run(count: int, attempts: int = 200) -> int:
    """The first port of `count` consecutive ports that are free on 127.0.0.1 now."""
    low, high = PORT_RANGE
    for _ in range(attempts):
        base = random.randrange(low, high - count)
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no run of {count} free ports found in {low}..{high}")


# --- the broker ------------------------------------------------------------------------

class Broker:
    """A `pybroker serve` subprocess and what a test needs to observe and disturb it.

    bootstrap       "<host>:<port of worker 0>"
    host            the address the workers listen on and advertise (127.0.0.1 unless
                    given; then passed as --set listeners.host=<host>)
    command_prefix  argv before `python -m pybroker serve` (e.g. `ip netns exec NS`);
                    it must exec the command, so proc.pid is the supervisor's pid
    ports           [port of worker i]
    node_ids        [Kafka node id of worker i] (broker_id*100+i)
    data_dir        the broker's data directory (kept across stop/start)
    pid             the supervisor's pid (None while stopped)
    """

    def __init__(self, data_dir: Path, log_path: Path, zk_connect: str, workers: int = 2,
                 settings: dict | None = None, broker_id: int = 0, env: dict | None = None,
                 host: str = DEFAULT_HOST, command_prefix: list[str] | tuple = ()):
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.zk_connect = zk_connect
        self.workers = workers
        self.settings = dict(settings or {})
        self.broker_id = broker_id
        self.env = dict(env or {})         # extra environment, e.g. PYBROKER_FAILPOINTS
        self.host = host
        self.command_prefix = list(command_prefix)
        self.ports: list[int] = []
        self.proc: subprocess.Popen | None = None
        self.returncodes: list[int] = []   # exit codes of the supervisors we stopped
        self.data_dir.mkdir(parents=True, exist_ok=True)

    # --- addresses -------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.ports[0]}"

    @property
    def bootstrap_all(self) -> str:
        return ",".join(f"{self.host}:{p}" for p in self.ports)

    @property
    def node_ids(self) -> list[int]:
        return [self.broker_id * 100 + i for i in range(self.workers)]

    def port_of_node(self, node_id: int) -> int:
        return self.ports[self.node_ids.index(node_id)]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def running(self) -> bool:
        return self.pid is not None

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """CreateTopics, then wait until Metadata gives every partition a leader."""
        from pybroker.client.connection import Cluster
        with self.client() as c:
            body = c.request(ApiKey.CREATE_TOPICS, 1, {
                "topics": [{"name": name, "num_partitions": partitions,
                            "replication_factor": 1, "assignments": [], "configs": []}],
                "timeout_ms": 30_000, "validate_only": False})
        assert body["topics"][0]["error_code"] == 0, body
        cluster = Cluster(self.bootstrap)
        try:
            assert len(cluster.ensure_topic(name)) == partitions
        finally:
            cluster.close()

    def leaders(self, topic: str) -> dict[int, int]:
        """{partition: leader node id} from worker 0's Metadata (-1: a leader that is
        not registered in that worker's view)."""
        with self.client() as c:
            [t] = c.request(ApiKey.METADATA, 8, {"topics": [{"name": topic}],
                                                "allow_auto_topic_creation": False})["topics"]
        assert t["error_code"] == 0, t
        return {p["partition_index"]: p["leader_id"] for p in t["partitions"]}

    def _leader_worker(self, topic: str, partition: int, deadline: float) -> int:
        """The worker index leading the partition, waiting (to `deadline`) while worker
        0's view has no registered leader for it."""
        while (leader := self.leaders(topic).get(partition, -1)) not in self.node_ids:
            assert time.monotonic() < deadline, f"{topic}-{partition} has no leader"
            time.sleep(POLL_S)
        return self.node_ids.index(leader)

    def produce_one(self, topic: str, partition: int, value: bytes,
                    timeout: float = START_TIMEOUT_S) -> None:
        """One acks=all record to the partition's leader; retried while the answer is
        retriable (unknown partition, leader not available, not leader: a partition
        still opening), asserted to succeed within `timeout`."""
        from pybroker.records import build_batch
        deadline = time.monotonic() + timeout
        while True:
            with self.client(self._leader_worker(topic, partition, deadline)) as c:
                body = c.request(ApiKey.PRODUCE, 7, {
                    "transactional_id": None, "acks": -1, "timeout_ms": 10_000,
                    "topic_data": [{"name": topic, "partition_data": [
                        {"index": partition, "records": bytes(build_batch([value]))}]}]})
            answer = body["responses"][0]["partition_responses"][0]
            if answer["error_code"] == 0:
                return
            assert answer["error_code"] in _RETRIABLE and time.monotonic() < deadline, answer
            time.sleep(POLL_S)

    def fetch_values(self, topic: str, partition: int,
                     timeout: float = START_TIMEOUT_S) -> list[bytes]:
        """Every record value of the partition (up to 1 MiB), from its leader."""
        from pybroker.records import parse_batches, parse_records
        worker = self._leader_worker(topic, partition, time.monotonic() + timeout)
        with self.client(worker) as c:
            body = c.request(ApiKey.FETCH, 11, {
                "replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20,
                "topics": [{"topic": topic, "partitions": [{
                    "partition": partition, "fetch_offset": 0,
                    "partition_max_bytes": 1 << 20}]}]})
        part = body["responses"][0]["partitions"][0]
        assert part["error_code"] == 0, part
        return [r.value for b in parse_batches(part["records"]) for r in parse_records(b)]

    def client(self, worker: int = 0, timeout: float = 10.0) -> RawClient:
        """A new RawClient connected to worker's port."""
        return RawClient(self.ports[worker], host=self.host, timeout=timeout)

    # --- control block ---------------------------------------------------------------

    def control_block(self) -> controlblock.ControlBlock:
        """The running supervisor's control block (a fresh mapping; close it after)."""
        return controlblock.ControlBlock.in_dir(str(self.data_dir))

    def worker_rows(self) -> list[dict]:
        block = self.control_block()
        try:
            return [block.read_worker(i) for i in range(self.workers)]
        finally:
            block.close()

    def worker_row(self, index: int) -> dict:
        return self.worker_rows()[index]

    def worker_pids(self) -> list[int]:
        return [row["pid"] for row in self.worker_rows()]

    def partition_rows(self) -> list:
        block = self.control_block()
        try:
            return block.partitions()
        finally:
            block.close()

    # --- starting --------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> "Broker":
        """Start the supervisor and wait until every worker serves. On a restart the
        previous ports are tried first (clients keep their addresses)."""
        assert not self.running(), "broker already running"
        last_error = None
        for attempt in range(START_ATTEMPTS):
            if not self.ports or attempt > 0:
                base = free_port_run(self.workers)
                self.ports = [base + i for i in range(self.workers)]
            try:
                self._spawn()
                self._wait_serving(time.monotonic() + timeout)
                return self
            except BrokerStartError as exc:
                last_error = exc
                if self.proc is not None and self.proc.poll() == EXIT_USAGE and \
                        "in use" in self.log_tail(4096):
                    continue  # a port was taken between our check and its bind
                self._kill_everything()
                raise
        raise last_error

    def _spawn(self) -> None:
        # Remove the previous run's control block, so that until the new supervisor
        # publishes its own, there is none to read (its rows would look alive).
        try:
            os.unlink(self.data_dir / controlblock.FILE_NAME)
        except FileNotFoundError:
            pass
        cmd = [*self.command_prefix,
               sys.executable, "-m", "pybroker", "serve", "--data-dir", str(self.data_dir),
               "--port", str(self.ports[0]), "--workers", str(self.workers),
               "--broker-id", str(self.broker_id)]
        if self.zk_connect:  # else: the supervisor starts its private ZooKeeper
            cmd += ["--zookeeper", self.zk_connect]
        if self.host != DEFAULT_HOST:
            cmd += ["--set", f"listeners.host={self.host}"]
        for key, value in self.settings.items():
            cmd += ["--set", f"{key}={value}"]
        with open(self.log_path, "ab") as log:
            log.write(f"=== {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env})
        _LIVE.add(self)

    def _wait_serving(self, deadline: float) -> None:
        pending = set(range(self.workers))
        while True:
            if self.proc.poll() is not None:
                raise BrokerStartError(f"pybroker serve exited with {self.proc.returncode} "
                                       f"during start-up; log tail:\n{self.log_tail()}")
            rows = self._rows_if_ready()
            if rows is not None:
                for i in sorted(pending):
                    if self._row_serving(rows[i]) and api_versions_ok(
                            self.ports[i], nodes=self.node_ids, host=self.host):
                        pending.discard(i)
                if not pending:
                    return
            if time.monotonic() > deadline:
                raise BrokerStartError(f"workers {sorted(pending)} not serving in time; "
                                       f"rows {rows}; log tail:\n{self.log_tail()}")
            time.sleep(POLL_S)

    def _rows_if_ready(self) -> list[dict] | None:
        """Worker rows of our supervisor's control block, or None if it is not there
        (or not fully written) yet."""
        path = self.data_dir / controlblock.FILE_NAME
        try:  # published whole (os.replace after sizing): no partial file to skip
            block = controlblock.ControlBlock(str(path))
        except (FileNotFoundError, ValueError):
            return None
        try:
            if block.supervisor_pid != self.proc.pid:
                return None
            return [block.read_worker(i) for i in range(self.workers)]
        finally:
            block.close()

    def _row_serving(self, row: dict) -> bool:
        """Serving, a child of our supervisor, and done opening its partitions (the
        worker says SERVING only once it has applied its first view of ZooKeeper)."""
        return (row["state"] == controlblock.SERVING and row["pid"] > 0 and
                row["opening"] == 0 and _parent_pid(row["pid"]) == self.proc.pid)

    # --- disturbing ------------------------------------------------------------------

    def kill_worker(self, index: int) -> dict:
        """SIGKILL worker `index`; returns its control-block row as it was before."""
        row = self.worker_row(index)
        assert row["pid"] > 0 and _parent_pid(row["pid"]) == self.proc.pid, \
            f"worker {index} row {row} is not a live child of supervisor {self.proc.pid}"
        os.kill(row["pid"], signal.SIGKILL)
        return row

    def wait_restarted(self, index: int, old_row: dict | None = None,
                       timeout: float = RESTART_TIMEOUT_S) -> dict:
        """Wait until worker `index` runs as a new process that serves (a new pid,
        `restarts` above old_row's, state serving, ApiVersions answered on its port);
        returns its new row. old_row defaults to the row kill_worker returned last."""
        old_row = old_row if old_row is not None else {}
        old_pid, old_restarts = old_row.get("pid", 0), old_row.get("restarts", -1)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, \
                f"supervisor exited with {self.proc.returncode}; log tail:\n{self.log_tail()}"
            row = self.worker_row(index)
            if (row["pid"] != old_pid and row["restarts"] > old_restarts
                    and self._row_serving(row)
                    and api_versions_ok(self.ports[index], nodes=self.node_ids,
                                        host=self.host)):
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {index} not restarted in {timeout}s: row {row}, "
                                     f"before {old_row}; log tail:\n{self.log_tail()}")
            time.sleep(POLL_S)

    # --- stopping --------------------------------------------------------------------

    def stop(self, timeout: float = STOP_TIMEOUT_S, check: bool = True) -> int:
        """SIGTERM the supervisor and wait for it; asserts exit code 0 unless check=False.
        Returns the exit code."""
        assert self.proc is not None, "broker never started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pids = self._known_worker_pids()
                self._kill_everything(pids)
                raise AssertionError(f"supervisor pid {self.proc.pid} did not exit within "
                                     f"{timeout}s of SIGTERM; log tail:\n{self.log_tail()}")
        code = self.proc.returncode
        self.returncodes.append(code)
        if check:
            assert code == 0, (f"supervisor exited with {code} after SIGTERM; log tail:\n"
                               f"{self.log_tail()}")
        return code

    def restart(self, timeout: float = START_TIMEOUT_S) -> "Broker":
        """stop() then start() on the same data dir (and, if free, the same ports)."""
        self.stop()
        return self.start(timeout)

    def _known_worker_pids(self) -> list[int]:
        try:
            return [row["pid"] for row in self.worker_rows()
                    if row["pid"] > 0 and _parent_pid(row["pid"]) == self.proc.pid]
        except (FileNotFoundError, ValueError):
            return []

    def _kill_everything(self, pids: list[int] | None = None) -> None:
        """Last resort for a supervisor that would not stop: SIGKILL it and the workers
        we know it forked (by pid, nothing else)."""
        if self.proc is None:
            return
        pids = self._known_worker_pids() if pids is None else pids
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # --- log -------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, max_bytes: int = LOG_REPORT_BYTES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, predicate, timeout: float = 10.0) -> list[str]:
        """Wait until some log lines satisfy predicate(line); returns them."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log_text().splitlines() if predicate(line)]
            if lines or time.monotonic() > deadline:
                return lines
            time.sleep(POLL_S)

    def __repr__(self) -> str:
        return (f"Broker(pid={self.pid}, host={self.host}, ports={self.ports}, "
                f"workers={self.workers}, data_dir={str(self.data_dir)!r})")


_LIVE: set[Broker] = set()   # brokers started by this process, for the exit safety net


@atexit.register
def _kill_leftovers() -> None:
    """If the test process exits without its fixture teardowns (an internal error, a
    second Ctrl-C), leave no broker behind: kill what we started, by pid."""
    for b in list(_LIVE):
        if b.proc is not None and b.proc.poll() is None:
            b._kill_everything()


def _parent_pid(pid: int) -> int | None:
    """The parent pid of a live process, or None if it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1])


# --- fixtures --------------------------------------------------------------------------

@pytest.fixture
def broker_factory(request, tmp_path, zk_connect):
    """start(workers=2, settings=None, broker_id=0, zk_connect=None) -> a serving Broker;
    all stopped after the test, each asserted to exit 0."""
    default_zk_connect = zk_connect
    started: list[Broker] = []
    request.node.stash[_BROKERS] = started

    def start(workers: int = 2, settings: dict | None = None, broker_id: int = 0,
              zk_connect: str | None = None, env: dict | None = None,
              host: str | None = None, command_prefix: list[str] | None = None) -> Broker:
        n = len(started)
        b = Broker(tmp_path / f"broker{n}-data", tmp_path / f"broker{n}.log",
                   default_zk_connect if zk_connect is None else zk_connect,
                   workers=workers, settings=settings, broker_id=broker_id, env=env,
                   host=host or DEFAULT_HOST, command_prefix=command_prefix or ())
        started.append(b)
        return b.start()

    yield start
    errors = []
    for b in reversed(started):
        if b.proc is None or b.proc.poll() is not None:
            continue
        try:
            b.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("broker did not stop cleanly:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A serving 2-worker broker with default settings."""
    return broker_factory(workers=2)


@pytest.fixture
def cluster_factory(broker_factory):
    """start(brokers=3, workers=1, settings=None, zk_connect=None, hosts=None) -> a
    Cluster of `brokers` brokers (broker ids 1..n) on the test's ZooKeeper chroot (or
    zk_connect), each started by broker_factory with `settings` merged over
    cluster.CLUSTER_SETTINGS, broker i at hosts[i-1] (its `address` and
    `command_prefix`; default 127.0.0.1, no prefix), returned once every node lists
    every node. Teardown continues every broker a test left SIGSTOPped and reconnects
    every one it left isolated (a controlled shutdown needs ZooKeeper); broker_factory
    then stops them all (the killed ones are skipped)."""
    from pybroker.testing.cluster import CLUSTER_SETTINGS, Cluster, check_settings
    clusters: list = []

    def start(brokers: int = 3, workers: int = 1, settings: dict | None = None,
              zk_connect: str | None = None, hosts=None):
        merged = {**CLUSTER_SETTINGS, **(settings or {})}
        check_settings(merged)
        assert hosts is None or len(hosts) == brokers, \
            f"{len(hosts)} hosts for {brokers} brokers"
        members = [broker_factory(
            workers=workers, settings=merged, broker_id=i, zk_connect=zk_connect,
            host=hosts[i - 1].address if hosts else None,
            command_prefix=list(hosts[i - 1].command_prefix) if hosts else None)
            for i in range(1, brokers + 1)]
        cluster = Cluster(members, hosts=hosts)
        clusters.append(cluster)
        cluster.wait_registered()
        return cluster

    yield start
    for cluster in clusters:
        cluster.resume_all()
        cluster.heal_all()


# --- the broker log in failure reports ---------------------------------------------------

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for n, b in enumerate(item.stash.get(_BROKERS, [])):
            title = f"pybroker log {n}"
            if not any(name == title for name, _ in report.sections):
                report.sections.append((title, f"{b.log_path}:\n{b.log_tail()}"))
    return report
