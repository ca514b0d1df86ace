"""AlterPartitionReassignments (key 45, versions 0-1, flexible 0+) and
ListPartitionReassignments (key 46, version 0, flexible 0+): bodies laid out by hand
from the spec (AlterPartitionReassignmentsRequest.json, ...Response.json,
ListPartitionReassignmentsRequest.json, ...Response.json in apache/kafka) with
struct.pack, independent of our codec, compared with what the codec writes and reads;
kafka-python's own encoder as a second oracle.

Layouts (every version flexible: compact strings and arrays, null as length 0, a
tagged-fields byte after every struct):
  Alter request    timeout_ms int32, allow_replication_factor_change bool (v1+),
                   topics [name, partitions [partition_index int32,
                                             replicas nullable [int32]]]
  Alter response   throttle_time_ms int32, allow_replication_factor_change bool (v1+),
                   error_code int16, error_message nullable string,
                   responses [name, partitions [partition_index int32, error_code int16,
                                                error_message nullable string]]
  List request     timeout_ms int32, topics nullable [name, partition_indexes [int32]]
  List response    throttle_time_ms int32, error_code int16, error_message nullable,
                   topics [name, partitions [partition_index int32, replicas [int32],
                                             adding_replicas [int32],
                                             removing_replicas [int32]]]
"""
import pytest

from pybroker.protocol import APIS, SUPPORTED, ApiKey, codec, decode_request, encode_response
from pybroker.testing.spec_bytes import array, i8, i16, i32, string, tags

ALTER, LIST = APIS[45], APIS[46]


def ints(values) -> bytes:
    return array([i32(v) for v in values], True)


ALTER_REQUEST = {"timeout_ms": 30000, "allow_replication_factor_change": False, "topics": [
    {"name": "orders", "partitions": [{"partition_index": 0, "replicas": [200, 300, 400]},
                                      {"partition_index": 2, "replicas": None}]}]}

ALTER_RESPONSE = {"throttle_time_ms": 0, "allow_replication_factor_change": False,
                  "error_code": 0, "error_message": None, "responses": [
                      {"name": "orders", "partitions": [
                          {"partition_index": 0, "error_code": 0, "error_message": None},
                          {"partition_index": 2, "error_code": 85,
                           "error_message": "none to cancel"}]}]}

LIST_REQUEST = {"timeout_ms": 60000, "topics": [{"name": "t", "partition_indexes": [1, 5]}]}

LIST_RESPONSE = {"throttle_time_ms": 4, "error_code": 0, "error_message": None, "topics": [
    {"name": "t", "partitions": [{"partition_index": 1, "replicas": [400, 100, 200],
                                  "adding_replicas": [400], "removing_replicas": [200]}]}]}


def alter_request_bytes(version: int) -> bytes:
    body = ALTER_REQUEST
    out = i32(body["timeout_ms"])
    if version >= 1:
        out += i8(int(body["allow_replication_factor_change"]))
    topics = []
    for t in body["topics"]:
        parts = [i32(p["partition_index"]) + (array(None, True) if p["replicas"] is None
                                              else ints(p["replicas"])) + tags(True)
                 for p in t["partitions"]]
        topics.append(string(t["name"], True) + array(parts, True) + tags(True))
    return out + array(topics, True) + tags(True)


def alter_response_bytes(version: int) -> bytes:
    body = ALTER_RESPONSE
    out = i32(body["throttle_time_ms"])
    if version >= 1:
        out += i8(int(body["allow_replication_factor_change"]))
    out += i16(body["error_code"]) + string(body["error_message"], True)
    topics = []
    for t in body["responses"]:
        parts = [i32(p["partition_index"]) + i16(p["error_code"])
                 + string(p["error_message"], True) + tags(True) for p in t["partitions"]]
        topics.append(string(t["name"], True) + array(parts, True) + tags(True))
    return out + array(topics, True) + tags(True)


def list_request_bytes(_version: int) -> bytes:
    topics = [string(t["name"], True) + ints(t["partition_indexes"]) + tags(True)
              for t in LIST_REQUEST["topics"]]
    return i32(LIST_REQUEST["timeout_ms"]) + array(topics, True) + tags(True)


def list_response_bytes(_version: int) -> bytes:
    body = LIST_RESPONSE
    topics = []
    for t in body["topics"]:
        parts = [i32(p["partition_index"]) + ints(p["replicas"]) + ints(p["adding_replicas"])
                 + ints(p["removing_replicas"]) + tags(True) for p in t["partitions"]]
        topics.append(string(t["name"], True) + array(parts, True) + tags(True))
    return (i32(body["throttle_time_ms"]) + i16(body["error_code"])
            + string(body["error_message"], True) + array(topics, True) + tags(True))


def _v0(body: dict) -> dict:
    """What v0 decodes: allow_replication_factor_change is absent, so its default."""
    return {**body, "allow_replication_factor_change": True}


