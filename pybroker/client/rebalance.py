"""The paper's decentralized consumer rebalance (P16-P19), over ZooKeeper.

Registries (under the connect string's chroot; Kafka 0.8 layout):
  /consumers/<group>/ids/<consumer>              ephemeral: {"version": 1,
                                                 "subscription": {topic: streams},
                                                 "pattern": "static", "timestamp": ms}
  /consumers/<group>/owners/<topic>/<partition>  ephemeral: the owning stream id
                                                 ("<consumer>-<i>") as UTF-8 text
  /consumers/<group>/offsets/<topic>/<partition> persistent: the committed offset, the
                                                 NEXT offset to consume, as ASCII decimal
                                                 (shared with the broker's group
                                                 coordinator, Kafka semantics)
  read: /brokers/ids/<node> (host, port) and /brokers/topics/<topic> ({"partitions":
  {"<p>": [leader, ...]}}).

Algorithm 1 (P18), run by every consumer Ci of group G at start-up and whenever a
watch on /brokers/ids, /brokers/topics/<t> or /consumers/<G>/ids fires:
  1. remove the partitions Ci owns from the ownership registry;
  2. read the broker and consumer registries (setting the watches again);
  3. for each subscribed topic T: PT = the partitions of T, CG = the streams of every
     consumer of G subscribed to T ("<consumer>-<i>", one per requested stream);
  4. sort PT and CG; N = |PT| // |CG|, R = |PT| % |CG|; stream j takes the partitions
     j*N + min(j, R) .. (j+1)*N + min(j+1, R) - 1: the paper's formula with the
     remainder spread one each over the first R streams, so every partition has an
     owner (and streams beyond |PT| get none: they stay idle);
  5. write Ci's stream as owner of each such partition (ephemeral create).
A create that finds the node taken (another consumer has not released it yet, P18)
is a conflict: Ci releases everything it took, sleeps rebalance_backoff_ms times a
random factor in [1, 2) (jitter, so consumers do not retry in lock step) and starts
again from step 1; after rebalance_max_retries attempts it raises RebalanceError.

Threads: the watch callbacks only call `on_change` (which sets a flag); every
registry read and write runs on the caller's thread (the consumer's rebalance thread).
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from pybroker.coord.offsets import offset_path, path_element_error
from pybroker.coord.registry import state_path
from pybroker.errors import PyBrokerError

log = logging.getLogger("pybroker.client.rebalance")

__all__ = ["RebalanceError", "validate_path_element", "assign_range", "stream_ids",
           "GroupRegistry", "Snapshot", "offset_path",
           "owner_path", "consumer_path", "BROKER_IDS", "BROKER_TOPICS"]

BROKER_IDS = "/brokers/ids"
BROKER_TOPICS = "/brokers/topics"

class RebalanceError(PyBrokerError, RuntimeError):
    """The rebalance did not settle within rebalance_max_retries attempts."""


def validate_path_element(name, what: str) -> str:
    """`name` if it can be one ZooKeeper path element under /consumers (the rule the
    group coordinator applies, coord.offsets.path_element_error); a ValueError naming
    `what` and the problem otherwise."""
    problem = path_element_error(name, what)
    if problem:
        raise ValueError(f"{problem}: not a valid ZooKeeper path element")
    return name


def consumer_path(group: str, consumer_id: str | None = None) -> str:
    base = f"/consumers/{group}/ids"
    return base if consumer_id is None else f"{base}/{consumer_id}"


def owner_path(group: str, topic: str, partition: int | None = None) -> str:
    base = f"/consumers/{group}/owners/{topic}"
    return base if partition is None else f"{base}/{partition}"


def stream_ids(consumer_id: str, count: int) -> list[str]:
    return [f"{consumer_id}-{i}" for i in range(count)]


def assign_range(partitions: list[int], streams: list[str]) -> dict[str, list[int]]:
    """Step 4-5 of Algorithm 1 over sorted partitions and streams: {stream: [p...]}."""
    partitions, streams = sorted(partitions), sorted(streams)
    if not streams:
        return {}
    n, r = divmod(len(partitions), len(streams))
    out = {}
    for j, stream in enumerate(streams):
        start = j * n + min(j, r)
        out[stream] = partitions[start:start + n + (1 if j < r else 0)]
    return out


@dataclass
class Snapshot:
    """One read of the registries (step 2)."""
    nodes: dict = field(default_factory=dict)        # node id -> (host, port)
    leaders: dict = field(default_factory=dict)      # (topic, partition) -> node id
    partitions: dict = field(default_factory=dict)   # topic -> sorted [partition]
    consumers: dict = field(default_factory=dict)    # consumer id -> {topic: streams}


class GroupRegistry:
    """One consumer's registrations in a group and its run of Algorithm 1.

    `owned` maps (topic, partition) -> stream id for the owner znodes this consumer
    created and has not released. Not thread-safe: one thread (the consumer's
    rebalance thread) calls register/rebalance/release.
    """

    def __init__(self, zk: KazooClient, group: str, consumer_id: str,
                 subscription: dict[str, int], on_change: Callable[[], None],
                 max_retries: int = 20, backoff_ms: int = 200):
        self.zk = zk
        self.group = validate_path_element(group, "group name")
        self.consumer_id = validate_path_element(consumer_id, "consumer id")
        for topic, count in subscription.items():
            validate_path_element(topic, "topic")
            if not isinstance(count, int) or count < 1:
                raise ValueError(f"topic {topic!r}: stream count {count!r} is not an int >= 1")
        self.subscription = dict(subscription)
        self.on_change = on_change
        self.max_retries = max_retries
        self.backoff = backoff_ms / 1000          # seconds, before jitter
        self.owned: dict[tuple[str, int], str] = {}

    # --- registration ----------------------------------------------------------------

    def register(self, wait_s: float = 30.0) -> None:
        """Create our ephemeral consumer-registry entry. If a previous session of the
        same consumer id still holds it, wait (up to wait_s) for it to expire."""
        path = consumer_path(self.group, self.consumer_id)
        data = json.dumps({"version": 1, "subscription": self.subscription,
                           "pattern": "static",
                           "timestamp": str(int(time.time() * 1000))}).encode()
        deadline = time.monotonic() + wait_s
        for path_ in (owner_path(self.group, t) for t in self.subscription):
            self.zk.ensure_path(path_)
        while True:
            try:
                self.zk.create(path, data, ephemeral=True, makepath=True)
                return
            except NodeExistsError:
                try:
                    _, stat = self.zk.get(path)
                except NoNodeError:
                    continue
                if stat.ephemeralOwner == self.zk.client_id[0]:
                    self.zk.set(path, data)
                    return
                if time.monotonic() > deadline:
                    raise ValueError(f"consumer id {self.consumer_id!r} is already "
                                     f"registered in group {self.group!r} by another "
                                     f"live session") from None
                time.sleep(0.2)

    def deregister(self) -> None:
        try:
            self.zk.delete(consumer_path(self.group, self.consumer_id))
        except NoNodeError:
            pass

    # --- Algorithm 1 -----------------------------------------------------------------

    def _watch(self, _event=None) -> None:
        self.on_change()

    def read(self) -> Snapshot:
        """Step 2: the broker and consumer registries, watches set on what we read."""
        zk, snap = self.zk, Snapshot()
        for child in zk.get_children(BROKER_IDS, watch=self._watch):
            try:
                info = json.loads(zk.get(f"{BROKER_IDS}/{child}")[0])
                snap.nodes[int(child)] = (info["host"], int(info["port"]))
            except (NoNodeError, ValueError, KeyError):
                continue
        for topic in sorted(self.subscription):
            path = f"{BROKER_TOPICS}/{topic}"
            if zk.exists(path, watch=self._watch) is None:
                snap.partitions[topic] = []
                continue
            try:
                info = json.loads(zk.get(path, watch=self._watch)[0])
            except NoNodeError:
                snap.partitions[topic] = []
                continue
            parts = ({} if info.get("deleting") else
                     {int(p): replicas for p, replicas in info.get("partitions", {}).items()})
            snap.partitions[topic] = sorted(parts)
            for p, replicas in parts.items():
                snap.leaders[(topic, p)] = self._leader(topic, p, replicas)
        ids = consumer_path(self.group)
        for cid in zk.get_children(ids, watch=self._watch):
            try:
                info = json.loads(zk.get(f"{ids}/{cid}")[0])
                snap.consumers[cid] = {t: int(n) for t, n in info["subscription"].items()}
            except (NoNodeError, ValueError, KeyError, AttributeError):
                continue
        return snap

    def _leader(self, topic: str, partition: int, replicas: list) -> int:
        """The partition's leader from its state znode (watched: a leader change makes
        the fetcher go to the new leader); its first replica for a topic written
        before replication."""
        try:
            data = self.zk.get(state_path(topic, partition), watch=self._watch)[0]
            return int(json.loads(data)["leader"])
        except NoNodeError:
            return replicas[0] if replicas else -1
        except (ValueError, KeyError, TypeError):
            return -1

    def plan(self, snap: Snapshot) -> dict[tuple[str, int], str]:
        """Steps 3-5: {(topic, partition): our stream id} for this snapshot."""
        mine = {}
        for topic in sorted(self.subscription):
            streams = sorted(s for cid, sub in snap.consumers.items() if topic in sub
                             for s in stream_ids(cid, sub[topic]))
            own = set(stream_ids(self.consumer_id, self.subscription[topic]))
            for stream, parts in assign_range(snap.partitions.get(topic, []),
                                              streams).items():
                if stream in own:
                    for p in parts:
                        mine[(topic, p)] = stream
        return mine

    def release(self) -> None:
        """Step 1: delete every owner znode this consumer created."""
        for (topic, p), stream in sorted(self.owned.items()):
            path = owner_path(self.group, topic, p)
            try:
                data, stat = self.zk.get(path)
                if data.decode() == stream and stat.ephemeralOwner == self.zk.client_id[0]:
                    self.zk.delete(path, version=stat.version)
            except NoNodeError:
                pass
        self.owned.clear()

    def _claim(self, plan: dict[tuple[str, int], str]) -> tuple[str, int] | None:
        """Create an owner znode per planned partition; the first conflicting partition
        (taken by someone else), or None if all are ours."""
        session = self.zk.client_id[0]
        for (topic, p), stream in sorted(plan.items()):
            path = owner_path(self.group, topic, p)
            try:
                self.zk.create(path, stream.encode(), ephemeral=True, makepath=True)
            except NodeExistsError:
                try:
                    data, stat = self.zk.get(path)
                except NoNodeError:
                    return (topic, p)   # released meanwhile: retry the whole round
                if data.decode() != stream or stat.ephemeralOwner != session:
                    return (topic, p)
            self.owned[(topic, p)] = stream
        return None

    def rebalance(self, sleep=time.sleep) -> tuple[Snapshot, dict[tuple[str, int], str]]:
        """Run Algorithm 1 until every planned partition is ours; returns the snapshot
        it settled on and {(topic, partition): stream id}. RebalanceError after
        max_retries conflicting attempts."""
        conflicts = []
        for attempt in range(1, self.max_retries + 1):
            self.release()
            snap = self.read()
            plan = self.plan(snap)
            conflict = self._claim(plan)
            if conflict is None:
                log.info("group=%s consumer=%s owns %d partitions after %d attempt(s)",
                         self.group, self.consumer_id, len(plan), attempt)
                return snap, dict(self.owned)
            conflicts.append(f"{conflict[0]}-{conflict[1]}")
            self.release()
            delay = self.backoff * (1 + random.random())
            log.info("group=%s consumer=%s attempt %d: %s-%d is owned by another "
                     "consumer; released all, retrying in %.0f ms", self.group,
                     self.consumer_id, attempt, conflict[0], conflict[1], delay * 1000)
            sleep(delay)
        raise RebalanceError(
            f"group {self.group!r} consumer {self.consumer_id!r}: rebalance did not settle "
            f"after {self.max_retries} attempts (rebalance_max_retries); partitions "
            f"still owned by others: {', '.join(conflicts[-5:])}")
