"""The supervisor: owns the data directory, the listening sockets and (by default) a
private ZooKeeper; forks one worker per partition group and keeps them running.

- The listening sockets are bound here, before any fork, so a port in use is reported
  at once and a restarted worker serves on the very same socket.
- A worker that exits is forked again; one whose heartbeat thread stopped writing its
  control-block row, or whose event loop made no progress, for
  worker.heartbeat.timeout.ms (monotonic clock; heartbeat.stale_reason) is killed
  (SIGKILL) first. A worker busy recovering partitions on its storage thread keeps
  both fresh. On start a worker recovers its logs and re-registers in ZooKeeper.
- Workers and the private ZooKeeper die with the supervisor (PR_SET_PDEATHSIG), and
  all of them hold the data dir's lock, so no orphan outlives it or blocks a restart.
- SIGTERM/SIGINT: every worker gets SIGTERM (each drains, flushes, marks its logs
  clean and deregisters); after STOP_GRACE_S the rest are killed; then the private
  ZooKeeper stops and the supervisor exits 0.
- The data directory is locked (flock) and stamped with the broker id in
  meta.properties; another broker id or a second supervisor is refused.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import time

from pybroker.config import BrokerConfig, ConfigError
from pybroker.coord.registry import ZooKeeperUnreachable, ensure_chroot
from pybroker.coord.zkserver import ZooKeeperError, die_with_parent
from pybroker.errors import PyBrokerError
from pybroker.server import controlblock
from pybroker.server.heartbeat import stale_reason
from pybroker.server.worker import Worker, node_id_for

log = logging.getLogger("pybroker.server")

POLL_S = 0.1
STOP_GRACE_S = 30.0
META_FILE = "meta.properties"
ZK_CONNECT_FILE = "zookeeper.connect"


class StartupError(PyBrokerError):
    """The broker cannot start; the message says what to fix."""


class Supervisor:
    def __init__(self, config: BrokerConfig):
        self.config = config
        self.data_dir = os.path.abspath(config["log.dirs"])
        self.workers = config.workers
        self.children: dict[int, int] = {}        # pid -> worker index
        self.started: dict[int, float] = {}       # worker index -> fork time
        self.sockets: list[socket.socket] = []
        self.zookeeper = None
        self.zk_connect = config["zookeeper.connect"]
        self.stopping = False
        self.metrics = None                       # MetricsServer when metrics.port >= 0
        self._lock_fd = -1

    # --- start-up --------------------------------------------------------------------

    def prepare(self) -> None:
        self._claim_data_dir()
        self._bind()
        if not self.zk_connect:
            from pybroker.coord.zkserver import EmbeddedZooKeeper
            # The JVM holds the data dir's lock too, and dies with us (die_with_parent):
            # no restart can meet an orphaned private ZooKeeper.
            self.zookeeper = EmbeddedZooKeeper(os.path.join(self.data_dir, "zookeeper"),
                                               hold_fds=(self._lock_fd,))
            self.zookeeper.start()
            self.zk_connect = self.zookeeper.connect_string
            log.info("embedded ZooKeeper on %s (pid %s)", self.zk_connect, self.zookeeper.pid)
        _wait_for_zookeeper(self.zk_connect, self.config["zookeeper.connection.timeout.ms"])
        self.control = controlblock.ControlBlock.in_dir(self.data_dir, create=True,
                                                        workers=self.workers)
        if self.config["metrics.port"] >= 0:
            from pybroker.server.metrics import MetricsServer
            try:
                self.metrics = MetricsServer(self.config["listeners.host"],
                                             self.config["metrics.port"], self.control)
            except OSError as exc:
                raise StartupError(f"metrics port {self.config['metrics.port']}: "
                                   f"{exc.strerror}") from None
            log.info("metrics on http://%s:%d/metrics", self.config["listeners.host"],
                     self.metrics.port)
        # lets `pybroker zk --data-dir` find the (possibly private) ZooKeeper
        with open(os.path.join(self.data_dir, ZK_CONNECT_FILE), "w", encoding="utf-8") as f:
            f.write(self.zk_connect + "\n")

    def _claim_data_dir(self) -> None:
        """flock <data-dir>/.lock for the life of every process of this broker: the
        workers inherit the open file across fork, the private ZooKeeper via hold_fds,
        so the lock is free only when all of them are gone (and they all die with us).
        Our pid is written into the file, to name us to a refused second supervisor."""
        lock_path = os.path.join(self.data_dir, ".lock")
        try:
            os.makedirs(self.data_dir, exist_ok=True)
            self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StartupError(f"data dir {self.data_dir} is not usable: {exc.strerror}") from None
        if not os.access(self.data_dir, os.W_OK):
            raise StartupError(f"data dir {self.data_dir} is not writable")
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StartupError(f"data dir {self.data_dir} is in use by another pybroker: "
                               f"{_describe_holders(lock_path, self._lock_fd)}") from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        meta = os.path.join(self.data_dir, META_FILE)
        broker_id = self.config["broker.id"]
        if os.path.exists(meta):
            with open(meta, encoding="utf-8") as f:
                props = dict(line.strip().split("=", 1) for line in f if "=" in line)
            if int(props.get("broker.id", broker_id)) != broker_id:
                raise StartupError(f"data dir {self.data_dir} belongs to broker.id "
                                   f"{props['broker.id']}, not {broker_id}")
        else:
            with open(meta, "w", encoding="utf-8") as f:
                f.write(f"version=0\nbroker.id={broker_id}\n")

    def _bind(self) -> None:
        host, base = self.config["listeners.host"], self.config["port"]
        for i in range(self.workers):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, base + i))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(f"port {base + i} on {host} is in use (worker {i} "
                                       f"listens on --port + {i}); choose another --port") from None
                raise StartupError(f"cannot listen on {host}:{base + i}: {exc.strerror}") from None
            sock.listen(1024)
            self.sockets.append(sock)

    # --- running ---------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.prepare()
        except BaseException:
            self._stop_all()  # no private ZooKeeper or bound socket outlives a failed start
            raise
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for i in range(self.workers):
            self._fork(i)
        log.info("supervisor pid=%d: %d workers, nodes %s, ports %d-%d, data %s",
                 os.getpid(), self.workers,
                 [node_id_for(self.config["broker.id"], i) for i in range(self.workers)],
                 self.config["port"], self.config["port"] + self.workers - 1, self.data_dir)
        try:
            while not self.stopping:
                self._wait(POLL_S)
                self._reap()
                self._check_heartbeats()
        finally:
            self._stop_all()
        return 0

    def _wait(self, seconds: float) -> None:
        """Sleep, answering metrics scrapes meanwhile (any number at once, none able to
        hold the loop: MetricsServer.poll never blocks on a client)."""
        if self.metrics is None:
            time.sleep(seconds)
            return
        self.metrics.poll(seconds)

    def _on_signal(self, signum, _frame) -> None:
        log.info("supervisor got signal %d: stopping", signum)
        self.stopping = True

    def _fork(self, index: int) -> None:
        """Fork worker `index`. Invariant: a worker never outlives this supervisor (it
        would serve unsupervised and keep the data dir's lock). The kernel SIGKILLs it
        when we die, however we die (die_with_parent). SIGKILL rather than SIGTERM:
        nobody is left to escalate a SIGTERM that a hung worker ignores, and its logs
        are recovered at the next start as after any crash. Called from the main thread
        only (the death signal follows the forking thread)."""
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                die_with_parent(parent)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                for i, sock in enumerate(self.sockets):
                    if i != index:
                        sock.close()
                worker = Worker(self.config, index, self.zk_connect, self.data_dir,
                                self.sockets[index])
                code = worker.run()
            except BaseException:  # noqa: BLE001 - report, then leave the child
                log.exception("worker %d crashed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = index
        self.started[index] = time.monotonic()
        self.control.write_supervisor(index, forked_pid=pid,
                                      forked_ms=int(self.started[index] * 1000))
        log.info("forked worker %d as pid %d", index, pid)

    def _reap(self) -> None:
        # per pid, never waitpid(-1): the embedded ZooKeeper is our child too
        for pid, index in list(self.children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            del self.children[pid]
            if self.stopping:
                continue
            log.warning("worker %d (pid %d) exited with status %d; restarting", index, pid,
                        os.waitstatus_to_exitcode(status))
            # the supervisor's own part of the row: the worker part is the worker's alone
            restarts = self.control.read_supervisor(index)["restarts"] + 1
            self.control.write_supervisor(index, restarts=restarts)
            self._fork(index)

    def _check_heartbeats(self) -> None:
        """Kill (SIGKILL) a worker whose heartbeat or event loop is older than
        worker.heartbeat.timeout.ms (heartbeat.stale_reason); all clocks monotonic."""
        timeout_ms = self.config["worker.heartbeat.timeout.ms"]
        for pid, index in list(self.children.items()):
            row = self.control.read_worker(index)
            now_ms = controlblock.monotonic_ms()  # after the read: ages are never negative
            since_fork_ms = now_ms - self.started[index] * 1000
            reason = stale_reason(row, pid, now_ms, timeout_ms, since_fork_ms)
            if reason is not None:
                log.error("worker %d (pid %d): %s; killing it", index, pid, reason)
                os.kill(pid, signal.SIGKILL)

    # --- stopping --------------------------------------------------------------------

    def _stop_all(self) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(POLL_S / 2)
        for pid, index in list(self.children.items()):
            log.error("worker %d (pid %d) did not stop in %ds; killing it", index, pid,
                      STOP_GRACE_S)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self.children.clear()
        for sock in self.sockets:
            sock.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.zookeeper is not None:
            self.zookeeper.stop()
        log.info("supervisor stopped")


def _wait_for_zookeeper(connect: str, timeout_ms: int) -> None:
    """Before any fork: return once a server of `connect` answers (its chroot created),
    or raise ZooKeeperUnreachable naming the address after `timeout_ms`. Without this a
    worker fails its registry start, is restarted, and fails again, forever."""
    ensure_chroot(connect, timeout_ms / 1000)


def _lock_holders(path: str) -> list[int]:
    """Pids of the other processes that have `path` open, from /proc (processes we may
    not inspect are missed). Only for the refusal message: the failure path."""
    try:
        target = os.stat(path)
    except OSError:
        return []
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                st = os.stat(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                found.append(int(entry))
                break
    return sorted(found)


def _describe_holders(lock_path: str, lock_fd: int) -> str:
    """Who holds the lock, as far as we can tell: "<lock> is held by pid 12, 13
    (supervisor 12)"."""
    try:
        recorded = int(os.pread(lock_fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError):
        recorded = 0
    holders = _lock_holders(lock_path)
    if not holders:
        who = "held by a process we cannot inspect"
    else:
        who = f"held by pid {', '.join(map(str, holders))}"
    if recorded and recorded in holders:
        who += f" (supervisor {recorded})"
    elif recorded:
        who += f" (its supervisor, pid {recorded}, has exited)"
    return f"{lock_path} is {who}"


def serve(config: BrokerConfig) -> int:
    try:
        return Supervisor(config).run()
    except ZooKeeperUnreachable as exc:
        log.error("%s", exc)
        return 1  # a runtime failure (exit 1), not bad usage: the address may be right
    except (StartupError, ConfigError, ZooKeeperError) as exc:
        log.error("%s", exc)
        return 2
