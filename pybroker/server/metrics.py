"""Prometheus text exposition of the control block, served by the supervisor.

Everything comes from the shared-memory block (the workers publish into it every
heartbeat), so a scrape never waits on a worker. Served on `metrics.port` by a
non-blocking HTTP/1.0 responder (MetricsServer) that the supervisor polls from its own
loop: no thread, so forking a replacement worker stays safe (a thread holding a lock
at fork time would leave the child deadlocked on it).
"""
from __future__ import annotations

import selectors
import socket
import time

from pybroker.protocol import ApiKey
from pybroker.server.controlblock import STATES, ControlBlock, monotonic_ms
from pybroker.server.partition_state import PartitionState
from pybroker.server.stats import LATENCY_BUCKETS

API_NAMES = {v: k.title().replace("_", "") for k, v in vars(ApiKey).items()
             if k.isupper() and isinstance(v, int)}
MAX_REQUEST_BYTES = 8192    # a GET with headers; more is not a scrape
CONNECTION_DEADLINE_S = 2.0  # from accept to the last byte sent; then it is dropped
MAX_CONNECTIONS = 64        # open scrape connections; more wait in the listen backlog
ACCEPTS_PER_WAKE = 16       # so a connection flood cannot starve the open ones
SEND_CHUNK = 256 * 1024


def _labels(**labels) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _histogram(out: list, name: str, row: tuple, **labels) -> None:
    count, sum_us, *buckets = row
    running = 0
    for bound, n in zip((*LATENCY_BUCKETS, "+Inf"), buckets):
        running += n
        out.append(f"{name}_bucket{_labels(**labels, le=bound)} {running}")
    out.append(f"{name}_sum{_labels(**labels)} {sum_us / 1e6:.6f}")
    out.append(f"{name}_count{_labels(**labels)} {count}")


