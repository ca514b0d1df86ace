"""The Kafka wire protocol: schemas as data, one generic codec, framing.

What the server uses:
    parse_frame_size(prefix, max_size)                -> body size, or FrameSizeError
    decode_request(frame_body)                        -> (header, body) dicts
    encode_response(correlation_id, api_key, api_version, body) -> chunks (framed)
    encode_api_versions_error(correlation_id)         -> chunks (framed)
    SUPPORTED, api_versions_array(), ApiKey, ErrorCode

Modules: types (primitives), schema (declaration vocabulary), codec (the generic
encoder/decoder), headers, frame, messages/ (one module per API family), apis (the
table of implemented APIs), requests (header + body), errors.
"""

from .apis import APIS, SUPPORTED, ApiKey, api_versions_array
from .errors import (DecodeError, EncodeError, ErrorCode, FrameSizeError, ProtocolError,
                     UnknownApiKey, UnsupportedRequest, UnsupportedVersion)
from .frame import frame_chunks, parse_frame_size
from .requests import (decode_request, decode_response, encode_api_versions_error,
                       encode_request, encode_response)

__all__ = [
    "APIS", "SUPPORTED", "ApiKey", "api_versions_array",
    "DecodeError", "EncodeError", "ErrorCode", "FrameSizeError", "ProtocolError",
    "UnknownApiKey", "UnsupportedRequest", "UnsupportedVersion",
    "frame_chunks", "parse_frame_size",
    "decode_request", "decode_response", "encode_api_versions_error", "encode_request",
    "encode_response",
]
