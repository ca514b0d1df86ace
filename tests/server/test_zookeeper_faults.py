"""ZooKeeper faults against a real broker and a real ZooKeeper: unreachable at start,
a network partition long enough to expire every worker's session, and an outage of the
server itself. No worker is restarted for any of them, produce and fetch on existing
partitions go on, and every node re-registers when ZooKeeper is back.

The partition is a real TCP relay between the broker and the shared test ZooKeeper
(ZkPartition below) that can be cut and healed: the server sees the connections close
and expires the sessions after their timeout, exactly as behind a broken network; the
shared server itself is never stopped. The outage test runs a private server.
Every wait is bounded; nothing asserts on time."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
from kazoo.client import KazooClient

from pybroker.coord.zkserver import EmbeddedZooKeeper
from pybroker.protocol import ApiKey
from pybroker.testing.broker_plugin import free_port_run
from pybroker.testing.poll import wait_for

SESSION_MS = 2000       # test ZooKeeper ticks are 500 ms: sessions may last 1..10 s
# A worker whose event loop stalls this long is killed by its supervisor: short, so an
# event loop blocked on the unreachable ZooKeeper shows as a restart within the
# outage, yet 12 x the 0.25 s heartbeat interval, ample on a loaded machine.
HEARTBEAT_TIMEOUT_MS = 3000
SETTINGS = {"zookeeper.session.timeout.ms": SESSION_MS,
            "worker.heartbeat.timeout.ms": HEARTBEAT_TIMEOUT_MS}
EXPIRE_TIMEOUT_S = 30.0  # cut -> the server has expired every session
REREGISTER_TIMEOUT_S = 30.0
EXIT_FAILURE = 1
CREATE_TIMEOUT_MS = 2000  # CreateTopics timeout_ms asked for during the outage
CREATE_ANSWER_S = 20.0    # the answer must come well before the outage ends


class ZkPartition:
    """A TCP relay 127.0.0.1:<port> -> ZooKeeper that can be cut (every relayed
    connection closed, new ones closed on accept) and healed."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # so close() is noticed by the accept loop
        self.port = self.listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def connect_string(self, chroot: str) -> str:
        return f"127.0.0.1:{self.port}{chroot}"

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair)

    def heal(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._thread.join(5)
        self.listener.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self._cut.is_set():
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 5)
                upstream.settimeout(None)
            except OSError:
                conn.close()
                continue
            pair = (conn, upstream)
            with self._lock:
                self._pairs.add(pair)
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src, dst, pair) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(pair)

    def _drop(self, pair) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv
            except OSError:
                pass
            sock.close()


@pytest.fixture
def partition(zk_server):
    relay = ZkPartition(zk_server.port)
    yield relay
    relay.close()


def worker_identity(broker) -> list[tuple[int, int]]:
    """(pid, restarts) of every worker: unchanged means no worker was restarted."""
    return [(row["pid"], row["restarts"]) for row in broker.worker_rows()]


def produce_and_fetch_everywhere(broker, topic: str, partitions: int, expected: dict,
                                 tag: bytes) -> None:
    """One acks=all record per partition, then the whole partition fetched back."""
    for p in range(partitions):
        value = b"%s-%d" % (tag, len(expected[p]))
        broker.produce_one(topic, p, value)
        expected[p].append(value)
        assert broker.fetch_values(topic, p) == expected[p]


def every_node_registered(zk, broker) -> bool:
    return all(zk.exists(f"/brokers/ids/{n}") for n in broker.node_ids)


def no_node_registered(zk, broker) -> bool:
    return not any(zk.exists(f"/brokers/ids/{n}") for n in broker.node_ids)


# --- unreachable at start ----------------------------------------------------------------

