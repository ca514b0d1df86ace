"""Several brokers (hosts) on one ZooKeeper chroot, for the replication tests (issue 14).

A Cluster is `n` Brokers started through broker_factory with broker ids 1..n, each a
`python -m pybroker serve` supervisor with `workers` workers; worker i of broker b is
the Kafka node b*100+i. Replicas of one partition live on distinct brokers, so the
replica held by broker b is the directory `<b.data_dir>/<topic>-<partition>/` with
segment files `<20-digit base offset>.log`.

Fixture (in pybroker.testing.broker_plugin, which owns the plugin's fixtures)
    cluster_factory  test: `start(brokers=3, workers=1, settings=None, zk_connect=None,
                     hosts=None) -> Cluster`; settings are merged over CLUSTER_SETTINGS
                     and given to every broker; hosts (e.g. pybroker.testing.netns
                     Hosts) place broker i at hosts[i-1]: it listens on and advertises
                     hosts[i-1].address and is started through its command_prefix
                     (default: every broker on 127.0.0.1, in this namespace).
                     Teardown sends SIGCONT to whatever the test left stopped and
                     heals what it left isolated, then broker_factory stops every
                     broker (SIGTERM, exit 0 asserted).
    factory_data_dir(tmp_path, broker_id) is where the first cluster a test starts puts
                     broker `broker_id`'s data dir (broker_factory names them by start
                     order), so a test can mount a file system there beforehand (e.g.
                     pybroker.testing.disk.LoopExt4) and assert the path once started.

Settings. CLUSTER_SETTINGS are keys pybroker.config knows today. The replication keys
the tests pass are Kafka's names, which the replication work is expected to add:
    replica.lag.time.max.ms          a follower this far behind leaves the ISR
    min.insync.replicas              broker default (and topic config) for acks=all
    default.replication.factor       replicas of an auto-created topic
    unclean.leader.election.enable   must stay false
`pybroker serve` refuses a key it does not know; start() checks the keys against
pybroker.config first and fails naming the missing ones, so a test run before the
replication work lands says why instead of showing a start-up traceback.

Faults act on a whole host: the supervisor and every worker it forked (read from its
control block), by pid, never by name:
    kill9(b)         SIGSTOP all of them, then SIGKILL all of them (the host dies at one
                     instant: no worker acts after another has died)
    terminate(b)     SIGTERM the supervisor (controlled shutdown) and wait for its exit
    stop_process(b)  SIGSTOP the supervisor, then the workers
    resume(b)        SIGCONT the workers, then the supervisor
    restart(b)       start a dead broker again (stop + start a live one), same data dir
                     and, if free, the same ports
    isolate(b)       cut the host off the network (its placement's isolate(): with
                     netns Hosts, the bridge side of its veth goes down; processes in
                     its namespace still reach it), heal(b) undoes it
The cluster remembers which brokers are down, paused or isolated: its Metadata,
ListOffsets and CreateTopics requests go only to nodes of running, unpaused,
connected brokers, at each broker's address (Broker.host).

Observing: metadata(topic) (a RawClient Metadata v8 request, retried over live nodes
while the answer is transient), views() (every live node's answer for a partition),
wait_partition() (until every live node agrees and a predicate holds: after a fault the
nodes' views differ for a while), wait_for(predicate, timeout) (polled, bounded),
high_watermark(), replica_files() and assert_replicas_identical() (RecordBatch by
RecordBatch below a given offset, every byte compared; compare_replicas() is the pure
function behind it).

Load helpers used by the replication test modules: ProducerThread (a confluent-kafka
acks=all producer writing unique b"<name>-<seq>" values), ProducerProcess (the same
producer in a child process started through a command prefix, e.g. inside a broker's
network namespace; same interface), read_log() (every record to the high watermarks,
for pybroker.testing.history) and longest_gaps().

Not thread-safe: one test thread drives a Cluster (ProducerThreads only read their own
state).
"""
from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from pybroker.log import files
from pybroker.protocol import ApiKey
from pybroker.testing import history
from pybroker.testing.broker_plugin import Broker, RawClient, _parent_pid
from pybroker.testing.poll import wait_for as _wait_for

__all__ = ["Cluster", "PartitionMeta", "TopicMeta", "ReplicaBatch", "CLUSTER_SETTINGS",
           "REPLICATION_KEYS", "split_batches", "compare_replicas", "ProducerThread",
           "ProducerProcess", "read_log", "longest_gaps", "FaultLog", "check_settings",
           "process_state", "factory_data_dir"]

# Fast fail-over in tests: a host is declared dead 4 s after it stops answering ZooKeeper
# (the test ZooKeeper's 500 ms ticks allow 1..10 s); appends are flushed every 20 ms, so
# a follower's durable offset (and the high watermark) trail the log by ~20 ms, not 1 s.
# The heartbeat timeout is above the longest SIGSTOP of a host in these tests (about
# 20 s, waiting for an ISR shrink), so a resumed supervisor does not restart its
# workers for the pause itself: a host fault, not a worker fault.
CLUSTER_SETTINGS = {"zookeeper.session.timeout.ms": 4000, "log.flush.interval.ms": 20,
                    "worker.heartbeat.timeout.ms": 60_000}
SESSION_S = CLUSTER_SETTINGS["zookeeper.session.timeout.ms"] / 1000
REPLICATION_KEYS = ("replica.lag.time.max.ms", "min.insync.replicas",
                    "default.replication.factor", "unclean.leader.election.enable")

