"""Every API we implement: byte-exact vectors from the spec, round trips of every
version, kafka-python as the oracle, and malformed input."""

import importlib
import pkgutil
import random
import struct
import tracemalloc
import uuid

import pytest

from pybroker.protocol import (APIS, SUPPORTED, DecodeError, EncodeError, ErrorCode,
                               UnknownApiKey, UnsupportedVersion, api_versions_array, codec,
                               decode_request, decode_response, encode_api_versions_error,
                               encode_request, encode_response)
from pybroker.protocol.schema import Array, Struct


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


class FileRange:
    """Stand-in for the server's sendfile reference: not bytes-like, has .length."""

    def __init__(self, length):
        self.length = length


# --- the advertised table ---------------------------------------------------------------

def test_supported_table_is_exactly_the_brief():
    assert SUPPORTED == {18: (0, 4), 3: (0, 13), 0: (0, 8), 1: (4, 17), 2: (0, 10),
                         19: (0, 7), 20: (0, 6), 22: (0, 5), 10: (0, 6), 11: (0, 9),
                         14: (0, 5), 12: (0, 4), 13: (0, 5), 8: (0, 9), 9: (0, 9),
                         16: (0, 5), 15: (0, 6), 32: (0, 4), 33: (0, 2), 44: (0, 1),
                         23: (0, 4), 37: (0, 3), 43: (0, 2), 45: (0, 1),
                         46: (0, 0), 42: (0, 2), 60: (0, 2), 35: (0, 4), 47: (0, 0)}


def test_every_schema_implements_exactly_its_advertised_range():
    assert set(APIS) == set(SUPPORTED)
    for key, message in APIS.items():
        assert message.version_range == SUPPORTED[key], message.name


def test_first_flexible_versions_match_the_spec():
    first_flexible = {18: 3, 3: 9, 0: 9, 1: 12, 2: 6, 19: 5, 20: 4, 22: 2, 10: 3, 11: 6,
                      14: 4, 12: 4, 13: 4, 8: 8, 9: 6, 16: 3, 15: 5, 32: 4, 33: 2, 44: 1,
                      23: 4, 37: 2, 43: 2, 45: 0, 46: 0, 42: 2, 60: 0, 35: 2,
                      47: None}   # OffsetDelete has no flexible version
    for key, message in APIS.items():
        if first_flexible[key] is None:
            assert message.flexible_versions.text == "none", message.name
            continue
        assert message.flexible_versions.low == first_flexible[key], message.name
        assert message.flexible_versions.high >= 0x7FFF


# --- byte-exact vectors -------------------------------------------------------------------

def test_api_versions_v0_request():
    data = h("0000000b"   # frame size 11
             "0012"       # api key 18
             "0000"       # version 0
             "00000001"   # correlation id 1
             "0001 63")   # client id "c" (request header v1); the v0 body is empty
    assert encode_request(18, 0, 1, "c", {}) == [data]
    header, body = decode_request(data[4:])
    assert header["correlation_id"] == 1 and header["client_id"] == "c"
    assert body == {"client_software_name": "", "client_software_version": ""}


def test_api_versions_v3_request():
    data = h("00000016"       # frame size 22
             "0012 0003 00000001"  # api key 18, version 3, correlation id 1
             "0001 63"        # client id "c": int16 length even in header v2
             "00"             # header tagged fields
             "05 6b636174"    # client_software_name "kcat": compact, length + 1
             "04 312e37"      # client_software_version "1.7"
             "00")            # body tagged fields
    body = {"client_software_name": "kcat", "client_software_version": "1.7"}
    assert encode_request(18, 3, 1, "c", body) == [data]
    header, decoded = decode_request(data[4:])
    assert decoded == body and header["request_api_version"] == 3


TWO_KEYS = [{"api_key": 18, "min_version": 0, "max_version": 3},
            {"api_key": 3, "min_version": 0, "max_version": 8}]


