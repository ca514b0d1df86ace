"""Load and faults against a real broker: many idle connections, a client that never
reads, a worker SIGKILLed under an acks=all producer, and a clean SIGTERM.

Every wait is bounded; nothing asserts on time.
"""
from __future__ import annotations

import gc
import json
import os
import resource
import signal
import socket
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pybroker.log import files
from pybroker.protocol import ApiKey
from pybroker.records import build_batch, parse_batches, parse_records
from pybroker.testing.poll import wait_for

NONE = 0
IDLE_CONNECTIONS = 1_000
CLIENT_TIMEOUT_S = 30.0


# --- helpers ---------------------------------------------------------------------------

def create_topic(broker, name: str, partitions: int) -> dict[int, int]:
    """Create a topic; wait until every node knows it; return {partition: leader}."""
    with broker.client() as c:
        body = c.request(ApiKey.CREATE_TOPICS, 4, {"topics": [{
            "name": name, "num_partitions": partitions, "replication_factor": 1,
            "assignments": [], "configs": []}], "timeout_ms": 10_000})
    assert body["topics"][0]["error_code"] == NONE, body
    owners: dict[int, int] = {}
    for worker in range(broker.workers):
        with broker.client(worker) as c:
            for _ in range(200):   # bounded: 200 metadata round trips, 20 ms apart
                [t] = c.request(ApiKey.METADATA, 8, {"topics": [{"name": name}],
                                                     "allow_auto_topic_creation": False})["topics"]
                if (t["error_code"] == NONE and len(t["partitions"]) == partitions and
                        all(p["error_code"] == NONE for p in t["partitions"])):
                    owners = {p["partition_index"]: p["leader_id"] for p in t["partitions"]}
                    break
                time.sleep(0.02)
            else:
                raise AssertionError(f"node {broker.node_ids[worker]} never learnt of {name}")
    return owners


def produce_request(topic: str, partition: int, records, acks: int = -1) -> dict:
    return {"transactional_id": None, "acks": acks, "timeout_ms": 10_000,
            "topic_data": [{"name": topic, "partition_data": [
                {"index": partition, "records": bytes(records)}]}]}


def fetch_request(topic: str, partition: int, offset: int, max_bytes: int = 1 << 20) -> dict:
    return {"replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": max_bytes,
            "topics": [{"topic": topic, "partitions": [{
                "partition": partition, "fetch_offset": offset,
                "partition_max_bytes": max_bytes}]}]}


