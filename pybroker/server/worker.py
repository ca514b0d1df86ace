"""A worker process: one Kafka node with its own port, owning a group of partitions.

Node id = broker.id * 100 + worker index; port = base port + worker index. The worker
is a single-threaded asyncio loop doing all networking, appends and fetches of its
partitions; it never forwards a request (clients route by metadata). Nothing blocking
runs on the loop: its LogManager runs every fdatasync, open, close and checkpoint on
storage threads, ZooKeeper calls run on the ZooKeeper thread (run_zk) or the registry's,
and kazoo's threads only hand registry snapshots to the loop. A heartbeat thread
publishes the worker's row into the control block every HEARTBEAT_S with the loop's last
progress, so the supervisor tells a busy worker (recovering on its storage thread) from
a hung loop or a stopped process.

SIGTERM: hand the leadership of replicated partitions to in-sync followers on other
brokers (up to HAND_OVER_S), stop accepting, let in-flight requests finish (up to
DRAIN_S), flush and close every log cleanly (clean-shutdown marker), deregister from
ZooKeeper, exit 0.
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
from pybroker.coord.controller import Controller
from pybroker.coord.placement import NODES_PER_BROKER
from pybroker.coord.registry import ClusterState, Registry, ZooKeeperUnreachable
from pybroker.protocol import SUPPORTED
from pybroker.server import controlblock
from pybroker.server.connection import CloseReason, Connection
from pybroker.server.handlers import HANDLERS
from pybroker.server.handlers.append_batch import AppendBatch
from pybroker.server.handlers.api_versions import advertised
from pybroker.server.heartbeat import Heartbeat
from pybroker.server.log_manager import LogManager
from pybroker.server.partition_state import PartitionState
from pybroker.server.replication import ReplicaManager
from pybroker.server.stats import WorkerStats

log = logging.getLogger("pybroker.server")

HEARTBEAT_S = 0.25
DRAIN_S = 5.0
HAND_OVER_S = 5.0     # SIGTERM: how long successors get to copy a led log's end
FIRST_VIEW_S = 30.0   # the registry's first read of ZooKeeper, before SERVING


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
        self._per_ip: dict[str, int] = {}      # open connections by peer address
        self._refused = 0                      # refused since the last log line
        self._refused_logged = 0.0
        self._cluster_waiters: list = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.partitions: LogManager | None = None
        self.replicas: ReplicaManager | None = None
        self.registry: Registry | None = None
        self.control: controlblock.ControlBlock | None = None
        self.heartbeat: Heartbeat | None = None
        self.serving = False   # STARTING until the listener is armed
        self._publish_pending = False  # a partition-set publication is scheduled
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
        self._first_view = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop)
        self.control = controlblock.ControlBlock.in_dir(self.data_dir)
        self.heartbeat = Heartbeat(self.control, self.index, self._collect, HEARTBEAT_S)
        self.heartbeat.watch_loop(self.loop)
        self.heartbeat.start()
        self.partitions = LogManager(self.data_dir, self.config, self.node_id, self.loop,
                                     self.stats, on_change=self._partitions_changed)
        self.replicas = ReplicaManager(self)
        sock = self._listen or _listen_socket(self.config["listeners.host"], self.port)
        sock.setblocking(False)
        self._listen = sock
        self.registry = Registry(self.zk_connect, self.node_id, self.advertised_host, self.port,
                                 lambda st: self.loop.call_soon_threadsafe(self._on_cluster, st),
                                 self.config["zookeeper.session.timeout.ms"],
                                 owner=registration_owner(self.data_dir, self.node_id),
                                 rack=self.config["broker.rack"])
        self.controller = Controller(self.registry, (
            self.config["leader.imbalance.check.interval.seconds"]
            if self.config["auto.leader.rebalance.enable"] else None))
        self.registry.on_view = self.controller.on_view  # acts while this node controls
        await self._start_registry()
        try:  # accept once the cluster is known: Metadata must never answer from nothing
            await asyncio.wait_for(self._first_view.wait(), FIRST_VIEW_S)
        except asyncio.TimeoutError:
            log.warning("node=%d no view of ZooKeeper after %.0f s; serving without it",
                        self.node_id, FIRST_VIEW_S)
        self.loop.add_reader(sock.fileno(), self._accept)  # clients waited in the backlog
        self.serving = True
        self.heartbeat.publish_now()
        self._schedule(self.config["log.retention.check.interval.ms"] / 1000,
                       self.partitions.enforce_retention)
        self._schedule(self.config["log.flush.offset.checkpoint.interval.ms"] / 1000,
                       self.partitions.checkpoint)
        self.partitions.start_scrubbing()
        self._schedule(max(self.config["replica.lag.time.max.ms"] / 2000, 0.05),
                       self.replicas.check_isr)
        idle_ms = self.config["connections.max.idle.ms"]
        if idle_ms > 0:  # swept ten times per limit, at most every 10 s
            self._schedule(min(max(idle_ms / 10_000, 0.05), 10.0), self._close_idle)
        log.info("node=%d worker=%d serving on %s:%d", self.node_id, self.index,
                 self.config["listeners.host"], self.port)
        await self._stopped.wait()
        await self._shutdown()
        return 0

    async def _start_registry(self) -> None:
        """Connect and register, waiting out a ZooKeeper that is down (a worker restarted
        during an outage waits, heartbeating as starting, instead of crash-looping)."""
        timeout = self.config["zookeeper.connection.timeout.ms"] / 1000
        while True:
            try:
                await self.loop.run_in_executor(None, self.registry.start, timeout)
                return
            except ZooKeeperUnreachable as exc:
                if self.stopping:
                    raise
                log.warning("node=%d %s; retrying", self.node_id, exc)

    def stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            log.info("node=%d stopping", self.node_id)
            coordinator = getattr(self, "group_coordinator", None)
            if coordinator is not None:
                coordinator.shutdown()
            self._stopped.set()

    async def _shutdown(self) -> None:
        self.heartbeat.publish_now()  # _collect says STOPPING from now on
        if self.replicas.leading:
            await self.replicas.hand_over(HAND_OVER_S)
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
        self.replicas.stop()  # no follower appends while the logs close
        await self.partitions.close_all()
        await self.loop.run_in_executor(None, self.registry.stop)
        self._zk_executor.shutdown(wait=False)
        self.heartbeat.stop(state=controlblock.STOPPED)
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
            refused = self._refusal(peer[0])
            if refused is not None:
                self._refused += 1
                if time.monotonic() - self._refused_logged >= 1.0:  # one line a second
                    log.warning("node=%d peer=%s:%d connection closed: %s (%d refused since "
                                "the last line)", self.node_id, peer[0], peer[1],
                                refused.value, self._refused)
                    self._refused, self._refused_logged = 0, time.monotonic()
                sock.close()
                continue
            self.connections.add(Connection(self, sock, peer))
            self._per_ip[peer[0]] = self._per_ip.get(peer[0], 0) + 1

    def _refusal(self, ip: str) -> CloseReason | None:
        """Why a new connection from ip is refused (max.connections, per ip), or None."""
        if len(self.connections) >= self.config["max.connections"]:
            return CloseReason.TOO_MANY_CONNECTIONS
        if self._per_ip.get(ip, 0) >= self.config["max.connections.per.ip"]:
            return CloseReason.TOO_MANY_FROM_IP
        return None

    def connection_closed(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            left = self._per_ip.get(conn.ip, 1) - 1
            if left:
                self._per_ip[conn.ip] = left
            else:
                self._per_ip.pop(conn.ip, None)

    def _close_idle(self) -> None:
        """Close connections idle past connections.max.idle.ms (Kafka's rule: no request
        read and nothing owed for that long)."""
        limit = self.config["connections.max.idle.ms"] / 1000
        now = time.monotonic()
        for conn in list(self.connections):
            since = conn.idle_since()
            if since is not None and now - since > limit:
                conn.close(CloseReason.IDLE, f"idle {now - since:.1f} s")

    # --- cluster view ----------------------------------------------------------------

    def _on_cluster(self, state: ClusterState) -> None:
        self.cluster = state
        coordinator = getattr(self, "group_coordinator", None)  # made by the group handlers
        if coordinator is not None:
            coordinator.cluster_changed()
        if not self.stopping:
            self.partitions.sync(state)
            self.replicas.sync()
            self._first_view.set()
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
        and in the control block, so `pybroker stats` shows it at once. Once per loop
        pass: opening 2,000 partitions is 2,000 changes, not 2,000 sorted lists."""
        if not self.stopping and not self._publish_pending:
            self._publish_pending = True
            self.loop.call_soon(self._publish_partitions)

    def _publish_partitions(self) -> None:
        self._publish_pending = False
        if self.stopping:
            return
        self.replicas.sync()  # a log that came online takes its role
        self.registry.set_partitions(self.partitions.online_names(),  # never blocks
                                     self.partitions.offline_names())
        self.heartbeat.publish_now()  # `pybroker stats` shows it before it is first used

    # --- observability ---------------------------------------------------------------

    def _collect(self):
        """The heartbeat thread's snapshot of this worker. It runs off the loop, so it
        copies what the loop mutates with C-level copies only (see Heartbeat)."""
        stats = self.stats
        rows = []
        parts = list(self.partitions.partitions.items()) if self.partitions is not None else []
        replicas = self.replicas
        for tp, part in sorted(parts, key=lambda item: item[0]):
            plog = part.log
            msgs, size, appends = stats.partition_in.get(tp, (0, 0, 0))
            offsets = ((plog.log_start_offset, plog.log_end_offset, plog.high_watermark)
                       if plog is not None else (-1, -1, -1))
            rows.append(controlblock.PartitionRow(
                tp[0], tp[1], self.node_id, *offsets, msgs, size,
                stats.partition_out.get(tp, 0), plog.flush_count if plog else 0,
                appends, *(replicas.row(tp) if replicas is not None else ()),
                state=part.state))
        state = (controlblock.STOPPING if self.stopping else
                 controlblock.SERVING if self.serving else controlblock.STARTING)
        fields = dict(pid=os.getpid(), node_id=self.node_id, port=self.port, state=state,
                      connections=len(self.connections), requests=stats.requests,
                      bytes_in=stats.bytes_in, bytes_out=stats.bytes_out,
                      messages_in=stats.messages_in)
        if self.replicas is not None:
            fields.update(isr_shrinks=self.replicas.isr_shrinks,
                          isr_expands=self.replicas.isr_expands)
        return fields, rows, (dict(stats.latency_by_api), stats.fsync)

    def log_bad_input(self, tp, exc) -> None:
        log.warning("node=%d tp=%s-%d rejected batch: %s", self.node_id, tp[0], tp[1], exc)

    def log_storage_error(self, tp, exc) -> None:
        log.error("node=%d tp=%s-%d storage error: %s", self.node_id, tp[0], tp[1], exc)


def registration_owner(data_dir: str, node_id: int) -> str:
    """The owner token of a node's ZooKeeper registration, the same for every incarnation:
    a restarted worker takes over its predecessor's znode at once instead of waiting for
    that session to expire. Safe: the data dir's lock admits one live broker."""
    return f"{socket.gethostname()}:{os.path.realpath(data_dir)}:{node_id}"


def _listen_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock

