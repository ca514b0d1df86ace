"""The Prometheus endpoint: counters move by the right amounts while producing; the
responder serves concurrent scrapes and is never held by an idle client."""
import os
import re
import socket
import threading
import time
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pybroker.server import metrics
from pybroker.server.controlblock import SERVING, ControlBlock, PartitionRow, monotonic_ms
from pybroker.server.metrics import MetricsServer
from pybroker.server.partition_state import PartitionState
from pybroker.testing.poll import wait_for as poll_until

MESSAGES = 2000
SIZE = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def total(samples: dict, prefix: str, **labels) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items()
               if k.split("{")[0] == prefix and all(w in k for w in want))


def wait_for(port, predicate, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_counters_follow_produce_and_fetch(broker_factory):
    port = free_port()
    broker = broker_factory(settings={"metrics.port": port})
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("metered", 1, 1)])["metered"].result(30)
    before = scrape(port)
    assert total(before, "pybroker_worker_up") == 2
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "1", "linger.ms": 5})
    for i in range(MESSAGES):
        producer.produce("metered", b"%0*d" % (SIZE, i), partition=0)
    assert producer.flush(30) == 0

    produce_count = 'pybroker_request_latency_seconds_count'

    def settled(s):  # published together, but a scrape may fall between two publishes
        return (total(s, "pybroker_log_end_offset", topic="metered") == MESSAGES and
                total(s, "pybroker_fsync_latency_seconds_count") >= 1 and
                total(s, produce_count, api="Produce") > total(before, produce_count,
                                                               api="Produce"))

    after = wait_for(port, settled)
    assert total(after, "pybroker_log_end_offset", topic="metered") == MESSAGES
    assert total(after, "pybroker_partition_messages_in_total", topic="metered") == MESSAGES
    appended = total(after, "pybroker_partition_bytes_in_total", topic="metered")
    assert appended >= MESSAGES * SIZE  # record batches: payloads plus their framing
    assert (total(after, "pybroker_node_messages_in_total")
            - total(before, "pybroker_node_messages_in_total")) == MESSAGES
    assert total(after, produce_count, api="Produce") > total(before, produce_count, api="Produce")
    assert total(after, "pybroker_fsync_latency_seconds_count") >= 1

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "m",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition("metered", 0, 0)])
    got = 0
    deadline = time.monotonic() + 30
    while got < MESSAGES and time.monotonic() < deadline:
        got += sum(1 for m in consumer.consume(500, 1.0) if m.error() is None)
    consumer.close()
    assert got == MESSAGES
    fetched = wait_for(port, lambda s: total(s, "pybroker_partition_bytes_out_total",
                                             topic="metered") >= appended)
    assert total(fetched, "pybroker_partition_bytes_out_total", topic="metered") >= appended
    assert total(fetched, "pybroker_node_bytes_out_total") >= appended

    # defect 9: `flushes` was read from the next slot's topic bytes (0 past the last row)
    assert total(fetched, "pybroker_partition_flushes_total", topic="metered") >= 1
    assert total(fetched, "pybroker_partition_state", topic="metered", state="online") == 1
    assert total(fetched, "pybroker_partition_state", topic="metered", state="offline") == 0
    assert total(fetched, "pybroker_offline_partitions") == 0
    assert total(fetched, "pybroker_opening_partitions") == 0
    for node in (0, 1):  # monotonic on both sides: an age, never a clock difference
        assert 0 <= total(fetched, "pybroker_heartbeat_age_seconds", node=node) < 3600
        assert 0 <= total(fetched, "pybroker_loop_lag_seconds", node=node) < 3600


def test_histogram_buckets_are_cumulative(broker_factory):
    port = free_port()
    broker_factory(settings={"metrics.port": port})
    samples = wait_for(port, lambda s: total(s, "pybroker_request_latency_seconds_count",
                                             node=0, api="ApiVersions") > 0)
    buckets = [(k, v) for k, v in samples.items()
               if k.startswith("pybroker_request_latency_seconds_bucket") and 'node="0"' in k
               and 'api="ApiVersions"' in k]
    assert buckets, "the broker fixture's ApiVersions probes should be counted"
    values = [v for _, v in buckets]
    assert values == sorted(values)
    assert re.search(r'le="\+Inf"', buckets[-1][0])
    count = total(samples, "pybroker_request_latency_seconds_count", node=0, api="ApiVersions")
    assert values[-1] == count


# --- the responder ---------------------------------------------------------------------