def test_api_versions_v0_response():
    data = h("00000016"        # frame size 22
             "00000001"        # response header v0: correlation id
             "0000"            # error_code 0
             "00000002"        # api_keys: int32 count
             "0012 0000 0003"  # ApiVersions 0-3
             "0003 0000 0008")  # Metadata 0-8
    assert encode_response(1, 18, 0, {"error_code": 0, "api_keys": TWO_KEYS}) == [data]
    _, body = decode_response(18, 0, data[4:])
    assert body["api_keys"] == TWO_KEYS


def test_api_versions_v3_response_has_header_v0_and_tagged_fields():
    body = {"error_code": 0, "api_keys": TWO_KEYS, "throttle_time_ms": 0,
            "finalized_features_epoch": 5, "zk_migration_ready": True}
    data = h("00000027"            # frame size 39
             "00000001"            # response header v0: NO tagged fields byte
             "0000"                # error_code
             "03"                  # api_keys: compact array, 2 + 1
             "0012 0000 0003 00"   # ApiVersions 0-3, element tagged fields
             "0003 0000 0008 00"   # Metadata 0-8
             "00000000"            # throttle_time_ms
             "02"                  # tagged fields: 2 (supported_features [] = default)
             "01 08 0000000000000005"  # tag 1 finalized_features_epoch = 5
             "03 01 01")           # tag 3 zk_migration_ready = true
    assert encode_response(1, 18, 3, body) == [data]
    _, decoded = decode_response(18, 3, data[4:])
    assert decoded == {**body, "supported_features": [], "finalized_features": []}


def test_api_versions_error_response_for_a_too_new_request():
    request = h("0012 0005 0000002a 0001 63 00" "00 00 00")  # ApiVersions v5
    with pytest.raises(UnsupportedVersion) as info:
        decode_request(request)
    e = info.value
    assert (e.api_key, e.api_version, e.correlation_id, e.supported) == (18, 5, 42, (0, 4))
    entries = "".join(f"{k:04x}{lo:04x}{hi:04x}" for k, (lo, hi) in sorted(SUPPORTED.items()))
    expected = h("0000002a"    # response header v0: correlation id 42
                 "0023"        # error_code 35 UNSUPPORTED_VERSION
                 "0000001d"    # api_keys: 29 entries, v0 layout (int32 count)
                 + entries)
    assert encode_api_versions_error(42) == [struct.pack(">i", len(expected)) + expected]
    # any requested version: an error body is always laid out as v0
    assert encode_response(42, 18, 3, {"error_code": 35,
                                       "api_keys": api_versions_array()}) == \
        encode_api_versions_error(42)
    _, body = decode_response(18, 3, expected)
    assert body["error_code"] == ErrorCode.UNSUPPORTED_VERSION
    assert len(body["api_keys"]) == 29


METADATA_V0_RESPONSE = (
    "00000001"                  # correlation id
    "00000001"                  # brokers: 1
    "00000001 0002 6831 00002384"  # node_id 1, host "h1", port 9092
    "00000001"                  # topics: 1
    "0000 0001 74"              # error_code 0, name "t"
    "00000001"                  # partitions: 1
    "0000 00000000 00000001"    # error_code 0, partition_index 0, leader_id 1
    "00000001 00000001"         # replica_nodes [1]
    "00000001 00000001")        # isr_nodes [1]


def test_metadata_v0_response():
    body = {"brokers": [{"node_id": 1, "host": "h1", "port": 9092}],
            "topics": [{"error_code": 0, "name": "t", "partitions": [
                {"error_code": 0, "partition_index": 0, "leader_id": 1,
                 "replica_nodes": [1], "isr_nodes": [1]}]}]}
    assert encode_response(1, 3, 0, body, framed=False) == [h(METADATA_V0_RESPONSE)]
    _, decoded = decode_response(3, 0, h(METADATA_V0_RESPONSE))
    assert decoded["brokers"][0] == {"node_id": 1, "host": "h1", "port": 9092,
                                     "rack": None}   # absent in v0: default null
    assert decoded["controller_id"] == -1