def render(block: ControlBlock, now_ms: float | None = None) -> str:
    """The exposition text; now_ms is monotonic ms (controlblock.monotonic_ms)."""
    now_ms = monotonic_ms() if now_ms is None else now_ms
    out: list[str] = []

    def family(name, kind, help_text):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    workers = [block.read_worker(i) for i in range(block.workers)]
    for name, field, kind, text in (
            ("pybroker_worker_up", "state", "gauge",
             "1 when the worker last forked for the node is serving"),
            ("pybroker_worker_restarts_total", "restarts", "counter", "worker restarts"),
            ("pybroker_open_connections", "connections", "gauge", "open client connections"),
            ("pybroker_requests_total", "requests", "counter", "requests read"),
            ("pybroker_node_messages_in_total", "messages_in", "counter", "messages appended"),
            ("pybroker_node_bytes_in_total", "bytes_in", "counter", "record bytes appended"),
            ("pybroker_node_bytes_out_total", "bytes_out", "counter", "record bytes sent"),
            ("pybroker_flushes_total", "flushes", "counter", "fdatasyncs (group commits)"),
            ("pybroker_opening_partitions", "opening", "gauge",
             "partitions being opened (recovery, producer-state replay)"),
            ("pybroker_offline_partitions", "offline", "gauge",
             "partitions offline (failed open or sync, damaged data)"),
            ("pybroker_isr_shrinks_total", "isr_shrinks", "counter",
             "ISR shrinks written by the node as leader"),
            ("pybroker_isr_expands_total", "isr_expands", "counter",
             "ISR expansions written by the node as leader")):
        family(name, kind, text)
        for w in workers:
            value = w[field]
            if field == "state":  # a row left by a dead predecessor is not up
                value = int(STATES.get(w["state"]) == "serving" and
                            w["forked_pid"] in (w["pid"], 0))
            out.append(f"{name}{_labels(node=w['node_id'])} {value}")
    for name, field, text in (
            ("pybroker_heartbeat_age_seconds", "heartbeat_ms",
             "time since the worker's last heartbeat (absent before the first)"),
            ("pybroker_loop_lag_seconds", "loop_ms",
             "time since the worker's event loop last recorded progress")):
        family(name, "gauge", text)
        for w in workers:
            if w[field]:
                out.append(f"{name}{_labels(node=w['node_id'])} "
                           f"{(now_ms - w[field]) / 1000:.3f}")

    family("pybroker_request_latency_seconds", "histogram",
           "time from reading a request to its response being ready, by API")
    fsyncs = []
    for i, w in enumerate(workers):
        by_api, fsync = block.read_histograms(i)
        fsyncs.append((w["node_id"], fsync))
        for api_key, row in sorted(by_api.items()):
            _histogram(out, "pybroker_request_latency_seconds", row, node=w["node_id"],
                       api=API_NAMES.get(api_key, str(api_key)))
    family("pybroker_fsync_latency_seconds", "histogram", "fdatasync latency of flushes")
    for node, row in fsyncs:
        _histogram(out, "pybroker_fsync_latency_seconds", row, node=node)

    partitions = block.partitions()
    # one series per state, 1 for the current one (the Prometheus enum convention), so
    # `pybroker_partition_state{state="offline"} == 1` selects the offline partitions
    family("pybroker_partition_state", "gauge",
           "1 for the partition's current life-cycle state, 0 for the others")
    for r in partitions:
        for state in PartitionState:
            out.append(f"pybroker_partition_state"
                       f"{_labels(node=r.node_id, topic=r.topic, partition=r.partition, state=state.label)}"
                       f" {int(r.state == state)}")
    family("pybroker_under_replicated_partitions", "gauge",
           "partitions the node leads whose ISR is smaller than their replica set")
    for w in workers:
        count = sum(1 for r in partitions if r.node_id == w["node_id"] and r.leader
                    and r.isr < r.replicas)
        out.append(f"pybroker_under_replicated_partitions{_labels(node=w['node_id'])} {count}")
    for name, field, kind, text in (
            ("pybroker_partition_leader", "leader", "gauge",
             "1 if the node leads the partition, 0 if it follows"),
            ("pybroker_partition_replicas", "replicas", "gauge", "replicas assigned"),
            ("pybroker_partition_isr", "isr", "gauge", "in-sync replicas"),
            ("pybroker_replica_lag_messages", "replica_lag", "gauge",
             "leader: its log end minus the slowest in-sync follower; follower: the "
             "leader's high watermark minus its log end"),
            ("pybroker_log_start_offset", "log_start", "gauge", "first retained offset"),
            ("pybroker_log_end_offset", "log_end", "gauge", "next offset to assign"),
            ("pybroker_high_watermark", "high_watermark", "gauge",
             "one past the last offset durable on every in-sync replica"),
            ("pybroker_partition_messages_in_total", "messages_in", "counter", "messages appended"),
            ("pybroker_partition_bytes_in_total", "bytes_in", "counter", "record bytes appended"),
            ("pybroker_partition_bytes_out_total", "bytes_out", "counter", "record bytes fetched"),
            ("pybroker_partition_flushes_total", "flushes", "counter", "fdatasyncs"),
            ("pybroker_partition_appends_total", "appends", "counter",
             "appends to the log (a coalesced run of produce requests is one)")):
        family(name, kind, text)
        for r in partitions:
            out.append(f"{name}{_labels(node=r.node_id, topic=r.topic, partition=r.partition)} "
                       f"{getattr(r, field)}")
    return "\n".join(out) + "\n"


