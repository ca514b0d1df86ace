"""Prometheus text exposition of the control block, served by the supervisor.

Everything comes from the shared-memory block (the workers publish into it every
heartbeat), so a scrape never waits on a worker. Served on `metrics.port` with a tiny
non-blocking HTTP/1.0 responder polled from the supervisor's own loop: no thread, so
forking a replacement worker stays safe.
"""
from __future__ import annotations

import socket
import time

from pybroker.protocol import ApiKey
from pybroker.server.controlblock import STATES, ControlBlock
from pybroker.server.stats import LATENCY_BUCKETS

API_NAMES = {v: k.title().replace("_", "") for k, v in vars(ApiKey).items()
             if k.isupper() and isinstance(v, int)}
MAX_REQUEST_BYTES = 8192


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
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    out: list[str] = []

    def family(name, kind, help_text):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    workers = [block.read_worker(i) for i in range(block.workers)]
    for name, field, kind, text in (
            ("pybroker_worker_up", "state", "gauge", "1 when the worker is serving"),
            ("pybroker_worker_restarts_total", "restarts", "counter", "worker restarts"),
            ("pybroker_open_connections", "connections", "gauge", "open client connections"),
            ("pybroker_requests_total", "requests", "counter", "requests read"),
            ("pybroker_node_messages_in_total", "messages_in", "counter", "messages appended"),
            ("pybroker_node_bytes_in_total", "bytes_in", "counter", "record bytes appended"),
            ("pybroker_node_bytes_out_total", "bytes_out", "counter", "record bytes sent"),
            ("pybroker_flushes_total", "flushes", "counter", "fdatasyncs (group commits)")):
        family(name, kind, text)
        for w in workers:
            value = int(STATES.get(w["state"]) == "serving") if field == "state" else w[field]
            out.append(f"{name}{_labels(node=w['node_id'])} {value}")
    family("pybroker_heartbeat_age_seconds", "gauge", "time since the worker's last heartbeat")
    for w in workers:
        age = (now_ms - w["heartbeat_ms"]) / 1000 if w["heartbeat_ms"] else -1
        out.append(f"pybroker_heartbeat_age_seconds{_labels(node=w['node_id'])} {age:.3f}")

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
    for name, field, kind, text in (
            ("pybroker_log_start_offset", "log_start", "gauge", "first retained offset"),
            ("pybroker_log_end_offset", "log_end", "gauge", "next offset to assign"),
            ("pybroker_high_watermark", "high_watermark", "gauge", "one past the last flushed offset"),
            ("pybroker_partition_messages_in_total", "messages_in", "counter", "messages appended"),
            ("pybroker_partition_bytes_in_total", "bytes_in", "counter", "record bytes appended"),
            ("pybroker_partition_bytes_out_total", "bytes_out", "counter", "record bytes fetched"),
            ("pybroker_partition_flushes_total", "flushes", "counter", "fdatasyncs")):
        family(name, kind, text)
        for r in partitions:
            out.append(f"{name}{_labels(node=r.node_id, topic=r.topic, partition=r.partition)} "
                       f"{getattr(r, field)}")
    return "\n".join(out) + "\n"


class MetricsServer:
    """Answers GET /metrics; polled by the supervisor (`poll(timeout)`)."""

    def __init__(self, host: str, port: int, block: ControlBlock):
        self.block = block
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle_one(self) -> None:
        conn, _ = self.sock.accept()
        try:
            conn.settimeout(2.0)
            request = conn.recv(MAX_REQUEST_BYTES).decode("latin-1")
            path = request.split(" ")[1] if request.count(" ") >= 2 else ""
            if request.startswith("GET ") and path.split("?")[0] in ("/metrics", "/"):
                body, status = render(self.block).encode(), "200 OK"
            else:
                body, status = b"not found: try GET /metrics\n", "404 Not Found"
            conn.sendall(f"HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()
