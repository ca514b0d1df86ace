"""A broker whose data dir is a small tmpfs: produce fails with KAFKA_STORAGE_ERROR when
the disk is full, nothing acknowledged is lost, and it serves again once space is freed."""
import subprocess

import pytest

from pybroker.protocol import ApiKey, ErrorCode
from pybroker.records import build_batch, parse_batches

KAFKA_STORAGE_ERROR = ErrorCode.KAFKA_STORAGE_ERROR
TMPFS = "6m"
BATCH = [b"v" * 1000] * 50  # ~50 KB a batch


@pytest.fixture
def full_disk_broker(tmp_path, broker_factory):
    data = tmp_path / "broker0-data"  # the name broker_factory gives its first broker
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS}", "tmpfs", str(data)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs (tests run as root): {mounted.stderr}"
    filler = data / "filler"
    filler.write_bytes(bytes(1 << 20))  # space to give back later
    broker = broker_factory(workers=1, settings={"log.segment.bytes": 1 << 20,
                                                 "log.index.size.max.bytes": 1 << 16})
    assert str(broker.data_dir) == str(data)
    yield broker, filler
    broker.stop()
    subprocess.run(["umount", "-l", str(data)], check=True)


def produce(client, topic: str) -> dict:
    body = {"transactional_id": None, "acks": -1, "timeout_ms": 30000, "topic_data": [
        {"name": topic, "partition_data": [{"index": 0, "records": bytes(build_batch(BATCH))}]}]}
    return client.request(ApiKey.PRODUCE, 7, body)["responses"][0]["partition_responses"][0]


def test_full_disk_fails_produce_then_recovers(full_disk_broker):
    broker, filler = full_disk_broker
    with broker.client() as client:
        client.request(ApiKey.CREATE_TOPICS, 4, {"topics": [{
            "name": "fill", "num_partitions": 1, "replication_factor": 1, "assignments": [],
            "configs": []}], "timeout_ms": 30000, "validate_only": False})
        acked = []
        for _ in range(400):
            answer = produce(client, "fill")
            if answer["error_code"] == KAFKA_STORAGE_ERROR:
                break
            assert answer["error_code"] == 0, answer
            acked.append(answer["base_offset"])
        else:
            pytest.fail("the 6 MiB disk never filled")
        assert acked, "nothing fitted before the disk filled"
        assert broker.log_text().count("storage error") >= 1

        filler.unlink()
        answer = produce(client, "fill")
        assert answer["error_code"] == 0 and answer["base_offset"] == acked[-1] + len(BATCH)

        fetched, offset = [], 0
        while offset <= answer["base_offset"]:
            body = {"replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20,
                    "isolation_level": 0, "topics": [{"topic": "fill", "partitions": [{
                        "partition": 0, "fetch_offset": offset, "partition_max_bytes": 1 << 20}]}]}
            part = client.request(ApiKey.FETCH, 4, body)["responses"][0]["partitions"][0]
            batches = parse_batches(part["records"])
            assert batches, f"no batch at offset {offset}"
            fetched += [b.base_offset for b in batches]
            offset = batches[-1].last_offset + 1
    assert fetched == acked + [answer["base_offset"]]  # every acknowledged batch, in order
