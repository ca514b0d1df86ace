"""A small blocking Kafka protocol connection, and the cluster view a client needs.

`BrokerConnection` is one TCP connection to one node: `send()` writes a request and
returns its correlation id, `receive()` reads the next response (responses come back in
request order, so a caller may pipeline several requests), `request()` does both.
Not thread-safe: one owner thread per connection (the producer's sender, the consumer's
fetcher); a caller that shares one must hold its own lock.

`Cluster` bootstraps from "host:port[,host:port...]" with Metadata, keeps the node
addresses and each topic's partition leaders, and hands out one connection per node.

Versions used (all inside the broker's advertised ranges, see protocol/apis.py):
Metadata v4 (allow_auto_topic_creation), Produce v7, Fetch v4, ListOffsets v1.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time

from pybroker.errors import PyBrokerError
from pybroker.protocol import ApiKey, ErrorCode, decode_response, encode_request

log = logging.getLogger("pybroker.client")

__all__ = ["BufferRef", "KafkaError", "ConnectionFailed", "UnknownTopicError", "BrokerConnection",
           "Cluster", "parse_bootstrap", "METADATA_VERSION", "PRODUCE_VERSION",
           "FETCH_VERSION", "LIST_OFFSETS_VERSION", "RETRIABLE"]

METADATA_VERSION = 4
PRODUCE_VERSION = 7
FETCH_VERSION = 4
LIST_OFFSETS_VERSION = 1

MAX_FRAME = 256 * 1024 * 1024   # bytes; a larger size prefix means a broken stream
_SIZE = struct.Struct(">i")
_CORRELATION = struct.Struct(">i")

# Errors after which the same request may succeed once metadata is refreshed.
RETRIABLE = frozenset({
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.LEADER_NOT_AVAILABLE,
    ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.REQUEST_TIMED_OUT,
    ErrorCode.NETWORK_EXCEPTION, ErrorCode.NOT_ENOUGH_REPLICAS,
    ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND, ErrorCode.KAFKA_STORAGE_ERROR,
    ErrorCode.BROKER_NOT_AVAILABLE, ErrorCode.REPLICA_NOT_AVAILABLE,
})


class KafkaError(PyBrokerError):
    """An error code from the broker (`code`, `name`), or a client-side failure
    (code -1 with a message)."""

    def __init__(self, code: int, message: str = ""):
        self.code = int(code)
        try:
            self.name = ErrorCode(self.code).name
        except ValueError:
            self.name = f"ERROR_{self.code}"
        super().__init__(f"{self.name} ({self.code})" + (f": {message}" if message else ""))

    @property
    def retriable(self) -> bool:
        return self.code in RETRIABLE


class ConnectionFailed(KafkaError, ConnectionError):
    """The connection to a node failed or closed (retriable)."""

    def __init__(self, message: str):
        super().__init__(ErrorCode.NETWORK_EXCEPTION, message)


class UnknownTopicError(KafkaError, LookupError):
    """The topic does not exist and the broker did not create it."""

    def __init__(self, topic: str, code: int = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION):
        super().__init__(code, f"topic {topic!r} does not exist (auto-creation off or "
                               f"the name is invalid)")
        self.topic = topic


class BufferRef:
    """A large bytes-like payload (a produce request's records) handed to the codec by
    reference: the codec keeps any object with an integer `length` that is not
    bytes-like as a part of its own instead of joining it into the request bytes
    (protocol/types.py as_chunk), and BrokerConnection.send writes `data` straight
    from our buffer with sendmsg. Saves copying every produced byte twice."""

    __slots__ = ("data", "length")

    def __init__(self, data):
        self.data = data
        self.length = len(data)


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """"h1:p1,h2:p2" -> [(h1, p1), (h2, p2)]; ValueError for a malformed entry."""
    out = []
    for item in bootstrap.split(","):
        item = item.strip()
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"bootstrap entry {item!r} is not host:port")
        out.append((host, int(port)))
    if not out:
        raise ValueError("empty bootstrap list")
    return out


class BrokerConnection:
    """One blocking connection to (host, port). See the module docstring."""

    def __init__(self, host: str, port: int, client_id: str = "pybroker-client",
                 timeout: float = 30.0, node_id: int = -1):
        self.host, self.port, self.node_id = host, port, node_id
        self.client_id = client_id
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._next_cid = 1
        self._buf = bytearray()

    def __repr__(self) -> str:
        return f"BrokerConnection(node={self.node_id}, {self.host}:{self.port})"

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def sock(self) -> socket.socket | None:
        """The socket (for select()), None while not connected."""
        return self._sock

    def connect(self) -> None:
        if self._sock is not None:
            return
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise ConnectionFailed(f"connect to node {self.node_id} at {self.host}:"
                                   f"{self.port} failed: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._buf.clear()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def send(self, api_key: int, version: int, body: dict) -> int:
        """Write one request; returns its correlation id."""
        self.connect()
        cid = self._next_cid
        self._next_cid = (cid + 1) & 0x7FFFFFFF or 1
        chunks = encode_request(api_key, version, cid, self.client_id, body)
        try:
            self._send_chunks(chunks)
        except OSError as exc:
            self.close()
            raise ConnectionFailed(f"send to {self.host}:{self.port} failed: {exc}") from exc
        return cid

    def _send_chunks(self, chunks: list) -> None:
        """Write chunks with one sendmsg (no joining copy); finish a partial write."""
        chunks = [c.data if type(c) is BufferRef else c for c in chunks]
        if len(chunks) == 1:
            self._sock.sendall(chunks[0])
            return
        sent = self._sock.sendmsg(chunks)
        for chunk in chunks:
            n = len(chunk)
            if sent >= n:
                sent -= n
                continue
            self._sock.sendall(memoryview(chunk)[sent:])
            sent = 0

    def receive(self, api_key: int, version: int, correlation_id: int,
                timeout: float | None = None) -> dict:
        """Read the next response, check it answers `correlation_id`, return its body."""
        frame = self._read_frame(timeout)
        (cid,) = _CORRELATION.unpack_from(frame, 0)
        if cid != correlation_id:
            self.close()
            raise ConnectionFailed(f"response correlation id {cid} from {self.host}:"
                                   f"{self.port}, expected {correlation_id}")
        return decode_response(api_key, version, frame)[1]

    def request(self, api_key: int, version: int, body: dict,
                timeout: float | None = None) -> dict:
        return self.receive(api_key, version, self.send(api_key, version, body), timeout)

    def _read_frame(self, timeout: float | None) -> memoryview:
        if self._sock is None:
            raise ConnectionFailed(f"not connected to {self.host}:{self.port}")
        self._sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            head = self._read_exact(4)
            (size,) = _SIZE.unpack(head)
            if size < 4 or size > MAX_FRAME:
                raise ConnectionFailed(f"frame size {size} from {self.host}:{self.port} "
                                       f"outside 4..{MAX_FRAME}")
            return memoryview(self._read_exact(size))
        except (OSError, ConnectionFailed) as exc:
            self.close()
            if isinstance(exc, ConnectionFailed):
                raise
            raise ConnectionFailed(f"read from {self.host}:{self.port} failed: "
                                   f"{exc!r}") from exc

    def _read_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self._sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ConnectionFailed(f"{self.host}:{self.port} closed the connection "
                                       f"after {got} of {n} bytes")
            got += k
        return buf


class Cluster:
    """Node addresses and partition leaders learnt from Metadata; one connection per
    node. Methods are thread-safe (one lock); connections handed out are not."""

    def __init__(self, bootstrap: str, client_id: str = "pybroker-client",
                 timeout: float = 30.0, allow_auto_create: bool = True):
        self.bootstrap = parse_bootstrap(bootstrap)
        self.client_id = client_id
        self.timeout = timeout
        self.allow_auto_create = allow_auto_create
        self.nodes: dict[int, tuple[str, int]] = {}
        self.leaders: dict[str, dict[int, int]] = {}   # topic -> {partition: node}
        self._lock = threading.RLock()
        self._meta_conn: BrokerConnection | None = None

    def connection(self, node_id: int) -> BrokerConnection:
        """A new (unconnected) connection to node_id; KafkaError if unknown."""
        with self._lock:
            addr = self.nodes.get(node_id)
        if addr is None:
            raise KafkaError(ErrorCode.BROKER_NOT_AVAILABLE, f"node {node_id} unknown")
        return BrokerConnection(addr[0], addr[1], self.client_id, self.timeout, node_id)

    def partitions(self, topic: str) -> dict[int, int] | None:
        with self._lock:
            return self.leaders.get(topic)

    def leader(self, topic: str, partition: int) -> int | None:
        with self._lock:
            return self.leaders.get(topic, {}).get(partition)

    def _metadata_request(self, topics: list[str] | None) -> dict:
        body = {"topics": None if topics is None else [{"name": t} for t in topics],
                "allow_auto_topic_creation": self.allow_auto_create}
        errors = []
        candidates = []
        if self._meta_conn is not None:
            candidates.append(self._meta_conn)
        candidates += [BrokerConnection(h, p, self.client_id, self.timeout)
                       for h, p in list(self.nodes.values()) + self.bootstrap]
        for conn in candidates:
            try:
                response = conn.request(ApiKey.METADATA, METADATA_VERSION, body)
                if conn is not self._meta_conn:
                    if self._meta_conn is not None:
                        self._meta_conn.close()
                    self._meta_conn = conn
                return response
            except KafkaError as exc:
                conn.close()
                if conn is self._meta_conn:
                    self._meta_conn = None
                errors.append(str(exc))
        raise ConnectionFailed(f"no broker answered Metadata: {'; '.join(errors)}")

    def refresh(self, topics: list[str] | None = None) -> dict[str, int]:
        """Refresh node addresses and the leaders of `topics` (None: all topics).
        Returns {topic: error code} for requested topics that came back with an error."""
        with self._lock:
            response = self._metadata_request(topics)
            self.nodes = {b["node_id"]: (b["host"], b["port"]) for b in response["brokers"]}
            errors = {}
            for t in response["topics"]:
                if t["error_code"] != 0 or not t["partitions"]:
                    errors[t["name"]] = t["error_code"] or ErrorCode.LEADER_NOT_AVAILABLE
                    continue
                self.leaders[t["name"]] = {p["partition_index"]: p["leader_id"]
                                           for p in t["partitions"]}
            return errors

    def ensure_topic(self, topic: str, timeout: float | None = None) -> dict[int, int]:
        """The leaders of `topic`, fetching metadata (and so auto-creating the topic if
        the broker allows) until it has leaders. UnknownTopicError if the broker says
        the topic does not exist or its name is invalid."""
        leaders = self.partitions(topic)
        if leaders:
            return leaders
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            code = self.refresh([topic]).get(topic)
            leaders = self.partitions(topic)
            if leaders and all(n >= 0 for n in leaders.values()):
                return leaders
            # pybroker answers an auto-created topic only once it exists, so "unknown"
            # means it will not be created (auto-creation off, or an invalid name).
            if code in (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                        ErrorCode.INVALID_TOPIC_EXCEPTION):
                raise UnknownTopicError(topic, code)
            if time.monotonic() > deadline:
                raise KafkaError(code or ErrorCode.LEADER_NOT_AVAILABLE,
                                 f"topic {topic!r} has no leaders after metadata retries")
            time.sleep(0.05)

    def list_offsets(self, timestamps: dict) -> dict:
        """ListOffsets for {(topic, partition): timestamp} (-2 earliest, -1 latest, or
        ms), one request per partition leader: {(topic, partition): (error code,
        offset)}. Leaders not known yet are looked up first."""
        unknown = sorted({t for t, p in timestamps if self.leader(t, p) is None})
        if unknown:
            self.refresh(unknown)
        by_node: dict[int, dict] = {}
        found = {}
        for (topic, partition), ts in timestamps.items():
            node = self.leader(topic, partition)
            if node is None or node < 0:
                found[(topic, partition)] = (ErrorCode.LEADER_NOT_AVAILABLE, -1)
            else:
                by_node.setdefault(node, {}).setdefault(topic, []).append(
                    {"partition_index": partition, "timestamp": ts})
        for node, topics in by_node.items():
            conn = self.connection(node)
            try:
                answer = conn.request(ApiKey.LIST_OFFSETS, LIST_OFFSETS_VERSION, {
                    "replica_id": -1, "isolation_level": 0,
                    "topics": [{"name": t, "partitions": ps} for t, ps in topics.items()]})
            finally:
                conn.close()
            for t in answer["topics"]:
                for p in t["partitions"]:
                    found[(t["name"], p["partition_index"])] = (p["error_code"], p["offset"])
        return found

    def close(self) -> None:
        with self._lock:
            if self._meta_conn is not None:
                self._meta_conn.close()
                self._meta_conn = None