def test_metadata_v8_response():
    body = {"throttle_time_ms": 0, "cluster_id": "c1", "controller_id": 1,
            "brokers": [{"node_id": 1, "host": "h1", "port": 9092, "rack": None}],
            "topics": [{"error_code": 0, "name": "t", "is_internal": False, "partitions": [
                {"error_code": 0, "partition_index": 0, "leader_id": 1, "leader_epoch": 5,
                 "replica_nodes": [1], "isr_nodes": [1], "offline_replicas": []}]}]}
    data = h("00000001"          # correlation id (response header v0: v8 not flexible)
             "00000000"          # throttle_time_ms
             "00000001"          # brokers: 1
             "00000001 0002 6831 00002384 ffff"  # node 1, "h1", 9092, rack null
             "0002 6331"         # cluster_id "c1"
             "00000001"          # controller_id 1
             "00000001"          # topics: 1
             "0000 0001 74 00"   # error_code, name "t", is_internal false
             "00000001"          # partitions: 1
             "0000 00000000 00000001 00000005"  # error, index 0, leader 1, epoch 5
             "00000001 00000001 00000001 00000001"  # replicas [1], isr [1]
             "00000000"          # offline_replicas []
             "80000000"          # topic_authorized_operations: default INT32_MIN
             "80000000")         # cluster_authorized_operations: default INT32_MIN
    assert encode_response(1, 3, 8, body, framed=False) == [data]
    _, decoded = decode_response(3, 8, data)
    assert decoded["topics"][0]["partitions"][0]["leader_epoch"] == 5


def test_produce_v3_request():
    data = h("0000002a"            # frame size 42
             "0000 0003 00000005 0001 70"  # Produce v3, correlation 5, client "p"
             "ffff"                # transactional_id null
             "ffff"                # acks -1
             "00007530"            # timeout_ms 30000
             "00000001 0001 74"    # topic_data: 1, name "t"
             "00000001 00000000"   # partition_data: 1, index 0
             "00000004 52454321")  # records: 4 bytes "REC!"
    body = {"transactional_id": None, "acks": -1, "timeout_ms": 30000, "topic_data": [
        {"name": "t", "partition_data": [{"index": 0, "records": b"REC!"}]}]}
    assert encode_request(0, 3, 5, "p", body) == [data]
    buf = bytearray(data[4:])
    _, decoded = decode_request(buf)
    records = decoded["topic_data"][0]["partition_data"][0]["records"]
    assert isinstance(records, memoryview) and records == b"REC!"
    records[0:1] = b"X"                        # zero-copy: stamps land in the buffer
    assert buf.endswith(b"XEC!")


def test_produce_v7_request():
    data = h("00000028"            # frame size 40
             "0000 0007 00000005 0001 70"  # Produce v7
             "0002 7478"           # transactional_id "tx"
             "0001"                # acks 1
             "00007530"            # timeout_ms 30000
             "00000001 0001 74"    # topic_data: 1, name "t"
             "00000001 00000002"   # partition_data: 1, index 2
             "ffffffff")           # records null
    body = {"transactional_id": "tx", "acks": 1, "timeout_ms": 30000, "topic_data": [
        {"name": "t", "partition_data": [{"index": 2, "records": None}]}]}
    assert encode_request(0, 7, 5, "p", body) == [data]
    _, decoded = decode_request(data[4:])
    assert decoded == body


def test_fetch_v4_response():
    body = {"throttle_time_ms": 0, "responses": [{"topic": "t", "partitions": [
        {"partition_index": 0, "error_code": 0, "high_watermark": 10,
         "last_stable_offset": 10, "aborted_transactions": None, "records": b"abc"}]}]}
    data = h("00000009"            # correlation id
             "00000000"            # throttle_time_ms
             "00000001 0001 74"    # responses: 1, topic "t"
             "00000001"            # partitions: 1
             "00000000 0000"       # partition_index 0, error_code 0
             "000000000000000a"    # high_watermark 10
             "000000000000000a"    # last_stable_offset 10
             "ffffffff"            # aborted_transactions null
             "00000003 616263")    # records "abc"
    assert encode_response(9, 1, 4, body, framed=False) == [data]
    _, decoded = decode_response(1, 4, data)
    assert bytes(decoded["responses"][0]["partitions"][0]["records"]) == b"abc"


