"""OffsetForLeaderEpoch (key 23), every version we implement (0-4): requests and
responses laid out by hand from the spec (OffsetForLeaderEpochRequest.json and
...Response.json in apache/kafka) with struct.pack, independent of our codec, compared
with what the codec encodes, and decoded back.

Layout per version (classic encodings up to v3; v4 is flexible: compact strings and
arrays, a tagged-fields byte after every struct, request header v2 / response header v1):
  request   replica_id int32 (v3+)
            topics [topic string, partitions [partition int32,
                    current_leader_epoch int32 (v2+), leader_epoch int32]]
  response  throttle_time_ms int32 (v2+)
            topics [topic string, partitions [error_code int16, partition int32,
                    leader_epoch int32 (v1+), end_offset int64]]
"""
import struct

import pytest

from pybroker.protocol import (APIS, SUPPORTED, ApiKey, api_versions_array, codec,
                               decode_request, decode_response, encode_request,
                               encode_response)
from pybroker.testing import spec_bytes
from pybroker.testing.spec_bytes import i16, i32, i64

VERSIONS = range(0, 5)
FLEXIBLE = 4
MESSAGE = APIS[23]


# --- the spec's primitives (pybroker.testing.spec_bytes), by version ------------------------

def string(s: str, version: int) -> bytes:
    return spec_bytes.string(s, version >= FLEXIBLE)


def array(items: list[bytes], version: int) -> bytes:
    return spec_bytes.array(items, version >= FLEXIBLE)


def tags(version: int) -> bytes:
    return spec_bytes.tags(version >= FLEXIBLE)


# --- values -------------------------------------------------------------------------------

# Every field distinct, so a field written in the wrong place shows.
REQUEST = {"replica_id": 1, "topics": [
    {"topic": "orders", "partitions": [
        {"partition": 0, "current_leader_epoch": 7, "leader_epoch": 5},
        {"partition": 3, "current_leader_epoch": -1, "leader_epoch": 2}]},
    {"topic": "t", "partitions": [
        {"partition": 9, "current_leader_epoch": 4, "leader_epoch": 4}]}]}

RESPONSE = {"throttle_time_ms": 17, "topics": [
    {"topic": "orders", "partitions": [
        {"error_code": 0, "partition": 0, "leader_epoch": 5, "end_offset": 1234},
        {"error_code": 74, "partition": 3, "leader_epoch": -1, "end_offset": -1}]},
    {"topic": "t", "partitions": [
        {"error_code": 0, "partition": 9, "leader_epoch": 3, "end_offset": 1 << 40}]}]}


def request_bytes(version: int) -> bytes:
    out = i32(REQUEST["replica_id"]) if version >= 3 else b""
    topics = []
    for t in REQUEST["topics"]:
        parts = []
        for p in t["partitions"]:
            b = i32(p["partition"])
            if version >= 2:
                b += i32(p["current_leader_epoch"])
            parts.append(b + i32(p["leader_epoch"]) + tags(version))
        topics.append(string(t["topic"], version) + array(parts, version) + tags(version))
    return out + array(topics, version) + tags(version)


def response_bytes(version: int) -> bytes:
    out = i32(RESPONSE["throttle_time_ms"]) if version >= 2 else b""
    topics = []
    for t in RESPONSE["topics"]:
        parts = []
        for p in t["partitions"]:
            b = i16(p["error_code"]) + i32(p["partition"])
            if version >= 1:
                b += i32(p["leader_epoch"])
            parts.append(b + i64(p["end_offset"]) + tags(version))
        topics.append(string(t["topic"], version) + array(parts, version) + tags(version))
    return out + array(topics, version) + tags(version)


def request_as_of(version: int) -> dict:
    """REQUEST as decoding `version` gives it: absent fields at the spec's defaults."""
    return {"replica_id": REQUEST["replica_id"] if version >= 3 else -2, "topics": [
        {"topic": t["topic"], "partitions": [
            {**p, "current_leader_epoch": p["current_leader_epoch"] if version >= 2 else -1}
            for p in t["partitions"]]} for t in REQUEST["topics"]]}


def response_as_of(version: int) -> dict:
    return {"throttle_time_ms": RESPONSE["throttle_time_ms"] if version >= 2 else 0,
            "topics": [{"topic": t["topic"], "partitions": [
                {**p, "leader_epoch": p["leader_epoch"] if version >= 1 else -1}
                for p in t["partitions"]]} for t in RESPONSE["topics"]]}


# --- the schema ---------------------------------------------------------------------------

