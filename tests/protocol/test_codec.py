"""The generic codec on test schemas and headers: byte-exact vectors, tagged fields,
defaults, ignorable fields, file references, framing, error paths."""

import time
import uuid

import pytest

from pybroker.protocol import codec, frame, headers
from pybroker.protocol.errors import DecodeError, EncodeError, FrameSizeError, SchemaError
from pybroker.protocol.schema import Array, Field as F, Struct


def h(s: str) -> bytes:
    """Hex with spaces and per-field grouping allowed."""
    return bytes.fromhex(s.replace(" ", ""))


# --- request and response headers ---------------------------------------------------

def test_request_header_v0():
    data = h("0007"        # request_api_key 7 (ControlledShutdown: the only v0 user)
             "0000"        # request_api_version 0
             "0000002a")   # correlation_id 42
    header, end = headers.decode_request_header(data, 0)
    assert end == 8
    assert header == {"request_api_key": 7, "request_api_version": 0,
                      "correlation_id": 42, "client_id": ""}  # absent in v0: default
    assert headers.encode_request_header(header, 0) == data


def test_request_header_v1():
    data = h("0003"        # request_api_key 3 (Metadata)
             "0001"        # request_api_version 1
             "00000007"    # correlation_id 7
             "0004 61626364")  # client_id "abcd": int16 length + UTF-8
    header, end = headers.decode_request_header(data, 1)
    assert end == len(data)
    assert header == {"request_api_key": 3, "request_api_version": 1, "correlation_id": 7,
                      "client_id": "abcd"}
    assert headers.encode_request_header(header, 1) == data


def test_request_header_v1_null_client_id():
    data = h("0003 0001 00000007 ffff")  # client_id null: length -1
    header, _ = headers.decode_request_header(data, 1)
    assert header["client_id"] is None
    assert headers.encode_request_header(header, 1) == data


def test_request_header_v2_keeps_classic_client_id():
    data = h("0012"        # request_api_key 18 (ApiVersions)
             "0003"        # request_api_version 3
             "00000007"    # correlation_id 7
             "0003 636c69"  # client_id "cli": still int16 length, not compact
             "00")         # tagged fields: none
    header, end = headers.decode_request_header(data, 2)
    assert end == len(data) and header["client_id"] == "cli"
    assert headers.encode_request_header(header, 2) == data


def test_request_header_v2_skips_unknown_tags():
    data = h("0012 0003 00000007 0003 636c69"
             "01 05 02 abcd")  # one tagged field: tag 5, 2 bytes (unknown: skipped)
    header, end = headers.decode_request_header(data, 2)
    assert end == len(data) and header["client_id"] == "cli"


def test_response_headers():
    assert headers.encode_response_header(7, 0) == h("00000007")
    assert headers.encode_response_header(7, 1) == h("00000007 00")  # + empty tags
    assert headers.decode_response_header(h("00000007 00"), 1) == ({"correlation_id": 7}, 5)


def test_header_version_rule():
    assert headers.request_header_version(3, 8) == 1     # Metadata v8: not flexible
    assert headers.response_header_version(3, 8) == 0
    assert headers.request_header_version(18, 3) == 2    # ApiVersions v3: flexible
    assert headers.response_header_version(18, 3) == 0   # ...but response header v0
    assert headers.request_header_version(33, 2) == 2    # AlterConfigs v2: flexible
    assert headers.response_header_version(33, 2) == 1
    assert headers.request_header_version(44, 0) == 1    # IncrementalAlterConfigs v0
    assert headers.request_header_version(44, 1) == 2
    assert headers.request_header_version(7, 0) == 0     # ControlledShutdown v0


# --- a flexible test schema with tagged fields (InitProducerId v2 style) ----------------

LEADER = Struct("LeaderIdAndEpoch",
                F("leader_id", "int32", "0+", default=-1),
                F("leader_epoch", "int32", "0+", default=-1))

TAGGED = Struct(
    "TaggedTest",
    F("transactional_id", "string", "0+", nullable_versions="0+"),
    F("transaction_timeout_ms", "int32", "0+"),
    F("producer_id", "int64", "3+", default=-1),
    F("note", "string", "2+", nullable_versions="2+", default=None, tag=0,
      tagged_versions="2+"),
    F("leader", LEADER, "2+", tag=1, tagged_versions="2+"),
    F("ids", Array("uuid"), "2+", tag=5, tagged_versions="2+"),
    F("items", Array(Struct("Item", F("name", "string", "0+"),
                            F("value", "bytes", "0+", nullable_versions="0+"))), "0+"),
)


def test_flexible_struct_with_tagged_fields_vector():
    value = {"transactional_id": "tx", "transaction_timeout_ms": 10000, "note": "hi",
             "leader": {"leader_id": 1, "leader_epoch": 2},
             "items": [{"name": "a", "value": None}]}
    data = h("03 7478"          # transactional_id "tx": compact nullable, length+1 = 3
             "00002710"         # transaction_timeout_ms 10000
             "02"               # items: compact array, 1 element + 1
             "02 61"            #   name "a"
             "00"               #   value null (compact nullable bytes)
             "00"               #   element tagged fields: none
             "02"               # tagged fields: 2 entries, ascending tags
             "00 03 03 6869"    #   tag 0 note: size 3, compact string "hi"
             "01 09 00000001 00000002 00")  # tag 1 leader: size 9, struct + its tags
    assert codec.encode(TAGGED, 2, value, flexible=True) == data
    decoded, end = codec.decode(TAGGED, 2, data, flexible=True)
    assert end == len(data)
    assert decoded == {**value, "producer_id": -1, "ids": []}