def idle_connections(port: int, n: int) -> list[socket.socket]:
    """n connections that never send a byte, as a stuck or slow scraper's would."""
    return [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(30)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_idle_connections_do_not_hold_the_supervisor(broker_factory):
    """Defect 10: the responder served one connection at a time, blocking the
    supervisor's loop up to 2 s per idle client. With 20 idle connections open a scrape
    completes, the supervisor restarts a killed worker, and the idle ones are dropped at
    their deadline."""
    port = free_port()
    broker = broker_factory(settings={"metrics.port": port})
    idle = idle_connections(port, 20)
    try:
        old = broker.kill_worker(1)
        assert total(scrape(port), "pybroker_worker_up") >= 1
        broker.wait_restarted(1, old)
        assert total(wait_for(port, lambda s: total(s, "pybroker_worker_restarts_total",
                                                    node=1) == 1),
                     "pybroker_worker_restarts_total", node=1) == 1
        assert all(closed_by_server(s) for s in idle)
    finally:
        for s in idle:
            s.close()


def test_concurrent_scrapes_all_succeed(broker_factory):
    port = free_port()
    broker_factory(settings={"metrics.port": port})
    idle = idle_connections(port, 5)
    results, errors = [], []

    def one():
        try:
            results.append(scrape(port))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in idle:
        s.close()
    assert errors == [] and len(results) == 12
    assert all(total(r, "pybroker_worker_up") == 2 for r in results)


def _block(tmp_path, partitions: int) -> ControlBlock:
    block = ControlBlock.in_dir(str(tmp_path), create=True, workers=1)
    block.write_worker(0, pid=os.getpid(), node_id=7, state=SERVING,
                       heartbeat_ms=monotonic_ms(), loop_ms=monotonic_ms() - 1500,
                       opening=1, offline=1)
    states = [PartitionState.OPENING, PartitionState.OFFLINE, PartitionState.ONLINE]
    block.write_partitions(0, [PartitionRow("big", p, 0, 0, p, p, p, p, p, p,
                                            state=states[p % 3]) for p in range(partitions)])
    return block


def test_the_responder_multiplexes_scrapes_in_process(tmp_path):
    """MetricsServer driven by poll() in this thread, as the supervisor drives it, with
    clients in other threads: idle connections, a client that sends half a request
    then stalls, and scrapes of a 2,000-partition body (larger than a socket buffer,
    so its sends are partial) all at once."""
    block = _block(tmp_path, 2000)
    server = MetricsServer("127.0.0.1", 0, block)
    idle = idle_connections(server.port, 5)
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    stalled.sendall(b"GET /metr")
    bodies, errors = [], []

    def one(path="/metrics"):
        try:
            bodies.append(urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}",
                                                 timeout=30).read().decode())
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for _ in range(3000):  # bounded: 3000 polls of at most 0.01 s each
        server.poll(0.01)
        if not any(t.is_alive() for t in threads) and server.open_connections == 0:
            break
    for t in threads:
        t.join(30)
    assert errors == [] and len(bodies) == 8
    for text in bodies:
        assert text.endswith("\n")
        assert text.count('pybroker_partition_state{node="7",topic="big"') == 2000 * 4
        assert 'pybroker_partition_state{node="7",topic="big",partition="1",state="offline"} 1' \
            in text
        assert 'pybroker_partition_state{node="7",topic="big",partition="1",state="online"} 0' \
            in text
        assert 'pybroker_offline_partitions{node="7"} 1' in text
        assert 'pybroker_opening_partitions{node="7"} 1' in text
        lag = float(re.search(r'pybroker_loop_lag_seconds\{node="7"\} (\S+)', text).group(1))
        assert lag >= 1.5
    # the idle and the stalled connections were dropped at their deadline, unanswered
    assert server.served == 8 and server.dropped == 6
    assert all(closed_by_server(s) for s in (*idle, stalled))
    for s in (*idle, stalled):
        s.close()
    server.close()


def test_the_responder_caps_open_connections_and_answers_404(tmp_path):
    block = _block(tmp_path, 3)
    server = MetricsServer("127.0.0.1", 0, block)
    idle = idle_connections(server.port, metrics.MAX_CONNECTIONS + 10)
    server.poll(0.05)
    assert server.open_connections == metrics.MAX_CONNECTIONS  # the rest wait in the backlog
    answer = []
    client = threading.Thread(target=lambda: answer.append(
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=60).status))
    client.start()
    for _ in range(6000):  # the idle ones expire, the backlog is accepted, the scrape served
        server.poll(0.01)
        if not client.is_alive():
            break
    assert answer == [200]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"GET /nothing HTTP/1.0\r\n\r\n")
        poll_until(lambda: server.poll(0.01) or server.served >= 2, "the 404", 30, poll=0)
        assert s.recv(4096).startswith(b"HTTP/1.0 404 Not Found")
    for s in idle:
        s.close()
    server.close()
