"""Whole requests and responses: header + body, for every API in `apis.APIS`.

Server side:  decode_request(frame_body) -> (header, body)
              encode_response(correlation_id, api_key, api_version, body) -> chunks
              encode_api_versions_error(correlation_id) -> chunks
Client side:  encode_request(...) -> chunks,  decode_response(...) -> (header, body)

"Chunks" are what goes on the socket, in order: `bytes` objects, and file-range
references (the records of a fetch response, to be sent with sendfile). Bytes between
references are merged into one chunk, except that the 4-byte size prefix (included
by default, framed=True) stays a chunk of its own before a first chunk over 4 KiB.
"""

from __future__ import annotations

import struct as _struct

from . import codec, fastpath
from .apis import APIS, SUPPORTED, ApiKey, api_versions_array
from .errors import DecodeError, EncodeError, ErrorCode, UnknownApiKey, UnsupportedVersion
from .frame import frame_chunks
from .headers import (REQUEST_HEADER, REQUEST_HEADER_FLEXIBLE, RESPONSE_HEADER,
                      RESPONSE_HEADER_FLEXIBLE, peek_request_prefix, request_header_version,
                      response_header_version)
from .schema import Message

_INT16 = _struct.Struct(">h")


def decode_request(buf) -> tuple[dict, dict]:
    """Decode one request: `buf` is a frame body (the bytes after the size prefix).

    Returns (header, body) dicts. The header has request_api_key,
    request_api_version, correlation_id and client_id. Records fields of the body are
    memoryview slices of `buf` (writable if `buf` is a bytearray).

    Raises
      UnknownApiKey       api key not in APIS (no response schema: close the connection)
      UnsupportedVersion  known key, version outside SUPPORTED (for ApiVersions, answer
                          with encode_api_versions_error; otherwise close)
      DecodeError         malformed header or body; carries api_key, api_version and
                          correlation_id when known.
    All carry the correlation id, read from the fixed 8-byte prefix.

    Bytes after the body are ignored, as Kafka's request parser ignores them: librdkafka
    (2.x, every all-topics Metadata v9+ request) sends the 4-byte placeholder of a null
    compact array, whose last 3 bytes a strict reader would take for a malformed
    request. (A response, which we decode only in tests and tools, must end exactly.)
    """
    mv = buf if type(buf) is memoryview else memoryview(buf)
    if len(mv) > 1 and mv[0] == 0 and mv[1] == ApiKey.PRODUCE:
        fast = fastpath.decode_produce_request(mv)
        if fast is not None:
            return fast
    api_key, api_version, correlation_id = peek_request_prefix(mv)
    route = _ROUTES.get((api_key, api_version)) or _route(api_key, api_version)
    if route is None:
        message = APIS.get(api_key)
        if message is None:
            raise UnknownApiKey(api_key, api_version, correlation_id)
        raise UnsupportedVersion(api_key, api_version, correlation_id, message.version_range)
    try:
        header, pos = route.request_header.read(mv, 0)
        body, _ = route.request.read(mv, pos)
    except DecodeError as e:
        _tag_request(e, api_key, api_version, correlation_id, route.request_name)
        raise
    except (_struct.error, IndexError, UnicodeDecodeError, OverflowError) as e:
        err = DecodeError(f"malformed input ({type(e).__name__}: {e})", 0)
        _tag_request(err, api_key, api_version, correlation_id, route.request_name)
        raise err from e
    return header, body


class _Route:
    """Everything compiled for one (api_key, api_version): header and body plans."""

    __slots__ = ("message", "request_header", "request", "response_header", "response",
                 "request_name", "response_name")

    def __init__(self, message: Message, version: int):
        flexible = message.is_flexible(version)
        req_hv = request_header_version(message.api_key, version)
        resp_hv = response_header_version(message.api_key, version)
        self.message = message
        self.request_header = codec.plan(REQUEST_HEADER, req_hv,
                                         req_hv in REQUEST_HEADER_FLEXIBLE)
        self.response_header = codec.plan(RESPONSE_HEADER, resp_hv,
                                          resp_hv in RESPONSE_HEADER_FLEXIBLE)
        self.request = codec.plan(message.request, version, flexible)
        self.response = codec.plan(message.response, version, flexible)
        self.request_name = f"{message.name}Request v{version}"
        self.response_name = f"{message.name}Response v{version}"


_ROUTES: dict[tuple[int, int], _Route] = {}


