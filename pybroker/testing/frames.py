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

Their mutations, for the fuzz tests: pybroker.testing.mutate.
"""
from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pybroker.protocol import ApiKey, decode_request, decode_response, encode_response

__all__ = ["Frame", "RecordingProxy", "capture_clients", "select_frames", "save_frames",
           "load_frames", "FRAMES_PER_KIND", "SEED_TOPICS"]

_SIZE = struct.Struct(">i")
_PREFIX = struct.Struct(">hhi")         # api_key, api_version, correlation_id
_REWRITTEN = (ApiKey.METADATA, ApiKey.FIND_COORDINATOR)
FRAMES_PER_KIND = 3   # kept per (client, api key, version): seeds, not a traffic dump
# The topics the recorded frames name ({name: partitions}): capture_clients(prefix="cap")
# creates the first two; kcat's produce auto-creates the third. A fuzz run creates them
# first, so mutants of those frames reach real partitions.
SEED_TOPICS = {"cap-confluent": 2, "cap-kafka-python": 2, "cap-kcat": 1}
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
