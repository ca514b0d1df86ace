"""The versions below Kafka 4.0's baseline that tools still send: OffsetCommit v0-v1,
OffsetFetch v0, ListOffsets v0, and Produce v0-v2 (decoded only to be refused, listed in
ApiVersions as Kafka 4.0 lists them, KAFKA-18659). Requests and responses are laid out
by hand from the specs (apache/kafka clients/src/main/resources/common/message/*.json
as of Kafka 3.x, before KIP-896 dropped these versions) with struct.pack, independent
of our codec, compared with what the codec encodes, and decoded back.

Layouts (all classic encodings, request header v1, response header v0):
  OffsetCommit request   v0  group_id string, topics [name string, partitions [
                                 partition_index int32, committed_offset int64,
                                 committed_metadata nullable string]]
                         v1  group_id, generation_id_or_member_epoch int32,
                             member_id string, topics [name, partitions [
                                 partition_index, committed_offset,
                                 commit_timestamp int64 (v1 only), committed_metadata]]
  OffsetCommit response  v0-v1  topics [name, partitions [partition_index int32,
                                                         error_code int16]]
  OffsetFetch request    v0  group_id, topics [name, partition_indexes [int32]]
  OffsetFetch response   v0  topics [name, partitions [partition_index int32,
                                 committed_offset int64, metadata nullable string,
                                 error_code int16]]
  ListOffsets request    v0  replica_id int32, topics [name, partitions [
                                 partition_index int32, timestamp int64,
                                 max_num_offsets int32 (v0 only)]]
  ListOffsets response   v0  topics [name, partitions [partition_index int32,
                                 error_code int16, old_style_offsets [int64] (v0 only)]]
  Produce request        v0-v2  acks int16, timeout_ms int32, topic_data [name,
                                    partition_data [index int32, records nullable bytes]]
  Produce response       v0  responses [name, partition_responses [index int32,
                                 error_code int16, base_offset int64]]
                         v1  + throttle_time_ms int32 (after responses)
                         v2  + log_append_time_ms int64 (after base_offset)
"""
import pytest

from pybroker.protocol import (APIS, SUPPORTED, ApiKey, EncodeError, api_versions_array,
                               codec, decode_request, decode_response, encode_request,
                               encode_response)
from pybroker.testing.spec_bytes import i16, i32, i64, string as _string, array as _array


def string(s):
    return _string(s, False)


def array(items):
    return _array(items, False)


def body_round_trip(message, version: int, kind: str, value: dict, data: bytes) -> dict:
    """Encode value, compare with data; decode data, check it is consumed; the decoded."""
    struct_ = getattr(message, kind)
    assert codec.encode(struct_, version, value) == data
    decoded, end = codec.decode(struct_, version, data)
    assert end == len(data)
    return decoded


# --- the advertised ranges -----------------------------------------------------------------

def test_advertised_ranges_reach_down_to_the_old_versions():
    assert SUPPORTED[ApiKey.OFFSET_COMMIT] == APIS[8].version_range == (0, 9)
    assert SUPPORTED[ApiKey.OFFSET_FETCH] == APIS[9].version_range == (0, 9)
    assert SUPPORTED[ApiKey.LIST_OFFSETS] == APIS[2].version_range == (0, 10)
    assert SUPPORTED[ApiKey.PRODUCE] == APIS[0].version_range == (0, 8)
    assert SUPPORTED[ApiKey.METADATA][0] == 0
    advertised = {e["api_key"]: (e["min_version"], e["max_version"])
                  for e in api_versions_array()}
    assert advertised[0] == (0, 8)   # what librdkafka < 2.1 needs to see to compress


# --- OffsetCommit v0, v1 ---------------------------------------------------------------------

COMMIT_PARTITIONS = [(0, 42, 1_700_000_000_123, "meta-a"), (7, 1 << 40, -1, None)]


def commit_request(version: int) -> dict:
    return {"group_id": "g1", "generation_id_or_member_epoch": 5 if version else -1,
            "member_id": "m-1" if version else "", "topics": [
                {"name": "orders", "partitions": [
                    {"partition_index": p, "committed_offset": off,
                     "commit_timestamp": ts if version == 1 else -1,
                     "committed_metadata": meta}
                    for p, off, ts, meta in COMMIT_PARTITIONS]}]}