def test_fetch_v11_response_with_a_file_reference():
    ref = FileRange(100)
    body = {"throttle_time_ms": 0, "error_code": 0, "session_id": 0, "responses": [
        {"topic": "t", "partitions": [
            {"partition_index": 0, "error_code": 0, "high_watermark": 10,
             "last_stable_offset": 10, "log_start_offset": 0,
             "aborted_transactions": [{"producer_id": 7, "first_offset": 3}],
             "preferred_read_replica": -1, "records": ref}]}]}
    head = h("000000b7"            # frame size 183 = 83 bytes here + 100 in the file
             "00000009"            # correlation id
             "00000000 0000 00000000"  # throttle_time_ms, error_code, session_id
             "00000001 0001 74"    # responses: 1, topic "t"
             "00000001"            # partitions: 1
             "00000000 0000"       # partition_index, error_code
             "000000000000000a 000000000000000a 0000000000000000"  # hw, lso, log start
             "00000001 0000000000000007 0000000000000003"  # aborted: [(7, 3)]
             "ffffffff"            # preferred_read_replica -1
             "00000064")           # records: 100 bytes, sent from the file
    assert encode_response(9, 1, 11, body) == [head, ref]
    assert encode_response(9, 1, 11, body, framed=False) == [head[4:], ref]


# --- request-level behaviour ----------------------------------------------------------------

def test_unknown_api_key():
    with pytest.raises(UnknownApiKey) as info:
        decode_request(h("03e7 0000 00000011 ffff"))  # api key 999
    assert (info.value.api_key, info.value.api_version, info.value.correlation_id) == \
        (999, 0, 17)


def test_unsupported_version_of_a_known_api():
    with pytest.raises(UnsupportedVersion) as info:
        decode_request(h("0001 0003 00000011 ffff"))  # Fetch v3: below our range
    assert info.value.supported == (4, 17) and info.value.correlation_id == 17


def test_short_request_and_trailing_bytes():
    with pytest.raises(DecodeError, match="shorter than the 8-byte header"):
        decode_request(h("0012 0000 0000"))
    with pytest.raises(DecodeError) as info:   # the body itself cut short
        decode_request(h("0003 0001 00000003 ffff 0000"))
    e = info.value
    assert (e.api_key, e.api_version, e.correlation_id) == (3, 1, 3)
    assert "MetadataRequest v1" in str(e)
    # bytes after the body are ignored, as Kafka ignores them
    assert decode_request(h("0012 0000 00000003 ffff 00"))[0]["correlation_id"] == 3


def test_librdkafka_all_topics_metadata_v13_with_its_trailing_placeholder_bytes():
    """librdkafka 2.x writes a 4-byte placeholder for the topics array and, asking for
    all topics (null), leaves it: a 0 (null) and three more zero bytes. Kafka reads
    null, allow_auto_topic_creation and include_topic_authorized_operations false and
    ignores the rest; so does the broker. (Bytes captured from confluent-kafka 2.16.)"""
    header, body = decode_request(h("0003 000d 00000003 0007 72646b61666b61 00"
                                    "00000000 01 00 00"))
    assert (header["request_api_version"], header["client_id"]) == (13, "rdkafka")
    assert body["topics"] is None
    assert body["allow_auto_topic_creation"] is False


def test_encode_refuses_unsupported_versions():
    with pytest.raises(EncodeError, match="outside the supported range"):
        encode_response(1, 3, 14, {})
    with pytest.raises(EncodeError, match="unknown api key"):
        encode_response(1, 999, 0, {})


def test_flexible_response_header_has_tagged_fields():
    chunks = encode_response(4, 33, 2, {"throttle_time_ms": 0, "responses": []},
                             framed=False)
    assert chunks == [h("00000004 00" "00000000 01 00")]  # header v1 | body
    chunks = encode_response(4, 33, 1, {"throttle_time_ms": 0, "responses": []},
                             framed=False)
    assert chunks == [h("00000004" "00000000 00000000")]


