"""CreatePartitions (key 37, versions 0-3, flexible 2+) and ElectLeaders (key 43,
versions 0-2, flexible 2+): requests and responses laid out by hand from the spec
(CreatePartitionsRequest.json, ...Response.json, ElectLeadersRequest.json,
...Response.json in apache/kafka) with struct.pack, independent of our codec, compared
with what the codec encodes, and decoded back.

Layouts (classic encodings below the first flexible version; flexible ones have
compact strings and arrays, null as length 0, a tagged-fields byte after every struct,
request header v2 and response header v1):
  CreatePartitions request   topics [name string, count int32,
                                     assignments nullable [broker_ids [int32]]],
                             timeout_ms int32, validate_only bool
  CreatePartitions response  throttle_time_ms int32,
                             results [name string, error_code int16,
                                      error_message nullable string]
  ElectLeaders request       election_type int8 (v1+),
                             topic_partitions nullable [topic string, partitions [int32]],
                             timeout_ms int32
  ElectLeaders response      throttle_time_ms int32, error_code int16 (v1+),
                             replica_election_results [topic string,
                                 partition_result [partition_id int32, error_code int16,
                                                   error_message nullable string]]
"""
import struct

import pytest

from pybroker.protocol import (APIS, SUPPORTED, ApiKey, EncodeError, api_versions_array,
                               codec, decode_request, decode_response, encode_request,
                               encode_response)
from pybroker.testing.spec_bytes import array, i8, i16, i32, string, tags

CP, EL = APIS[37], APIS[43]
FLEXIBLE = {37: 2, 43: 2}


# --- CreatePartitions ---------------------------------------------------------------------

CP_REQUEST = {"topics": [
    {"name": "orders", "count": 5, "assignments": [
        {"broker_ids": [100, 200, 300]}, {"broker_ids": [200, 300, 100]},
        {"broker_ids": [300, 100, 200]}]},
    {"name": "t", "count": 9, "assignments": None}],
    "timeout_ms": 30000, "validate_only": True}

CP_RESPONSE = {"throttle_time_ms": 17, "results": [
    {"name": "orders", "error_code": 0, "error_message": None},
    {"name": "t", "error_code": 37, "error_message": "topic 't' already has 9"}]}


def cp_request_bytes(version: int) -> bytes:
    flex = version >= FLEXIBLE[37]
    topics = []
    for t in CP_REQUEST["topics"]:
        assignments = None if t["assignments"] is None else [
            array([i32(b) for b in a["broker_ids"]], flex) + tags(flex)
            for a in t["assignments"]]
        topics.append(string(t["name"], flex) + i32(t["count"]) + array(assignments, flex)
                      + tags(flex))
    return (array(topics, flex) + i32(CP_REQUEST["timeout_ms"])
            + i8(int(CP_REQUEST["validate_only"])) + tags(flex))


def cp_response_bytes(version: int) -> bytes:
    flex = version >= FLEXIBLE[37]
    results = [string(r["name"], flex) + i16(r["error_code"])
               + string(r["error_message"], flex) + tags(flex) for r in CP_RESPONSE["results"]]
    return i32(CP_RESPONSE["throttle_time_ms"]) + array(results, flex) + tags(flex)


# --- ElectLeaders -------------------------------------------------------------------------

EL_REQUEST = {"election_type": 0, "topic_partitions": [
    {"topic": "orders", "partitions": [0, 3, 7]}, {"topic": "t", "partitions": []}],
    "timeout_ms": 45000}

EL_RESPONSE = {"throttle_time_ms": 3, "error_code": 0, "replica_election_results": [
    {"topic": "orders", "partition_result": [
        {"partition_id": 0, "error_code": 0, "error_message": None},
        {"partition_id": 3, "error_code": 84, "error_message": "leads already"},
        {"partition_id": 7, "error_code": 80, "error_message": None}]},
    {"topic": "t", "partition_result": []}]}


def el_request_bytes(version: int, body: dict = EL_REQUEST) -> bytes:
    flex = version >= FLEXIBLE[43]
    out = i8(body["election_type"]) if version >= 1 else b""
    topics = None if body["topic_partitions"] is None else [
        string(t["topic"], flex) + array([i32(p) for p in t["partitions"]], flex) + tags(flex)
        for t in body["topic_partitions"]]
    return out + array(topics, flex) + i32(body["timeout_ms"]) + tags(flex)


