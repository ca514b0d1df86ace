"""One client connection: frames in, responses out in request order.

Reading: bytes are taken as they come; each complete frame is decoded and handed to
its handler at once, so pipelined requests are processed back to back. Plain produce
appends of such a run are written together at its end (handlers/append_batch.py)
and their answers encoded then. The frame size
is checked against socket.request.max.bytes from its 4-byte prefix, before any of the
body is buffered. Writing: every request that expects a response gets a slot in a
queue in request order; a handler answers at once or later (a fetch long-poll, an
acks=all produce), and a slot is sent only when every slot before it has been, so a
waiting fetch holds back the responses behind it (Kafka's ordering rule). Record data
leaves through sendfile (P10) straight from the segment file. A connection that runs
too far ahead of its responses stops being read until they drain (back-pressure), so
one fast client cannot starve the others or grow the worker's memory.

Every way a connection ends has a name (CloseReason) and exactly one log line.
Owned by the worker's event loop; not thread-safe.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import socket
from collections import deque
from functools import partial
from time import monotonic, perf_counter

from pybroker import core
from pybroker.errors import CoreError
from pybroker.protocol import (ApiKey, DecodeError, FrameSizeError, UnknownApiKey,
                               UnsupportedVersion, decode_request, encode_api_versions_error,
                               encode_response, parse_frame_size)
from pybroker.server.handlers.append_batch import AnswerAfterRun

log = logging.getLogger("pybroker.server")

RECV_BYTES = 256 * 1024       # per recv(); large produce frames arrive in a few reads
MAX_QUEUED_RESPONSES = 512    # requests read ahead of their responses before reading stops
MAX_BUFFERED_OUT = 64 << 20   # bytes of responses waiting for the socket before reading stops
SENDMSG_CHUNKS = 64           # bytes chunks gathered into one sendmsg()
END_GRACE_S = 10.0            # after a bad frame, the answers before it get this long


class CloseReason(enum.Enum):
    PEER_CLOSED = "peer closed the connection"
    RESET = "connection error"
    FRAME_TOO_LARGE = "frame size out of range"
    MALFORMED = "malformed request"
    UNKNOWN_API = "unknown api key"
    UNSUPPORTED_VERSION = "unsupported api version"
    HANDLER_ERROR = "internal error in a request handler"
    FILE_TRUNCATED = "segment file shorter than a fetch response announced"
    SHUTDOWN = "broker shutting down"
    IDLE = "idle longer than connections.max.idle.ms"
    TOO_MANY_CONNECTIONS = "max.connections reached"
    TOO_MANY_FROM_IP = "max.connections.per.ip reached for this address"


class _Slot:
    """A response position in the queue; chunks is None until the handler answers."""

    __slots__ = ("chunks",)

    def __init__(self, chunks=None):
        self.chunks = chunks


class RequestContext:
    """What a handler sees of the request besides its body."""

    __slots__ = ("worker", "connection", "api_version", "client_id")

    def __init__(self, worker, connection, api_version: int, client_id):
        self.worker = worker
        self.connection = connection
        self.api_version = api_version
        self.client_id = client_id


class Connection:
    def __init__(self, worker, sock: socket.socket, peer):
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop = worker.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.ip = peer[0] if isinstance(peer, tuple) else str(peer)
        self.last_active = monotonic()  # a read, or a response sent (idle timeout)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.max_frame = worker.config["socket.request.max.bytes"]
        self._inbuf = bytearray()
        self._slots: deque[_Slot] = deque()
        self._out: deque = deque()      # chunks ready for the socket
        self._out_bytes = 0
        self._file_progress = 0         # bytes of _out[0] already sent, when it is a file
        self._reading = False
        self._writing = False
        self._dispatching = False       # inside a run of frames: send once, after it
        self._late: list = []           # produce answers waiting for the run's appends
        self._pump_soon = False         # a _pump is scheduled for deferred answers
        self._draining = False          # shutting down: read no more requests
        self._ending = None             # (reason, detail): close once the answers are out
        self._awaited: set = set()      # handler Futures whose answers this connection owes
        self._end_timer = None
        self.closed = False
        self.requests = 0
        self._resume_reading()

    # --- reading ---------------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self._reading and not self.closed:
            self.loop.add_reader(self.fd, self._on_readable)
            self._reading = True

    def _pause_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.fd)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(CloseReason.RESET, str(exc))
            return
        if not data:
            self.close(CloseReason.PEER_CLOSED)
            return
        self.last_active = monotonic()
        self._inbuf += data
        self._take_frames()

    def _take_frames(self) -> None:
        buf = self._inbuf
        view = memoryview(buf)
        pos, end = 0, len(buf)
        try:
            self._dispatching = True
            while end - pos >= 4 and not self.closed and self._ending is None:
                size = parse_frame_size(view[pos:pos + 4], self.max_frame)
                if end - pos - 4 < size:
                    break
                body = view[pos + 4:pos + 4 + size]
                pos += 4 + size
                self._dispatch(body)
            if self._ending is not None:
                self._inbuf = bytearray()  # nothing after a bad frame is read
            elif pos:
                # the run's pending appends keep views of frames in buf until
                # _finish_run: start a new buffer rather than resize this one
                self._inbuf = bytearray(view[pos:])
        except FrameSizeError as exc:
            self._end_after_answers(CloseReason.FRAME_TOO_LARGE, str(exc))
            self._inbuf = bytearray()
        finally:
            view.release()
            try:
                self._finish_run()
            finally:
                self._dispatching = False
        self._pump()  # one send for all the responses of this run of pipelined frames
        if (len(self._slots) >= MAX_QUEUED_RESPONSES or
                self._out_bytes >= MAX_BUFFERED_OUT):
            self._pause_reading()

    def _finish_run(self) -> None:
        """Write the run's pending produce appends, then answer the produce requests that
        waited for their offsets (acks=all: once flushed)."""
        late, self._late = self._late, []
        try:
            self.worker.appends.apply()
        except Exception as exc:  # noqa: BLE001 - one bad run must not kill the worker
            log.exception("node=%d peer=%s produce appends failed", self.worker.node_id,
                          self.peer)
            self.close(CloseReason.HANDLER_ERROR, f"{type(exc).__name__}: {exc}")
            return
        for slot, correlation_id, version, answer, started in late:
            answer.when_ready(partial(self._answer_produce, slot, correlation_id, version,
                                      started), self.loop)

    def _answer_produce(self, slot: _Slot, correlation_id: int, version: int,
                        started: float, response: dict) -> None:
        """Never raises: a flush calls it among the waiters of other connections."""
        if self.closed:
            return
        try:
            slot.chunks = encode_response(correlation_id, ApiKey.PRODUCE, version, response)
        except Exception as exc:  # noqa: BLE001 - close this connection, not the others
            log.exception("node=%d peer=%s produce answer failed", self.worker.node_id,
                          self.peer)
            self.close(CloseReason.HANDLER_ERROR, f"{type(exc).__name__}: {exc}")
            return
        self.worker.stats.answered(ApiKey.PRODUCE, perf_counter() - started)
        if not self._dispatching:  # answered by a flush, not at the end of the run
            self._pump_soon_once()

    # --- dispatch --------------------------------------------------------------------

    def _dispatch(self, body: memoryview) -> None:
        self.requests += 1
        started = perf_counter()
        try:
            header, request = decode_request(body)
        except UnsupportedVersion as exc:
            if exc.api_key == ApiKey.API_VERSIONS:
                self._slots.append(_Slot(encode_api_versions_error(
                    exc.correlation_id, supported=self.worker.supported)))
                self._pump()
                return
            self._end_after_answers(CloseReason.UNSUPPORTED_VERSION, str(exc))
            return
        except UnknownApiKey as exc:
            self._end_after_answers(CloseReason.UNKNOWN_API, str(exc))
            return
        except DecodeError as exc:
            self._end_after_answers(CloseReason.MALFORMED, str(exc))
            return
        api_key = header["request_api_key"]
        version = header["request_api_version"]
        correlation_id = header["correlation_id"]
        handler = self.worker.handlers.get(api_key)
        if handler is None:  # defensive: every API the codec declares is served today
            self._end_after_answers(CloseReason.UNKNOWN_API, f"api {api_key} v{version} is not implemented "
                       "by this broker (see ApiVersions)")
            return
        if api_key != ApiKey.PRODUCE and self.worker.appends:
            self.worker.appends.apply()  # whatever this request reads includes them
        ctx = RequestContext(self.worker, self, version, header.get("client_id"))
        self.worker.stats.requests += 1
        try:
            result = handler(ctx, request)
        except DecodeError as exc:  # bytes inside the request a handler parses (a protocol error)
            self._end_after_answers(CloseReason.MALFORMED, f"api={api_key} v{version}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - one bad request must not kill the worker
            log.exception("node=%d peer=%s api=%d v%d handler failed", self.worker.node_id,
                          self.peer, api_key, version)
            self.close(CloseReason.HANDLER_ERROR, f"{type(exc).__name__}: {exc}")
            return
        if result is None:
            return  # acks=0 produce: no response at all
        if type(result) is AnswerAfterRun:
            slot = _Slot()
            self._slots.append(slot)
            self._late.append((slot, correlation_id, version, result, started))
            return
        if isinstance(result, asyncio.Future):
            slot = _Slot()
            self._slots.append(slot)
            self._awaited.add(result)
            result.add_done_callback(
                lambda fut: self._complete(slot, fut, correlation_id, api_key, version, started))
            return
        self._slots.append(_Slot(encode_response(correlation_id, api_key, version, result)))
        self.worker.stats.answered(api_key, perf_counter() - started)
        self._pump()

    def _complete(self, slot: _Slot, fut: asyncio.Future, correlation_id: int, api_key: int,
                  version: int, started: float) -> None:
        self._awaited.discard(fut)
        if self.closed or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("node=%d peer=%s api=%d v%d deferred handler failed: %r",
                      self.worker.node_id, self.peer, api_key, version, exc)
            self.close(CloseReason.HANDLER_ERROR, repr(exc))
            return
        try:
            slot.chunks = encode_response(correlation_id, api_key, version, fut.result())
        except Exception as exc:  # noqa: BLE001 - a stuck slot would block every answer after it
            log.exception("node=%d peer=%s api=%d v%d answer failed", self.worker.node_id,
                          self.peer, api_key, version)
            self.close(CloseReason.HANDLER_ERROR, f"{type(exc).__name__}: {exc}")
            return
        self.worker.stats.answered(api_key, perf_counter() - started)
        self._pump_soon_once()

    def _pump_soon_once(self) -> None:
        """Send soon: a flush completes many waiting answers at once, one send for all."""
        if not self._pump_soon:
            self._pump_soon = True
            self.loop.call_soon(self._pump_now)

    def _pump_now(self) -> None:
        self._pump_soon = False
        if not self.closed:
            self._pump()

    # --- writing ---------------------------------------------------------------------

    def _pump(self) -> None:
        """Move answered slots, in order, to the output and send what the socket takes."""
        slots = self._slots
        while slots and slots[0].chunks is not None:
            for chunk in slots.popleft().chunks:
                self._out.append(chunk)
                self._out_bytes += chunk.length if hasattr(chunk, "fd") else len(chunk)
        if not self._dispatching and not self.closed:
            self._send()

    def _send(self) -> None:
        out = self._out
        try:
            while out:
                if hasattr(out[0], "fd"):
                    if not self._send_file(out[0]):
                        break
                    out.popleft()
                    continue
                if not self._send_bytes():
                    break
        except CoreError as exc:
            self.close(CloseReason.FILE_TRUNCATED if core.is_code(exc, "TRUNCATED")
                       else CloseReason.RESET, str(exc))
            return
        except OSError as exc:
            self.close(CloseReason.RESET, str(exc))
            return
        if out:
            if not self._writing:
                self.loop.add_writer(self.fd, self._send)
                self._writing = True
            return
        self.last_active = monotonic()
        if self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False
        if self._ending is not None and not self._slots:
            self.close(*self._ending)
            return
        if (not self._reading and not self._draining and
                len(self._slots) < MAX_QUEUED_RESPONSES // 2):
            self._resume_reading()
            if self._inbuf:
                self._take_frames()

    def _send_bytes(self) -> bool:
        """sendmsg a run of bytes chunks; False if the socket is full."""
        out = self._out
        batch = []
        for chunk in out:
            if hasattr(chunk, "fd") or len(batch) == SENDMSG_CHUNKS:
                break
            batch.append(chunk)
        try:
            sent = self.sock.sendmsg(batch)
        except (BlockingIOError, InterruptedError):
            return False
        self._out_bytes -= sent
        while sent:
            head = out[0]
            if len(head) <= sent:
                sent -= len(head)
                out.popleft()
            else:
                out[0] = memoryview(head)[sent:]
                return False
        return True

    def _send_file(self, piece) -> bool:
        """sendfile a FileSlice from where it stopped; False if the socket is full."""
        done = self._file_progress
        sent, complete = core.sendfile(self.fd, piece.fd, piece.position + done,
                                       piece.length - done)
        self._file_progress = 0 if complete else done + sent
        self._out_bytes -= sent
        self.worker.stats.bytes_out += sent
        return complete

    # --- closing ---------------------------------------------------------------------

    def _end_after_answers(self, reason: CloseReason, detail: str) -> None:
        """A frame that cannot be served: read nothing more, send the answers of the
        requests before it (they took effect: a produce was appended), then close with
        `reason`; at the latest END_GRACE_S from now."""
        if self.closed or self._ending is not None:
            return
        self._ending = (reason, detail)
        self.stop_reading()
        self._end_timer = self.loop.call_later(
            END_GRACE_S, lambda: self.close(reason, f"{detail}; earlier answers not sent in "
                                                    f"{END_GRACE_S:.0f} s"))

    def stop_reading(self) -> None:
        """Take no new requests (shutdown); what was read is still answered."""
        self._pause_reading()
        self._draining = True

    def busy(self) -> bool:
        """Responses still owed or unsent."""
        return bool(self._slots or self._out)

    def idle_since(self) -> float | None:
        """Monotonic time of the last read or send when nothing is owed or unsent (a
        long-polling fetch is not idle: the client waits for it); None when busy."""
        return None if self._slots or self._out else self.last_active

    def close(self, reason: CloseReason, detail: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self._pause_reading()
        if self._end_timer is not None:
            self._end_timer.cancel()
        if self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False
        level = logging.DEBUG if reason in (CloseReason.PEER_CLOSED, CloseReason.SHUTDOWN) \
            else logging.WARNING
        log.log(level, "node=%d peer=%s connection closed: %s%s", self.worker.node_id,
                self.peer, reason.value, f" ({detail})" if detail else "")
        self._slots.clear()
        self._out.clear()
        self._inbuf = bytearray()
        awaited, self._awaited = self._awaited, set()
        for fut in awaited:  # nobody reads their answers: handlers stop waiting to give them
            fut.cancel()
        try:
            self.sock.close()
        finally:
            self.worker.connection_closed(self)