def commit_request_bytes(version: int) -> bytes:
    out = string("g1")
    if version == 1:
        out += i32(5) + string("m-1")
    parts = []
    for p, off, ts, meta in COMMIT_PARTITIONS:
        b = i32(p) + i64(off)
        if version == 1:
            b += i64(ts)
        parts.append(b + string(meta))
    return out + array([string("orders") + array(parts)])


@pytest.mark.parametrize("version", [0, 1])
def test_offset_commit_request(version):
    decoded = body_round_trip(APIS[8], version, "request", commit_request(version),
                              commit_request_bytes(version))
    assert decoded == {**commit_request(version), "group_instance_id": None,
                       "retention_time_ms": -1, "topics": [
                           {"name": "orders", "partitions": [
                               {**p, "committed_leader_epoch": -1}
                               for p in commit_request(version)["topics"][0]["partitions"]]}]}


def test_offset_commit_v0_bytes_spelled_out():
    assert commit_request_bytes(0)[:2 + 2 + 4 + 2 + 6 + 4] == bytes.fromhex(
        "0002" "6731"            # group_id "g1"
        "00000001"               # one topic
        "0006" "6f7264657273"    # "orders"
        "00000002")              # two partitions
    assert commit_request_bytes(0)[20:20 + 4 + 8 + 2 + 6] == bytes.fromhex(
        "00000000" "000000000000002a" "0006" "6d6574612d61")


def test_offset_commit_commit_timestamp_exists_only_in_v1():
    value = commit_request(1)
    for version in (0, 2):   # not ignorable: a timestamp given would be lost
        with pytest.raises(EncodeError, match="commit_timestamp"):
            codec.encode(APIS[8].request, version, value)
    # v2 carries retention_time_ms instead, at the request level
    data = codec.encode(APIS[8].request, 2, commit_request(0))
    assert data[:2 + 2 + 4 + 2 + 8] == string("g1") + i32(-1) + string("") + i64(-1)


COMMIT_RESPONSE = {"throttle_time_ms": 0, "topics": [
    {"name": "orders", "partitions": [{"partition_index": 0, "error_code": 0},
                                      {"partition_index": 7, "error_code": 22}]}]}
COMMIT_RESPONSE_BYTES = array([string("orders") + array(
    [i32(0) + i16(0), i32(7) + i16(22)])])


@pytest.mark.parametrize("version", [0, 1])
def test_offset_commit_response(version):
    decoded = body_round_trip(APIS[8], version, "response", COMMIT_RESPONSE,
                              COMMIT_RESPONSE_BYTES)
    assert decoded == COMMIT_RESPONSE


def test_offset_commit_v1_whole_frames():
    frame = b"".join(encode_request(8, 1, 77, "sarama", commit_request(1)))
    assert frame == (i32(len(frame) - 4) + i16(8) + i16(1) + i32(77) + string("sarama") +
                     commit_request_bytes(1))
    header, body = decode_request(bytearray(frame[4:]))
    assert header["request_api_version"] == 1 and body["generation_id_or_member_epoch"] == 5
    response = b"".join(encode_response(77, 8, 1, COMMIT_RESPONSE))
    assert response == i32(4 + len(COMMIT_RESPONSE_BYTES)) + i32(77) + COMMIT_RESPONSE_BYTES
    assert decode_response(8, 1, response[4:])[1] == COMMIT_RESPONSE


# --- OffsetFetch v0 --------------------------------------------------------------------------

FETCH_REQUEST = {"group_id": "g1", "topics": [
    {"name": "orders", "partition_indexes": [0, 7]}, {"name": "t", "partition_indexes": []}]}
FETCH_REQUEST_BYTES = (string("g1") + array([
    string("orders") + i32(2) + i32(0) + i32(7), string("t") + i32(0)]))

