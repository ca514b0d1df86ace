"""The Produce fast path is held to the generic codec: same decoding, same bytes."""
import random

import pytest

from pybroker.protocol import ApiKey, DecodeError, codec, fastpath
from pybroker.protocol.apis import APIS
from pybroker.protocol.headers import REQUEST_HEADER, RESPONSE_HEADER
from pybroker.protocol.requests import decode_request, encode_request

PRODUCE = APIS[ApiKey.PRODUCE]
VERSIONS = list(fastpath.FAST_VERSIONS)


def generic_decode(frame_body):
    """The generic codec alone: header v1, then the body."""
    mv = memoryview(frame_body)
    header, pos = codec.plan(REQUEST_HEADER, 1, False).read(mv, 0)
    body, pos = codec.plan(PRODUCE.request, header["request_api_version"], False).read(mv, pos)
    assert pos == len(mv)
    return header, body


def generic_response(correlation_id, version, body):
    parts = []
    codec.plan(RESPONSE_HEADER, 0, False).write({"correlation_id": correlation_id}, parts)
    codec.plan(PRODUCE.response, version, False).write(body, parts)
    payload = b"".join(bytes(p) for p in parts)
    return len(payload).to_bytes(4, "big") + payload


def random_request(rng):
    topics = []
    for t in range(rng.randint(0, 3)):
        parts = []
        for _ in range(rng.randint(0, 3)):
            records = None if rng.random() < 0.2 else rng.randbytes(rng.randint(0, 300))
            parts.append({"index": rng.randint(-5, 2**31 - 1), "records": records})
        topics.append({"name": rng.choice(["t", "orders", "ü-topic", ""]) + str(t),
                       "partition_data": parts})
    return {"transactional_id": rng.choice([None, "", "tx-1"]),
            "acks": rng.choice([-1, 0, 1]), "timeout_ms": rng.randint(0, 2**31 - 1),
            "topic_data": topics}


def plain(value):
    """Decoded values with memoryviews as bytes, for comparison."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, memoryview):
        return bytes(value)
    return value


@pytest.mark.parametrize("version", VERSIONS)
def test_decoding_equals_the_generic_codec(version):
    rng = random.Random(version)
    for i in range(300):
        body = random_request(rng)
        client_id = rng.choice([None, "", "rdkafka"])
        frame = bytearray(b"".join(encode_request(0, version, i, client_id, body,
                                                  framed=False)))
        fast = fastpath.decode_produce_request(memoryview(frame))
        assert fast is not None
        assert plain(fast) == plain(generic_decode(frame))


@pytest.mark.parametrize("version", VERSIONS)
def test_records_are_writable_views_of_the_frame(version):
    body = {"transactional_id": None, "acks": 1, "timeout_ms": 5,
            "topic_data": [{"name": "t", "partition_data": [{"index": 0, "records": b"abc"}]}]}
    frame = bytearray(b"".join(encode_request(0, version, 1, "c", body, framed=False)))
    _header, decoded = fastpath.decode_produce_request(memoryview(frame))
    records = decoded["topic_data"][0]["partition_data"][0]["records"]
    records[0:1] = b"X"
    assert b"Xbc" in frame


@pytest.mark.parametrize("version", VERSIONS)
def test_every_truncation_falls_back_to_the_generic_error(version):
    body = random_request(random.Random(99))
    frame = b"".join(encode_request(0, version, 7, "client", body, framed=False))
    for cut in range(len(frame)):
        piece = bytearray(frame[:cut])
        assert fastpath.decode_produce_request(memoryview(piece)) is None
        with pytest.raises(DecodeError):
            decode_request(piece)
    # trailing bytes: ignored, as Kafka ignores them (the fast path leaves them to the
    # generic codec)
    assert decode_request(bytearray(frame + b"\0")) == decode_request(bytearray(frame))


def test_other_apis_and_versions_are_left_to_the_generic_codec():
    body = {"topics": None, "allow_auto_topic_creation": True,
            "include_cluster_authorized_operations": False,
            "include_topic_authorized_operations": False}
    metadata = bytearray(b"".join(encode_request(ApiKey.METADATA, 8, 1, "c", body, framed=False)))
    assert fastpath.decode_produce_request(memoryview(metadata)) is None
    assert fastpath.encode_produce_response(1, 9, {}) is None   # flexible: generic


@pytest.mark.parametrize("version", VERSIONS)
def test_response_bytes_equal_the_generic_codec(version):
    rng = random.Random(version)
    for i in range(200):
        body = {"throttle_time_ms": rng.randint(0, 1000), "responses": [
            {"name": f"topic-{t}", "partition_responses": [
                {"index": p, "error_code": rng.choice([0, 2, 6, 10]),
                 "base_offset": rng.randint(-1, 2**40), "log_append_time_ms": -1,
                 "log_start_offset": rng.randint(-1, 2**40)}
                for p in range(rng.randint(0, 4))]}
            for t in range(rng.randint(0, 3))]}
        fast = b"".join(fastpath.encode_produce_response(i, version, body))
        assert fast == generic_response(i, version, body)


def test_v8_record_errors_and_messages_go_to_the_generic_codec():
    part = {"index": 0, "error_code": 87, "base_offset": -1, "log_append_time_ms": -1,
            "log_start_offset": 0}
    plain = {"throttle_time_ms": 0, "responses": [{"name": "t", "partition_responses": [part]}]}
    assert b"".join(fastpath.encode_produce_response(1, 8, plain)) == \
        generic_response(1, 8, plain)
    for extra in ({"error_message": "bad record"},
                  {"record_errors": [{"batch_index": 2, "batch_index_error_message": "x"}]}):
        body = {**plain, "responses": [{"name": "t", "partition_responses": [
            {**part, **extra}]}]}
        assert fastpath.encode_produce_response(1, 8, body) is None
        assert b"bad record" in generic_response(1, 8, body) or \
            b"\x00\x00\x00\x02\x00\x01x" in generic_response(1, 8, body)
