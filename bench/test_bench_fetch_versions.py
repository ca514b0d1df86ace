"""What the newer Fetch versions cost in the codec: v16 (flexible, topic IDs, tagged
fields; what librdkafka 2.16 fetches with) beside v11 (the last non-flexible one) on
the same fetch, 1 and 10 partitions, records as file references (sent by sendfile).

- path:  encode FetchResponse v16 / decode FetchRequest v16
- floor: the same at v11, so the guard judges the v16/v11 ratio
Measured 2026-12-02 on this machine (medians, `pytest bench/test_bench_fetch_versions.py`):
encode 5.5 -> 6.7 us (1 partition), 19.9 -> 26.5 us (10); decode 6.2 -> 8.8 us,
12.7 -> 19.8 us: v16 costs 1.2-1.5x v11 per fetch.
"""
import uuid

import pytest

from pybroker.protocol import decode_request, encode_request, encode_response

TOPIC_ID = uuid.UUID(int=0x1234)


class FileRange:
    """Stands for a log file range (what the broker sends with sendfile)."""
    length = 100_000


def response(partitions: int) -> dict:
    return {"throttle_time_ms": 0, "error_code": 0, "session_id": 0, "responses": [{
        "topic": "t", "topic_id": TOPIC_ID, "partitions": [
            {"partition_index": p, "error_code": 0, "high_watermark": 1000,
             "last_stable_offset": 1000, "log_start_offset": 0,
             "aborted_transactions": None, "preferred_read_replica": -1,
             "records": FileRange()} for p in range(partitions)]}]}


def request_frame(version: int, partitions: int) -> bytes:
    body = {"replica_id": -1, "replica_state": {"replica_id": -1, "replica_epoch": -1},
            "max_wait_ms": 500, "min_bytes": 1, "max_bytes": 1 << 20, "isolation_level": 0,
            "session_id": 0, "session_epoch": -1, "forgotten_topics_data": [],
            "rack_id": "", "topics": [{"topic": "t", "topic_id": TOPIC_ID, "partitions": [
                {"partition": p, "fetch_offset": 5, "partition_max_bytes": 1 << 20,
                 "current_leader_epoch": -1, "log_start_offset": -1,
                 "last_fetched_epoch": -1} for p in range(partitions)]}]}
    return b"".join(encode_request(1, version, 7, "rdkafka", body, framed=False))


@pytest.mark.parametrize("partitions", [1, 10])
def test_fetch_encode_v16(benchmark, record, partitions):
    body = response(partitions)
    record("fetch encode", "path", messages=partitions, group_param=f"{partitions}p",
           floor=lambda: encode_response(7, 1, 11, body))
    benchmark(encode_response, 7, 1, 16, body)


@pytest.mark.parametrize("partitions", [1, 10])
def test_fetch_encode_v11(benchmark, record, partitions):
    body = response(partitions)
    record("fetch encode", "floor", messages=partitions, group_param=f"{partitions}p")
    benchmark(encode_response, 7, 1, 11, body)


@pytest.mark.parametrize("partitions", [1, 10])
def test_fetch_decode_v16(benchmark, record, partitions):
    frame = request_frame(16, partitions)
    old = request_frame(11, partitions)
    record("fetch decode", "path", messages=partitions, group_param=f"{partitions}p",
           floor=lambda: decode_request(old))
    header, body = benchmark(decode_request, frame)
    assert header["request_api_version"] == 16 and body["topics"][0]["topic_id"] == TOPIC_ID


@pytest.mark.parametrize("partitions", [1, 10])
def test_fetch_decode_v11(benchmark, record, partitions):
    frame = request_frame(11, partitions)
    record("fetch decode", "floor", messages=partitions, group_param=f"{partitions}p")
    benchmark(decode_request, frame)