FETCH_RESPONSE = {"throttle_time_ms": 0, "error_code": 0, "topics": [
    {"name": "orders", "partitions": [
        {"partition_index": 0, "committed_offset": 42, "committed_leader_epoch": -1,
         "metadata": "meta-a", "error_code": 0},
        {"partition_index": 7, "committed_offset": -1, "committed_leader_epoch": -1,
         "metadata": None, "error_code": 16}]}]}
FETCH_RESPONSE_BYTES = array([string("orders") + array([
    i32(0) + i64(42) + string("meta-a") + i16(0),
    i32(7) + i64(-1) + i16(-1) + i16(16)])])


def test_offset_fetch_v0_request():
    decoded = body_round_trip(APIS[9], 0, "request", FETCH_REQUEST, FETCH_REQUEST_BYTES)
    # and the defaults of the fields v0 lacks (v7's require_stable, v8's groups)
    assert decoded == {**FETCH_REQUEST, "require_stable": False, "groups": []}
    with pytest.raises(EncodeError):   # a null topics array means "all" only from v2
        codec.encode(APIS[9].request, 0, {"group_id": "g1", "topics": None})


def test_offset_fetch_v0_response():
    decoded = body_round_trip(APIS[9], 0, "response", FETCH_RESPONSE, FETCH_RESPONSE_BYTES)
    assert decoded == {**FETCH_RESPONSE, "groups": []}
    # v0 and v1 have the same layout
    assert codec.encode(APIS[9].response, 1, FETCH_RESPONSE) == FETCH_RESPONSE_BYTES


# --- ListOffsets v0 --------------------------------------------------------------------------

LIST_REQUEST = {"replica_id": -1, "isolation_level": 0, "topics": [
    {"name": "orders", "partitions": [
        {"partition_index": 0, "current_leader_epoch": -1, "timestamp": -1,
         "max_num_offsets": 1},
        {"partition_index": 3, "current_leader_epoch": -1, "timestamp": 1_700_000_000_000,
         "max_num_offsets": 10}]}]}
LIST_REQUEST_BYTES = i32(-1) + array([string("orders") + array([
    i32(0) + i64(-1) + i32(1), i32(3) + i64(1_700_000_000_000) + i32(10)])])

LIST_RESPONSE = {"throttle_time_ms": 0, "topics": [
    {"name": "orders", "partitions": [
        {"partition_index": 0, "error_code": 0, "old_style_offsets": [1234],
         "timestamp": -1, "offset": -1, "leader_epoch": -1},
        {"partition_index": 3, "error_code": 0, "old_style_offsets": [900, 500, 0],
         "timestamp": -1, "offset": -1, "leader_epoch": -1},
        {"partition_index": 5, "error_code": 6, "old_style_offsets": [],
         "timestamp": -1, "offset": -1, "leader_epoch": -1}]}]}
LIST_RESPONSE_BYTES = array([string("orders") + array([
    i32(0) + i16(0) + i32(1) + i64(1234),
    i32(3) + i16(0) + i32(3) + i64(900) + i64(500) + i64(0),
    i32(5) + i16(6) + i32(0)])])


def test_list_offsets_v0_request():
    decoded = body_round_trip(APIS[2], 0, "request", LIST_REQUEST, LIST_REQUEST_BYTES)
    assert decoded == {**LIST_REQUEST, "timeout_ms": 0}   # v10's, absent from v0


def test_list_offsets_v0_request_bytes_spelled_out():
    assert LIST_REQUEST_BYTES[:4 + 4 + 8 + 4] == bytes.fromhex(
        "ffffffff" "00000001" "0006" "6f7264657273" "00000002")
    assert LIST_REQUEST_BYTES[20:36] == bytes.fromhex(
        "00000000" "ffffffffffffffff" "00000001")


def test_list_offsets_v0_response():
    decoded = body_round_trip(APIS[2], 0, "response", LIST_RESPONSE, LIST_RESPONSE_BYTES)
    assert decoded == LIST_RESPONSE


def test_list_offsets_fields_of_one_side_of_v0_only():
    with pytest.raises(EncodeError, match="old_style_offsets"):
        codec.encode(APIS[2].response, 1, LIST_RESPONSE)
    v1 = {"topics": [{"name": "t", "partitions": [
        {"partition_index": 0, "error_code": 0, "timestamp": 5, "offset": 9}]}]}
    with pytest.raises(EncodeError, match="timestamp"):
        codec.encode(APIS[2].response, 0, v1)
    with pytest.raises(EncodeError, match="max_num_offsets"):
        codec.encode(APIS[2].request, 1, LIST_REQUEST)