def respond(block: ControlBlock, request: bytes) -> bytes:
    """The whole HTTP/1.0 response to one request's head."""
    line = request.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] in ("/metrics", "/"):
        body, status = render(block).encode(), "200 OK"
    else:
        body, status = b"not found: try GET /metrics\n", "404 Not Found"
    return (f"HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


class _Scrape:
    """One client connection: its request bytes until the blank line, then the
    response bytes still to send; dropped at `deadline` (monotonic s) whatever its
    state."""

    __slots__ = ("sock", "deadline", "inbox", "outbox", "sent")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.deadline = deadline
        self.inbox = bytearray()
        self.outbox = b""
        self.sent = 0


class MetricsServer:
    """Answers GET /metrics on any number of connections at once, each served as far as
    its bytes allow and never waited on.

    poll(seconds) runs the responder for `seconds` and returns: call it in place of a
    sleep. Nothing blocks: sockets are non-blocking, each connection has its own
    buffers and a CONNECTION_DEADLINE_S from its accept, after which it is closed
    however far it got; at MAX_CONNECTIONS open the listener is not read until one
    ends (the rest wait in the kernel's backlog). A PollSelector, not epoll: no
    selector fd for the workers the supervisor forks to inherit. Connections are shut
    down (not just closed) when done, because a worker forked meanwhile holds a copy of
    the fd and a close alone would not end the TCP connection."""

    def __init__(self, host: str, port: int, block: ControlBlock):
        self.block = block
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self._selector = selectors.PollSelector()
        self._selector.register(self.sock, selectors.EVENT_READ, None)
        self._listening = True
        self._scrapes: dict[int, _Scrape] = {}   # fd -> connection
        self.served = 0                          # responses sent in full
        self.dropped = 0                         # connections closed at their deadline

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def open_connections(self) -> int:
        return len(self._scrapes)

    def poll(self, seconds: float) -> None:
        """Serve connections for `seconds` (monotonic), then return."""
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            self._expire(now)
            left = deadline - now
            if left <= 0:
                return
            wake = min([left, *(s.deadline - now for s in self._scrapes.values())])
            for key, events in self._selector.select(max(wake, 0)):
                if key.data is None:
                    self._accept()
                else:
                    self._serve(key.data, events)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            if len(self._scrapes) >= MAX_CONNECTIONS:
                self._selector.unregister(self.sock)
                self._listening = False
                return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE, ECONNABORTED: try again on the next wake
                return
            conn.setblocking(False)
            scrape = _Scrape(conn, time.monotonic() + CONNECTION_DEADLINE_S)
            self._scrapes[conn.fileno()] = scrape
            self._selector.register(conn, selectors.EVENT_READ, scrape)

    def _serve(self, scrape: _Scrape, events: int) -> None:
        try:
            if events & selectors.EVENT_READ and not scrape.outbox:
                data = scrape.sock.recv(MAX_REQUEST_BYTES)
                if not data:  # the client gave up before its request was whole
                    self._finish(scrape)
                    return
                scrape.inbox += data
                if b"\r\n\r\n" in scrape.inbox or b"\n\n" in scrape.inbox or \
                        len(scrape.inbox) >= MAX_REQUEST_BYTES:
                    scrape.outbox = respond(self.block, bytes(scrape.inbox))
                    self._selector.modify(scrape.sock, selectors.EVENT_WRITE, scrape)
                    self._send(scrape)  # the socket buffer usually takes it at once
            elif events & selectors.EVENT_WRITE:
                self._send(scrape)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset by the client: nothing to answer
            self._finish(scrape)

    def _send(self, scrape: _Scrape) -> None:
        while scrape.sent < len(scrape.outbox):
            n = scrape.sock.send(memoryview(scrape.outbox)[scrape.sent:scrape.sent + SEND_CHUNK])
            if n == 0:
                return
            scrape.sent += n
        self.served += 1
        self._finish(scrape)

    def _expire(self, now: float) -> None:
        for scrape in [s for s in self._scrapes.values() if s.deadline <= now]:
            self.dropped += 1
            self._finish(scrape)

    def _finish(self, scrape: _Scrape) -> None:
        self._scrapes.pop(scrape.sock.fileno(), None)
        try:
            self._selector.unregister(scrape.sock)
        except (KeyError, ValueError):
            pass
        try:
            scrape.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        scrape.sock.close()
        if not self._listening and len(self._scrapes) < MAX_CONNECTIONS:
            self._selector.register(self.sock, selectors.EVENT_READ, None)
            self._listening = True

    def close(self) -> None:
        for scrape in list(self._scrapes.values()):
            self._finish(scrape)
        self._selector.close()
        self.sock.close()
