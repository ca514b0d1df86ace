"""Request frames of real Kafka clients, recorded as test data (the fuzz tests' seeds).

RecordingProxy sits on loopback between clients and a broker: one listening port per
worker port, each forwarding to its worker. It saves the body of every request frame a
client sends (the bytes after the 4-byte size prefix), labelled with the client that
is talking. Clients learn the workers' addresses from Metadata and FindCoordinator
answers, so the proxy rewrites the ports in those two answers to its own (decoded and
re-encoded with pybroker.protocol); every other byte passes unchanged.

capture_clients(proxy, broker_bootstrap) drives confluent-kafka, kafka-python and kcat
through the requests they make in ordinary use; save_frames/load_frames read and
write the JSON file the tests keep (tests/data/frames/clients.json):
    [{"client": "...", "api_key": 0, "api_version": 7, "hex": "<frame body>"}, ...]

Regenerate it with
    PYBROKER_WRITE_FRAMES=1 python -m pytest -m slow \
        tests/server/test_fuzz_broker.py::test_capture_client_frames
"""
from __future__ import annotations

import json
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pybroker.protocol import APIS, ApiKey, decode_request, decode_response, encode_response

__all__ = ["Frame", "RecordingProxy", "capture_clients", "select_frames", "save_frames",
           "load_frames", "Mutator", "FRAMES_PER_KIND"]

_SIZE = struct.Struct(">i")
_PREFIX = struct.Struct(">hhi")         # api_key, api_version, correlation_id
_REWRITTEN = (ApiKey.METADATA, ApiKey.FIND_COORDINATOR)
FRAMES_PER_KIND = 3   # kept per (client, api key, version): seeds, not a traffic dump
CLIENT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Frame:
    client: str
    api_key: int
    api_version: int
    body: bytes


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket) -> bytes | None:
    prefix = _recv_exact(sock, 4)
    if prefix is None:
        return None
    return _recv_exact(sock, _SIZE.unpack(prefix)[0])


class RecordingProxy:
    """Loopback proxy in front of a broker's worker ports; records request frames.

    `label` names the client whose frames arrive now (set it before running one).
    Not a general proxy: one thread per direction per connection, for tests only.
    """

    def __init__(self, broker_ports: list[int], host: str = "127.0.0.1"):
        self.host = host
        self.frames: list[Frame] = []
        self.label = "unlabelled"
        self._lock = threading.Lock()
        self._listeners: list[socket.socket] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        self.port_map: dict[int, int] = {}    # broker port -> proxy port
        for port in broker_ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
            sock.listen(64)
            self._listeners.append(sock)
            self.port_map[port] = sock.getsockname()[1]
            threading.Thread(target=self._accept, args=(sock, port), daemon=True).start()

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{p}" for p in self.port_map.values())

    def close(self) -> None:
        self._closed = True
        for sock in self._listeners + self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def __enter__(self) -> "RecordingProxy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _accept(self, listener: socket.socket, target: int) -> None:
        while not self._closed:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection((self.host, target), timeout=10)
            except OSError:
                return
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            pending: dict[int, tuple[int, int]] = {}
            threading.Thread(target=self._requests, args=(client, upstream, pending),
                             daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, pending),
                             daemon=True).start()

    def _requests(self, client, upstream, pending) -> None:
        try:
            while (body := _recv_frame(client)) is not None:
                if len(body) >= _PREFIX.size:
                    key, version, cid = _PREFIX.unpack_from(body)
                    with self._lock:
                        pending[cid] = (key, version)
                        self.frames.append(Frame(self.label, key, version, body))
                upstream.sendall(_SIZE.pack(len(body)) + body)
        except OSError:
            pass
        finally:
            _shut(upstream)

    def _responses(self, upstream, client, pending) -> None:
        try:
            while (body := _recv_frame(upstream)) is not None:
                (cid,) = _SIZE.unpack_from(body)
                with self._lock:
                    key, version = pending.pop(cid, (None, None))
                if key in _REWRITTEN:
                    client.sendall(self._rewrite(key, version, cid, body))
                else:
                    client.sendall(_SIZE.pack(len(body)) + body)
        except OSError:
            pass
        finally:
            _shut(client)

    def _rewrite(self, key: int, version: int, cid: int, body: bytes) -> bytes:
        """The answer with every broker port replaced by the proxy's port for it."""
        _, decoded = decode_response(key, version, body)
        for node in decoded.get("brokers") or []:
            node["port"] = self.port_map.get(node["port"], node["port"])
        if "port" in decoded:
            decoded["port"] = self.port_map.get(decoded["port"], decoded["port"])
        return b"".join(bytes(c) for c in encode_response(cid, key, version, decoded))


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# --- the clients --------------------------------------------------------------------

def capture_clients(proxy: RecordingProxy, prefix: str = "cap") -> None:
    """Run each client through its ordinary requests via the proxy."""
    for label, run in (("confluent", _confluent), ("kafka-python", _kafka_python),
                       ("kcat", _kcat)):
        proxy.label = label
        run(proxy.bootstrap, f"{prefix}-{label}")