def test_declared_versions():
    assert MESSAGE.name == "OffsetForLeaderEpoch" and ApiKey.OFFSET_FOR_LEADER_EPOCH == 23
    assert MESSAGE.version_range == (0, 4)
    assert [v for v in VERSIONS if MESSAGE.is_flexible(v)] == [4]


def test_api_versions_advertises_the_range():
    assert SUPPORTED[23] == MESSAGE.version_range == (0, 4)
    assert {"api_key": 23, "min_version": 0, "max_version": 4} in api_versions_array()


# --- byte-exact bodies --------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_request_body(version):
    flexible = version >= FLEXIBLE
    data = request_bytes(version)
    assert codec.encode(MESSAGE.request, version, REQUEST, flexible=flexible) == data
    decoded, end = codec.decode(MESSAGE.request, version, data, flexible=flexible)
    assert end == len(data)
    assert decoded == request_as_of(version)


@pytest.mark.parametrize("version", VERSIONS)
def test_response_body(version):
    flexible = version >= FLEXIBLE
    data = response_bytes(version)
    assert codec.encode(MESSAGE.response, version, RESPONSE, flexible=flexible) == data
    decoded, end = codec.decode(MESSAGE.response, version, data, flexible=flexible)
    assert end == len(data)
    assert decoded == response_as_of(version)


def test_v0_request_bytes_spelled_out():
    """One vector written field by field, as a reader of the spec would."""
    body = {"topics": [{"topic": "t", "partitions": [{"partition": 2, "leader_epoch": 6}]}]}
    data = (b"\x00\x00\x00\x01"          # topics: 1
            b"\x00\x01t"                 # topic "t"
            b"\x00\x00\x00\x01"          # partitions: 1
            b"\x00\x00\x00\x02"          # partition 2
            b"\x00\x00\x00\x06")         # leader_epoch 6
    assert codec.encode(MESSAGE.request, 0, body) == data


def test_v4_response_bytes_spelled_out():
    body = {"throttle_time_ms": 0, "topics": [{"topic": "t", "partitions": [
        {"error_code": 0, "partition": 2, "leader_epoch": 6, "end_offset": 10}]}]}
    data = (b"\x00\x00\x00\x00"          # throttle_time_ms 0
            b"\x02"                      # topics: compact, 1 + 1
            b"\x02t"                     # topic "t": compact, length 1 + 1
            b"\x02"                      # partitions: 1 + 1
            b"\x00\x00" b"\x00\x00\x00\x02" b"\x00\x00\x00\x06"  # error 0, partition, epoch
            b"\x00\x00\x00\x00\x00\x00\x00\x0a"                  # end_offset 10
            b"\x00"                      # partition's tagged fields
            b"\x00"                      # topic's tagged fields
            b"\x00")                     # body's tagged fields
    assert codec.encode(MESSAGE.response, 4, body, flexible=True) == data


# --- whole frames, headers included -------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_request_frame(version):
    # request header v1 (v0-v3) or v2 (v4: + tagged fields); client_id stays int16-sized
    header = i16(23) + i16(version) + i32(42) + i16(1) + b"c" + tags(version)
    payload = header + request_bytes(version)
    framed = i32(len(payload)) + payload
    assert b"".join(encode_request(23, version, 42, "c", REQUEST)) == framed
    head, body = decode_request(payload)
    assert head == {"request_api_key": 23, "request_api_version": version,
                    "correlation_id": 42, "client_id": "c"}
    assert body == request_as_of(version)


@pytest.mark.parametrize("version", VERSIONS)
def test_response_frame(version):
    header = i32(42) + tags(version)   # response header v0, or v1 for flexible v4
    payload = header + response_bytes(version)
    framed = i32(len(payload)) + payload
    assert b"".join(encode_response(42, 23, version, RESPONSE)) == framed
    head, body = decode_response(23, version, payload)
    assert head == {"correlation_id": 42}
    assert body == response_as_of(version)


def test_defaults_when_encoding_without_optional_fields():
    """A body with only the v0 fields encodes the spec's defaults in later versions:
    replica_id -2, current_leader_epoch -1; leader_epoch -1 and end_offset -1."""
    req = {"topics": [{"topic": "t", "partitions": [{"partition": 0, "leader_epoch": 1}]}]}
    data = codec.encode(MESSAGE.request, 3, req)
    assert data[:4] == i32(-2)
    assert data.endswith(i32(0) + i32(-1) + i32(1))
    resp = {"topics": [{"topic": "t", "partitions": [{"error_code": 3, "partition": 0}]}]}
    data = codec.encode(MESSAGE.response, 3, resp)
    assert data.endswith(i16(3) + i32(0) + i32(-1) + i64(-1))