# --- Produce v0-v2 ---------------------------------------------------------------------------

# A message set v1 (magic 1) entry as Kafka 0.10 clients send it, and the v0 layout.
LEGACY_V1 = (i64(0) + i32(4 + 1 + 1 + 8 + 4 + 4 + 2) + i32(0x1234abcd) + bytes([1, 0]) +
             i64(1_700_000_000_000) + i32(-1) + i32(2) + b"hi")
LEGACY_V0 = (i64(0) + i32(4 + 1 + 1 + 4 + 4 + 2) + i32(0x1234abcd) + bytes([0, 0]) +
             i32(-1) + i32(2) + b"hi")

PRODUCE_REQUEST = {"transactional_id": None, "acks": -1, "timeout_ms": 30_000,
                   "topic_data": [{"name": "logs", "partition_data": [
                       {"index": 0, "records": LEGACY_V1}, {"index": 2, "records": None}]}]}
PRODUCE_REQUEST_BYTES = i16(-1) + i32(30_000) + array([string("logs") + array([
    i32(0) + i32(len(LEGACY_V1)) + LEGACY_V1, i32(2) + i32(-1)])])

PRODUCE_RESPONSE = {"throttle_time_ms": 0, "responses": [{"name": "logs",
                    "partition_responses": [
                        {"index": 0, "error_code": 43, "base_offset": -1,
                         "log_append_time_ms": -1, "log_start_offset": -1},
                        {"index": 2, "error_code": 43, "base_offset": -1,
                         "log_append_time_ms": -1, "log_start_offset": -1}]}]}


def produce_response_bytes(version: int) -> bytes:
    parts = []
    for p in PRODUCE_RESPONSE["responses"][0]["partition_responses"]:
        b = i32(p["index"]) + i16(43) + i64(-1)
        if version >= 2:
            b += i64(-1)
        parts.append(b)
    out = array([string("logs") + array(parts)])
    return out + (i32(0) if version >= 1 else b"")


@pytest.mark.parametrize("version", [0, 1, 2])
def test_produce_old_request(version):
    decoded = body_round_trip(APIS[0], version, "request", PRODUCE_REQUEST,
                              PRODUCE_REQUEST_BYTES)
    [t] = decoded["topic_data"]
    assert bytes(t["partition_data"][0]["records"]) == LEGACY_V1
    assert t["partition_data"][1]["records"] is None and decoded["transactional_id"] is None
    with pytest.raises(EncodeError, match="transactional_id"):   # from v3 only
        codec.encode(APIS[0].request, version, {**PRODUCE_REQUEST, "transactional_id": "x"})


@pytest.mark.parametrize("version", [0, 1, 2])
def test_produce_old_response(version):
    decoded = body_round_trip(APIS[0], version, "response", PRODUCE_RESPONSE,
                              produce_response_bytes(version))
    # and the defaults of v8's fields, which these versions lack
    assert decoded == {**PRODUCE_RESPONSE, "responses": [
        {**t, "partition_responses": [{**p, "record_errors": [], "error_message": None}
                                      for p in t["partition_responses"]]}
        for t in PRODUCE_RESPONSE["responses"]]}


def test_produce_v0_whole_frames_go_through_the_generic_codec():
    frame = b"".join(encode_request(0, 0, 9, "old", {**PRODUCE_REQUEST, "topic_data": [
        {"name": "logs", "partition_data": [{"index": 1, "records": LEGACY_V0}]}]}))
    header, body = decode_request(bytearray(frame[4:]))
    assert (header["request_api_version"], body["acks"]) == (0, -1)
    assert bytes(body["topic_data"][0]["partition_data"][0]["records"]) == LEGACY_V0
    response = b"".join(encode_response(9, 0, 0, PRODUCE_RESPONSE))
    assert response == (i32(4 + len(produce_response_bytes(0))) + i32(9) +
                        produce_response_bytes(0))
