"""The Prometheus endpoint: counters move by the right amounts while producing."""
import re
import socket
import time
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

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
