"""Size framing: every request and response is an int32 big-endian size, then that
many bytes.

The size is checked against the frame limit before any of the body is read, so a
hostile or corrupt prefix (negative, or gigabytes) costs neither memory nor a wait;
the caller logs the FrameSizeError and closes the connection.
"""

from __future__ import annotations

import struct as _struct

from .codec import chunks_length
from .errors import FrameSizeError

SIZE_PREFIX_BYTES = 4
# Kafka's socket.request.max.bytes default (100 MiB); the server passes its own limit.
DEFAULT_MAX_FRAME_BYTES = 100 * 1024 * 1024
_SIZE = _struct.Struct(">i")


def parse_frame_size(prefix, max_size: int = DEFAULT_MAX_FRAME_BYTES) -> int:
    """The body size announced by a 4-byte prefix; FrameSizeError unless
    0 <= size <= max_size. `prefix` must hold at least 4 bytes."""
    if len(prefix) < SIZE_PREFIX_BYTES:
        raise ValueError(f"a frame size prefix needs {SIZE_PREFIX_BYTES} bytes, "
                         f"got {len(prefix)}")
    (size,) = _SIZE.unpack_from(prefix, 0)
    if size < 0 or size > max_size:
        raise FrameSizeError(size, max_size)
    return size


def size_prefix(size: int) -> bytes:
    return _SIZE.pack(size)


_MERGE_LIMIT = 4096  # below this, copying the first chunk is cheaper than one more send


def frame_chunks(chunks: list) -> list:
    """Prepend the size prefix to chunks (bytes-like or file references with
    `.length`); the prefix is merged into a small bytes first chunk."""
    prefix = _SIZE.pack(chunks_length(chunks))
    if chunks and type(chunks[0]) is bytes and len(chunks[0]) <= _MERGE_LIMIT:
        return [prefix + chunks[0], *chunks[1:]]
    return [prefix, *chunks]


def frame(payload: bytes) -> bytes:
    """A single framed message from bytes."""
    return _SIZE.pack(len(payload)) + payload