CASES = {
    "alter_request": (ALTER, "request", range(2), alter_request_bytes,
                      lambda v: ALTER_REQUEST if v else _v0(ALTER_REQUEST)),
    "alter_response": (ALTER, "response", range(2), alter_response_bytes,
                       lambda v: ALTER_RESPONSE if v else _v0(ALTER_RESPONSE)),
    "list_request": (LIST, "request", range(1), list_request_bytes, lambda v: LIST_REQUEST),
    "list_response": (LIST, "response", range(1), list_response_bytes,
                      lambda v: LIST_RESPONSE),
}
VECTORS = [(name, v) for name, case in CASES.items() for v in case[2]]


def test_declared_versions():
    assert (ALTER.name, ApiKey.ALTER_PARTITION_REASSIGNMENTS) == (
        "AlterPartitionReassignments", 45)
    assert (LIST.name, ApiKey.LIST_PARTITION_REASSIGNMENTS) == (
        "ListPartitionReassignments", 46)
    assert SUPPORTED[45] == (0, 1) and SUPPORTED[46] == (0, 0)
    assert ALTER.is_flexible(0) and LIST.is_flexible(0)


@pytest.mark.parametrize("name,version", VECTORS)
def test_body(name, version):
    message, side, _, build, expected = CASES[name]
    struct_ = getattr(message, side)
    data = build(version)
    assert codec.encode(struct_, version, expected(version), flexible=True) == data
    decoded, end = codec.decode(struct_, version, data, flexible=True)
    assert end == len(data)
    assert decoded == expected(version)


def test_alter_v0_request_spelled_out():
    data = (b"\x00\x00\xea\x60"           # timeout_ms 60000
            b"\x02" b"\x02t"              # topics: 1; name "t"
            b"\x02" b"\x00\x00\x00\x03"   # partitions: 1; partition_index 3
            b"\x00"                       # replicas: compact null (cancel)
            b"\x00" b"\x00" b"\x00")      # partition's, topic's, body's tagged fields
    decoded, _ = codec.decode(ALTER.request, 0, data, flexible=True)
    assert decoded == {"timeout_ms": 60000, "allow_replication_factor_change": True,
                       "topics": [{"name": "t", "partitions": [
                           {"partition_index": 3, "replicas": None}]}]}


def test_list_request_null_topics_lists_everything():
    data = i32(1000) + b"\x00" + b"\x00"  # timeout_ms, topics: compact null, tags
    assert codec.decode(LIST.request, 0, data, flexible=True)[0] == {
        "timeout_ms": 1000, "topics": None}
    assert codec.encode(LIST.request, 0, {"timeout_ms": 1000, "topics": None},
                        flexible=True) == data


def test_kafka_python_encodes_what_we_decode_and_reads_what_we_write():
    from kafka.protocol.admin import (AlterPartitionReassignmentsRequest,
                                      AlterPartitionReassignmentsResponse,
                                      ListPartitionReassignmentsRequest,
                                      ListPartitionReassignmentsResponse)
    T = AlterPartitionReassignmentsRequest.ReassignableTopic
    P = T.ReassignablePartition
    for version in (0, 1):
        req = AlterPartitionReassignmentsRequest[version](
            timeout_ms=5, topics=[T(name="t", partitions=[
                P(partition_index=0, replicas=[1, 2]), P(partition_index=1, replicas=None)])])
        req.with_header(correlation_id=7, client_id="kp")
        head, body = decode_request(req.encode(header=True, framed=True)[4:])
        assert (head["request_api_key"], head["request_api_version"]) == (45, version)
        assert body == {"timeout_ms": 5, "allow_replication_factor_change": True,
                        "topics": [{"name": "t", "partitions": [
                            {"partition_index": 0, "replicas": [1, 2]},
                            {"partition_index": 1, "replicas": None}]}]}
        frame = b"".join(encode_response(9, 45, version, CASES["alter_response"][4](version)))
        decoded = AlterPartitionReassignmentsResponse[version].decode(
            frame, version=version, header=True, framed=True)
        assert [(p.partition_index, p.error_code, p.error_message) for t in decoded.responses
                for p in t.partitions] == [(0, 0, None), (2, 85, "none to cancel")]
    req = ListPartitionReassignmentsRequest[0](timeout_ms=9, topics=None)
    req.with_header(correlation_id=8, client_id="kp")
    assert decode_request(req.encode(header=True, framed=True)[4:])[1] == {
        "timeout_ms": 9, "topics": None}
    frame = b"".join(encode_response(10, 46, 0, LIST_RESPONSE))
    decoded = ListPartitionReassignmentsResponse[0].decode(frame, version=0, header=True,
                                                           framed=True)
    (t,) = decoded.topics
    (p,) = t.partitions
    assert (t.name, p.partition_index, p.replicas, p.adding_replicas,
            p.removing_replicas) == ("t", 1, [400, 100, 200], [400], [200])