RPC_TIMEOUT_S = 3.0         # one request to one node; a stopped node costs this much
METADATA_TIMEOUT_S = 30.0   # metadata() retries transient answers this long
EXIT_TIMEOUT_S = 10.0       # SIGKILLed processes gone
POLL_S = 0.05
CLIENT_LOG_LINES = 20_000   # librdkafka log lines a ProducerThread keeps (debug runs)
# Metadata answers a test may see while a topic is being created or a leader moves.
UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER = 3, 5, 6
TRANSIENT_TOPIC_ERRORS = {UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE}
RETRIABLE_OFFSET_ERRORS = {UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE,
                           NOT_LEADER_OR_FOLLOWER}

# RecordBatch v2 header, the fields this module reads (Kafka's DefaultRecordBatch):
# baseOffset int64 @0, batchLength int32 @8 (bytes after this field, so a batch is
# batchLength + 12 bytes), partitionLeaderEpoch int32 @12, magic int8 @16, crc uint32 @17,
# attributes int16 @21, lastOffsetDelta int32 @23. The smallest batch (no records) is
# 61 bytes, so batchLength >= 49.
_BASE_AND_LENGTH = struct.Struct(">qi")
_LAST_DELTA = struct.Struct(">i")
_EPOCH = struct.Struct(">i")
LAST_DELTA_AT, EPOCH_AT, MAGIC_AT, CRC_AT = 23, 12, 16, 17
LOG_OVERHEAD = 12
MIN_BATCH_LENGTH = 49


# --- metadata ----------------------------------------------------------------------------

class PartitionMeta(NamedTuple):
    partition: int
    error_code: int
    leader_id: int
    leader_epoch: int
    replica_nodes: tuple[int, ...]
    isr_nodes: tuple[int, ...]
    offline_replicas: tuple[int, ...]


@dataclass
class TopicMeta:
    name: str
    partitions: dict[int, PartitionMeta]
    brokers: list[int]          # node ids the answering node lists
    controller_id: int
    via: int                    # node id that answered

    def __getitem__(self, partition: int) -> PartitionMeta:
        return self.partitions[partition]


# --- replica bytes -----------------------------------------------------------------------

class ReplicaBatch(NamedTuple):
    base_offset: int
    last_offset: int
    position: int               # byte position in the replica's concatenated segments
    data: bytes                 # the whole batch, header included


def split_batches(data: bytes) -> tuple[list[ReplicaBatch], int]:
    """The batches of a replica's log bytes (its segments concatenated in base-offset
    order), by their headers alone: (batches, bytes after the last whole batch). A
    partial batch or a header that cannot start a batch (length below 49, offsets going
    backwards) ends the scan; what follows is the tail, e.g. a torn write above the
    high watermark. CRCs are not checked here: compare_replicas compares every byte."""
    batches: list[ReplicaBatch] = []
    pos, end = 0, len(data)
    while pos + LAST_DELTA_AT + _LAST_DELTA.size <= end:
        base, length = _BASE_AND_LENGTH.unpack_from(data, pos)
        size = length + LOG_OVERHEAD
        if length < MIN_BATCH_LENGTH or pos + size > end:
            break
        if batches and base <= batches[-1].last_offset:
            break
        (delta,) = _LAST_DELTA.unpack_from(data, pos + LAST_DELTA_AT)
        batches.append(ReplicaBatch(base, base + delta, pos, bytes(data[pos:pos + size])))
        pos += size
    return batches, end - pos


def compare_replicas(replicas: dict[Any, bytes], upto_offset: int) -> str | None:
    """None if every replica holds the same batches, byte for byte, for all offsets
    below upto_offset (each must hold a batch reaching upto_offset - 1; a batch that
    starts below it and ends above is compared whole); else what differs, naming the
    replica, batch, base offset and the first differing byte."""
    if not replicas:
        return "no replica to compare"
    below: dict[Any, list[ReplicaBatch]] = {}
    for name, data in replicas.items():
        batches, tail = split_batches(data)
        kept = [b for b in batches if b.base_offset < upto_offset]
        reach = kept[-1].last_offset + 1 if kept else 0
        if upto_offset > 0 and reach < upto_offset:
            return (f"replica {name} holds offsets below {reach} only, not up to "
                    f"{upto_offset} ({len(batches)} batches, {len(data)} bytes, tail "
                    f"{tail} bytes)")
        below[name] = kept
    names = list(below)
    first = names[0]
    for other in names[1:]:
        a, b = below[first], below[other]
        for i, (x, y) in enumerate(zip(a, b)):
            if x.data != y.data:
                return (f"batch {i} differs between replica {first} and replica {other}: "
                        f"{_describe(x)} vs {_describe(y)}, first differing byte "
                        f"{_first_difference(x.data, y.data)} of the batch")
        if len(a) != len(b):
            return (f"replica {first} holds {len(a)} batches below {upto_offset}, replica "
                    f"{other} {len(b)}: the first {min(len(a), len(b))} are identical")
    return None


def _describe(b: ReplicaBatch) -> str:
    (epoch,) = _EPOCH.unpack_from(b.data, EPOCH_AT)
    (crc,) = struct.unpack_from(">I", b.data, CRC_AT)
    return (f"[offsets {b.base_offset}..{b.last_offset} at byte {b.position}, "
            f"{len(b.data)} bytes, leader epoch {epoch}, crc {crc:#010x}]")


def _first_difference(x: bytes, y: bytes) -> int:
    for i, (p, q) in enumerate(zip(x, y)):
        if p != q:
            return i
    return min(len(x), len(y))


