"""A worker's presence in, and view of, the ZooKeeper registries (paper P16, P17).

Paths, under the connect string's optional chroot (Kafka 0.8 layout):
  /brokers/ids/<node>           ephemeral: {"host", "port", "endpoints", "partitions"
                                (online here), "offline" (stored here, offline),
                                "pybroker_owner"}
  /brokers/topics/<topic>       persistent: {"version": 3, "topic_id" (KIP-516, see
                                coord/topic_ids.py), "partitions": {"<p>": [replica
                                nodes, preferred leader first]}}
  /brokers/topics/<topic>/partitions/<p>/state
                                persistent: {"version": 1, "leader", "leader_epoch", "isr",
                                "controller_epoch"} (Kafka 0.8's layout). Written only by
                                compare-and-set on the znode version: by the controller
                                (leader changes, dead replicas out of the ISR) and by the
                                leader (ISR shrink and expand).
  /config/topics/<topic>        persistent: {"version": 1, "config": {key: value}}
  /controller                   ephemeral election: {"version": 1, "brokerid": node}
  /controller_epoch             persistent: the count of controller elections; every
                                controller write checks its znode version (fencing a
                                controller that lost its session without knowing it)
  /cluster/id                   persistent: {"version": "1", "id": "<cluster id>"}
  /pybroker/producer_id_block   persistent: {"next": <first unallocated producer id>}

Threads: kazoo calls back on its own threads. Its listener and watches only set flags
and wake one registry thread (`zk-registry-<node>`), which alone runs the registration
state machine (Registry._reconcile) and reads the registries whole, handing an
immutable ClusterState to the owner through `on_change` (the worker passes a function
that hops onto its event loop).

Which methods block (kazoo queues a call while disconnected and answers it only
after reconnection, so "blocks" can mean for the whole outage):
  never block, safe on an event loop:  set_partitions, state, registration
  block, call off the event loop:      start, stop
  block, call on the worker's ZooKeeper thread (Worker.run_zk): create_topic,
      set_topic_config, delete_topic, next_producer_id, and anything done with `zk`
"""
from __future__ import annotations

import enum
import functools
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (BadVersionError, ConnectionClosedError, ConnectionLoss,
                              KazooException, NodeExistsError, NoNodeError, RolledBackError,
                              SessionExpiredError)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from pybroker.coord.topic_ids import from_text as topic_id_from_text
from pybroker.coord.topic_ids import new_topic_id, to_text as topic_id_text
from pybroker.errors import PyBrokerError

log = logging.getLogger("pybroker.coord")
# kazoo logs every failed reconnect attempt (twice a second during an outage); our
# listener logs each connection transition once, so its own lines are kept to errors.
_KAZOO_LOG = logging.getLogger("pybroker.coord.kazoo")
_KAZOO_LOG.setLevel(logging.ERROR)

IDS = "/brokers/ids"
TOPICS = "/brokers/topics"
TOPIC_CONFIGS = "/config/topics"
CONTROLLER = "/controller"
CONTROLLER_EPOCH = "/controller_epoch"
CLUSTER_ID = "/cluster/id"
PRODUCER_ID_BLOCK = "/pybroker/producer_id_block"
PRODUCER_ID_BLOCK_SIZE = 1000  # ids a worker takes per ZooKeeper round trip
STATES_PER_TRANSACTION = 500   # partition-state creates per multi (ZooKeeper's 1 MB limit)

# Reconnect backoff: kazoo's default doubles up to an hour, so after a long outage a
# node could stay away for many minutes after ZooKeeper is back. 0.1 s doubling to
# 0.5 s (+-20%) costs one refused connect per 0.5 s while ZooKeeper is down and puts
# the first attempt after recovery within 0.6 s.
RECONNECT_DELAY_S = 0.1
RECONNECT_MAX_DELAY_S = 0.5
RECONNECT_JITTER = 0.2
RECHECK_S = 2.0       # registration re-checked this often even without any event
RETRY_S = 0.1         # after a failed ZooKeeper call on the registry thread
JOIN_S = 5.0          # stop(): how long to wait for the registry thread
PROBE_SESSION_S = 2.0   # session of ensure_chroot's short-lived client: kazoo waits a session
                        # timeout per connection attempt, so a half-started server costs 2 s
RECONCILE_ROUNDS = 5  # exists/create/delete rounds per pass before waiting for an event
# Failures of a call cut short by the connection itself: expected in any outage.
_CONNECTION_ERRORS = (ConnectionLoss, SessionExpiredError, ConnectionClosedError)


class TopicExists(Exception):
    pass


class ZooKeeperUnreachable(PyBrokerError, ConnectionError):
    """No server of a connect string answered within the timeout; names the address."""


