"""A worker's presence in, and view of, the ZooKeeper registries (paper P16, P17).

Paths, under the connect string's optional chroot (Kafka 0.8 layout):
  /brokers/ids/<node>           ephemeral: {"host", "port", "endpoints", "partitions"}
  /brokers/topics/<topic>       persistent: {"version": 2, "partitions": {"<p>": [node]}}
  /config/topics/<topic>        persistent: {"version": 1, "config": {key: value}}
  /controller                   ephemeral election: {"version": 1, "brokerid": node}
  /cluster/id                   persistent: {"version": "1", "id": "<cluster id>"}
  /pybroker/producer_id_block   persistent: {"next": <first unallocated producer id>}

Threads: kazoo calls back on its own threads. Watches only set a flag; one refresher
thread reads the registries whole and hands an immutable ClusterState to the owner
through `on_change` (the worker passes a function that hops onto its event loop). A
lost session is noticed by the same thread, which then re-creates this node's
ephemeral znodes and stands for controller again.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

log = logging.getLogger("pybroker.coord")

IDS = "/brokers/ids"
TOPICS = "/brokers/topics"
TOPIC_CONFIGS = "/config/topics"
CONTROLLER = "/controller"
CLUSTER_ID = "/cluster/id"
PRODUCER_ID_BLOCK = "/pybroker/producer_id_block"
PRODUCER_ID_BLOCK_SIZE = 1000  # ids a worker takes per ZooKeeper round trip


class TopicExists(Exception):
    pass


def ensure_chroot(connect: str, timeout: float = 30.0) -> None:
    """Create the chroot of a connect string ("h:p,h:p/chroot") if it is missing, as
    Kafka does; kazoo itself fails every call under a missing chroot."""
    hosts, slash, chroot = connect.partition("/")
    if not slash or not chroot.strip("/"):
        return
    client = KazooClient(hosts=hosts, timeout=timeout)
    client.start(timeout=timeout)
    try:
        client.ensure_path("/" + chroot.strip("/"))
    finally:
        client.stop()
        client.close()


@dataclass(frozen=True)
class ClusterState:
    """One consistent read of the registries."""

    cluster_id: str = ""
    controller_id: int = -1
    nodes: dict = field(default_factory=dict)          # node id -> (host, port)
    topics: dict = field(default_factory=dict)         # topic -> {partition: node}
    topic_configs: dict = field(default_factory=dict)  # topic -> {key: value}

    def leader(self, topic: str, partition: int) -> int | None:
        return self.topics.get(topic, {}).get(partition)


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


class Registry:
    def __init__(self, connect: str, node_id: int, host: str, port: int,
                 on_change: Callable[[ClusterState], None], session_timeout_ms: int = 10_000):
        self.node_id = node_id
        self.host, self.port = host, port
        self._on_change = on_change
        self._connect = connect
        self._zk = KazooClient(hosts=connect, timeout=session_timeout_ms / 1000)
        self._dirty = threading.Event()
        self._session_lost = False
        self._stopping = False
        self._partitions: list[str] = []
        self._thread = threading.Thread(target=self._refresh_loop, daemon=True,
                                        name=f"zk-registry-{node_id}")
        self._id_block: list[int] = [0, 0]  # [next, end) of this worker's producer ids
        self.state = ClusterState()

    @property
    def zk(self) -> KazooClient:
        """The session's kazoo client, for other registries (offsets). Its calls block:
        use it off the event loop."""
        return self._zk

    # --- life cycle ------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        ensure_chroot(self._connect, timeout)
        self._zk.start(timeout=timeout)
        self._zk.add_listener(self._on_state)
        for path in (IDS, TOPICS, TOPIC_CONFIGS, "/pybroker"):
            self._zk.ensure_path(path)
        self._ensure_cluster_id()
        self._register()
        self._thread.start()
        self._dirty.set()

    def stop(self) -> None:
        """Deregister (ephemeral znodes go at once) and close the session."""
        self._stopping = True
        self._dirty.set()
        try:
            self._zk.stop()
            self._zk.close()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            log.exception("node=%d error closing the ZooKeeper session", self.node_id)

    def _on_state(self, state) -> None:
        if state == KazooState.LOST and not self._stopping:
            self._session_lost = True
            log.warning("node=%d ZooKeeper session lost; will re-register", self.node_id)
        if state == KazooState.CONNECTED:
            self._dirty.set()

    # --- registration ----------------------------------------------------------------

    def _node_data(self) -> bytes:
        return _dumps({"version": 4, "host": self.host, "port": self.port,
                       "endpoints": [f"PLAINTEXT://{self.host}:{self.port}"],
                       "jmx_port": -1, "timestamp": str(int(time.time() * 1000)),
                       "partitions": self._partitions})

    def _register(self) -> None:
        path = f"{IDS}/{self.node_id}"
        try:
            self._zk.create(path, self._node_data(), ephemeral=True)
        except NodeExistsError:
            # our own node from a session that has not expired yet (fast restart)
            data, stat = self._zk.get(path)
            if stat.ephemeralOwner != self._zk.client_id[0]:
                log.warning("node=%d %s is held by another session; replacing it",
                            self.node_id, path)
                self._zk.delete(path)
                self._zk.create(path, self._node_data(), ephemeral=True)
        self._elect()

    def _elect(self) -> None:
        try:
            self._zk.create(CONTROLLER, _dumps({"version": 1, "brokerid": self.node_id}),
                            ephemeral=True)
            log.info("node=%d elected controller", self.node_id)
        except NodeExistsError:
            pass

    def set_partitions(self, partitions: list[str]) -> None:
        """Publish the partitions this node stores in its broker registry entry (P17)."""
        self._partitions = sorted(partitions)
        try:
            self._zk.set(f"{IDS}/{self.node_id}", self._node_data())
        except NoNodeError:
            self._dirty.set()  # re-registration will carry them

    def _ensure_cluster_id(self) -> None:
        try:
            self._zk.create(CLUSTER_ID, _dumps({"version": "1", "id": uuid.uuid4().hex[:22]}),
                            makepath=True)
        except NodeExistsError:
            pass

    # --- reading the registries ------------------------------------------------------

    def _watch(self, _event=None) -> None:
        self._dirty.set()

    def _refresh_loop(self) -> None:
        while not self._stopping:
            self._dirty.wait()
            self._dirty.clear()
            if self._stopping:
                return
            try:
                if self._session_lost and self._zk.state == KazooState.CONNECTED:
                    self._session_lost = False
                    self._register()
                self.state = self._read_state()
                self._on_change(self.state)
            except Exception:  # noqa: BLE001 - keep the refresher alive; retry shortly
                if self._stopping:
                    return  # the session is closing under a refresh: nothing to report
                log.exception("node=%d registry refresh failed; retrying", self.node_id)
                time.sleep(0.5)
                self._dirty.set()

    def _read_json(self, path: str, watch: bool = False):
        data, _ = self._zk.get(path, watch=self._watch if watch else None)
        return json.loads(data.decode()) if data else {}

    def _read_state(self) -> ClusterState:
        zk = self._zk
        nodes = {}
        for child in zk.get_children(IDS, watch=self._watch):
            try:
                info = self._read_json(f"{IDS}/{child}", watch=True)
                nodes[int(child)] = (info["host"], int(info["port"]))
            except NoNodeError:
                continue
        topics, configs = {}, {}
        for name in zk.get_children(TOPICS, watch=self._watch):
            try:
                info = self._read_json(f"{TOPICS}/{name}", watch=True)
            except NoNodeError:
                continue
            topics[name] = {int(p): replicas[0] for p, replicas in info["partitions"].items()}
            try:
                configs[name] = self._read_json(f"{TOPIC_CONFIGS}/{name}",
                                                watch=True).get("config", {})
            except NoNodeError:
                configs[name] = {}
        try:
            controller = int(self._read_json(CONTROLLER, watch=True)["brokerid"])
        except NoNodeError:
            self._elect()
            controller = int(self._read_json(CONTROLLER, watch=True)["brokerid"])
        cluster_id = self._read_json(CLUSTER_ID)["id"]
        return ClusterState(cluster_id, controller, nodes, topics, configs)

    # --- changes ---------------------------------------------------------------------

    def create_topic(self, name: str, assignment: dict[int, int], config: dict) -> None:
        """Write a new topic's partition assignment and config; TopicExists if taken."""
        tx = self._zk.transaction()
        tx.create(f"{TOPICS}/{name}", _dumps({"version": 2, "partitions": {
            str(p): [node] for p, node in sorted(assignment.items())}}))
        tx.create(f"{TOPIC_CONFIGS}/{name}", _dumps({"version": 1, "config": config}))
        results = tx.commit()
        if any(isinstance(r, NodeExistsError) for r in results):
            raise TopicExists(name)
        for r in results:
            if isinstance(r, Exception):
                raise r

    def set_topic_config(self, name: str, config: dict) -> None:
        """Replace a topic's config overrides (every node applies them on refresh)."""
        path = f"{TOPIC_CONFIGS}/{name}"
        data = _dumps({"version": 1, "config": config})
        try:
            self._zk.set(path, data)
        except NoNodeError:
            self._zk.create(path, data, makepath=True)

    def delete_topic(self, name: str) -> bool:
        """Remove a topic's registry entries; False if it did not exist."""
        if not self._zk.exists(f"{TOPICS}/{name}"):
            return False  # kazoo's recursive delete hides NoNodeError, so ask first
        try:
            self._zk.delete(f"{TOPICS}/{name}", recursive=True)
        except NoNodeError:
            return False
        try:
            self._zk.delete(f"{TOPIC_CONFIGS}/{name}", recursive=True)
        except NoNodeError:
            pass
        return True

    def next_producer_id(self) -> int:
        """A cluster-unique producer id, taking blocks of ids from ZooKeeper by CAS."""
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
