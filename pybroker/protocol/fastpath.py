"""Hand-tuned codecs for the hottest messages: the Produce request and response.

The generic codec walks the schema of any message; at one produce request per
message (a producer batching 1) it costs about half of the broker's time per request.
These functions do the same work with a few struct calls for Produce v3-v8 (none of
them flexible; v8's request is v7's, its answer adds per-partition record errors and an
error message, written here only when there are none). They are held to the generic codec: tests/protocol/test_fastpath.py
checks byte-identical encoding and equal decoding on random messages of every
version, and bench/test_bench_protocol.py measures the gain. Anything unexpected
(bounds, trailing bytes, a version outside 3-7) falls back to the generic codec, which
raises its precise DecodeError; so the fast path never changes what a client sees.
"""
from __future__ import annotations

import struct

from .apis import ApiKey

_HEADER_PREFIX = struct.Struct(">hhi")  # api key, version, correlation id
_ACKS_TIMEOUT = struct.Struct(">hi")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_PARTITION = struct.Struct(">ii")      # index, records length
_PART_V3 = struct.Struct(">ihqq")      # index, error, base offset, log append time
_PART_V5 = struct.Struct(">ihqqq")     # + log start offset
_NO_RECORD_ERRORS = b"\x00\x00\x00\x00\xff\xff"   # v8: record_errors [], error_message null
FAST_VERSIONS = range(3, 9)


class _Fallback(Exception):
    """The input is not the plain case: let the generic codec decide."""


def _string(mv, pos: int) -> tuple[str | None, int]:
    (n,) = _I16.unpack_from(mv, pos)
    pos += 2
    if n < 0:
        if n != -1:
            raise _Fallback
        return None, pos
    end = pos + n
    if end > len(mv):
        raise _Fallback
    return str(mv[pos:end], "utf-8"), end


def decode_produce_request(mv: memoryview) -> tuple[dict, dict] | None:
    """(header, body) of a Produce v3-v8 request frame body, as the generic codec would
    decode it; None when the generic codec must handle it (errors included)."""
    try:
        api_key, version, correlation_id = _HEADER_PREFIX.unpack_from(mv, 0)
        if api_key != ApiKey.PRODUCE or version not in FAST_VERSIONS:
            return None
        client_id, pos = _string(mv, 8)  # after api key, version, correlation id
        transactional_id, pos = _string(mv, pos)
        acks, timeout_ms = _ACKS_TIMEOUT.unpack_from(mv, pos)
        pos += 6
        (ntopics,) = _I32.unpack_from(mv, pos)
        pos += 4
        if ntopics < 0 or ntopics > len(mv):
            return None
        topics = []
        for _ in range(ntopics):
            name, pos = _string(mv, pos)
            if name is None:
                return None
            (nparts,) = _I32.unpack_from(mv, pos)
            pos += 4
            if nparts < 0 or nparts > len(mv):
                return None
            parts = []
            for _ in range(nparts):
                index, size = _PARTITION.unpack_from(mv, pos)
                pos += 8
                if size < 0:
                    if size != -1:
                        return None
                    records = None
                else:
                    end = pos + size
                    if end > len(mv):
                        return None
                    records = mv[pos:end]
                    pos = end
                parts.append({"index": index, "records": records})
            topics.append({"name": name, "partition_data": parts})
        if pos != len(mv):
            return None
    except (struct.error, _Fallback, UnicodeDecodeError):
        return None
    header = {"request_api_key": api_key, "request_api_version": version,
              "correlation_id": correlation_id, "client_id": client_id}
    return header, {"transactional_id": transactional_id, "acks": acks,
                    "timeout_ms": timeout_ms, "topic_data": topics}


def encode_produce_response(correlation_id: int, version: int, body: dict) -> list | None:
    """The framed chunks of a Produce v3-v8 response, as the generic codec would write
    them; None for other versions, and for a v8 answer carrying record errors or an
    error message."""
    if version not in FAST_VERSIONS:
        return None
    out = bytearray(8)  # size prefix + correlation id, filled in last
    responses = body["responses"]
    out += _I32.pack(len(responses))
    for topic in responses:
        name = topic["name"].encode()
        out += _I16.pack(len(name))
        out += name
        parts = topic["partition_responses"]
        out += _I32.pack(len(parts))
        for p in parts:
            if version >= 5:
                out += _PART_V5.pack(p["index"], p["error_code"], p["base_offset"],
                                     p["log_append_time_ms"], p["log_start_offset"])
                if version >= 8:
                    if p.get("record_errors") or p.get("error_message") is not None:
                        return None
                    out += _NO_RECORD_ERRORS
            else:
                out += _PART_V3.pack(p["index"], p["error_code"], p["base_offset"],
                                     p["log_append_time_ms"])
    out += _I32.pack(body["throttle_time_ms"])
    struct.pack_into(">ii", out, 0, len(out) - 4, correlation_id)
    return [bytes(out)]