def _connection_retry() -> KazooRetry:
    return KazooRetry(max_tries=-1, delay=RECONNECT_DELAY_S, backoff=2,
                      max_delay=RECONNECT_MAX_DELAY_S, max_jitter=RECONNECT_JITTER)


def _new_client(hosts: str, session_timeout_s: float) -> KazooClient:
    return KazooClient(hosts=hosts, timeout=session_timeout_s,
                       connection_retry=_connection_retry(), logger=_KAZOO_LOG)


def _start(client: KazooClient, timeout: float, name: str) -> None:
    """Start `client`; ZooKeeperUnreachable naming `name` (the connect string), with no
    kazoo thread left behind, when no server answers within `timeout` seconds."""
    try:
        client.start(timeout=timeout)
    except KazooTimeoutError:
        client.stop()
        client.close()
        raise ZooKeeperUnreachable(
            f"ZooKeeper at {name} did not answer within {timeout * 1000:.0f} ms "
            "(zookeeper.connection.timeout.ms): is it running, and is the address "
            "right?") from None


def ensure_chroot(connect: str, timeout: float = 30.0) -> None:
    """Connect once to the servers of a connect string ("h:p,h:p/chroot") and create
    its chroot if it is missing, as Kafka does (kazoo itself fails every call under a
    missing chroot). ZooKeeperUnreachable, naming the whole connect string, if no
    server answers within `timeout` seconds: this is also the start-up check."""
    hosts, slash, chroot = connect.partition("/")
    client = _new_client(hosts, PROBE_SESSION_S)
    _start(client, timeout, connect)
    try:
        if slash and chroot.strip("/"):
            client.ensure_path("/" + chroot.strip("/"))
    finally:
        client.stop()
        client.close()


def state_path(topic: str, partition: int) -> str:
    return f"{TOPICS}/{topic}/partitions/{partition}/state"


class PartitionInfo(NamedTuple):
    """A partition's replicas (assignment order: the first is the preferred leader) and
    its leadership as its state znode holds it. leader -1: none (offline); version -1:
    no state znode yet (a topic written before replication: the controller adds it)."""

    replicas: tuple
    leader: int
    leader_epoch: int
    isr: tuple
    version: int = -1
    adding: tuple = ()      # a reassignment under way: replicas being added (AR) ...
    removing: tuple = ()    # ... and being removed (RR); see coord/reassignment.py

    def state_data(self, controller_epoch: int) -> bytes:
        return _dumps({"version": 1, "leader": self.leader, "leader_epoch": self.leader_epoch,
                       "isr": list(self.isr), "controller_epoch": controller_epoch})


def initial_info(replicas) -> PartitionInfo:
    """A new partition's leadership: the first replica leads epoch 0, all are in sync."""
    replicas = tuple(replicas)
    return PartitionInfo(replicas, replicas[0], 0, replicas)


@dataclass(frozen=True)
class ClusterState:
    """One consistent read of the registries."""

    cluster_id: str = ""
    controller_id: int = -1
    nodes: dict = field(default_factory=dict)          # node id -> (host, port)
    topics: dict = field(default_factory=dict)         # topic -> {partition: leader, -1: none}
    topic_configs: dict = field(default_factory=dict)  # topic -> {key: value}
    serving: dict = field(default_factory=dict)        # node id -> frozenset of "t-p" online
    offline: dict = field(default_factory=dict)        # node id -> frozenset of "t-p" offline
    partitions: dict = field(default_factory=dict)     # (topic, partition) -> PartitionInfo
    racks: dict = field(default_factory=dict)          # node id -> broker.rack (if set)
    controller_epoch: int = 0                          # /controller_epoch when read
    topic_ids: dict = field(default_factory=dict)      # topic -> uuid.UUID (KIP-516)

    def leader(self, topic: str, partition: int) -> int | None:
        """The partition's leader node (-1: none now); None for an unknown partition."""
        return self.topics.get(topic, {}).get(partition)

    def partition(self, topic: str, partition: int) -> PartitionInfo | None:
        return self.partitions.get((topic, partition))

    def is_live(self, node: int, topic: str, partition: int) -> bool:
        """node is registered and does not say it has the partition offline."""
        return node in self.nodes and f"{topic}-{partition}" not in self.offline.get(node, ())

    def served(self, topic: str, partition: int) -> bool:
        """The partition's leader is registered and says it has the log online (it
        publishes its online partitions in /brokers/ids/<node>, P17)."""
        leader = self.leader(topic, partition)
        return f"{topic}-{partition}" in self.serving.get(leader, ())

    @functools.cached_property
    def topic_names(self) -> dict:
        """uuid.UUID -> topic: topic_ids turned round (built on first use)."""
        return {topic_id: name for name, topic_id in self.topic_ids.items()}

    def topic_served(self, topic: str) -> bool:
        """The topic exists and every partition's leader serves it."""
        parts = self.topics.get(topic)
        return parts is not None and all(self.served(topic, p) for p in parts)