def _confluent(bootstrap: str, topic: str) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                       ConfigResource, NewTopic)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for name in (topic, topic + "-gone"):
        admin.create_topics([NewTopic(name, 2, 1, config={"retention.ms": "3600000"})],
                            operation_timeout=10)[name].result(CLIENT_TIMEOUT_S)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin.describe_configs([res])[res].result(CLIENT_TIMEOUT_S)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "7200000",
                    incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(CLIENT_TIMEOUT_S)
    admin.delete_topics([topic + "-gone"], operation_timeout=10)[topic + "-gone"].result(
        CLIENT_TIMEOUT_S)
    for settings in ({"enable.idempotence": True, "compression.type": "lz4"},
                     {"acks": 1, "compression.type": "gzip"},
                     {"acks": 1, "compression.type": "snappy"},
                     {"acks": "all", "compression.type": "zstd"},
                     {"acks": 0, "compression.type": "none"}):
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **settings})
        for i in range(5):
            producer.produce(topic, key=b"k%d" % i, value=b"value %d %r" % (i, settings),
                             partition=i % 2)
        assert producer.flush(CLIENT_TIMEOUT_S) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic + "-group",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    consumer.subscribe([topic])
    seen, deadline = 0, time.monotonic() + CLIENT_TIMEOUT_S
    while seen < 5 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            seen += 1
    consumer.commit(asynchronous=False)
    consumer.committed([TopicPartition(topic, 0)], timeout=10)
    consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.offsets_for_times([TopicPartition(topic, 0, int(time.time() * 1000) - 60_000)],
                               timeout=10)
    consumer.close()


def _kafka_python(bootstrap: str, topic: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
    servers = bootstrap.split(",")
    admin = KafkaAdminClient(bootstrap_servers=servers)
    admin.create_topics([NewTopic(topic, 2, 1), NewTopic(topic + "-gone", 1, 1)],
                        timeout_ms=10_000)
    admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    admin.delete_topics([topic + "-gone"], timeout_ms=10_000)
    admin.close()
    for settings in ({"compression_type": "gzip", "acks": "all"},
                     {"enable_idempotence": True},
                     {"acks": 1}):
        producer = KafkaProducer(bootstrap_servers=servers, linger_ms=5, **settings)
        for i in range(5):
            producer.send(topic, key=b"k%d" % i, value=b"kp %d" % i, partition=i % 2)
        producer.flush(CLIENT_TIMEOUT_S)
        producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=servers, group_id=topic + "-group",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=10_000)
    seen = 0
    for _ in consumer:
        seen += 1
        if seen >= 5:
            break
    consumer.commit()
    consumer.close()


def _kcat(bootstrap: str, topic: str) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        raise RuntimeError("kcat is not installed (Debian: apt-get install -y kcat)")
    def run(*args, stdin=b""):
        subprocess.run([kcat, "-b", bootstrap, *args], input=stdin, check=True,
                       capture_output=True, timeout=CLIENT_TIMEOUT_S)
    run("-L")
    run("-P", "-t", topic, stdin=b"line one\nline two\n")
    run("-C", "-t", topic, "-o", "beginning", "-c", "2", "-e", "-q")


# --- the file -------------------------------------------------------------------------

def _produce_shape(body: bytes) -> tuple:
    """(compression codec, idempotent, acks) of a Produce frame's first batch, so each
    producer setting keeps seeds of its own; () if it does not decode."""
    try:
        _, request = decode_request(body)
        records = request["topic_data"][0]["partition_data"][0]["records"]
        attributes = struct.unpack_from(">h", records, 21)[0]
        producer_id = struct.unpack_from(">q", records, 43)[0]
    except (ValueError, IndexError, TypeError, struct.error):
        return ()
    return attributes & 0x7, producer_id != -1, request["acks"]


def select_frames(frames: list[Frame], per_kind: int = FRAMES_PER_KIND) -> list[Frame]:
    """At most per_kind frames of each (client, api key, version), the first seen;
    Produce frames are told apart by compression, idempotence and acks as well."""
    kept, counts = [], {}
    for f in frames:
        kind = (f.client, f.api_key, f.api_version)
        if f.api_key == ApiKey.PRODUCE:
            kind += _produce_shape(f.body)
        if counts.get(kind, 0) < per_kind:
            counts[kind] = counts.get(kind, 0) + 1
            kept.append(f)
    return kept


def save_frames(frames: list[Frame], path: Path) -> None:
    rows = [{"client": f.client, "api_key": f.api_key, "api_version": f.api_version,
             "hex": f.body.hex()} for f in frames]
    Path(path).write_text(json.dumps(rows, indent=0) + "\n")


def load_frames(path: Path) -> list[Frame]:
    return [Frame(r["client"], r["api_key"], r["api_version"], bytes.fromhex(r["hex"]))
            for r in json.loads(Path(path).read_text())]


# --- mutation -------------------------------------------------------------------------