def test_unreachable_zookeeper_at_start_exits_1_naming_the_address(tmp_path):
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}/pybroker"
        done = subprocess.run(
            [sys.executable, "-m", "pybroker", "serve", "--data-dir", str(tmp_path / "d"),
             "--port", str(free_port_run(1)), "--workers", "1", "--zookeeper", address,
             "--set", "zookeeper.connection.timeout.ms=500"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_FAILURE, done.stderr
    naming = [line for line in done.stderr.splitlines() if address in line]
    assert len(naming) == 1 and "ERROR" in naming[0], done.stderr
    assert "zookeeper.connection.timeout.ms" in naming[0]
    assert "forked worker" not in done.stderr  # checked before any fork


# --- a partition that expires every session ------------------------------------------------

def test_sessions_expired_by_a_partition_re_register_and_serving_goes_on(
        broker_factory, partition, zk, zk_chroot):
    broker = broker_factory(workers=2, zk_connect=partition.connect_string(zk_chroot),
                            settings=SETTINGS)
    broker.create_topic("cut", 2)
    expected = {0: [], 1: []}
    produce_and_fetch_everywhere(broker, "cut", 2, expected, b"before")
    identity = worker_identity(broker)
    owners = {n: zk.exists(f"/brokers/ids/{n}").ephemeralOwner for n in broker.node_ids}

    for rounds in range(2):  # twice: the second expiry must work as well as the first
        partition.cut()
        try:
            # serving goes on while ZooKeeper is unreachable, until it has expired
            # every worker's session (their ephemeral znodes are gone)
            def served_and_expired():
                produce_and_fetch_everywhere(broker, "cut", 2, expected, b"cut%d" % rounds)
                return no_node_registered(zk, broker)
            wait_for(served_and_expired, "the server to expire every worker's session",
                     EXPIRE_TIMEOUT_S)
        finally:
            partition.heal()
        wait_for(lambda: every_node_registered(zk, broker),
                 f"round {rounds}: every node to re-register", REREGISTER_TIMEOUT_S)
        for n in broker.node_ids:
            owner = zk.exists(f"/brokers/ids/{n}").ephemeralOwner
            assert owner != owners[n], f"node {n} still under its expired session"
            owners[n] = owner
        produce_and_fetch_everywhere(broker, "cut", 2, expected, b"after%d" % rounds)
        assert worker_identity(broker) == identity  # no worker was restarted
    for n in broker.node_ids:
        assert broker.wait_log(lambda line, n=n: f"node={n} ZooKeeper session lost" in line)


# --- an outage of the ZooKeeper server ---------------------------------------------------

def test_zookeeper_outage_restarts_no_worker_and_every_node_re_registers(
        broker_factory, tmp_path):
    server = EmbeddedZooKeeper(tmp_path / "zk", tick_ms=500, fast_unsafe=True).start()
    chroot = "/outage"
    watcher = None
    broker = None
    try:
        broker = broker_factory(workers=2, zk_connect=server.connect_string + chroot,
                                settings=SETTINGS)
        broker.create_topic("outage", 2)
        expected = {0: [], 1: []}
        produce_and_fetch_everywhere(broker, "outage", 2, expected, b"before")
        identity = worker_identity(broker)

        server.stop()
        # ZooKeeper stays down for three session timeouts, produce and fetch all along
        down_until = time.monotonic() + 3 * SESSION_MS / 1000
        rounds = 0
        while time.monotonic() < down_until or rounds == 0:
            produce_and_fetch_everywhere(broker, "outage", 2, expected, b"down")
            rounds += 1
        assert worker_identity(broker) == identity, "a worker was restarted for the outage"

        server.start()  # same port, same data
        watcher = KazooClient(server.connect_string + chroot)
        watcher.start(timeout=30)
        wait_for(lambda: every_node_registered(watcher, broker),
                 "every node to be registered after the outage", REREGISTER_TIMEOUT_S)
        for n in broker.node_ids:
            assert broker.wait_log(
                lambda line, n=n: f"node={n} ZooKeeper connected" in line, REREGISTER_TIMEOUT_S)
        produce_and_fetch_everywhere(broker, "outage", 2, expected, b"after")
        assert worker_identity(broker) == identity
    finally:
        if broker is not None and broker.running():
            broker.stop(check=False)  # while its ZooKeeper still runs
        if watcher is not None:
            watcher.stop()
            watcher.close()
        server.stop()


def test_a_request_needing_zookeeper_during_an_outage_gets_an_error_not_silence(
        broker_factory, tmp_path):
    # Kafka answers CreateTopics with REQUEST_TIMED_OUT once its timeout_ms has passed;
    # a request queued behind an outage must not hang its connection for the outage's
    # whole length, and the node goes on serving everyone else meanwhile.
    server = EmbeddedZooKeeper(tmp_path / "zk", tick_ms=500, fast_unsafe=True).start()
    broker = None
    try:
        broker = broker_factory(workers=2, zk_connect=server.connect_string + "/asks",
                                settings=SETTINGS)
        broker.create_topic("kept", 1)
        expected = {0: []}
        produce_and_fetch_everywhere(broker, "kept", 1, expected, b"before")
        identity = worker_identity(broker)
        server.stop()
        with broker.client(0, timeout=CREATE_ANSWER_S) as asker:
            cid, frame = asker.encode(ApiKey.CREATE_TOPICS, 4, {"topics": [{
                "name": "wanted", "num_partitions": 1, "replication_factor": 1,
                "assignments": [], "configs": []}], "timeout_ms": CREATE_TIMEOUT_MS})
            asker.send(frame)
            produce_and_fetch_everywhere(broker, "kept", 1, expected, b"meanwhile")
            header, body = asker.recv_response(ApiKey.CREATE_TOPICS, 4)  # socket timeout
        assert header["correlation_id"] == cid
        assert body["topics"][0]["error_code"] != 0, body
        assert worker_identity(broker) == identity
    finally:
        if broker is not None and broker.running():
            if not server.is_running():
                server.start()  # so the workers can deregister on the way out
            broker.stop(check=False)
        server.stop()