def _raise_first(results, ignore: tuple = ()) -> None:
    """Raise the first failure of a committed transaction (kazoo returns them)."""
    failures = [r for r in results if isinstance(r, Exception)
                and not isinstance(r, (RolledBackError, *ignore))]
    if failures:
        raise failures[0]  # the op that failed; the others only rolled back


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


class Registration(enum.Enum):
    """Where this node's /brokers/ids/<node> stands, as the registry thread last saw it."""

    UNREGISTERED = "unregistered"  # no session, or the znode is missing (being created)
    WAITING = "waiting"            # held by a session not provably ours: wait for it to go
    REGISTERED = "registered"      # exists, ephemeralOwner == our current session


class Registry:
    """This node's registration in /brokers/ids and its view of the registries.

    Invariant, restored by one state machine (`_reconcile`, run only on the registry
    thread) after every CONNECTED transition, every event on our own znode and every
    RECHECK_S: while the session is connected, /brokers/ids/<node> exists, its
    ephemeralOwner is our current session (`self._zk.client_id[0]`) and its data
    carries the latest set_partitions.

    A znode at our path held by another session is
      - provably ours when its ephemeralOwner is a session this client has had
        (KAFKA-7165: after an expiry the old session's ephemeral may not be gone yet
        when the new session looks) or when its data carries our owner token
        (KAFKA-14845: a create whose answer was lost with its connection ran under a
        session id we never learnt). It is deleted (by version) and created again.
      - someone else's otherwise: a predecessor killed before its session expired, or
        a second broker with our node id. It is never taken over: an exists-watch
        wakes us when it goes. A dead holder's session ends within a session timeout,
        so a holder still there after twice ours is reported once as an error (a
        duplicate node id) and the wait goes on.

    `owner` is the token written into the znode (`pybroker_owner`); two live Registry
    objects must never share one. The default is unique per object. A supervisor may
    give every incarnation of one worker the same token (they never overlap: a worker
    is reaped before its successor is forked), so a restarted worker replaces its dead
    predecessor's znode at once instead of waiting for that session to expire.
    """

    def __init__(self, connect: str, node_id: int, host: str, port: int,
                 on_change: Callable[[ClusterState], None], session_timeout_ms: int = 10_000,
                 owner: str | None = None, rack: str = ""):
        # Configuration, fixed for the object's life.
        self.node_id = node_id
        self.host, self.port = host, port
        self.rack = rack
        self.path = f"{IDS}/{node_id}"
        self._on_change = on_change
        self._connect = connect
        self._session_timeout_s = session_timeout_ms / 1000
        self._owner = owner or uuid.uuid4().hex
        self._zk = _new_client(connect, self._session_timeout_s)
        # Set by any thread (kazoo's, the owner's), acted on by the registry thread.
        self._wake = threading.Event()
        self._views_dirty = True      # a watch fired: read the registries again
        self._data_stale = False      # our znode's data lags set_partitions
        self._stopping = False
        self._published: tuple[list, list] = ([], [])  # (online, offline): one store
        # Owned by the registry thread (and by start() before that thread runs).
        self.registration = Registration.UNREGISTERED  # read freely by others
        self._holder = 0                    # session holding our znode, 0: none known
        self._our_sessions: set[int] = set()  # every session id this client has had
        self._waiting_since = 0.0           # monotonic s when WAITING began
        self._conflict_reported = False
        self._failing = False               # the last pass raised
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"zk-registry-{node_id}")
        # Owned by the worker's ZooKeeper thread.
        self._id_block: list[int] = [0, 0]  # [next, end) of this worker's producer ids
        self.state = ClusterState()
        # While this node is the controller (registry thread): its election's epoch
        # and the /controller_epoch version every controller write checks.
        self.controller_epoch = 0
        self.controller_epoch_version = -1
        # the controller's hook: after every pass of the registry thread while connected
        # (a fresh read when something changed, else the last one)
        self.on_view: Callable[[ClusterState], None] | None = None

    @property
    def zk(self) -> KazooClient:
        """The session's kazoo client, for other registries (offsets). Its calls block,
        for a whole outage when disconnected: use it on the worker's ZooKeeper thread."""
        return self._zk

    # --- life cycle ------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Connect, create the persistent paths and register. Blocks (call it off the
        event loop); ZooKeeperUnreachable after `timeout` s without an answer. On return
        the node is registered, or waiting for a foreign holder of its znode to go, or
        (after a connection blip) about to retry on the registry thread."""
        ensure_chroot(self._connect, timeout)
        _start(self._zk, timeout, self._connect)
        self._zk.add_listener(self._on_state)
        for path in (IDS, TOPICS, TOPIC_CONFIGS, "/pybroker"):
            self._zk.ensure_path(path)
        self._ensure_cluster_id()
        try:
            self._reconcile()
        except Exception as exc:  # noqa: BLE001 - the registry thread retries at once
            log.warning("node=%d first registration attempt failed (%s); retrying",
                        self.node_id, exc)
        self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        """Deregister (ephemeral znodes go at once) and close the session. Blocks."""
        self._stopping = True
        self._wake.set()
        try:
            self._zk.stop()
            self._zk.close()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            log.exception("node=%d error closing the ZooKeeper session", self.node_id)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(JOIN_S)

    def _on_state(self, state) -> None:
        # kazoo's connection thread: no ZooKeeper call here (it would deadlock kazoo),
        # only a log line per transition and a wake-up of the registry thread.
        if self._stopping:
            return
        if state == KazooState.LOST:
            log.warning("node=%d ZooKeeper session lost; will re-register", self.node_id)
        elif state == KazooState.SUSPENDED:
            log.warning("node=%d ZooKeeper connection suspended; serving on", self.node_id)
        else:
            session = (self._zk.client_id or (0, b""))[0]
            log.info("node=%d ZooKeeper connected (session 0x%x)", self.node_id, session)
            self._views_dirty = True  # an expired session's watches are gone: re-arm
        self._wake.set()

    # --- registration: the state machine ---------------------------------------------

    def _node_data(self) -> bytes:
        return _dumps({"version": 4, "host": self.host, "port": self.port,
                       "endpoints": [f"PLAINTEXT://{self.host}:{self.port}"],
                       "jmx_port": -1, "timestamp": str(int(time.time() * 1000)),
                       "partitions": self._published[0], "offline": self._published[1],
                       "rack": self.rack or None,
                       "pybroker_owner": self._owner})

    def _reconcile(self) -> None:
        """One pass towards the class invariant. Registry thread only."""
        state = self._zk.state
        if state != KazooState.CONNECTED:
            if state == KazooState.LOST:
                self._enter(Registration.UNREGISTERED, 0)
            return  # the CONNECTED transition wakes us
        session = self._zk.client_id[0]
        self._our_sessions.add(session)
        for _ in range(RECONCILE_ROUNDS):
            stat = self._zk.exists(self.path, watch=self._own_watch)
            if stat is None:
                if self._create(session):
                    return
                continue
            if stat.ephemeralOwner == session:
                if self._data_stale:
                    self._data_stale = False  # before reading _published: no lost update
                    try:
                        self._zk.set(self.path, self._node_data())
                    except BaseException:
                        self._data_stale = True  # not written: the next pass tries again
                        raise
                self._enter(Registration.REGISTERED, session)
                return
            try:
                data, stat = self._zk.get(self.path)
            except NoNodeError:
                continue
            if stat.ephemeralOwner == session:
                continue  # created by us between the two reads
            why = self._why_ours(stat.ephemeralOwner, data)
            if why is None:
                self._enter(Registration.WAITING, stat.ephemeralOwner)
                self._report_conflict()
                return
            log.warning("node=%d %s is held by session 0x%x, %s: deleting it",
                        self.node_id, self.path, stat.ephemeralOwner, why)
            try:
                self._zk.delete(self.path, version=stat.version)
            except (NoNodeError, BadVersionError):
                pass  # gone or changed meanwhile: look again
        log.warning("node=%d %s changed under us %d times in one pass; looking again in "
                    "%.0f s", self.node_id, self.path, RECONCILE_ROUNDS, RECHECK_S)

    def _create(self, session: int) -> bool:
        """Create our znode; False if it appeared meanwhile (look again)."""
        self._data_stale = False
        try:
            self._zk.create(self.path, self._node_data(), ephemeral=True)
        except NodeExistsError:
            return False
        except NoNodeError:  # /brokers/ids itself is gone (ZooKeeper lost its data)
            self._zk.ensure_path(IDS)
            return False
        if (self.registration, self._holder) == (Registration.REGISTERED, session):
            # no state change to log, yet worth a line: someone deleted our znode
            log.warning("node=%d %s was deleted under our live session; created it again",
                        self.node_id, self.path)
        self._enter(Registration.REGISTERED, session)
        self._elect()
        return True

    def _why_ours(self, holder: int, data: bytes) -> str | None:
        """Why a znode held by session `holder` is provably ours, or None if it is not."""
        if holder in self._our_sessions:
            return "an earlier session of ours (not yet expired as we see it)"
        try:
            token = json.loads(data.decode()).get("pybroker_owner")
        except (ValueError, AttributeError):
            token = None
        if token == self._owner:
            return ("carrying our owner token under a session we do not hold (a create "
                    "whose answer was lost, or a dead incarnation of this node)")
        return None

    def _enter(self, new: Registration, holder: int) -> None:
        """Record a registration state; one log line per transition."""
        if (new, holder) == (self.registration, self._holder):
            return
        self.registration, self._holder = new, holder
        if new is Registration.REGISTERED:
            log.info("node=%d registered %s (session 0x%x)", self.node_id, self.path, holder)
        elif new is Registration.WAITING:
            self._waiting_since = time.monotonic()
            self._conflict_reported = False
            log.warning("node=%d %s is held by session 0x%x, not ours; waiting for it "
                        "to go", self.node_id, self.path, holder)
        else:
            log.warning("node=%d %s is not registered (no session)", self.node_id, self.path)

    def _report_conflict(self) -> None:
        waited = time.monotonic() - self._waiting_since
        if not self._conflict_reported and waited > 2 * self._session_timeout_s:
            self._conflict_reported = True
            log.error("node=%d %s is still held by session 0x%x after %.0f s, longer than "
                      "a session lasts without its client: is another broker running with "
                      "node id %d?", self.node_id, self.path, self._holder, waited,
                      self.node_id)

    def _own_watch(self, _event=None) -> None:
        self._wake.set()

    def _elect(self) -> None:
        try:
            self._zk.create(CONTROLLER, _dumps({"version": 1, "brokerid": self.node_id}),
                            ephemeral=True)
        except NodeExistsError:
            return
        self.controller_epoch, self.controller_epoch_version = self._bump_controller_epoch()
        log.info("node=%d elected controller (controller epoch %d)", self.node_id,
                 self.controller_epoch)

    def _bump_controller_epoch(self) -> tuple[int, int]:
        """Count this election in /controller_epoch by CAS: (epoch, znode version)."""
        while True:
            try:
                data, stat = self._zk.get(CONTROLLER_EPOCH)
            except NoNodeError:
                try:
                    self._zk.create(CONTROLLER_EPOCH, b"1")
                    return 1, 0
                except NodeExistsError:
                    continue
            epoch = int(data.decode() or 0) + 1
            try:
                stat = self._zk.set(CONTROLLER_EPOCH, str(epoch).encode(), version=stat.version)
                return epoch, stat.version
            except BadVersionError:
                continue

    def set_partitions(self, partitions: list[str], offline: list[str] = ()) -> None:
        """Publish the partitions this node serves (and those it stores but has
        offline) in its broker registry entry (P17), so every node's Metadata agrees.
        Never blocks: the registry thread writes them (at once when connected, else
        after reconnection)."""
        self._published = (sorted(partitions), sorted(offline))
        self._data_stale = True
        self._wake.set()

    def _ensure_cluster_id(self) -> None:
        try:
            self._zk.create(CLUSTER_ID, _dumps({"version": "1", "id": uuid.uuid4().hex[:22]}),
                            makepath=True)
        except NodeExistsError:
            pass

    # --- the registry thread ---------------------------------------------------------

    def _watch(self, _event=None) -> None:
        self._views_dirty = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(RECHECK_S)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._reconcile()
                if self._zk.state != KazooState.CONNECTED:
                    continue  # nothing to read; the CONNECTED transition wakes us
                if self._views_dirty:
                    self._views_dirty = False
                    try:
                        self.state = self._read_state()
                    except BaseException:
                        self._views_dirty = True
                        raise
                    self._on_change(self.state)
                if self.on_view is not None:  # each pass (at least every RECHECK_S)
                    self.on_view(self.state)
                if self._failing:
                    self._failing = False
                    log.info("node=%d registry pass succeeded again", self.node_id)
            except Exception as exc:  # noqa: BLE001 - keep the thread alive; retry shortly
                if self._stopping:
                    return  # the session is closing under a pass: nothing to report
                if isinstance(exc, _CONNECTION_ERRORS):
                    # the connection went while a call was out: the listener has logged
                    # that transition, and the next CONNECTED one wakes us
                    log.debug("node=%d registry pass cut short: %r", self.node_id, exc)
                elif not self._failing:  # one line per failing streak, not per retry
                    self._failing = True
                    log.warning("node=%d registry pass failed (%s: %s); retrying every "
                                "%.1f s", self.node_id, type(exc).__name__, exc, RETRY_S,
                                exc_info=not isinstance(exc, KazooException))
                time.sleep(RETRY_S)
                self._wake.set()

    # --- reading the registries ------------------------------------------------------

    def _read_json(self, path: str, watch: bool = False):
        data, _ = self._zk.get(path, watch=self._watch if watch else None)
        return json.loads(data.decode()) if data else {}

    def _read_state(self) -> ClusterState:
        zk = self._zk
        nodes, serving, offline, racks = {}, {}, {}, {}
        for child in zk.get_children(IDS, watch=self._watch):
            try:
                info = self._read_json(f"{IDS}/{child}", watch=True)
                nodes[int(child)] = (info["host"], int(info["port"]))
                serving[int(child)] = frozenset(info.get("partitions", ()))
                offline[int(child)] = frozenset(info.get("offline", ()))
                if info.get("rack"):
                    racks[int(child)] = info["rack"]
            except NoNodeError:
                continue
        topics, configs, partitions, topic_ids = {}, {}, {}, {}
        pending = []
        for name in zk.get_children(TOPICS, watch=self._watch):
            try:
                info = self._read_json(f"{TOPICS}/{name}", watch=True)
            except NoNodeError:
                continue
            if info.get("deleting") or "partitions" not in info:
                continue  # being deleted (or not a topic we wrote): gone
            if "topic_id" in info:   # none yet: written before IDs, the controller adds one
                try:
                    topic_ids[name] = topic_id_from_text(info["topic_id"])
                except ValueError as exc:
                    log.error("node=%d %s/%s: %s", self.node_id, TOPICS, name, exc)
            adding, removing = info.get("adding_replicas", {}), info.get("removing_replicas", {})
            for p, replicas in info["partitions"].items():
                moving = (tuple(adding.get(p, ())), tuple(removing.get(p, ())))
                pending.append((name, int(p), tuple(replicas), moving,
                                zk.get_async(state_path(name, int(p)), watch=self._watch)))
            try:
                configs[name] = self._read_json(f"{TOPIC_CONFIGS}/{name}",
                                                watch=True).get("config", {})
            except NoNodeError:
                configs[name] = {}
        for name, p, replicas, moving, answer in pending:  # pipelined: one round trip
            info = self._partition_info(name, p, replicas, answer)
            partitions[(name, p)] = info = info._replace(adding=moving[0], removing=moving[1])
            topics.setdefault(name, {})[p] = info.leader
        controller = self._read_controller()
        cluster_id = self._read_json(CLUSTER_ID)["id"]
        try:
            controller_epoch = int(self._zk.get(CONTROLLER_EPOCH)[0].decode() or 0)
        except NoNodeError:
            controller_epoch = 0
        return ClusterState(cluster_id, controller, nodes, topics, configs, serving, offline,
                            partitions=partitions, controller_epoch=controller_epoch,
                            racks=racks, topic_ids=topic_ids)

    def _read_controller(self) -> int:
        """The controller's node id, electing ourselves when there is none. A /controller
        naming this node under a session not ours was left by a dead incarnation of it
        (a restarted worker): it is deleted and the election held again, instead of
        having no controller until that session expires."""
        for _ in range(RECONCILE_ROUNDS):
            try:
                data, stat = self._zk.get(CONTROLLER, watch=self._watch)
            except NoNodeError:
                self._elect()
                continue
            controller = int(json.loads(data.decode())["brokerid"])
            if controller != self.node_id or stat.ephemeralOwner == self._zk.client_id[0]:
                return controller
            log.warning("node=%d %s names this node under session 0x%x, not ours: "
                        "deleting it", self.node_id, CONTROLLER, stat.ephemeralOwner)
            try:
                self._zk.delete(CONTROLLER, version=stat.version)
            except (NoNodeError, BadVersionError):
                pass
        return int(self._read_json(CONTROLLER, watch=True)["brokerid"])

    def _partition_info(self, topic: str, p: int, replicas: tuple, answer) -> PartitionInfo:
        try:
            data, stat = answer.get()
        except NoNodeError:
            # a topic from before replication, or one whose creation is still writing
            # its states: its first replica leads until the controller writes a state
            self._zk.exists(state_path(topic, p), watch=self._watch)
            return initial_info(replicas)._replace(version=-1)
        state = json.loads(data.decode())
        return PartitionInfo(replicas, int(state["leader"]), int(state["leader_epoch"]),
                             tuple(state["isr"]), stat.version)

    # --- changes: blocking, call on the worker's ZooKeeper thread (Worker.run_zk) ---

    def create_topic(self, name: str, assignment: dict[int, list[int]],
                     config: dict) -> uuid.UUID:
        """Write a new topic's ID, replica assignment, config and partition states
        (first replica leading epoch 0, every replica in sync); its topic ID, or
        TopicExists if taken. The topic and its first states are one transaction; a
        large topic's other states follow in more (a reader meanwhile sees their
        initial state, which the state written is). Blocks: call on the ZooKeeper
        thread."""
        parts = sorted(assignment.items())
        topic_id = new_topic_id()
        tx = self._zk.transaction()
        tx.create(f"{TOPICS}/{name}", _dumps({"version": 3, "topic_id": topic_id_text(topic_id),
                                              "partitions": {str(p): list(replicas)
                                                             for p, replicas in parts}}))
        tx.create(f"{TOPIC_CONFIGS}/{name}", _dumps({"version": 1, "config": config}))
        tx.create(f"{TOPICS}/{name}/partitions", b"")
        chunk = STATES_PER_TRANSACTION
        self._add_states(tx, name, parts[:chunk])
        results = tx.commit()
        if any(isinstance(r, NodeExistsError) for r in results):
            raise TopicExists(name)  # or its znodes are still being deleted
        _raise_first(results)
        for start in range(chunk, len(parts), chunk):
            tx = self._zk.transaction()
            self._add_states(tx, name, parts[start:start + chunk])
            _raise_first(tx.commit(), ignore=(NodeExistsError,))  # the controller's, maybe
        return topic_id

    def add_topic_id(self, name: str, fence: int | None = None) -> bool:
        """Give a topic written before topic IDs one (Kafka's controller does the same
        for topics from before 2.8). False if it has one already. Blocks."""
        topic_id = topic_id_text(new_topic_id())

        def change(znode):
            if "topic_id" in znode:
                return None
            return {**znode, "version": max(3, int(znode.get("version", 1))),
                    "topic_id": topic_id}
        return self.update_topic(name, change, fence=fence)

    def _add_states(self, tx, name: str, parts) -> None:
        for p, replicas in parts:
            tx.create(f"{TOPICS}/{name}/partitions/{p}", b"")
            tx.create(state_path(name, p), initial_info(replicas).state_data(
                self.state.controller_epoch))

    def create_partition_state(self, topic: str, p: int, info: PartitionInfo,
                               controller_epoch: int) -> None:
        """The controller: a state znode for a partition that has none. NodeExistsError
        if one appeared meanwhile, NoNodeError if the topic is gone (its parents are
        never created here: that would bring a deleted topic back)."""
        for parent in (f"{TOPICS}/{topic}/partitions", f"{TOPICS}/{topic}/partitions/{p}"):
            try:
                self._zk.create(parent, b"")
            except NodeExistsError:
                pass
        self._zk.create(state_path(topic, p), info.state_data(controller_epoch))

    def write_partition_state(self, topic: str, p: int, info: PartitionInfo,
                              controller_epoch: int, fence: int | None = None) -> int:
        """Compare-and-set a partition's state over version info.version; the new
        version. With fence (the controller's /controller_epoch version), in one
        transaction with a check of that version, so a deposed controller writes
        nothing. BadVersionError when either changed. Blocks."""
        data = info.state_data(controller_epoch)
        if fence is None:
            return self._zk.set(state_path(topic, p), data, version=info.version).version
        tx = self._zk.transaction()
        tx.check(CONTROLLER_EPOCH, fence)
        tx.set_data(state_path(topic, p), data, version=info.version)
        results = tx.commit()
        _raise_first(results)
        return results[1].version

    def update_topic(self, name: str, change, fence: int | None = None) -> bool:
        """Read-modify-write of a topic znode: change(content) -> new content, or None
        to leave it. The write is a compare-and-set on the version read; when another
        writer came first, change runs again on the new content (so it must be pure).
        With fence (the controller's /controller_epoch version) the write is in one
        transaction with a check of it: BadVersionError once the fence moved. True
        if written; NoNodeError when the topic is gone or being deleted. Blocks."""
        path = f"{TOPICS}/{name}"
        for _ in range(RECONCILE_ROUNDS):
            data, stat = self._zk.get(path)
            info = json.loads(data.decode()) if data else {}
            if info.get("deleting") or "partitions" not in info:
                raise NoNodeError(f"{path} is being deleted")
            new = change(info)
            if new is None:
                return False
            if fence is None:
                try:
                    self._zk.set(path, _dumps(new), version=stat.version)
                    return True
                except BadVersionError:
                    continue
            tx = self._zk.transaction()
            tx.check(CONTROLLER_EPOCH, fence)
            tx.set_data(path, _dumps(new), version=stat.version)
            fenced, written = tx.commit()
            if isinstance(written, BadVersionError):
                continue
            if isinstance(fenced, Exception) and not isinstance(fenced, RolledBackError):
                raise BadVersionError(f"{CONTROLLER_EPOCH} moved: this node is not the "
                                      "controller any more")
            _raise_first([fenced, written])
            return True
        raise BadVersionError(f"{path} kept changing under {RECONCILE_ROUNDS} attempts")

    def set_topic_config(self, name: str, config: dict) -> None:
        """Replace a topic's config overrides (every node applies them on refresh).
        Blocks: call on the ZooKeeper thread."""
        path = f"{TOPIC_CONFIGS}/{name}"
        data = _dumps({"version": 1, "config": config})
        try:
            self._zk.set(path, data)
        except NoNodeError:
            self._zk.create(path, data, makepath=True)

    def delete_topic(self, name: str) -> bool:
        """Remove a topic's registry entries; False if it did not exist. Blocks: call
        on the ZooKeeper thread."""
        path = f"{TOPICS}/{name}"
        try:  # marked first: readers take it as gone while its znodes go leaf by leaf
            data, stat = self._zk.get(path)
            info = json.loads(data.decode()) if data else {}
            info["deleting"] = True
            self._zk.set(path, _dumps(info), version=stat.version)
        except NoNodeError:
            return False
        except BadVersionError:
            pass  # changed meanwhile (marked by another node): delete it anyway
        try:
            self._zk.delete(path, recursive=True)
        except NoNodeError:
            return False
        try:
            self._zk.delete(f"{TOPIC_CONFIGS}/{name}", recursive=True)
        except NoNodeError:
            pass
        return True

    def next_producer_id(self) -> int:
        """A cluster-unique producer id, taking blocks of ids from ZooKeeper by CAS.
        Blocks once per PRODUCER_ID_BLOCK_SIZE ids: call on the ZooKeeper thread (one
        caller thread only: the block is not locked)."""
        if self._id_block[0] >= self._id_block[1]:
            self._id_block = self._take_id_block()
        pid = self._id_block[0]
        self._id_block[0] += 1
        return pid

    def _take_id_block(self) -> list[int]:
        while True:
            try:
                data, stat = self._zk.get(PRODUCER_ID_BLOCK)
            except NoNodeError:
                try:
                    self._zk.create(PRODUCER_ID_BLOCK, _dumps({"next": 0}), makepath=True)
                except NodeExistsError:
                    pass
                continue
            start = json.loads(data.decode())["next"]
            end = start + PRODUCER_ID_BLOCK_SIZE
            try:
                self._zk.set(PRODUCER_ID_BLOCK, _dumps({"next": end}), version=stat.version)
                return [start, end]
            except BadVersionError:
                continue

    def add_partitions(self, topic: str, new_assignment: dict[int, list[int]]) -> None:
        """CreatePartitions: add partitions n..m-1 ({partition: [replica nodes]}) to a
        topic of n. In one transaction: the topic znode's partition map, by
        compare-and-set on the version read here, and the new partitions' znodes with
        their first states (first replica leading epoch 0, every replica in sync), so
        a topic changed or deleted meanwhile gets nothing. BadVersionError when the
        topic changed (its map is not n partitions any more, or another writer came
        first), NoNodeError when it is gone or being deleted. Past STATES_PER_TRANSACTION
        partitions the other states follow in more transactions, as in create_topic (a
        reader meanwhile sees their initial state, which the state written is). Blocks:
        call on the ZooKeeper thread."""
        path = f"{TOPICS}/{topic}"
        data, stat = self._zk.get(path)
        info = json.loads(data.decode()) if data else {}
        if info.get("deleting") or "partitions" not in info:
            raise NoNodeError(f"{path} is being deleted")
        current = {int(p): r for p, r in info["partitions"].items()}
        parts = sorted(new_assignment.items())
        if [p for p, _ in parts] != list(range(len(current), len(current) + len(parts))):
            raise BadVersionError(f"{path} has {len(current)} partitions now; partitions "
                                  f"{[p for p, _ in parts]} do not follow them")
        current.update((p, list(replicas)) for p, replicas in parts)
        info["partitions"] = {str(p): r for p, r in sorted(current.items())}
        parent = self._zk.exists(f"{path}/partitions") is not None  # absent: pre-replication
        tx = self._zk.transaction()
        tx.set_data(path, _dumps(info), version=stat.version)
        if not parent:
            tx.create(f"{path}/partitions", b"")
        chunk = STATES_PER_TRANSACTION
        self._add_states(tx, topic, parts[:chunk])
        _raise_first(tx.commit())
        for start in range(chunk, len(parts), chunk):
            tx = self._zk.transaction()
            self._add_states(tx, topic, parts[start:start + chunk])
            _raise_first(tx.commit(), ignore=(NodeExistsError,))  # the controller's, maybe