_BOUNDARY_INT32 = (-1, 0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF,
                   -0x80000000, 0x10000, 1 << 24)
_BOUNDARY_INT16 = (-1, 0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, -0x8000)
_BOUNDARY_VARINT = (b"\x00", b"\x01", b"\x7f", b"\xff\x7f", b"\xff\xff\xff\xff\x07",
                    b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x80\x01",
                    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
_SPECIAL_BYTES = (0x00, 0xFF, 0x7F, 0x80)


class Mutator:
    """Seeded mutations of request frame bodies; the same seed gives the same mutants.

    Each mutant is a seed with 1-3 of: bit flips; a byte set to 0x00/0xff/0x7f/0x80;
    truncation; extension (zeros, 0xff or random bytes); an int16/int32 that looks like
    a length or count (its value fits in the bytes after it) set to a boundary (-1, 0,
    0x7fff, 2^31-1, ...); a boundary varint written over bytes (compact lengths in
    flexible versions, record fields); a region duplicated elsewhere; the api key or
    version replaced (another API's body under this header); a splice of two seeds.
    """

    def __init__(self, seeds: list[bytes], seed: int):
        self.seeds = [bytes(s) for s in seeds if len(s) >= 8]
        self.rng = random.Random(seed)
        self._lengths = [self._length_fields(s) for s in self.seeds]
        self._api_keys = sorted(APIS)
        self._ops = (self._flip, self._special, self._truncate, self._extend,
                     self._length, self._length, self._varint, self._duplicate,
                     self._api_swap, self._splice)

    @staticmethod
    def _length_fields(body: bytes) -> list[tuple[int, int]]:
        """(position, width) of int16/int32 values that could be lengths or counts."""
        found = []
        for pos in range(8, len(body) - 1):
            left = len(body) - pos
            if 0 <= struct.unpack_from(">h", body, pos)[0] <= left - 2:
                found.append((pos, 2))
            if pos + 4 <= len(body) and 0 < struct.unpack_from(">i", body, pos)[0] <= left - 4:
                found.append((pos, 4))
        return found

    def mutant(self) -> bytes:
        i = self.rng.randrange(len(self.seeds))
        buf = bytearray(self.seeds[i])
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3))):
            op = self.rng.choice(self._ops)
            buf = op(buf, i)
        return bytes(buf)

    def _pos(self, buf) -> int:
        return self.rng.randrange(len(buf)) if buf else 0

    def _flip(self, buf, _i):
        for _ in range(self.rng.randint(1, 8)):
            if buf:
                buf[self._pos(buf)] ^= 1 << self.rng.randrange(8)
        return buf

    def _special(self, buf, _i):
        if buf:
            buf[self._pos(buf)] = self.rng.choice(_SPECIAL_BYTES)
        return buf

    def _truncate(self, buf, _i):
        return buf[:self.rng.randrange(len(buf) + 1)]

    def _extend(self, buf, _i):
        n = self.rng.choice((1, 2, 4, 8, 64, 1024))
        fill = self.rng.choice((b"\x00", b"\xff", None))
        return buf + (fill * n if fill else self.rng.randbytes(n))

    def _length(self, buf, i):
        fields = [f for f in self._lengths[i] if f[0] + f[1] <= len(buf)]
        if not fields:
            return self._special(buf, i)
        pos, width = self.rng.choice(fields)
        if width == 2:
            struct.pack_into(">h", buf, pos, self.rng.choice(_BOUNDARY_INT16))
        else:
            struct.pack_into(">i", buf, pos, self.rng.choice(_BOUNDARY_INT32))
        return buf

    def _varint(self, buf, _i):
        v = self.rng.choice(_BOUNDARY_VARINT)
        pos = self.rng.randrange(8, max(9, len(buf)))
        return buf[:pos] + v + buf[pos + self.rng.choice((0, len(v))):]

    def _duplicate(self, buf, _i):
        if len(buf) < 2:
            return buf
        a = self._pos(buf)
        b = min(len(buf), a + self.rng.choice((1, 2, 4, 8, 32, 256)))
        at = self._pos(buf)
        return buf[:at] + buf[a:b] + buf[at:]

    def _api_swap(self, buf, _i):
        if len(buf) < 4:
            return buf
        if self.rng.random() < 0.5:
            struct.pack_into(">h", buf, 0, self.rng.choice(self._api_keys))
        versions = APIS[struct.unpack_from(">h", buf, 0)[0]].valid_versions \
            if struct.unpack_from(">h", buf, 0)[0] in APIS else None
        if versions is not None and self.rng.random() < 0.8:
            low, high = versions.low, versions.high
            struct.pack_into(">h", buf, 2, self.rng.randint(max(0, low - 1), high + 1))
        else:
            struct.pack_into(">h", buf, 2, self.rng.choice(_BOUNDARY_INT16))
        return buf

    def _splice(self, buf, _i):
        other = self.rng.choice(self.seeds)
        return buf[:self._pos(buf)] + other[self.rng.randrange(len(other)):]