def el_response_bytes(version: int) -> bytes:
    flex = version >= FLEXIBLE[43]
    out = i32(EL_RESPONSE["throttle_time_ms"])
    if version >= 1:
        out += i16(EL_RESPONSE["error_code"])
    topics = []
    for t in EL_RESPONSE["replica_election_results"]:
        rows = [i32(r["partition_id"]) + i16(r["error_code"])
                + string(r["error_message"], flex) + tags(flex) for r in t["partition_result"]]
        topics.append(string(t["topic"], flex) + array(rows, flex) + tags(flex))
    return out + array(topics, flex) + tags(flex)


# What decoding gives: every field is present in every version but election_type (v0
# decodes the spec's default 0) and the response's error_code (v0: 0).
CASES = {
    "create_partitions_request": (CP, "request", range(0, 4), cp_request_bytes,
                                  lambda v: CP_REQUEST),
    "create_partitions_response": (CP, "response", range(0, 4), cp_response_bytes,
                                   lambda v: CP_RESPONSE),
    "elect_leaders_request": (EL, "request", range(0, 3), el_request_bytes,
                              lambda v: EL_REQUEST),
    "elect_leaders_response": (EL, "response", range(0, 3), el_response_bytes,
                               lambda v: EL_RESPONSE),
}
VECTORS = [(name, v) for name, case in CASES.items() for v in case[2]]


# --- the schemas --------------------------------------------------------------------------

def test_declared_versions():
    assert (CP.name, ApiKey.CREATE_PARTITIONS) == ("CreatePartitions", 37)
    assert (EL.name, ApiKey.ELECT_LEADERS) == ("ElectLeaders", 43)
    assert CP.version_range == (0, 3) and EL.version_range == (0, 2)
    assert [v for v in range(4) if CP.is_flexible(v)] == [2, 3]
    assert [v for v in range(3) if EL.is_flexible(v)] == [2]


def test_api_versions_advertises_the_ranges():
    assert SUPPORTED[37] == (0, 3) and SUPPORTED[43] == (0, 2)
    table = api_versions_array()
    assert {"api_key": 37, "min_version": 0, "max_version": 3} in table
    assert {"api_key": 43, "min_version": 0, "max_version": 2} in table


# --- byte-exact bodies --------------------------------------------------------------------

@pytest.mark.parametrize("name,version", VECTORS)
def test_body(name, version):
    message, side, _, build, expected = CASES[name]
    struct_ = getattr(message, side)
    flexible = message.is_flexible(version)
    data = build(version)
    body = expected(version)
    assert codec.encode(struct_, version, body, flexible=flexible) == data
    decoded, end = codec.decode(struct_, version, data, flexible=flexible)
    assert end == len(data)
    assert decoded == body


def test_create_partitions_v0_request_spelled_out():
    body = {"topics": [{"name": "t", "count": 4, "assignments": None}],
            "timeout_ms": 1000, "validate_only": False}
    data = (b"\x00\x00\x00\x01"          # topics: 1
            b"\x00\x01t"                 # name "t"
            b"\x00\x00\x00\x04"          # count 4
            b"\xff\xff\xff\xff"          # assignments: null
            b"\x00\x00\x03\xe8"          # timeout_ms 1000
            b"\x00")                     # validate_only false
    assert codec.encode(CP.request, 0, body) == data


def test_create_partitions_v2_request_spelled_out():
    body = {"topics": [{"name": "t", "count": 2, "assignments": [{"broker_ids": [1, 2]}]}],
            "timeout_ms": 0, "validate_only": True}
    data = (b"\x02"                      # topics: compact, 1 + 1
            b"\x02t"                     # name "t"
            b"\x00\x00\x00\x02"          # count 2
            b"\x02"                      # assignments: 1 + 1
            b"\x03" b"\x00\x00\x00\x01" b"\x00\x00\x00\x02"  # broker_ids: 2 + 1; 1, 2
            b"\x00"                      # assignment's tagged fields
            b"\x00"                      # topic's tagged fields
            b"\x00\x00\x00\x00"          # timeout_ms 0
            b"\x01"                      # validate_only true
            b"\x00")                     # body's tagged fields
    assert codec.encode(CP.request, 2, body, flexible=True) == data


def test_create_partitions_absent_assignments_are_the_empty_array():
    """The spec gives Assignments no default: Kafka's generated code starts it empty."""
    body = {"topics": [{"name": "t", "count": 2}], "timeout_ms": 0, "validate_only": False}
    assert codec.encode(CP.request, 0, body) == (i32(1) + i16(1) + b"t" + i32(2) + i32(0)
                                                 + i32(0) + b"\x00")