# --- value generation from the schema ----------------------------------------------------------

def gen_struct(struct: Struct, version: int, rnd: random.Random, depth: int = 0) -> dict:
    """A random value holding every field present in `version`, arrays populated."""
    return {f.name: gen_value(f, f.type, version, rnd, depth)
            for f in struct.fields if f.present(version)}


def gen_value(field, typ, version, rnd, depth, element=False):
    if not element and field.nullable(version) and rnd.random() < 0.15:
        return None
    if isinstance(typ, Struct):
        return gen_struct(typ, version, rnd, depth + 1)
    if isinstance(typ, Array):
        n = rnd.randint(1, 3 if depth < 2 else 2)
        return [gen_value(field, typ.element, version, rnd, depth + 1, element=True)
                for _ in range(n)]
    return {
        "int8": lambda: rnd.randint(-2**7, 2**7 - 1),
        "int16": lambda: rnd.randint(-2**15, 2**15 - 1),
        "int32": lambda: rnd.randint(-2**31, 2**31 - 1),
        "int64": lambda: rnd.randint(-2**63, 2**63 - 1),
        "uint16": lambda: rnd.randint(0, 2**16 - 1),
        "uint32": lambda: rnd.randint(0, 2**32 - 1),
        "float64": lambda: rnd.uniform(-1e9, 1e9),
        "bool": lambda: rnd.random() < 0.5,
        "string": lambda: "".join(rnd.choice("ab-é_9") for _ in range(rnd.randint(0, 8))),
        "bytes": lambda: rnd.randbytes(rnd.randint(0, 8)),
        "records": lambda: rnd.randbytes(rnd.randint(0, 40)),
        "uuid": lambda: uuid.UUID(int=rnd.getrandbits(128)),
    }[typ]()


def with_defaults(struct: Struct, version: int, value: dict) -> dict:
    """What decoding `value` must give: absent fields at their defaults."""
    out = {}
    for f in struct.fields:
        if not f.present(version):
            out[f.name] = f.default_value()
            continue
        v = value[f.name]
        if isinstance(f.type, Struct):
            v = with_defaults(f.type, version, v)
        elif isinstance(f.type, Array) and isinstance(f.type.element, Struct) and v is not None:
            v = [with_defaults(f.type.element, version, x) for x in v]
        out[f.name] = v
    return out


CASES = [(key, version, kind) for key, m in sorted(APIS.items())
         for version in range(m.valid_versions.low, m.valid_versions.high + 1)
         for kind in ("request", "response")]


def case_id(case):
    key, version, kind = case
    return f"{APIS[key].name}-v{version}-{kind}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_round_trip_every_api_every_version(case):
    key, version, kind = case
    message = APIS[key]
    struct_ = getattr(message, kind)
    flexible = message.is_flexible(version)
    rnd = random.Random(f"{key}-{version}-{kind}")
    for _ in range(4):
        value = gen_struct(struct_, version, rnd)
        data = codec.encode(struct_, version, value, flexible=flexible)
        decoded, end = codec.decode(struct_, version, data, flexible=flexible)
        assert end == len(data)
        assert decoded == with_defaults(struct_, version, value)
        assert codec.encode(struct_, version, decoded, flexible=flexible) == data


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_round_trip_with_headers(case):
    key, version, kind = case
    message = APIS[key]
    rnd = random.Random(f"hdr-{key}-{version}-{kind}")
    value = gen_struct(getattr(message, kind), version, rnd)
    if kind == "request":
        frame_ = b"".join(encode_request(key, version, 123, "client-1", value))
        header, body = decode_request(bytearray(frame_[4:]))
        assert header == {"request_api_key": key, "request_api_version": version,
                          "correlation_id": 123, "client_id": "client-1"}
        again = encode_request(key, version, 123, "client-1", body)
    else:
        if key == 18:
            value["error_code"] = 0     # an error body is always v0 (tested above)
        frame_ = b"".join(encode_response(123, key, version, value))
        header, body = decode_response(key, version, frame_[4:])
        assert header == {"correlation_id": 123}
        again = encode_response(123, key, version, body)
    assert struct.unpack(">i", frame_[:4])[0] == len(frame_) - 4
    assert b"".join(again) == frame_


