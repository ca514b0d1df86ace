"""A worker process: one Kafka node with its own port, owning a group of partitions.

Node id = broker.id * 100 + worker index; port = base port + worker index. The worker
is a single-threaded asyncio loop doing all networking, appends, flushes and fetches
of its partitions; it never forwards a request (clients route by metadata). Kazoo's
threads only hand registry snapshots to the loop. It heartbeats into the control block
every HEARTBEAT_S so the supervisor can tell it is alive.

SIGTERM: stop accepting, let in-flight requests finish (up to DRAIN_S), flush and
close every log cleanly (clean-shutdown marker), deregister from ZooKeeper, exit 0.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from pybroker.config import BrokerConfig
from pybroker.coord.registry import ClusterState, Registry
from pybroker.protocol import SUPPORTED
from pybroker.server import controlblock
from pybroker.server.connection import CloseReason, Connection
from pybroker.server.handlers import HANDLERS
from pybroker.server.handlers.append_batch import AppendBatch
from pybroker.server.handlers.api_versions import advertised
from pybroker.server.log_manager import LogManager
from pybroker.server.partition_state import PartitionState
from pybroker.server.stats import WorkerStats

log = logging.getLogger("pybroker.server")

HEARTBEAT_S = 0.25
CHECKPOINT_S = 60.0   # producer-state snapshots and recovery-point checkpoints
DRAIN_S = 5.0
NODES_PER_BROKER = 100


def node_id_for(broker_id: int, index: int) -> int:
    return broker_id * NODES_PER_BROKER + index


class Worker:
    def __init__(self, config: BrokerConfig, index: int, zk_connect: str, data_dir: str,
                 listen_socket: socket.socket | None = None):
        self.config = config
        self.index = index
        self.node_id = node_id_for(config["broker.id"], index)
        self.port = config["port"] + index
        self.advertised_host = config.advertised_host
        self.zk_connect = zk_connect
        self.data_dir = data_dir
        self.handlers = HANDLERS
        self.api_versions = advertised(HANDLERS)
        self.supported = {k: SUPPORTED[k] for k in HANDLERS}  # what ApiVersions advertises
        self.stats = WorkerStats()
        self.appends = AppendBatch(self)  # produce appends of the current run of frames
        self.cluster = ClusterState()
        self.connections: set[Connection] = set()
        self.stopping = False
        self._listen = listen_socket
        self._cluster_waiters: list = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.partitions: LogManager | None = None
        self.registry: Registry | None = None
        self.control: controlblock.ControlBlock | None = None
        self._stopped: asyncio.Event | None = None
        # Every ZooKeeper call a request needs runs here, one at a time in arrival order,
        # never on the event loop: a slow or lost ZooKeeper must not stall the node.
        self._zk_executor = ThreadPoolExecutor(1, thread_name_prefix=f"zk-{self.node_id}")

    @property
    def producers(self):
        return self.partitions.producers

    # --- running ---------------------------------------------------------------------

    def run(self) -> int:
        return asyncio.run(self._main())

    async def _main(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop)
        self.control = controlblock.ControlBlock.in_dir(self.data_dir)
        self.control.write_worker(self.index, pid=os.getpid(), node_id=self.node_id,
                                  port=self.port, state=0, heartbeat_ms=_now_ms())
        self.partitions = LogManager(self.data_dir, self.config, self.node_id, self.loop,
                                     self.stats, on_change=self._partitions_changed)
        sock = self._listen or _listen_socket(self.config["listeners.host"], self.port)
        sock.setblocking(False)
        self._listen = sock
        self.registry = Registry(self.zk_connect, self.node_id, self.advertised_host, self.port,
                                 lambda st: self.loop.call_soon_threadsafe(self._on_cluster, st),
                                 self.config["zookeeper.session.timeout.ms"])
        await self.loop.run_in_executor(None, self.registry.start)
        self.loop.add_reader(sock.fileno(), self._accept)
        self._heartbeat()
        self._schedule(self.config["log.retention.check.interval.ms"] / 1000,
                       self.partitions.enforce_retention)
        self._schedule(CHECKPOINT_S, self.partitions.checkpoint)
        log.info("node=%d worker=%d serving on %s:%d", self.node_id, self.index,
                 self.config["listeners.host"], self.port)
        await self._stopped.wait()
        await self._shutdown()
        return 0

    def stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            log.info("node=%d stopping", self.node_id)
            coordinator = getattr(self, "group_coordinator", None)
            if coordinator is not None:
                coordinator.shutdown()
            self._stopped.set()

    async def _shutdown(self) -> None:
        self.control.write_worker(self.index, state=controlblock.STOPPING)
        self.loop.remove_reader(self._listen.fileno())
        self._listen.close()
        for conn in self.connections:
            conn.stop_reading()
        self.partitions.flush_all()  # answers acks=all
        self.partitions.wake_all()   # long-polling fetches answer with what they have
        deadline = time.monotonic() + DRAIN_S
        while any(c.busy() for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.close(CloseReason.SHUTDOWN)
        await self.partitions.close_all()
        await self.loop.run_in_executor(None, self.registry.stop)
        self._zk_executor.shutdown(wait=False)
        self._publish()
        self.control.write_worker(self.index, state=controlblock.STOPPED)
        log.info("node=%d stopped cleanly", self.node_id)

    def _schedule(self, interval: float, job) -> None:
        def tick():
            if self.stopping:
                return
            try:
                job()
            except Exception:  # noqa: BLE001 - periodic work must not kill the worker
                log.exception("node=%d periodic %s failed", self.node_id, job.__name__)
            self.loop.call_later(interval, tick)
        self.loop.call_later(interval, tick)

    def run_zk(self, fn, *args) -> asyncio.Future:
        """fn(*args) on the worker's ZooKeeper thread; an asyncio Future of its result
        (or of its exception: callers turn it into an error code)."""
        return self.loop.run_in_executor(self._zk_executor, fn, *args)

    # --- connections -----------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, peer = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("node=%d accept failed: %s", self.node_id, exc)
                return
            self.connections.add(Connection(self, sock, peer))

    def connection_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)

    # --- cluster view ----------------------------------------------------------------

    def _on_cluster(self, state: ClusterState) -> None:
        self.cluster = state
        coordinator = getattr(self, "group_coordinator", None)  # made by the group handlers
        if coordinator is not None:
            coordinator.cluster_changed()
        if not self.stopping:
            self.partitions.sync(state)
        waiters, self._cluster_waiters = self._cluster_waiters, []
        for predicate, fut, value in waiters:
            if fut.done():
                continue
            if predicate(state):
                fut.set_result(value)
            else:
                self._cluster_waiters.append((predicate, fut, value))

    def when_cluster(self, predicate, timeout: float, value) -> asyncio.Future:
        """A future resolving to value once the cluster view satisfies predicate (or after
        timeout seconds, whichever first)."""
        fut = self.loop.create_future()
        if predicate(self.cluster):
            fut.set_result(value)
            return fut
        self._cluster_waiters.append((predicate, fut, value))
        self.loop.call_later(timeout, lambda: fut.done() or fut.set_result(value))
        return fut

    def _partitions_changed(self) -> None:
        """A partition was added, removed or changed state: publish it in ZooKeeper (P17)
        and in the control block, so `pybroker stats` shows it at once."""
        if self.stopping:
            return
        self.registry.set_partitions(self.partitions.online_names())  # never blocks
        self._publish()

    # --- observability ---------------------------------------------------------------

    def _heartbeat(self) -> None:
        self._publish()
        if not self.stopping:
            self.loop.call_later(HEARTBEAT_S, self._heartbeat)

    def _publish(self) -> None:
        stats = self.stats
        rows = []
        for tp, part in sorted(self.partitions.partitions.items()):
            plog = part.log
            msgs, size = stats.partition_in.get(tp, (0, 0))
            rows.append((tp[0], tp[1], plog.log_start_offset if plog else -1,
                         plog.log_end_offset if plog else -1,
                         plog.high_watermark if plog else -1, msgs, size,
                         stats.partition_out.get(tp, 0), plog.flush_count if plog else 0))
        self.control.write_worker(
            self.index, heartbeat_ms=_now_ms(), state=controlblock.STOPPING if self.stopping
            else controlblock.SERVING, connections=len(self.connections),
            requests=stats.requests, bytes_in=stats.bytes_in, bytes_out=stats.bytes_out,
            messages_in=stats.messages_in, partitions=len(rows),
            flushes=sum(r[-1] for r in rows))
        self.control.write_partitions(self.index, rows)
        self.control.write_histograms(self.index, stats.latency_by_api, stats.fsync)

    def log_bad_input(self, tp, exc) -> None:
        log.warning("node=%d tp=%s-%d rejected batch: %s", self.node_id, tp[0], tp[1], exc)

    def log_storage_error(self, tp, exc) -> None:
        log.error("node=%d tp=%s-%d storage error: %s", self.node_id, tp[0], tp[1], exc)


def _listen_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def _now_ms() -> int:
    return int(time.time() * 1000)
