"""A damaged or failing partition stays its own problem: a real broker, real files, real
sockets. Regression tests of issue 8's defects 3 (a partition that fails to open took
its whole worker offline) and 6 (a fenced log's acks=all waiters waited forever, and
Produce's timeout_ms was never read)."""
from __future__ import annotations

import os
import time

from pybroker.log import checkpoint, files
from pybroker.protocol import ApiKey, ErrorCode
from pybroker.records import build_batch
from pybroker.testing.poll import wait_for

NO_FLUSH = {"log.flush.interval.ms": 10**9, "log.flush.interval.messages": 10**9}


def produce(client, topic: str, partition: int, acks: int = -1, timeout_ms: int = 60_000,
            value: bytes = b"value") -> dict:
    body = client.request(ApiKey.PRODUCE, 7, {
        "transactional_id": None, "acks": acks, "timeout_ms": timeout_ms,
        "topic_data": [{"name": topic, "partition_data": [
            {"index": partition, "records": bytes(build_batch([value]))}]}]})
    return body["responses"][0]["partition_responses"][0]


def fetch_error(client, topic: str, partition: int) -> int:
    body = client.request(ApiKey.FETCH, 11, {
        "replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20,
        "isolation_level": 0, "session_id": 0, "session_epoch": -1, "rack_id": "",
        "topics": [{"topic": topic, "partitions": [{
            "partition": partition, "current_leader_epoch": -1, "fetch_offset": 0,
            "log_start_offset": -1, "partition_max_bytes": 1 << 20}]}],
        "forgotten_topics_data": []})
    return body["responses"][0]["partitions"][0]["error_code"]


def api_versions_ok(client) -> bool:
    return client.request(ApiKey.API_VERSIONS, 0, {})["error_code"] == 0


def test_a_partition_damaged_after_a_clean_stop_goes_offline_alone(broker_factory):
    broker = broker_factory(workers=1)
    broker.create_topic("orders", 3)
    with broker.client() as c:
        for p in range(3):
            assert produce(c, "orders", p)["error_code"] == ErrorCode.NONE
    broker.stop()
    directory = os.path.join(broker.data_dir, "orders-1")
    path = files.segment_paths(directory, 0)[0]
    os.truncate(path, os.path.getsize(path) - 5)   # a cut inside the only batch
    broker.start()
    with broker.client() as c:
        wait_for(lambda: produce(c, "orders", 1)["error_code"] == ErrorCode.KAFKA_STORAGE_ERROR,
                 "orders-1 to answer KAFKA_STORAGE_ERROR", 30.0)
        assert fetch_error(c, "orders", 1) == ErrorCode.KAFKA_STORAGE_ERROR
        for p in (0, 2):    # the same worker serves its other partitions
            assert produce(c, "orders", p)["error_code"] == ErrorCode.NONE
            assert fetch_error(c, "orders", p) == ErrorCode.NONE
    assert broker.worker_row(0)["restarts"] == 0
    assert checkpoint.has_clean_shutdown_marker(directory)  # the failed open kept it
    log_text = broker.log_tail(1 << 20)
    assert "Exception in callback" not in log_text and "Traceback" not in log_text
    assert f"tp=orders-1 dir={directory} opening -> offline" in log_text and path in log_text


def test_a_failed_fdatasync_answers_acks_all_at_once_and_the_worker_serves_on(broker_factory):
    broker = broker_factory(workers=1, env={"PYBROKER_FAILPOINTS": "fdatasync=eio"})
    broker.create_topic("fenced", 1)
    with broker.client(timeout=20.0) as c:
        # the client's 20 s socket timeout is far below the request's timeout_ms: an
        # answer at all means the fenced log answered its waiter, not a timer
        answer = produce(c, "fenced", 0, timeout_ms=600_000)
        assert answer["error_code"] == ErrorCode.KAFKA_STORAGE_ERROR
        assert produce(c, "fenced", 0, acks=1)["error_code"] == ErrorCode.KAFKA_STORAGE_ERROR
        assert fetch_error(c, "fenced", 0) == ErrorCode.KAFKA_STORAGE_ERROR
        assert api_versions_ok(c)
    assert broker.worker_row(0)["restarts"] == 0
    assert "fdatasync failed" in broker.log_tail(1 << 20)


def test_produce_timeout_ms_answers_request_timed_out_and_frees_the_connection(broker_factory):
    broker = broker_factory(workers=1, settings=NO_FLUSH)
    broker.create_topic("slow", 1)
    with broker.client() as c:
        answer = produce(c, "slow", 0, timeout_ms=200)   # no flush comes within 200 ms
        assert answer["error_code"] == ErrorCode.REQUEST_TIMED_OUT
        assert api_versions_ok(c)                        # the next answer is not held back
        assert produce(c, "slow", 0, acks=1)["error_code"] == ErrorCode.NONE