# --- the cluster -------------------------------------------------------------------------

class Cluster:
    """n Brokers (broker ids 1..n) sharing one ZooKeeper chroot; see the module doc."""

    def __init__(self, brokers: list[Broker], hosts: list | None = None):
        self.brokers = brokers
        self.down: set[int] = set()               # broker ids killed or terminated
        self.paused: dict[int, list[int]] = {}    # broker id -> pids we SIGSTOPped
        self.isolated: set[int] = set()           # broker ids cut off the network
        # broker id -> its placement (isolate(), heal()), when the factory had hosts
        self.hosts = {b.broker_id: h for b, h in zip(brokers, hosts)} if hosts else {}
        self._rotation = 0                        # spreads requests over live nodes

    # --- addresses -------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """Every worker of every broker, "host1:p1,host1:p2,...,host2:p1,..." (each
        broker's own address, 127.0.0.1 by default)."""
        return ",".join(b.bootstrap_all for b in self.brokers)

    @property
    def live_bootstrap(self) -> str:
        """The workers of the live brokers only: a client bootstrapping from a stopped
        host waits out its socket timeout (librdkafka: 60 s) before trying another."""
        return ",".join(b.bootstrap_all for b in self.live_brokers())

    @property
    def node_ids(self) -> list[int]:
        return [n for b in self.brokers for n in b.node_ids]

    def broker(self, broker_id: int) -> Broker:
        for b in self.brokers:
            if b.broker_id == broker_id:
                return b
        raise AssertionError(f"no broker {broker_id} in {[b.broker_id for b in self.brokers]}")

    def broker_of(self, node_id: int) -> Broker:
        """The broker (host) whose worker is Kafka node `node_id`."""
        for b in self.brokers:
            if node_id in b.node_ids:
                return b
        raise AssertionError(f"node {node_id} belongs to no broker of this cluster "
                             f"(nodes {self.node_ids})")

    def is_live(self, b: Broker) -> bool:
        return (b.running() and b.broker_id not in self.down and
                b.broker_id not in self.paused and b.broker_id not in self.isolated)

    def live_brokers(self) -> list[Broker]:
        return [b for b in self.brokers if self.is_live(b)]

    def live_nodes(self) -> list[tuple[int, int]]:
        """(node id, port) of every worker of every live broker, rotated one place per
        call so that consecutive requests ask different nodes."""
        nodes = [(n, p) for b in self.live_brokers() for n, p in zip(b.node_ids, b.ports)]
        if not nodes:
            raise AssertionError("no live broker to ask")
        self._rotation = (self._rotation + 1) % len(nodes)
        return nodes[self._rotation:] + nodes[:self._rotation]

    def port_of_node(self, node_id: int) -> int:
        return self.broker_of(node_id).port_of_node(node_id)

    def host_of_node(self, node_id: int) -> str:
        return self.broker_of(node_id).host

    def client(self, node_id: int, timeout: float = RPC_TIMEOUT_S) -> RawClient:
        return RawClient(self.port_of_node(node_id), host=self.host_of_node(node_id),
                         timeout=timeout)

    # --- waiting -----------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str = "a condition",
                 detail: Callable[[], Any] | None = None) -> Any:
        """The first true value of predicate(), polled every 50 ms; AssertionError after
        `timeout` seconds naming `what` (and detail())."""
        return _wait_for(predicate, what, timeout, poll=POLL_S, detail=detail)

    def wait_registered(self, timeout: float = METADATA_TIMEOUT_S) -> None:
        """Until every live node's Metadata lists every node of every live broker."""
        def complete() -> bool:
            want = {n for b in self.live_brokers() for n in b.node_ids}
            for node, port in self.live_nodes():
                try:
                    with RawClient(port, host=self.host_of_node(node),
                                   timeout=RPC_TIMEOUT_S) as c:
                        body = c.request(ApiKey.METADATA, 1, {"topics": []})
                except (OSError, ConnectionError):
                    return False
                if not want <= {b["node_id"] for b in body["brokers"]}:
                    return False
            return True
        self.wait_for(complete, timeout, "every live node to list every live node")

    # --- metadata ----------------------------------------------------------------------

    def metadata(self, topic: str, timeout: float = METADATA_TIMEOUT_S,
                 via: int | None = None) -> TopicMeta:
        """Metadata v8 for `topic` from a live node (or node `via`), retried over the live
        nodes while a node does not answer or the topic-level error is transient
        (UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE). Partition-level errors are
        returned as they are: a partition without a leader is something tests wait out."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            nodes = ([(via, self.port_of_node(via))] if via is not None
                     else self.live_nodes())
            for node, port in nodes:
                try:
                    with RawClient(port, host=self.host_of_node(node),
                                   timeout=RPC_TIMEOUT_S) as c:
                        body = c.request(ApiKey.METADATA, 8, {
                            "topics": [{"name": topic}], "allow_auto_topic_creation": False,
                            "include_cluster_authorized_operations": False,
                            "include_topic_authorized_operations": False})
                except (OSError, ConnectionError) as exc:
                    last = f"node {node}: {exc!r}"
                    continue
                [t] = body["topics"]
                if t["error_code"] == 0:
                    return _topic_meta(topic, body, t, node)
                if t["error_code"] not in TRANSIENT_TOPIC_ERRORS:
                    raise AssertionError(f"Metadata for {topic} from node {node}: error "
                                         f"{t['error_code']}: {t}")
                last = f"node {node}: topic error {t['error_code']}"
            if time.monotonic() > deadline:
                raise AssertionError(f"no Metadata for {topic} in {timeout}s; last: {last}")
            time.sleep(POLL_S)

    def partition(self, topic: str, partition: int, **kwargs) -> PartitionMeta:
        return self.metadata(topic, **kwargs).partitions[partition]

    def views(self, topic: str, partition: int) -> dict[int, PartitionMeta | None]:
        """{node id: the partition as that live node's Metadata shows it} (None: the
        node did not answer, or does not list the partition)."""
        out: dict[int, PartitionMeta | None] = {}
        for b in self.live_brokers():
            for node in b.node_ids:
                try:
                    meta = self.metadata(topic, timeout=RPC_TIMEOUT_S, via=node)
                except AssertionError:
                    out[node] = None
                    continue
                out[node] = meta.partitions.get(partition)
        return out

    def wait_partition(self, topic: str, partition: int,
                       predicate: Callable[[PartitionMeta], bool], timeout: float,
                       what: str) -> PartitionMeta:
        """The partition once every live node's Metadata agrees on it (leader, leader
        epoch, replicas, ISR as a set) and it satisfies predicate (bounded). Nodes
        disagree for a while after a fault: a host resumed from SIGSTOP still answers
        from its view of before the pause until it has caught up with ZooKeeper."""
        seen: list[dict] = [{}]

        def check():
            views = self.views(topic, partition)
            seen[0] = views
            found = list(views.values())
            if not found or any(v is None for v in found):
                return None
            keys = {(v.leader_id, v.leader_epoch, v.replica_nodes, frozenset(v.isr_nodes))
                    for v in found}
            return found[0] if len(keys) == 1 and predicate(found[0]) else None
        return self.wait_for(check, timeout, f"{topic}-{partition}: {what} (on every live "
                             f"node)", detail=lambda: f"last seen {seen[0]}")

    def wait_isr(self, topic: str, partitions, size: int, timeout: float) -> None:
        """Until each of `partitions` has a leader and an ISR of exactly `size` nodes,
        as every live node sees it."""
        for p in partitions:
            self.wait_partition(topic, p, lambda m: m.leader_id >= 0 and
                                len(m.isr_nodes) == size, timeout, f"a leader and ISR of {size}")

    def leader_node(self, topic: str, partition: int,
                    timeout: float = METADATA_TIMEOUT_S) -> int:
        """The node id leading the partition, once it is a node of a live broker."""
        return self.wait_partition(
            topic, partition, lambda m: m.leader_id in self.node_ids
            and self.is_live(self.broker_of(m.leader_id)), timeout,
            "a live leader").leader_id

    def leader_broker(self, topic: str, partition: int,
                      timeout: float = METADATA_TIMEOUT_S) -> Broker:
        """The live broker whose worker leads the partition (waits for one)."""
        return self.broker_of(self.leader_node(topic, partition, timeout))

    def followers(self, topic: str, partition: int) -> list[Broker]:
        """The brokers holding a replica of the partition that do not lead it."""
        m = self.wait_partition(topic, partition, lambda m: m.leader_id >= 0,
                                METADATA_TIMEOUT_S, "a leader")
        return [self.broker_of(n) for n in m.replica_nodes if n != m.leader_id]

    # --- topics and offsets ------------------------------------------------------------

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 3,
                     configs: dict | None = None, assignments: dict | None = None,
                     wait: bool = True, timeout: float = METADATA_TIMEOUT_S) -> dict:
        """CreateTopics v4 to a live node; returns the topic's result (error_code,
        error_message). assignments: {partition: [node ids]} (then replication_factor
        is sent as -1, as Kafka's clients do). With wait and success, waits until every
        partition has a leader and a full ISR."""
        body = {"topics": [{
            "name": name, "num_partitions": -1 if assignments else partitions,
            "replication_factor": -1 if assignments else replication_factor,
            "assignments": [{"partition_index": p, "broker_ids": list(nodes)}
                            for p, nodes in sorted((assignments or {}).items())],
            "configs": [{"name": k, "value": str(v)} for k, v in (configs or {}).items()]}],
            "timeout_ms": int(timeout * 1000), "validate_only": False}
        node, port = self.live_nodes()[0]
        with RawClient(port, host=self.host_of_node(node),
                       timeout=timeout + RPC_TIMEOUT_S) as c:
            [result] = c.request(ApiKey.CREATE_TOPICS, 4, body)["topics"]
        if wait and result["error_code"] == 0:
            sizes = ({p: len(n) for p, n in assignments.items()} if assignments
                     else {p: replication_factor for p in range(partitions)})
            for p, size in sorted(sizes.items()):
                self.wait_isr(name, [p], size, timeout)
        return result

    def high_watermark(self, topic: str, partition: int,
                       timeout: float = METADATA_TIMEOUT_S) -> int:
        """The partition's high watermark: ListOffsets v5 (latest, read_uncommitted) to
        its leader, retried while no leader answers or the answer is retriable."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            node = self.leader_node(topic, partition, timeout)
            try:
                with self.client(node) as c:
                    body = c.request(ApiKey.LIST_OFFSETS, 5, {
                        "replica_id": -1, "isolation_level": 0, "topics": [{
                            "name": topic, "partitions": [{
                                "partition_index": partition, "current_leader_epoch": -1,
                                "timestamp": -1}]}]})
            except (OSError, ConnectionError) as exc:
                last = f"node {node}: {exc!r}"
            else:
                answer = body["topics"][0]["partitions"][0]
                if answer["error_code"] == 0:
                    return answer["offset"]
                assert answer["error_code"] in RETRIABLE_OFFSET_ERRORS, \
                    f"ListOffsets {topic}-{partition} on node {node}: {answer}"
                last = f"node {node}: {answer}"
            time.sleep(POLL_S)
        raise AssertionError(f"no high watermark for {topic}-{partition} in {timeout}s; "
                             f"last: {last}")

    # --- replica files -----------------------------------------------------------------

    def replica_dir(self, b: Broker, topic: str, partition: int) -> str:
        return os.path.join(str(b.data_dir), f"{topic}-{partition}")

    def replica_files(self, topic: str, partition: int,
                      brokers: list[Broker] | None = None) -> dict[int, bytes]:
        """{broker id: the bytes of the partition's .log segments, concatenated in base
        offset order} for each broker holding the partition's directory (or `brokers`;
        a broker without the directory then maps to b""). Read while the brokers run: a
        segment deleted between the listing and its read is skipped."""
        out: dict[int, bytes] = {}
        for b in brokers if brokers is not None else self.brokers:
            d = self.replica_dir(b, topic, partition)
            if not os.path.isdir(d):
                if brokers is not None:
                    out[b.broker_id] = b""
                continue
            chunks = []
            for base in files.list_base_offsets(d):
                try:
                    with open(os.path.join(d, files.segment_name(base) + files.LOG_SUFFIX),
                              "rb") as f:
                        chunks.append(f.read())
                except FileNotFoundError:
                    continue
            out[b.broker_id] = b"".join(chunks)
        return out

    def assert_replicas_identical(self, topic: str, partition: int, upto_offset: int,
                                  timeout: float = 30.0,
                                  brokers: list[Broker] | None = None) -> int:
        """Every replica (the brokers of the partition's replica_nodes in Metadata, or
        `brokers`) holds the same batches, byte for byte, below upto_offset (normally
        the high watermark). Followers get up to `timeout` seconds to catch up; returns
        the number of batches compared."""
        if brokers is None:
            m = self.metadata(topic).partitions[partition]
            brokers = [self.broker_of(n) for n in m.replica_nodes]
        assert len({b.broker_id for b in brokers}) == len(brokers), \
            f"replicas of {topic}-{partition} on one broker twice: {brokers}"
        problem: list[str] = []

        def same() -> bool:
            replicas = self.replica_files(topic, partition, brokers)
            problem[:] = [compare_replicas(replicas, upto_offset) or ""]
            return not problem[0]
        self.wait_for(same, timeout, f"the replicas of {topic}-{partition} on brokers "
                      f"{[b.broker_id for b in brokers]} to be identical below offset "
                      f"{upto_offset}", detail=lambda: problem[0])
        batches, _tail = split_batches(self.replica_files(topic, partition, brokers[:1])[
            brokers[0].broker_id])
        return sum(1 for b in batches if b.base_offset < upto_offset)

    # --- faults ------------------------------------------------------------------------

    def pids_of(self, b: Broker) -> list[int]:
        """[supervisor pid] + the pids of the workers it forked (control block rows
        whose process is a live child of the supervisor)."""
        assert b.running(), f"broker {b.broker_id} is not running"
        return [b.proc.pid] + b._known_worker_pids()

    def kill9(self, b: Broker) -> None:
        """kill -9 the host: SIGSTOP the supervisor and its workers, then SIGKILL them
        all; returns once every one of those processes is gone."""
        pids = self.pids_of(b)
        for pid in pids:
            _signal(pid, signal.SIGSTOP)
        # a worker forked between the listing and the supervisor's stop is listed now
        pids += [p for p in b._known_worker_pids() if p not in pids]
        for pid in reversed(pids):           # workers first, the supervisor last
            _signal(pid, signal.SIGKILL)
        b.proc.wait(EXIT_TIMEOUT_S)
        self.wait_for(lambda: all(_gone(p) for p in pids[1:]), EXIT_TIMEOUT_S,
                      f"the workers {pids[1:]} of broker {b.broker_id} to be gone")
        self.paused.pop(b.broker_id, None)
        self.down.add(b.broker_id)

    def terminate(self, b: Broker, timeout: float = 60.0, check: bool = True) -> int:
        """SIGTERM the supervisor (a controlled shutdown) and wait for it to exit;
        asserts exit code 0 unless check=False. Returns the exit code."""
        if b.broker_id in self.paused:
            self.resume(b)
        code = b.stop(timeout, check=check)
        self.down.add(b.broker_id)
        return code

    def stop_process(self, b: Broker) -> list[int]:
        """SIGSTOP the supervisor, then its workers (so none is restarted meanwhile);
        returns the pids stopped. resume() (or the fixture's teardown) continues them."""
        assert b.broker_id not in self.paused, f"broker {b.broker_id} is already stopped"
        pids = self.pids_of(b)
        for pid in pids:
            _signal(pid, signal.SIGSTOP)
        pids += [p for p in b._known_worker_pids() if p not in pids]
        for pid in pids[1:]:
            _signal(pid, signal.SIGSTOP)
        self.paused[b.broker_id] = pids
        # signals are delivered asynchronously: return once every one of them is stopped
        self.wait_for(lambda: all(process_state(p) in ("T", None) for p in pids),
                      EXIT_TIMEOUT_S, f"pids {pids} of broker {b.broker_id} to stop",
                      detail=lambda: {p: process_state(p) for p in pids})
        return pids

    def resume(self, b: Broker) -> None:
        """SIGCONT what stop_process stopped: the workers first, so their heartbeats are
        fresh again before the supervisor looks at them."""
        pids = self.paused.pop(b.broker_id, [])
        for pid in reversed(pids):
            _signal(pid, signal.SIGCONT)

    def resume_all(self) -> None:
        for broker_id in list(self.paused):
            self.resume(self.broker(broker_id))

    def isolate(self, b: Broker) -> None:
        """Cut the host off the network through its placement (the cluster factory's
        `hosts`); until heal(b) the cluster sends it no request."""
        assert b.broker_id in self.hosts, \
            f"broker {b.broker_id} has no placement to isolate (cluster_factory hosts=)"
        assert b.broker_id not in self.isolated, f"broker {b.broker_id} already isolated"
        self.isolated.add(b.broker_id)
        self.hosts[b.broker_id].isolate()

    def heal(self, b: Broker) -> None:
        """Reconnect an isolated host."""
        self.hosts[b.broker_id].heal()
        self.isolated.discard(b.broker_id)

    def heal_all(self) -> None:
        for broker_id in list(self.isolated):
            self.heal(self.broker(broker_id))

    def restart(self, b: Broker, timeout: float = 60.0) -> Broker:
        """Start a dead broker again, or stop and start a live one (continuing it first
        if stopped); waits until it serves and every live node lists its nodes."""
        if b.broker_id in self.paused:
            self.resume(b)
        if b.running():
            b.restart(timeout)
        else:
            b.start(timeout)
        self.down.discard(b.broker_id)
        self.wait_registered(timeout)
        return b

    def log_texts(self) -> dict[int, str]:
        """{broker id: its log}, for a failure message."""
        return {b.broker_id: b.log_text() for b in self.brokers}


def _topic_meta(topic: str, body: dict, t: dict, node: int) -> TopicMeta:
    parts = {p["partition_index"]: PartitionMeta(
        p["partition_index"], p["error_code"], p["leader_id"], p.get("leader_epoch", -1),
        tuple(p["replica_nodes"]), tuple(p["isr_nodes"]),
        tuple(p.get("offline_replicas") or ())) for p in t["partitions"]}
    return TopicMeta(topic, parts, sorted(b["node_id"] for b in body["brokers"]),
                     body.get("controller_id", -1), node)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat ("R", "S", "T" stopped...), None if the
    process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state = stat[stat.rindex(")") + 2]
    return None if state in "ZX" else state


def _gone(pid: int) -> bool:
    """The process exited (gone, or a zombie waiting for its new parent to reap it)."""
    return _parent_pid(pid) is None


def factory_data_dir(tmp_path, broker_id: int):
    """The data dir broker_factory gives broker `broker_id` (1..n) of the first Cluster
    a test starts with cluster_factory and no broker started before it: brokers are
    started in id order and broker_factory names the n-th one tmp_path/broker<n>-data."""
    return tmp_path / f"broker{broker_id - 1}-data"


def check_settings(settings: dict) -> None:
    """Fail naming the keys `pybroker serve` would refuse (not in pybroker.config)."""
    from pybroker import config
    unknown = sorted(k for k in settings if k not in config.BY_KEY)
    if unknown:
        raise AssertionError(f"pybroker.config does not know {unknown} yet (expected from "
                             f"the replication work, issue 14); the brokers would refuse "
                             f"to start")


# --- load helpers --------------------------------------------------------------------------

class _ProducerRecords:
    """What ProducerThread and ProducerProcess both offer over their records."""
    label: str
    idempotent: bool
    acks: list
    client_log: collections.deque

    def client_lines(self, *words: str) -> list[str]:
        """The kept librdkafka log lines containing any of `words` (case-insensitive)."""
        return [line for line in list(self.client_log)
                if any(w.lower() in line.lower() for w in words)]

    def acked_since(self, t: float, partition: int | None = None) -> int:
        return sum(1 for _v, p, _o, at in list(self.acks)
                   if at > t and (partition is None or p == partition))

    def acked_between(self, begin: float, end: float) -> list[tuple[bytes, int, int, float]]:
        """The acks whose delivery report came within [begin, end]."""
        return [a for a in list(self.acks) if begin <= a[3] <= end]

    def history(self) -> list[history.Ack]:
        return [history.Ack(v, p, o, self.label, self.idempotent) for v, p, o, _ in self.acks]

    def finish(self, timeout: float) -> None:
        """Stop, join (bounded), and assert the producer ended and flushed everything."""
        self.stop.set()
        self.join(timeout)
        assert not self.is_alive(), f"producer {self.label} still flushing after {timeout}s"
        assert self.exception is None, f"producer {self.label}: {self.exception!r}"
        assert self.unflushed == 0, f"producer {self.label}: {self.unflushed} undelivered"


class ProducerThread(_ProducerRecords, threading.Thread):
    """A confluent-kafka producer writing b"<name>-<seq>" to partition seq % partitions,
    `rate` messages a second, until stop is set; then a bounded flush.
    acks: (value, partition, offset, monotonic time) per delivery without error;
    failed: (value, error) per delivery with one; errors: client-level errors."""

    def __init__(self, name: str, bootstrap: str, topic: str, partitions: int,
                 idempotent: bool, rate: float = 100.0, acks: str = "all",
                 message_timeout_ms: int = 120_000, flush_timeout_s: float = 150.0,
                 config: dict | None = None, debug: str | None = None):
        super().__init__(name=f"producer-{name}", daemon=True)
        self.label, self.bootstrap, self.topic = name, bootstrap, topic
        self.partitions, self.idempotent, self.rate = partitions, idempotent, rate
        self.config = {"bootstrap.servers": bootstrap, "acks": acks,
                       "enable.idempotence": idempotent, "linger.ms": 5,
                       "message.timeout.ms": message_timeout_ms, "retry.backoff.ms": 100,
                       "error_cb": self._on_error, **(config or {})}
        self.flush_timeout_s = flush_timeout_s
        # librdkafka's own log (debug contexts, e.g. "eos": PID, epoch bumps, drains),
        # kept in memory, the last CLIENT_LOG_LINES lines
        self.client_log: collections.deque[str] = collections.deque(maxlen=CLIENT_LOG_LINES)
        if debug:
            logger = logging.getLogger(f"pybroker.testing.rdkafka.{name}.{id(self)}")
            logger.propagate = False
            logger.setLevel(logging.DEBUG)
            logger.addHandler(_ListHandler(self.client_log))
            self.config.update({"debug": debug, "logger": logger})
        self.stop = threading.Event()
        self.acks: list[tuple[bytes, int, int, float]] = []
        self.failed: list[tuple[bytes, str]] = []
        self.errors: list[str] = []
        self.sent = 0
        self.unflushed: int | None = None
        self.exception: BaseException | None = None

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.failed.append((msg.value(), str(err)))
        else:
            self.acks.append((msg.value(), msg.partition(), msg.offset(), time.monotonic()))

    def _on_error(self, err) -> None:
        self.errors.append(f"{'FATAL ' if err.fatal() else ''}{err}")

    def run(self) -> None:
        from confluent_kafka import Producer
        try:
            producer = Producer(self.config)
            next_at = time.monotonic()
            while not self.stop.is_set():
                value = b"%s-%d" % (self.label.encode(), self.sent)
                try:
                    producer.produce(self.topic, value=value,
                                     partition=self.sent % self.partitions,
                                     on_delivery=self._on_delivery)
                except BufferError:
                    producer.poll(0.05)
                    continue
                self.sent += 1
                next_at += 1.0 / self.rate
                producer.poll(max(0.0, next_at - time.monotonic()))
            self.unflushed = producer.flush(self.flush_timeout_s)
        except BaseException as exc:   # reported by the test through .exception
            self.exception = exc



class _ListHandler(logging.Handler):
    def __init__(self, lines):
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{time.monotonic():.3f} {record.getMessage()}")


class ProducerProcess(_ProducerRecords):
    """A ProducerThread run in a child process started through `command_prefix` (e.g.
    `ip netns exec NS`, pybroker.testing.netns: a client inside a broker's network
    namespace, which stays connected to that broker while it is isolated). Same
    arguments and the same observable state as ProducerThread (acks, failed, errors,
    sent, unflushed, exception, client_log; stop.set(), join(), is_alive(), finish()).

    The child (`python -c`, producer_child_main) writes one JSON line per event to its
    stdout: {"ack": [value, partition, offset, t]}, {"failed": [value, error]},
    {"error": text}, {"log": line}, {"sent": n} and a last {"done": {...}} with sent,
    unflushed and the exception; a reader thread here appends them to the lists. Ack
    times are the child's time.monotonic(), the same clock as ours (CLOCK_MONOTONIC is
    one clock for the machine; network namespaces do not change it). stop.set() writes
    "stop" to the child's stdin (EOF does the same: the child never outlives our pipe);
    kill() ends it by pid. Values are ASCII (b"<name>-<seq>")."""

    def __init__(self, name: str, bootstrap: str, topic: str, partitions: int,
                 idempotent: bool, rate: float = 100.0, acks: str = "all",
                 message_timeout_ms: int = 120_000, flush_timeout_s: float = 150.0,
                 config: dict | None = None, debug: str | None = None,
                 command_prefix: list[str] | tuple = (), log_path=None):
        self.label, self.bootstrap, self.topic = name, bootstrap, topic
        self.partitions, self.idempotent, self.rate = partitions, idempotent, rate
        self.command_prefix = list(command_prefix)
        self.spec = {"name": name, "bootstrap": bootstrap, "topic": topic,
                     "partitions": partitions, "idempotent": idempotent, "rate": rate,
                     "acks": acks, "message_timeout_ms": message_timeout_ms,
                     "flush_timeout_s": flush_timeout_s, "config": config or {},
                     "debug": debug}
        self.log_path = log_path          # the child's stderr (tracebacks), if given
        self.client_log: collections.deque[str] = collections.deque(maxlen=CLIENT_LOG_LINES)
        self.acks: list[tuple[bytes, int, int, float]] = []
        self.failed: list[tuple[bytes, str]] = []
        self.errors: list[str] = []
        self.sent = 0
        self.unflushed: int | None = None
        self.exception: BaseException | str | None = None
        self.proc = None
        self._reader: threading.Thread | None = None
        self.stop = _StopSignal(self)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        code = ("import sys; from pybroker.testing.cluster import producer_child_main; "
                "producer_child_main(sys.argv[1])")
        stderr = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [*self.command_prefix, sys.executable, "-c", code, json.dumps(self.spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        finally:
            if self.log_path:
                stderr.close()
        _LIVE_CHILDREN.add(self)
        self._reader = threading.Thread(target=self._read, name=f"producer-{self.label}-out",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                self.errors.append(f"child wrote {line[:200]!r}")
                continue
            if "ack" in event:
                v, p, o, at = event["ack"]
                self.acks.append((v.encode(), p, o, at))
            elif "failed" in event:
                self.failed.append((event["failed"][0].encode(), event["failed"][1]))
            elif "error" in event:
                self.errors.append(event["error"])
            elif "log" in event:
                self.client_log.append(event["log"])
            elif "sent" in event:
                self.sent = event["sent"]
            elif "done" in event:
                done = event["done"]
                self.sent, self.unflushed = done["sent"], done["unflushed"]
                self.exception = done["exception"]

    def _request_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    def join(self, timeout: float | None = None) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return
        self._reader.join(timeout)
        if self.proc.returncode != 0 and self.exception is None:
            self.exception = f"producer child exited {self.proc.returncode}"
        _LIVE_CHILDREN.discard(self)

    def is_alive(self) -> bool:
        return self.proc is not None and (self.proc.poll() is None or
                                          (self._reader is not None and
                                           self._reader.is_alive()))

    def kill(self) -> None:
        """SIGKILL the child (by its pid) and reap it; for a teardown after a failure."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_TIMEOUT_S)
        _LIVE_CHILDREN.discard(self)


class _StopSignal:
    """ProducerProcess.stop: ProducerThread's Event, as far as the tests use it."""

    def __init__(self, producer: ProducerProcess):
        self._producer, self._set = producer, False

    def set(self) -> None:
        self._set = True
        self._producer._request_stop()

    def is_set(self) -> bool:
        return self._set


_LIVE_CHILDREN: set[ProducerProcess] = set()


@atexit.register
def _kill_producer_children() -> None:
    for child in list(_LIVE_CHILDREN):
        child.kill()


def producer_child_main(spec_json: str) -> None:
    """The child of a ProducerProcess: run a ProducerThread as `spec_json` says, report
    its events as JSON lines on stdout, stop on a line (or EOF) on stdin."""
    spec = json.loads(spec_json)
    producer = ProducerThread(spec["name"], spec["bootstrap"], spec["topic"],
                              spec["partitions"], spec["idempotent"], spec["rate"],
                              spec["acks"], spec["message_timeout_ms"],
                              spec["flush_timeout_s"], spec["config"], spec["debug"])

    def watch_stdin() -> None:
        sys.stdin.readline()
        producer.stop.set()
    threading.Thread(target=watch_stdin, name="stdin", daemon=True).start()
    out = sys.stdout
    done = {"acks": 0, "failed": 0, "errors": 0, "sent": -1}

    def emit() -> None:
        lines = []
        acks, failed, errors = producer.acks, producer.failed, producer.errors
        for v, p, o, at in acks[done["acks"]:len(acks)]:
            lines.append({"ack": [v.decode(), p, o, at]})
            done["acks"] += 1
        for v, err in failed[done["failed"]:len(failed)]:
            lines.append({"failed": [v.decode(), err]})
            done["failed"] += 1
        for err in errors[done["errors"]:len(errors)]:
            lines.append({"error": err})
            done["errors"] += 1
        while producer.client_log:
            lines.append({"log": producer.client_log.popleft()})
        if producer.sent != done["sent"]:
            done["sent"] = producer.sent
            lines.append({"sent": producer.sent})
        if lines:
            out.write("".join(json.dumps(e) + "\n" for e in lines))
            out.flush()
    producer.start()
    while producer.is_alive():
        producer.join(POLL_S)
        emit()
    emit()
    exc = producer.exception
    out.write(json.dumps({"done": {"sent": producer.sent, "unflushed": producer.unflushed,
                                   "exception": None if exc is None else repr(exc)}}) + "\n")
    out.flush()


def read_log(bootstrap: str, topic: str, partitions: int,
             timeout: float = 120.0) -> tuple[list[history.LogRecord], dict[int, int]]:
    """Every record of every partition from offset 0 to its high watermark (an assign
    mode confluent-kafka consumer); and {partition: high watermark}."""
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader",
                         "enable.auto.commit": False, "auto.offset.reset": "error"})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                for p in range(partitions)}
        assert all(low == 0 for low, _ in ends.values()), f"log start moved: {ends}"
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        records: list[history.LogRecord] = []
        last = {p: -1 for p in range(partitions)}
        deadline = time.monotonic() + timeout
        while any(last[p] < ends[p][1] - 1 for p in last):
            assert time.monotonic() < deadline, f"read of {topic} stuck at {last}, ends {ends}"
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                assert msg.error() is None, msg.error()
                if msg.offset() < ends[msg.partition()][1]:
                    records.append(history.LogRecord(msg.partition(), msg.offset(),
                                                     msg.value()))
                last[msg.partition()] = max(last[msg.partition()], msg.offset())
        return records, {p: high for p, (_, high) in ends.items()}
    finally:
        consumer.close()


def longest_gaps(acks: list[tuple[bytes, int, int, float]], partitions: int,
                 begin: float, end: float) -> dict[int, float]:
    """{partition: the longest time (s) without an ack on it} within [begin, end],
    counted from begin and up to end (a partition acked nothing: end - begin)."""
    times: dict[int, list[float]] = {p: [] for p in range(partitions)}
    for _v, p, _o, at in acks:
        if begin <= at <= end:
            times[p].append(at)
    gaps = {}
    for p, ts in times.items():
        points = [begin] + sorted(ts) + [end]
        gaps[p] = max(b - a for a, b in zip(points, points[1:]))
    return gaps


@dataclass
class FaultLog:
    """What a fault schedule did, for the printed report."""
    lines: list[str] = field(default_factory=list)
    begin: float = field(default_factory=time.monotonic)

    def note(self, text: str) -> None:
        line = f"t={time.monotonic() - self.begin:6.1f}s {text}"
        self.lines.append(line)
        print(line, flush=True)
