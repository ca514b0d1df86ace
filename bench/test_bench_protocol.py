"""The Produce fast path (pybroker/protocol/fastpath.py) beside the generic codec.

A producer batching 1 message sends one produce request per message, so the codec's
cost per request bounds the broker's messages per second. The fast path must earn its
place: it is measured here against the generic codec (the reference) on the request a
librdkafka producer sends with batch size 1 (one topic, one partition, one 200-byte
record). No target of its own; it serves the issue's batch-1 producer target.

- path:      fastpath.decode_produce_request / encode_produce_response
- floor:     raw_decode / raw_encode: the struct calls and string slices of the same
             fields with nothing around them (no bounds or version checks, no dicts,
             one topic of one partition taken as given): what any decoder of these
             bytes in Python pays, and what makes the guard's ratio (scripts/bench-guard)
             follow the machine's speed at Python-level work
- reference: the generic codec (schema-driven plans) on the same bytes
"""
import struct

from pybroker.protocol import ApiKey, codec, fastpath
from pybroker.protocol.apis import APIS
from pybroker.protocol.headers import REQUEST_HEADER, RESPONSE_HEADER
from pybroker.protocol.requests import encode_request
from pybroker.records import build_batch

PRODUCE = APIS[ApiKey.PRODUCE]
VERSION = 7
REQUEST = {"transactional_id": None, "acks": 1, "timeout_ms": 30000, "topic_data": [
    {"name": "loadtest-topic", "partition_data": [
        {"index": 0, "records": bytes(build_batch([b"x" * 200]))}]}]}
RESPONSE = {"throttle_time_ms": 0, "responses": [{"name": "loadtest-topic", "partition_responses": [
    {"index": 0, "error_code": 0, "base_offset": 12345, "log_append_time_ms": -1,
     "log_start_offset": 0}]}]}
FRAME = bytearray(b"".join(encode_request(ApiKey.PRODUCE, VERSION, 1, "rdkafka", REQUEST,
                                          framed=False)))


_HEAD = struct.Struct(">hhih")    # api key, version, correlation id, client id length
_TXN_ACKS = struct.Struct(">hhii")  # transactional id length, acks, timeout, topics
_COUNT_PART = struct.Struct(">iii")  # partitions, index, records length
_I16 = struct.Struct(">h")
_RESP_HEAD = struct.Struct(">iiih")  # size, correlation id, topics, name length
_RESP_PART = struct.Struct(">iihqqqi")  # partitions, index, error, 3 offsets, throttle


def raw_decode(mv):
    _api_key, _version, _correlation_id, n = _HEAD.unpack_from(mv, 0)
    client_id, pos = str(mv[10:10 + n], "utf-8"), 10 + n
    _txn, _acks, _timeout, _topics = _TXN_ACKS.unpack_from(mv, pos)
    pos += 12
    (n,) = _I16.unpack_from(mv, pos)
    name, pos = str(mv[pos + 2:pos + 2 + n], "utf-8"), pos + 2 + n
    _parts, _index, size = _COUNT_PART.unpack_from(mv, pos)
    pos += 12
    return client_id, name, mv[pos:pos + size]


def raw_encode(correlation_id, body):
    topic = body["responses"][0]
    part = topic["partition_responses"][0]
    name = topic["name"].encode()
    return [_RESP_HEAD.pack(0, correlation_id, 1, len(name)), name,
            _RESP_PART.pack(1, part["index"], part["error_code"], part["base_offset"],
                            part["log_append_time_ms"], part["log_start_offset"],
                            body["throttle_time_ms"])]


def generic_decode(frame):
    mv = memoryview(frame)
    header, pos = codec.plan(REQUEST_HEADER, 1, False).read(mv, 0)
    return header, codec.plan(PRODUCE.request, VERSION, False).read(mv, pos)[0]


def generic_encode(correlation_id, body):
    parts = []
    codec.plan(RESPONSE_HEADER, 0, False).write({"correlation_id": correlation_id}, parts)
    codec.plan(PRODUCE.response, VERSION, False).write(body, parts)
    return parts


def test_decode_fastpath(benchmark, record):
    record("produce decode", "path", messages=1, floor=lambda: raw_decode(memoryview(FRAME)))
    assert benchmark(fastpath.decode_produce_request, memoryview(FRAME)) is not None


def test_decode_raw(benchmark, record):
    record("produce decode", "floor", messages=1)
    client_id, name, records = benchmark(raw_decode, memoryview(FRAME))
    header, body = fastpath.decode_produce_request(memoryview(FRAME))
    assert (client_id, name) == (header["client_id"], body["topic_data"][0]["name"])
    assert records == body["topic_data"][0]["partition_data"][0]["records"]


def test_decode_generic(benchmark, record):
    record("produce decode", "reference", messages=1,
           floor=lambda: raw_decode(memoryview(FRAME)))
    benchmark(generic_decode, FRAME)


def test_encode_fastpath(benchmark, record):
    record("produce encode", "path", messages=1, floor=lambda: raw_encode(1, RESPONSE))
    benchmark(fastpath.encode_produce_response, 1, VERSION, RESPONSE)


def test_encode_raw(benchmark, record):
    record("produce encode", "floor", messages=1)
    parts = benchmark(raw_encode, 1, RESPONSE)
    fast = b"".join(bytes(p) for p in fastpath.encode_produce_response(1, VERSION, RESPONSE))
    assert b"".join(parts)[4:] == fast[4:]  # all but the size prefix


def test_encode_generic(benchmark, record):
    record("produce encode", "reference", messages=1, floor=lambda: raw_encode(1, RESPONSE))
    benchmark(generic_encode, 1, RESPONSE)