def test_tagged_fields_equal_to_default_are_not_sent():
    value = {"transactional_id": None, "transaction_timeout_ms": 0, "note": None,
             "leader": {"leader_id": -1, "leader_epoch": -1}, "ids": []}
    data = codec.encode(TAGGED, 3, value, flexible=True)
    assert data == h("00"  # transactional_id null
                     "00000000"  # transaction_timeout_ms
                     "ffffffffffffffff"  # producer_id -1 (v3+)
                     "01"  # items: empty compact array
                     "00")  # no tagged fields: all equal their defaults


def test_tagged_uuid_array_round_trip():
    ids = [uuid.UUID(int=1), uuid.UUID(int=2**128 - 1)]
    value = {"transactional_id": "", "transaction_timeout_ms": 1, "ids": ids}
    data = codec.encode(TAGGED, 2, value, flexible=True)
    assert data.endswith(h("01 05 21 03") + ids[0].bytes + ids[1].bytes)
    decoded, _ = codec.decode(TAGGED, 2, data, flexible=True)
    assert decoded["ids"] == ids


def test_unknown_tags_are_skipped_and_tags_may_come_in_any_order():
    data = h("01 00000000 01"  # transactional_id "", timeout 0, items []
             "02"
             "07 02 ffff"       # tag 7: unknown, skipped
             "00 02 01 00")     # hmm: tag 0 note, size 2... see below
    # tag 0 with size 2 holding "01" (empty string) and one spare byte is malformed:
    with pytest.raises(DecodeError, match="declares 2 bytes"):
        codec.decode(TAGGED, 2, data, flexible=True)
    good = h("01 00000000 01 02 07 02 ffff 00 01 01")
    decoded, end = codec.decode(TAGGED, 2, good, flexible=True)
    assert end == len(good) and decoded["note"] == ""


def test_same_schema_non_flexible_version():
    value = {"transactional_id": "tx", "transaction_timeout_ms": 5,
             "items": [{"name": "a", "value": b"\x01"}]}
    data = h("0002 7478 00000005 00000001 0001 61 00000001 01")
    assert codec.encode(TAGGED, 1, value) == data
    decoded, _ = codec.decode(TAGGED, 1, data)
    assert decoded["note"] is None and decoded["leader"] == {"leader_id": -1,
                                                             "leader_epoch": -1}


def test_absent_defaults_are_fresh_objects():
    data = codec.encode(TAGGED, 1, {"transactional_id": None})
    a, _ = codec.decode(TAGGED, 1, data)
    b, _ = codec.decode(TAGGED, 1, data)
    a["ids"].append(1)
    a["leader"]["leader_id"] = 9
    assert b["ids"] == [] and b["leader"]["leader_id"] == -1


def test_tagged_field_in_non_flexible_version_is_a_schema_error():
    bad = Struct("Bad", F("x", "int32", "0+", tag=0, tagged_versions="0+"))
    with pytest.raises(SchemaError):
        codec.plan(bad, 0, False)


def test_schema_declaration_checks():
    with pytest.raises(SchemaError):
        F("x", "int32", "0+", nullable_versions="0+")   # ints cannot be null
    with pytest.raises(SchemaError):
        F("x", "strnig")                                 # unknown type
    with pytest.raises(SchemaError):
        F("x", "string", default=None)                   # null default, not nullable
    with pytest.raises(SchemaError):
        Struct("Dup", F("a", "int8"), F("a", "int8"))


# --- ignorable fields and encode errors ---------------------------------------------------

IGN = Struct("Ign",
             F("a", "int32", "0+"),
             F("ignorable", "int32", "1+", ignorable=True),
             F("strict", "int32", "1+", default=-1),
             F("b", "int16", "0+"))


def test_non_ignorable_field_set_in_a_version_without_it_is_refused():
    assert codec.encode(IGN, 0, {"a": 1, "ignorable": 5, "b": 2}) == h("00000001 0002")
    assert codec.encode(IGN, 0, {"a": 1, "strict": -1, "b": 2}) == h("00000001 0002")
    with pytest.raises(EncodeError, match="not ignorable") as info:
        codec.encode(IGN, 0, {"a": 1, "strict": 7})
    assert info.value.path == "strict"