def test_the_scrub_reports_a_bit_flip_before_a_consumer_reads_it(broker_factory):
    """Defect 11: after a clean stop, a bit flip in a sealed segment was served silently
    (librdkafka does not check CRCs by default)."""
    broker = broker_factory(workers=1, settings={"log.segment.bytes": 256,
                                                 "log.scrub.interval.ms": 100})
    broker.create_topic("scrubbed", 2)
    with broker.client() as c:
        for i in range(12):
            for p in (0, 1):
                assert produce(c, "scrubbed", p, value=b"v%03d" % i)["error_code"] == 0
    broker.stop()
    directory = os.path.join(broker.data_dir, "scrubbed-0")
    bases = sorted(files.list_base_offsets(directory))
    assert len(bases) >= 3, bases
    path = files.segment_paths(directory, bases[1])[0]   # a sealed segment in the middle
    with open(path, "r+b") as f:
        f.seek(70)                                       # CRC-covered record bytes
        byte = f.read(1)
        f.seek(70)
        f.write(bytes([byte[0] ^ 0x10]))
    broker.start()
    with broker.client() as c:
        wait_for(lambda: fetch_error(c, "scrubbed", 0) == ErrorCode.KAFKA_STORAGE_ERROR,
                 "the scrub to take scrubbed-0 offline", 30.0)
        assert fetch_error(c, "scrubbed", 1) == ErrorCode.NONE
    wait_for(lambda: broker.worker_row(0)["offline"] == 1, "the offline count", 10.0)
    log_text = broker.log_tail(1 << 20)
    assert "scrub found damaged durable data" in log_text and path in log_text


def test_a_worker_busy_opening_partitions_is_not_killed_and_serves_meanwhile(broker_factory):
    """Defect 8: opens ran on the event loop that also wrote the heartbeat, so a replay
    longer than the heartbeat timeout got the worker killed, again and again. Each open
    here stalls 1.5 s on the storage thread, far past the 1 s heartbeat timeout."""
    broker = broker_factory(workers=1, settings={"worker.heartbeat.timeout.ms": 1000})
    broker.create_topic("slow-open", 2)
    broker.stop()
    broker.env["PYBROKER_FAILPOINTS"] = "partition.open=stall1500"
    broker.start()      # ready once no partition is opening: two stalled opens later
    assert broker.worker_row(0)["restarts"] == 0
    with broker.client() as c:
        assert api_versions_ok(c)
        assert produce(c, "slow-open", 1)["error_code"] == ErrorCode.NONE
    assert "missed its heartbeat" not in broker.log_tail(1 << 20)


def test_heartbeats_are_on_the_monotonic_clock(broker_factory):
    """Defect 7: wall-clock heartbeats made a clock step forward of over 10 s kill every
    worker. CLOCK_MONOTONIC counts from boot, far below any wall-clock time in ms."""
    broker = broker_factory(workers=1)
    row = broker.worker_row(0)
    now = time.monotonic() * 1000
    assert 0 <= now - row["heartbeat_ms"] < 60_000 and 0 <= now - row["loop_ms"] < 60_000


def test_every_node_shows_an_offline_partition_without_a_leader(broker_factory):
    """The node that has a partition offline publishes it in /brokers/ids/<node>, so
    the other nodes' Metadata agrees (leader -1, LEADER_NOT_AVAILABLE, the leader among
    the offline replicas), as Kafka shows an offline partition."""
    broker = broker_factory(workers=2)
    broker.create_topic("split", 2)
    leaders = broker.leaders("split")
    for p in (0, 1):
        broker.produce_one("split", p, b"v")
    broker.stop()
    directory = os.path.join(broker.data_dir, "split-0")
    path = files.segment_paths(directory, 0)[0]
    os.truncate(path, os.path.getsize(path) - 5)
    broker.start()
    owner = leaders[0]
    other = broker.node_ids.index(next(n for n in broker.node_ids if n != owner))

    def shown(worker: int) -> dict:
        with broker.client(worker) as c:
            [t] = c.request(ApiKey.METADATA, 8, {"topics": [{"name": "split"}],
                                                "allow_auto_topic_creation": False})["topics"]
        return {p["partition_index"]: p for p in t["partitions"]}

    for worker in (broker.node_ids.index(owner), other):
        wait_for(lambda w=worker: shown(w)[0]["leader_id"] == -1,
                 f"worker {worker} to show split-0 without a leader", 30.0)
        part = shown(worker)[0]
        assert part["error_code"] == ErrorCode.LEADER_NOT_AVAILABLE
        assert part["offline_replicas"] == [owner]
        assert shown(worker)[1]["leader_id"] == leaders[1]   # the other partition serves
