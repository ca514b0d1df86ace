"""The Produce fast path (pybroker/protocol/fastpath.py) beside the generic codec.

A producer batching 1 message sends one produce request per message, so the codec's
cost per request bounds the broker's messages per second. The fast path must earn its
place: it is measured here against the generic codec (the reference) on the request a
librdkafka producer sends with batch size 1 (one topic, one partition, one 200-byte
record). No target of its own; it serves the issue's batch-1 producer target.

- path:      fastpath.decode_produce_request / encode_produce_response
- reference: the generic codec (schema-driven plans) on the same bytes
"""


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
    record("produce decode", "path", messages=1)
    assert benchmark(fastpath.decode_produce_request, memoryview(FRAME)) is not None


def test_decode_generic(benchmark, record):
    record("produce decode", "reference", messages=1)
    benchmark(generic_decode, FRAME)


def test_encode_fastpath(benchmark, record):
    record("produce encode", "path", messages=1)
    benchmark(fastpath.encode_produce_response, 1, VERSION, RESPONSE)


def test_encode_generic(benchmark, record):
    record("produce encode", "reference", messages=1)
    benchmark(generic_encode, 1, RESPONSE)