def test_encode_error_names_the_field_path():
    nested = Struct("Outer", F("topics", Array(Struct(
        "Topic", F("name", "string"), F("partitions", Array(Struct(
            "P", F("index", "int32"), F("offset", "int64"))))))))
    value = {"topics": [{"name": "t", "partitions": [{"index": 0, "offset": 1},
                                                     {"index": 2**40, "offset": 1}]}]}
    with pytest.raises(EncodeError) as info:
        codec.encode(nested, 0, value)
    assert info.value.path == "topics[0].partitions[1].index"
    assert "Outer v0" in str(info.value)
    with pytest.raises(EncodeError, match="expected a dict"):
        codec.encode(nested, 0, {"topics": [None]})
    with pytest.raises(EncodeError, match="topics\\[0\\].name"):
        codec.encode(nested, 0, {"topics": [{"name": 5}]})
    with pytest.raises(EncodeError, match="non-nullable array"):
        codec.encode(nested, 0, {"topics": None})


def test_decode_error_names_the_field_path_and_offset():
    nested = Struct("Outer", F("topics", Array(Struct(
        "Topic", F("name", "string"), F("records", "records", nullable_versions="0+")))))
    data = h("00000002"                     # 2 topics
             "0001 61 ffffffff"             # "a", null records
             "0001 62 00000009 0102")       # "b", records claims 9 bytes, has 2
    with pytest.raises(DecodeError) as info:
        codec.decode(nested, 0, data)
    assert info.value.path == "topics[1].records"
    assert info.value.offset == 14
    assert "Outer v0" in str(info.value) and "runs past the end" in str(info.value)


# --- records references and chunks -------------------------------------------------------

class FileRange:
    def __init__(self, length):
        self.length = length


RECS = Struct("Recs", F("a", "int32"), F("records", "records", nullable_versions="0+"),
              F("b", "int16"))


def test_encode_chunks_emits_references_separately():
    ref = FileRange(1000)
    chunks = codec.encode_chunks(RECS, 0, {"a": 1, "records": ref, "b": 2})
    assert chunks == [h("00000001 000003e8"), ref, h("0002")]
    assert codec.chunks_length(chunks) == 8 + 1000 + 2
    with pytest.raises(EncodeError, match="encode_chunks"):
        codec.encode(RECS, 0, {"a": 1, "records": ref, "b": 2})


def test_encode_chunks_without_references_is_one_chunk():
    assert codec.encode_chunks(RECS, 0, {"a": 1, "records": b"xy"}) == [
        h("00000001 00000002 7879 0000")]


def test_compact_records_reference():
    ref = FileRange(3)
    chunks = codec.encode_chunks(RECS, 0, {"records": ref}, flexible=True)
    assert chunks == [h("00000000 04"), ref, h("0000 00")]


def test_plans_are_compiled_once():
    assert codec.plan(RECS, 0, False) is codec.plan(RECS, 0, False)
    assert codec.plan(RECS, 0, False) is not codec.plan(RECS, 0, True)


# --- framing -----------------------------------------------------------------------------

def test_parse_frame_size():
    assert frame.parse_frame_size(h("00000010"), max_size=100) == 16
    assert frame.parse_frame_size(h("00000000"), max_size=100) == 0
    with pytest.raises(FrameSizeError, match="negative") as info:
        frame.parse_frame_size(h("ffffffff"), max_size=100)
    assert info.value.size == -1
    with pytest.raises(FrameSizeError, match="exceeds the limit of 100") as info:
        frame.parse_frame_size(h("00000065"), max_size=100)
    assert (info.value.size, info.value.limit) == (101, 100)
    with pytest.raises(FrameSizeError):
        frame.parse_frame_size(h("7fffffff"))   # 2 GiB against the 100 MiB default


def test_frame_chunks():
    ref = FileRange(5)
    assert frame.frame_chunks([b"ab", ref, b"c"]) == [h("00000008") + b"ab", ref, b"c"]
    assert frame.frame_chunks([ref]) == [h("00000005"), ref]
    big = bytes(10000)
    framed = frame.frame_chunks([big])
    assert framed[0] == h("00002710") and framed[1] is big  # no copy of a large chunk
    assert frame.frame(b"xyz") == h("00000003") + b"xyz"


# --- speed figures (printed, never asserted: bench/ guards speed) --------------------------

def test_speed_figures(capsys):
    """Prints the figures quoted in codec.py's docstring (run with -s to see them)."""
    from pybroker.protocol import decode_request, encode_request, encode_response
    produce = {"transactional_id": None, "acks": -1, "timeout_ms": 30000,
               "topic_data": [{"name": "orders", "partition_data": [
                   {"index": 0, "records": bytes(1024)}]}]}
    buf = bytearray(b"".join(encode_request(0, 7, 1, "producer-1", produce, framed=False)))
    fetch = {"responses": [{"topic": "orders", "partitions": [
        {"partition_index": 0, "high_watermark": 100, "last_stable_offset": 100,
         "log_start_offset": 0, "aborted_transactions": None, "records": FileRange(4096)}]}]}
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        decode_request(buf)
    mid = time.perf_counter()
    for _ in range(n):
        encode_response(1, 1, 11, fetch)
    end = time.perf_counter()
    with capsys.disabled():
        print(f"\n  decode ProduceRequest v7: {(mid - start) / n * 1e6:.1f} us;"
              f" encode FetchResponse v11: {(end - mid) / n * 1e6:.1f} us")
