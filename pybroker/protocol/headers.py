"""Request and response headers, and which header version goes with which request.

Request header (spec RequestHeader.json, versions 0-2, flexible 2+):
  v0  request_api_key int16, request_api_version int16, correlation_id int32
  v1  + client_id: nullable string with an int16 length
  v2  + tagged fields; client_id stays a classic int16-length string (the spec's
      field-level flexibleVersions "none"), so that any broker can read the header
      of an ApiVersions request of any version.
Response header (ResponseHeader.json, versions 0-1, flexible 1+):
  v0  correlation_id int32
  v1  + tagged fields

Header version rule: a flexible body version takes request header v2 / response
header v1, otherwise v1 / v0. Exceptions: ApiVersions responses always use response
header v0 (a client that does not yet know our versions must be able to parse it),
and request header v0 exists only for ControlledShutdown v0 (which we do not serve).
"""

from __future__ import annotations

import struct as _struct

from . import codec
from .apis import APIS, ApiKey
from .errors import DecodeError, ProtocolError
from .schema import Field, Struct, Versions

REQUEST_HEADER = Struct(
    "RequestHeader",
    Field("request_api_key", "int16", "0+"),
    Field("request_api_version", "int16", "0+"),
    Field("correlation_id", "int32", "0+"),
    Field("client_id", "string", "1+", nullable_versions="1+", flexible_versions="none"),
)
REQUEST_HEADER_FLEXIBLE = Versions("2+")

RESPONSE_HEADER = Struct(
    "ResponseHeader",
    Field("correlation_id", "int32", "0+"),
)
RESPONSE_HEADER_FLEXIBLE = Versions("1+")

CONTROLLED_SHUTDOWN_KEY = 7  # the only user of request header v0
REQUEST_PREFIX_SIZE = 8      # api_key, api_version, correlation_id: in every version
_PREFIX = _struct.Struct(">hhi")


def request_header_version(api_key: int, api_version: int) -> int:
    """Request header version for a request of (api_key, api_version) we implement."""
    if api_key == CONTROLLED_SHUTDOWN_KEY and api_version == 0:
        return 0
    message = APIS.get(api_key)
    if message is None:
        raise ProtocolError(f"no header rule for unknown api key {api_key}")
    return 2 if message.is_flexible(api_version) else 1


def response_header_version(api_key: int, api_version: int) -> int:
    """Response header version for a response of (api_key, api_version)."""
    if api_key == ApiKey.API_VERSIONS:
        return 0
    message = APIS.get(api_key)
    if message is None:
        raise ProtocolError(f"no header rule for unknown api key {api_key}")
    return 1 if message.is_flexible(api_version) else 0


def peek_request_prefix(buf) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id) from the first 8 bytes of a request.

    These three fields have the same place in every header version, so they can be
    read before knowing which header version applies.
    """
    if len(buf) < REQUEST_PREFIX_SIZE:
        raise DecodeError(f"request of {len(buf)} bytes is shorter than the "
                          f"{REQUEST_PREFIX_SIZE}-byte header prefix", 0)
    return _PREFIX.unpack_from(buf, 0)


def decode_request_header(buf, version: int) -> tuple[dict, int]:
    """Decode a request header of `version` at the start of `buf`: (header, end)."""
    return codec.decode(REQUEST_HEADER, version, buf, 0,
                        flexible=version in REQUEST_HEADER_FLEXIBLE)


def encode_request_header(header: dict, version: int) -> bytes:
    return codec.encode(REQUEST_HEADER, version, header,
                        flexible=version in REQUEST_HEADER_FLEXIBLE)


def decode_response_header(buf, version: int) -> tuple[dict, int]:
    return codec.decode(RESPONSE_HEADER, version, buf, 0,
                        flexible=version in RESPONSE_HEADER_FLEXIBLE)


def encode_response_header(correlation_id: int, version: int) -> bytes:
    return codec.encode(RESPONSE_HEADER, version, {"correlation_id": correlation_id},
                        flexible=version in RESPONSE_HEADER_FLEXIBLE)