def test_create_partitions_v3_null_message_flexible():
    body = {"throttle_time_ms": 0, "results": [
        {"name": "t", "error_code": 0, "error_message": None}]}
    data = (b"\x00\x00\x00\x00"          # throttle_time_ms
            b"\x02" b"\x02t"             # results: 1; name "t"
            b"\x00\x00"                  # error_code 0
            b"\x00"                      # error_message: compact null
            b"\x00" b"\x00")             # result's, body's tagged fields
    assert codec.encode(CP.response, 3, body, flexible=True) == data


def test_elect_leaders_null_topic_partitions_every_version():
    body = {"election_type": 0, "topic_partitions": None, "timeout_ms": 60000}
    for version in range(3):
        flexible = EL.is_flexible(version)
        data = el_request_bytes(version, body)
        assert codec.encode(EL.request, version, body, flexible=flexible) == data
        decoded, _ = codec.decode(EL.request, version, data, flexible=flexible)
        assert decoded == body
    assert el_request_bytes(0, body) == b"\xff\xff\xff\xff" + i32(60000)
    assert el_request_bytes(2, body) == b"\x00" + b"\x00" + i32(60000) + b"\x00"


def test_elect_leaders_v1_request_spelled_out():
    body = {"election_type": 1, "topic_partitions": [{"topic": "t", "partitions": [2]}],
            "timeout_ms": 5}
    data = (b"\x01"                      # election_type 1 (UNCLEAN)
            b"\x00\x00\x00\x01"          # topic_partitions: 1
            b"\x00\x01t"                 # topic "t"
            b"\x00\x00\x00\x01" b"\x00\x00\x00\x02"  # partitions: [2]
            b"\x00\x00\x00\x05")         # timeout_ms 5
    assert codec.encode(EL.request, 1, body) == data


def test_elect_leaders_v0_has_no_election_type_or_top_level_error():
    """v0 decodes election_type as 0 (PREFERRED); both fields are not ignorable, so a
    value that v0 cannot carry is an encoding error, never silently dropped."""
    decoded, _ = codec.decode(EL.request, 0, i32(-1) + i32(1))
    assert decoded == {"election_type": 0, "topic_partitions": None, "timeout_ms": 1}
    with pytest.raises(EncodeError):
        codec.encode(EL.request, 0, {"election_type": 1, "topic_partitions": None,
                                     "timeout_ms": 1})
    with pytest.raises(EncodeError):
        codec.encode(EL.response, 0, {"throttle_time_ms": 0, "error_code": 42,
                                      "replica_election_results": []})
    assert codec.encode(EL.response, 0, {"throttle_time_ms": 0, "error_code": 0,
                                         "replica_election_results": []}) == i32(0) + i32(0)


def test_elect_leaders_v2_response_spelled_out():
    body = {"throttle_time_ms": 0, "error_code": 0, "replica_election_results": [
        {"topic": "t", "partition_result": [
            {"partition_id": 1, "error_code": 84, "error_message": "x"}]}]}
    data = (b"\x00\x00\x00\x00"          # throttle_time_ms
            b"\x00\x00"                  # error_code
            b"\x02" b"\x02t"             # results: 1; topic "t"
            b"\x02"                      # partition_result: 1
            b"\x00\x00\x00\x01" b"\x00\x54" b"\x02x"  # partition 1, error 84, message "x"
            b"\x00" b"\x00" b"\x00")     # partition's, topic's, body's tagged fields
    assert codec.encode(EL.response, 2, body, flexible=True) == data


# --- whole frames, headers included -------------------------------------------------------

@pytest.mark.parametrize("name,version", [(n, v) for n, v in VECTORS if "request" in n])
def test_request_frame(name, version):
    message, _, _, build, expected = CASES[name]
    key, flex = message.api_key, message.is_flexible(version)
    header = i16(key) + i16(version) + i32(42) + i16(1) + b"c" + tags(flex)
    payload = header + build(version)
    assert b"".join(encode_request(key, version, 42, "c", expected(version))) == (
        i32(len(payload)) + payload)
    head, body = decode_request(payload)
    assert head == {"request_api_key": key, "request_api_version": version,
                    "correlation_id": 42, "client_id": "c"}
    assert body == expected(version)


@pytest.mark.parametrize("name,version", [(n, v) for n, v in VECTORS if "response" in n])
def test_response_frame(name, version):
    message, _, _, build, expected = CASES[name]
    key, flex = message.api_key, message.is_flexible(version)
    payload = i32(42) + tags(flex) + build(version)
    assert b"".join(encode_response(42, key, version, expected(version))) == (
        i32(len(payload)) + payload)
    head, body = decode_response(key, version, payload)
    assert head == {"correlation_id": 42}
    assert body == expected(version)