def _route(api_key: int, api_version: int) -> _Route | None:
    """The route of a supported (api_key, api_version), or None (compiled once)."""
    message = APIS.get(api_key)
    if message is None or api_version not in message.valid_versions:
        return None
    route = _ROUTES[(api_key, api_version)] = _Route(message, api_version)
    return route


def _tag_request(e: DecodeError, api_key, api_version, correlation_id, name) -> None:
    e.api_key, e.api_version, e.correlation_id = api_key, api_version, correlation_id
    if not e.context:
        e.context = f"{name} correlation_id={correlation_id}"


def encode_response(correlation_id: int, api_key: int, api_version: int, body: dict, *,
                    framed: bool = True) -> list:
    """Chunks of a response: [size prefix,] response header, body.

    The header version follows the request's (api_key, api_version) (see headers.py).
    An ApiVersions body with a non-zero error_code is encoded in the v0 layout
    whatever the version, since clients decode error responses as v0.
    Raises EncodeError for an unsupported (api_key, api_version) or for values that
    do not fit the schema.
    """
    if api_key == ApiKey.PRODUCE and framed:
        fast = fastpath.encode_produce_response(correlation_id, api_version, body)
        if fast is not None:
            return fast
    route = _checked_route(api_key, api_version)
    body_plan = route.response
    if api_key == ApiKey.API_VERSIONS and body.get("error_code", 0) != 0:
        body_plan = _checked_route(api_key, 0).response
    parts: list = []
    route.response_header.write({"correlation_id": correlation_id}, parts)
    _write_body(body_plan, body, parts, route.response_name)
    return _finish(parts, framed)


def encode_api_versions_error(correlation_id: int,
                              error_code: int = ErrorCode.UNSUPPORTED_VERSION, *,
                              supported: dict[int, tuple[int, int]] = SUPPORTED,
                              framed: bool = True) -> list:
    """An ApiVersions error response in the v0 layout with response header v0.

    This is the answer to an ApiVersions request of a version above ours: every
    client can parse v0, and the api_keys array (our SUPPORTED table) tells it which
    version to retry with.
    """
    body = {"error_code": int(error_code), "api_keys": api_versions_array(supported)}
    return encode_response(correlation_id, ApiKey.API_VERSIONS, 0, body, framed=framed)


def encode_request(api_key: int, api_version: int, correlation_id: int,
                   client_id: str | None, body: dict, *, framed: bool = True) -> list:
    """Chunks of a request: [size prefix,] request header, body (client side)."""
    route = _checked_route(api_key, api_version)
    parts: list = []
    header = {"request_api_key": api_key, "request_api_version": api_version,
              "correlation_id": correlation_id, "client_id": client_id}
    _write_body(route.request_header, header, parts, "RequestHeader")
    _write_body(route.request, body, parts, route.request_name)
    return _finish(parts, framed)


def decode_response(api_key: int, api_version: int, buf) -> tuple[dict, dict]:
    """Decode a response to a request of (api_key, api_version) (client side).

    `buf` is the frame body. An ApiVersions response with a non-zero error code is
    decoded in the v0 layout (see encode_response).
    """
    route = _checked_route(api_key, api_version)
    mv = buf if type(buf) is memoryview else memoryview(buf)
    try:
        header, pos = route.response_header.read(mv, 0)
        body_plan = route.response
        if (api_key == ApiKey.API_VERSIONS and len(mv) >= pos + 2
                and _INT16.unpack_from(mv, pos)[0] != 0):
            body_plan = _checked_route(api_key, 0).response
        body, pos = body_plan.read(mv, pos)
        if pos != len(mv):
            raise DecodeError(f"{len(mv) - pos} bytes left over after the response body",
                              pos)
    except DecodeError as e:
        if not e.context:
            e.context = route.response_name
        raise
    return header, body


def _checked_route(api_key: int, api_version: int) -> _Route:
    route = _ROUTES.get((api_key, api_version)) or _route(api_key, api_version)
    if route is None:
        message = APIS.get(api_key)
        if message is None:
            raise EncodeError(f"unknown api key {api_key}")
        raise EncodeError(f"{message.name} v{api_version} is outside the supported "
                          f"range {message.valid_versions.text}")
    return route


def _write_body(body_plan: codec.Plan, value: dict, parts: list, context: str) -> None:
    try:
        body_plan.write(value, parts)
    except EncodeError as e:
        if not e.context:
            e.context = context
        raise


def _finish(parts: list, framed: bool) -> list:
    chunks = codec.merge_chunks(parts)
    return frame_chunks(chunks) if framed else chunks