# --- kafka-python as the oracle -------------------------------------------------------------------

def _kafka_python_classes():
    """{(api_key, "request"|"response"): class} of kafka-python's JSON-driven messages."""
    from kafka.protocol.api_message import ApiMessage
    found, todo = {}, list(ApiMessage.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if getattr(cls, "_class_version", 1) is None and getattr(cls, "_json", None):
            found[(cls.API_KEY, cls.type)] = cls
    return found


def _kafka_python_old_classes():
    """{(api_key, version, "request"|"response"): class} of kafka-python's hand-written
    (pre-JSON) Struct classes: an oracle independent of the JSON specs."""
    import kafka.protocol.old as old
    found = {}
    for info in pkgutil.iter_modules(old.__path__):
        module = importlib.import_module(f"kafka.protocol.old.{info.name}")
        for name in dir(module):
            cls = getattr(module, name)
            if (isinstance(cls, type) and isinstance(getattr(cls, "API_VERSION", None), int)
                    and hasattr(cls, "SCHEMA") and hasattr(cls, "API_KEY")):
                kind = "request" if "Request" in name else "response"
                found[(cls.API_KEY, cls.API_VERSION, kind)] = cls
    return found


KP = _kafka_python_classes()
KP_OLD = _kafka_python_old_classes()


def _to_kp(kp_field, ours: Struct, version: int, value: dict, top_cls=None):
    """Build kafka-python's object from our value, pairing fields by wire position
    (untagged) and tag number (tagged), never by name."""
    mine = [f for f in ours.fields if f.present(version) and not f.tagged(version)]
    theirs = kp_field.untagged_fields(version)
    assert len(mine) == len(theirs), (ours.name, version, [f.name for f in mine],
                                      [f.name for f in theirs])
    kwargs = {tf.name: _kp_value(of, tf, version, value[of.name])
              for of, tf in zip(mine, theirs)}
    their_tags = {f.tag: f for f in kp_field.tagged_fields(version)._fields}
    for of in ours.fields:
        if of.present(version) and of.tagged(version):
            tf = their_tags[of.tag]
            kwargs[tf.name] = _kp_value(of, tf, version, value[of.name])
    cls = top_cls or kp_field.data_class
    return cls(version=version, **kwargs)


def _kp_value(our_field, kp_field, version, v):
    typ = our_field.type
    if v is None:
        return None
    if isinstance(typ, Struct):
        return _to_kp(kp_field, typ, version, v)
    if isinstance(typ, Array) and isinstance(typ.element, Struct):
        return [_to_kp(kp_field, typ.element, version, x) for x in v]
    if kp_field.name == "authorized_operations":  # kafka-python holds a set of bits
        return {i for i in range(32) if (v & 0xFFFFFFFF) >> i & 1}
    return v


KP_CASES = [c for c in CASES if (c[0], c[2]) in KP]


@pytest.mark.parametrize("case", KP_CASES, ids=case_id)
def test_byte_identical_to_kafka_python(case):
    key, version, kind = case
    message = APIS[key]
    struct_ = getattr(message, kind)
    flexible = message.is_flexible(version)
    cls = KP[(key, kind)]
    rnd = random.Random(f"kp-{key}-{version}-{kind}")
    for _ in range(4):
        value = gen_struct(struct_, version, rnd)
        ours = codec.encode(struct_, version, value, flexible=flexible)
        theirs = _to_kp(cls._struct, struct_, version, value, top_cls=cls).encode(
            version=version)
        assert ours == theirs


# kafka-python's hand-written DescribeLogDirsRequest (key 35) declares each topic's
# partitions as one int32, not an array of them (the spec, and its own JSON-driven
# classes, which KP_CASES compare with, have the array): not an oracle there.
KP_OLD_WRONG = {(35, v, "request") for v in range(2)}
KP_OLD_CASES = [c for c in CASES if (c[0], c[1], c[2]) in KP_OLD
                and (c[0], c[1], c[2]) not in KP_OLD_WRONG
                and not APIS[c[0]].is_flexible(c[1])]


def _to_tuple(struct_: Struct, version: int, value: dict, schema) -> tuple:
    """Our value as the nested tuples of a hand-written Schema, paired by position.
    Those schemas spell a one-field struct element as its bare field ("[]string" for
    Metadata v0 topics): the wire bytes are the same, so follow their shape."""
    from kafka.protocol.old.types import BitField, Schema
    present = [f for f in struct_.fields if f.present(version)]
    # They may also group a run of a struct's fields into a nested Schema (CreatePartitions
    # v0-1: count and assignments are one "new_partitions"): the same wire bytes again.
    out, at = [], 0
    for their_type in schema.fields:
        assert at < len(present), (struct_.name, version, schema.names)
        f = present[at]
        if isinstance(their_type, Schema) and not isinstance(f.type, (Struct, Array)):
            run = Struct(struct_.name, *present[at:at + len(their_type.fields)])
            at += len(run.fields)
            out.append(_to_tuple(run, version, value, their_type))
            continue
        at += 1
        v = value[f.name]
        if v is not None and isinstance(f.type, Array) and isinstance(f.type.element, Struct):
            inner = their_type.array_of
            if isinstance(inner, Schema):
                v = [_to_tuple(f.type.element, version, x, inner) for x in v]
            else:
                v = [next(iter(x.values())) for x in v]
        elif v is not None and isinstance(f.type, Struct):
            v = _to_tuple(f.type, version, v, their_type)
        elif their_type is BitField:  # authorized operations held as a set of bits
            v = {i for i in range(32) if (v & 0xFFFFFFFF) >> i & 1}
        out.append(v)
    assert at == len(present), (struct_.name, version, schema.names)
    return tuple(out)


@pytest.mark.parametrize("case", KP_OLD_CASES, ids=case_id)
def test_byte_identical_to_kafka_python_hand_written_structs(case):
    key, version, kind = case
    message = APIS[key]
    struct_ = getattr(message, kind)
    cls = KP_OLD[(key, version, kind)]
    rnd = random.Random(f"old-{key}-{version}-{kind}")
    for _ in range(4):
        value = gen_struct(struct_, version, rnd)
        ours = codec.encode(struct_, version, value)
        assert ours == cls(*_to_tuple(struct_, version, value, cls.SCHEMA)).encode()


def test_enough_oracle_coverage():
    assert len(KP_CASES) == len(CASES)           # every (api, version, direction)
    assert len(KP_OLD_CASES) >= 150


def test_kafka_python_reads_our_frames_with_headers():
    from kafka.protocol.metadata import ApiVersionsResponse, MetadataResponse
    frame_ = b"".join(encode_response(77, 18, 3, {"api_keys": TWO_KEYS}))
    decoded = ApiVersionsResponse.decode(frame_, version=3, header=True, framed=True)
    assert decoded.header.correlation_id == 77
    assert [(k.api_key, k.min_version, k.max_version) for k in decoded.api_keys] == \
        [(18, 0, 3), (3, 0, 8)]
    frame_ = b"".join(encode_api_versions_error(78))
    decoded = ApiVersionsResponse.decode(frame_, version=3, header=True, framed=True)
    assert decoded.error_code == 35 and len(decoded.api_keys) == len(SUPPORTED)
    body = {"brokers": [{"node_id": 1, "host": "h", "port": 1}], "topics": []}
    frame_ = b"".join(encode_response(79, 3, 5, body))
    decoded = MetadataResponse.decode(frame_, version=5, header=True, framed=True)
    assert decoded.header.correlation_id == 79 and decoded.brokers[0].host == "h"


def test_we_read_kafka_python_requests_with_headers():
    from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
    req = ApiVersionsRequest[3](client_software_name="kafka-python",
                                client_software_version="3.0")
    req.with_header(correlation_id=5, client_id="kp")
    header, body = decode_request(req.encode(header=True, framed=True)[4:])
    assert header == {"request_api_key": 18, "request_api_version": 3, "correlation_id": 5,
                      "client_id": "kp"}
    assert body["client_software_name"] == "kafka-python"
    req = MetadataRequest[8](topics=None, allow_auto_topic_creation=False,
                             include_cluster_authorized_operations=True,
                             include_topic_authorized_operations=False)
    req.with_header(correlation_id=6, client_id=None)
    header, body = decode_request(req.encode(header=True, framed=True)[4:])
    assert header["client_id"] is None
    assert body == {"topics": None, "allow_auto_topic_creation": False,
                    "include_cluster_authorized_operations": True,
                    "include_topic_authorized_operations": False}


# --- malformed input --------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_truncation_is_a_clean_decode_error(case):
    key, version, kind = case
    message = APIS[key]
    rnd = random.Random(f"cut-{key}-{version}-{kind}")
    value = gen_struct(getattr(message, kind), version, rnd)
    if kind == "request":
        data = b"".join(encode_request(key, version, 1, "c", value, framed=False))
        decode = decode_request
    else:
        data = b"".join(encode_response(1, key, version, value, framed=False))

        def decode(buf):
            return decode_response(key, version, buf)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode(bytearray(data[:cut]))


def test_random_corruption_raises_only_decode_errors():
    rnd = random.Random(7)
    checked = 0
    for key, version, kind in CASES:
        message = APIS[key]
        value = gen_struct(getattr(message, kind), version, rnd)
        if kind != "request":
            continue
        data = bytearray(b"".join(encode_request(key, version, 1, "c", value,
                                                 framed=False)))
        for _ in range(20):
            bad = bytearray(data)
            for _ in range(rnd.randint(1, 4)):
                bad[rnd.randrange(8, len(bad))] = rnd.choice((0x00, 0xFF, 0x7F, 0x80,
                                                              rnd.randrange(256)))
            try:
                decode_request(bad)
            except DecodeError:
                pass
            checked += 1
    assert checked > 1000


def test_negative_lengths():
    base = "0000 0003 00000001 ffff"   # Produce v3 request header, null client id
    with pytest.raises(DecodeError, match="negative length -2"):
        decode_request(h(base + "fffe"))                     # transactional_id -2
    with pytest.raises(DecodeError, match="negative length -5"):
        decode_request(h(base + "ffff ffff 00000000 fffffffb"))  # topic_data -5
    with pytest.raises(DecodeError, match="null array in a non-nullable"):
        decode_request(h(base + "ffff ffff 00000000 ffffffff"))  # topic_data null
    with pytest.raises(DecodeError, match="null string in a non-nullable") as info:
        decode_request(h(base + "ffff ffff 00000000 00000001 ffff" "00000000"))
    assert info.value.path == "topic_data[0].name"


def test_absurd_array_length_fails_fast_without_allocating():
    data = h("0000 0003 00000001 ffff" "ffff ffff 00000000" "7fffffff" "0001 74")
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="2147483647 elements"):
            decode_request(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_absurd_primitive_array_length():
    # Metadata v0 response: brokers [] then topics, one topic with replica_nodes 2^31-1
    data = h("00000001 00000000 00000001 0000 0001 74 00000001 0000 00000000 00000001"
             "7fffffff 00000001")
    with pytest.raises(DecodeError, match="runs past the end") as info:
        decode_response(3, 0, data)
    assert info.value.path == "topics[0].partitions[0].replica_nodes"


def test_absurd_records_length():
    data = h("0000 0003 00000001 ffff" "ffff ffff 00000000" "00000001 0001 74"
             "00000001 00000000" "7fffffff 0102")
    with pytest.raises(DecodeError, match="records of length 2147483647") as info:
        decode_request(data)
    assert info.value.path == "topic_data[0].partition_data[0].records"
    assert info.value.correlation_id == 1
