"""A worker's asyncio connection to another node (a follower's fetches from its leader).

One request at a time: the replica fetcher waits for each answer before it sends the
next, so correlation ids only guard against a confused peer. Every wait has a
deadline; any failure closes the connection and raises PeerError, and the caller
reconnects (it may have to go to another node by then).
"""
from __future__ import annotations

import asyncio
import struct

from pybroker.protocol import decode_response, encode_request
from pybroker.protocol.errors import DecodeError

_SIZE = struct.Struct(">i")
MAX_FRAME = 256 << 20   # a fetch answer is bounded by what the fetcher asked for


class PeerError(ConnectionError):
    """The peer connection failed (refused, closed, timed out, or a bad frame)."""


class PeerConnection:
    def __init__(self, host: str, port: int, client_id: str):
        self.host, self.port = host, port
        self.client_id = client_id
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._correlation_id = 0

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self, timeout: float) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=MAX_FRAME), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise PeerError(f"connect to {self.host}:{self.port} failed: {exc!r}") from None

    async def request(self, api_key: int, version: int, body: dict, timeout: float) -> dict:
        """Send one request; the decoded body of its response."""
        if not self.connected:
            await self.connect(timeout)
        self._correlation_id = cid = (self._correlation_id + 1) & 0x7FFFFFFF
        try:
            for chunk in encode_request(api_key, version, cid, self.client_id, body):
                self._writer.write(chunk)
            await asyncio.wait_for(self._exchange_drain(), timeout)
            size = _SIZE.unpack(await asyncio.wait_for(self._reader.readexactly(4), timeout))[0]
            if not 0 < size <= MAX_FRAME:
                raise PeerError(f"{self.host}:{self.port} sent a frame of {size} bytes")
            frame = await asyncio.wait_for(self._reader.readexactly(size), timeout)
            header, response = decode_response(api_key, version, frame)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, DecodeError) as exc:
            self.close()
            raise PeerError(f"request to {self.host}:{self.port} failed: {exc!r}") from None
        except PeerError:
            self.close()
            raise
        if header["correlation_id"] != cid:
            self.close()
            raise PeerError(f"{self.host}:{self.port} answered correlation id "
                            f"{header['correlation_id']}, expected {cid}")
        return response

    async def _exchange_drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