def consume_all(broker, topic: str, partitions: int, expected: int,
                timeout: float = 60.0) -> list[bytes]:
    """Every value in the topic (assign from offset 0 until the high watermarks)."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "assign-only",
                         "enable.auto.commit": False})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                  timeout=CLIENT_TIMEOUT_S)[1]
                for p in range(partitions)}
        assert sum(ends.values()) >= expected
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        got, seen = [], {p: -1 for p in range(partitions)}
        deadline = time.monotonic() + timeout
        while any(seen[p] < ends[p] - 1 for p in ends) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                assert not msg.error(), msg.error()
                seen[msg.partition()] = msg.offset()
                got.append(msg.value())
        return got
    finally:
        consumer.close()


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    got = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert got >= wanted, (f"the open-file limit is {got}, this test needs {wanted}: raise "
                           f"the hard limit (ulimit -Hn {wanted}, or run as root)")


# --- many connections ---------------------------------------------------------------------

def test_thousand_idle_connections_and_a_busy_producer(broker_factory):
    # the broker inherits our limit: raise it before it starts (1,000 sockets on each
    # side of loopback, plus files and ZooKeeper)
    raise_fd_limit(4 * IDLE_CONNECTIONS)
    broker = broker_factory()
    create_topic(broker, "busy", 2)
    idle = []
    try:
        for i in range(IDLE_CONNECTIONS):   # half on each worker
            idle.append(socket.create_connection(("127.0.0.1", broker.ports[i % 2]),
                                                 timeout=CLIENT_TIMEOUT_S))
        # every worker has accepted its share (the control block counts them)
        for w in range(broker.workers):
            wait_for(lambda w=w: broker.worker_row(w)["connections"] >= IDLE_CONNECTIONS // 2,
                     f"worker {w} to accept {IDLE_CONNECTIONS // 2} sockets", CLIENT_TIMEOUT_S)

        deliveries, errors = [], []
        producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                             "linger.ms": 2})
        for i in range(20_000):
            producer.produce("busy", value=b"busy-%05d" % i, on_delivery=lambda err, msg:
                             (errors if err else deliveries).append(err or msg.value()))
            producer.poll(0)
        assert producer.flush(CLIENT_TIMEOUT_S * 2) == 0
        del producer
        assert errors == []
        assert len(deliveries) == 20_000

        # the idle connections are all still served
        for sock in idle[::50]:
            sock.sendall(_api_versions_frame())
            assert _read_frame(sock)[4:6] == b"\x00\x00"   # error_code NONE after cid
    finally:
        for sock in idle:
            sock.close()
        gc.collect()
    assert sorted(consume_all(broker, "busy", 2, 20_000)) == \
        sorted(b"busy-%05d" % i for i in range(20_000))


def _api_versions_frame() -> bytes:
    # ApiVersions v0, correlation id 1, client id "idle"
    payload = b"\x00\x12\x00\x00\x00\x00\x00\x01\x00\x04idle"
    return len(payload).to_bytes(4, "big") + payload


def _read_frame(sock: socket.socket) -> bytes:
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            assert chunk, "connection closed"
            buf += chunk
        return buf
    return exact(int.from_bytes(exact(4), "big"))


# --- a client that never reads -----------------------------------------------------------

def test_slow_reader_does_not_block_other_clients(broker):
    owners = create_topic(broker, "slow", 1)
    worker = broker.node_ids.index(owners[0])
    # ~4 MB of data, so each 1 MiB fetch answer is large
    with broker.client(worker) as c:
        for i in range(64):
            batch = build_batch([b"%03d-" % i + os.urandom(1024) for _ in range(64)])
            p = c.request(ApiKey.PRODUCE, 7, produce_request("slow", 0, batch))
            assert p["responses"][0]["partition_responses"][0]["error_code"] == NONE

    # the slow reader: a small receive buffer, 300 fetches of 1 MiB each, never read
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.settimeout(CLIENT_TIMEOUT_S)
    slow.connect(("127.0.0.1", broker.ports[worker]))
    try:
        with broker.client(worker) as other:
            wire = b"".join(other.encode(ApiKey.FETCH, 11, fetch_request("slow", 0, 0),
                                         correlation_id=i)[1] for i in range(300))
            slow.sendall(wire)   # the broker reads these and answers into a full socket

            # meanwhile another client on the same worker is served: appends and reads
            for i in range(50):
                p = other.request(ApiKey.PRODUCE, 7, produce_request(
                    "slow", 0, build_batch([b"other-%02d" % i])))["responses"][0][
                    "partition_responses"][0]
                assert p["error_code"] == NONE
                answer = other.request(ApiKey.FETCH, 11, fetch_request(
                    "slow", 0, p["base_offset"], max_bytes=4096))["responses"][0]["partitions"][0]
                records = [r for b in parse_batches(answer["records"]) for r in parse_records(b)]
                assert records[0].value == b"other-%02d" % i
        # and a brand new connection is accepted and answered
        with broker.client(worker) as fresh:
            assert fresh.request(ApiKey.API_VERSIONS, 3, {})["error_code"] == NONE
    finally:
        slow.close()


# --- a worker crash under an acks=all producer -------------------------------------------

@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "plain"])
def test_worker_crash_loses_no_acknowledged_message(broker, zk, idempotent):
    topic = "crash"
    owners = create_topic(broker, topic, 2)
    victim_node = owners[0]
    victim = broker.node_ids.index(victim_node)
    registration = f"/brokers/ids/{victim_node}"
    _data, before_stat = zk.get(registration)

    acked, failed = [], []

    def on_delivery(err, msg):
        (failed if err else acked).append(str(err) if err else msg.value())

    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                         "enable.idempotence": idempotent, "linger.ms": 5,
                         "message.timeout.ms": 90_000, "retry.backoff.ms": 50})
    total, chunk, kill_at = 30_000, 500, 10
    old_row = None
    for n in range(total // chunk):
        for i in range(n * chunk, (n + 1) * chunk):
            while True:
                try:
                    producer.produce(topic, value=b"crash-%06d" % i, partition=i % 2,
                                     on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0.01)
        if n == kill_at:
            # callbacks run inside poll(): poll while waiting
            wait_for(lambda: producer.poll(0.05) is not None and acked,
                     "the first acknowledgements", CLIENT_TIMEOUT_S, poll=0)
            old_row = broker.kill_worker(victim)
    assert producer.flush(120) == 0, "messages still undelivered"
    del producer
    gc.collect()

    # the supervisor restarted the worker: a new pid, one restart more
    new_row = broker.wait_restarted(victim, old_row)
    assert new_row["pid"] != old_row["pid"]
    assert new_row["restarts"] == old_row["restarts"] + 1
    # ... which registered itself again in ZooKeeper with a new session
    stat = wait_for(lambda: (s := zk.exists(registration)) and
                    s.ephemeralOwner != before_stat.ephemeralOwner and s,
                    f"{registration} to be re-created", CLIENT_TIMEOUT_S)
    assert stat.ephemeralOwner != before_stat.ephemeralOwner

    consumed = set(consume_all(broker, topic, 2, len(set(acked))))
    missing = set(acked) - consumed
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    assert failed == [], f"{len(failed)} deliveries failed, e.g. {failed[:3]}"
    assert len(set(acked)) == total


# --- clean shutdown ------------------------------------------------------------------------

def test_sigterm_exits_zero_with_clean_markers_and_deregisters(broker, zk):
    owners = create_topic(broker, "clean", 4)
    for p, node in owners.items():
        with broker.client(broker.node_ids.index(node)) as c:
            body = c.request(ApiKey.PRODUCE, 7, produce_request(
                "clean", p, build_batch([b"p%d-%d" % (p, i) for i in range(10)])))
            assert body["responses"][0]["partition_responses"][0]["error_code"] == NONE
    worker_pids = broker.worker_pids()
    assert sorted(zk.get_children("/brokers/ids")) == sorted(map(str, broker.node_ids))

    assert broker.stop() == 0
    for pid in worker_pids:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), f"worker {pid} alive"
    dirs = sorted(d for d in broker.data_dir.iterdir() if d.name.startswith("clean-"))
    assert [d.name for d in dirs] == [f"clean-{p}" for p in range(4)]
    for d in dirs:
        assert (d / files.CLEAN_SHUTDOWN_FILE).exists(), f"no clean-shutdown marker in {d}"
    # the workers closed their sessions: their ephemeral registrations are gone at once
    assert zk.get_children("/brokers/ids") == []

    broker.start()
    values = sorted(consume_all(broker, "clean", 4, 40))
    assert values == sorted(b"p%d-%d" % (p, i) for p in range(4) for i in range(10))


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


# --- ZooKeeper session expiry ----------------------------------------------------------------

def test_worker_re_registers_after_its_zookeeper_session_expires(broker_factory, zk):
    """A real expiry, as a long GC pause or a partition would cause one: the worker is
    frozen (SIGSTOP) until ZooKeeper has expired its 1 s session and dropped its
    ephemeral registration, then thawed (SIGCONT). The same process must register again
    under a new session and keep serving; the supervisor must not restart it (its
    heartbeat timeout is set far above the pause)."""
    broker = broker_factory(settings={"zookeeper.session.timeout.ms": 1000,
                                      "worker.heartbeat.timeout.ms": 60_000})
    owners = create_topic(broker, "expiry", 2)
    victim = 0
    node = broker.node_ids[victim]
    registration = f"/brokers/ids/{node}"
    data_before, stat_before = zk.get(registration)
    row_before = broker.worker_row(victim)

    os.kill(row_before["pid"], signal.SIGSTOP)
    try:
        wait_for(lambda: zk.exists(registration) is None,
                 f"ZooKeeper to expire the session and delete {registration}", 30.0)
    finally:
        os.kill(row_before["pid"], signal.SIGCONT)

    stat = wait_for(lambda: (s := zk.exists(registration)) and
                    s.ephemeralOwner != stat_before.ephemeralOwner and s,
                    f"{registration} to be re-created", CLIENT_TIMEOUT_S)
    assert stat.ephemeralOwner != stat_before.ephemeralOwner
    assert broker.wait_log(lambda line: f"node={node} ZooKeeper session lost" in line)
    data_after, _ = zk.get(registration)
    assert json.loads(data_after)["port"] == json.loads(data_before)["port"]
    assert sorted(json.loads(data_after)["partitions"]) == \
        sorted(json.loads(data_before)["partitions"])
    row = broker.worker_row(victim)
    assert (row["pid"], row["restarts"]) == (row_before["pid"], row_before["restarts"])

    # the cluster still has a controller among the live nodes, and the thawed node serves
    with broker.client(victim) as c:
        body = c.request(ApiKey.METADATA, 8, {"topics": None})
        assert body["controller_id"] in broker.node_ids
        assert {b["node_id"] for b in body["brokers"]} == set(broker.node_ids)
        mine = next(p for p, n in owners.items() if n == node)
        answer = c.request(ApiKey.PRODUCE, 7, produce_request(
            "expiry", mine, build_batch([b"after expiry"])))["responses"][0][
            "partition_responses"][0]
        assert answer["error_code"] == NONE
        fetched = c.request(ApiKey.FETCH, 11, fetch_request("expiry", mine, 0))
        records = [r for b in parse_batches(fetched["responses"][0]["partitions"][0]["records"])
                   for r in parse_records(b)]
        assert [r.value for r in records] == [b"after expiry"]
