"""pybroker's Producer: partitioning (P13), batching by size and linger, acks 0/1/all,
retries without reordering, a delivery result per message.

    producer = Producer("127.0.0.1:9092", acks="all")
    result = producer.send("events", b"payload", key=b"user-1")
    producer.flush()
    result.result()   # -> offset, or raises the delivery error

Threads and ownership
    send() (any thread) encodes the record straight into the open RecordBatch v2 of its
    partition, under one lock. One background sender thread owns every broker
    connection: it takes the ready batches (full, older than linger_ms, or being
    flushed) of partitions with no request in flight, groups them by the partition's
    leader, writes one Produce request per node, and sleeps in select() on its
    connections (and a wake-up socket) until an answer or a new batch arrives. Requests
    for different partitions pipeline on a connection; answers come back in order.

Timestamps: a record sent without timestamp_ms carries the time its batch was opened
(CreateTime); a batch is sealed at most linger_ms after it opens, so that is at most
linger_ms early, and it saves reading the clock per message.

Ordering (P21): at most one request per partition is in flight, and a batch that
fails with a retriable error (or whose connection fails) goes back to the head of its
partition's queue, so a retry never lets a later batch overtake it. The producer is
not idempotent: a retry after a lost answer may store a batch twice (at-least-once,
like Kafka's producer without enable.idempotence).

acks: 0 = no answer (offsets unknown: -1), 1 = after the leader's append, "all"/-1 =
after the broker's flush (pybroker's high watermark = last flushed offset, P5).
"""
from __future__ import annotations

import collections
import itertools
import logging
import random
import select
import socket
import struct
import threading
import time
import zlib

from pybroker import core
from pybroker.protocol import ApiKey, ErrorCode
from pybroker.records import write_varint

from .connection import PRODUCE_VERSION, BufferRef, Cluster, KafkaError
from .partitioner import Partitioner

log = logging.getLogger("pybroker.client.producer")

__all__ = ["Producer", "DeliveryResult", "ProducerClosed"]

_HEADER = struct.Struct(">qiiBIhiqqqhii")   # RecordBatch v2 header, 61 bytes
_CRC = struct.Struct(">I")
_CRC_FROM = 21            # CRC-32C covers attributes .. end of batch
_GZIP = 1                 # attributes & 7
MAX_BATCHES_PER_REQUEST = 8  # batches of one partition in one request (one records blob)
_ACKS = {0: 0, 1: 1, -1: -1, "all": -1, "0": 0, "1": 1, "-1": -1}


def _varint(n: int) -> bytes:
    out = bytearray()
    write_varint(out, n)
    return bytes(out)


# zigzag varints of 0..VARINT_CACHE-1, the lengths and deltas of nearly every record
VARINT_CACHE = 1 << 16
_V = [_varint(n) for n in range(VARINT_CACHE)]
_NULL = _varint(-1)
_NULL_VALUE = _NULL + b"\x00"
# attributes 0, timestamp delta 0, offset delta i: the start of record i of a batch
# whose records carry the batch's timestamp
_HEADS = [b"\0\0" + v for v in _V]
_KEYLESS_HEADS = [h + _NULL for h in _HEADS]   # ... followed by a null key


def _timed_head(batch, index: int, ts: int) -> bytes:
    """attributes | tsDelta | offsetDelta for a record with its own timestamp."""
    delta = ts - batch.base_ts
    if ts > batch.max_ts:
        batch.max_ts = ts
    return b"".join((b"\0", _V[delta] if 0 <= delta < VARINT_CACHE else _varint(delta),
                     _V[index] if index < VARINT_CACHE else _varint(index)))


class ProducerClosed(KafkaError):
    def __init__(self, message: str = "producer is closed"):
        super().__init__(-1, message)


class _Batch:
    """An open (then sealed, then sent) batch of one partition. Owned by the producer's
    lock while open; by the sender thread once sealed."""

    __slots__ = ("topic", "partition", "buf", "count", "base_ts", "max_ts", "created",
                 "attempts", "retry_at", "base_offset", "error", "done", "callbacks",
                 "event", "wire")

    def __init__(self, topic: str, partition: int, now: float, ts: int):
        self.topic, self.partition = topic, partition
        self.buf = bytearray(_HEADER.size)   # header (filled in by encode) + records
        self.count = 0
        self.base_ts = self.max_ts = ts
        self.created = now           # monotonic seconds
        self.attempts = 0
        self.retry_at = 0.0
        self.base_offset = -1
        self.error: BaseException | None = None
        self.done = False
        self.callbacks: list | None = None
        self.event: threading.Event | None = None
        self.wire: bytearray | None = None   # the encoded batch, once sealed

    def encode(self, compression: int) -> bytearray:
        """The whole RecordBatch v2 of a sealed batch: the header is written in place in
        front of the records (no copy) unless they are compressed. Encoded once; two
        threads encoding at once write identical bytes."""
        if self.wire is not None:
            return self.wire
        out = self.buf
        if compression == _GZIP:
            co = zlib.compressobj(6, zlib.DEFLATED, 31)   # wbits 31: gzip container
            out = bytearray(_HEADER.size)
            out += co.compress(memoryview(self.buf)[_HEADER.size:])
            out += co.flush()
        _HEADER.pack_into(out, 0, 0, len(out) - 12, -1, 2, 0, compression, self.count - 1,
                          self.base_ts, self.max_ts, -1, -1, -1, self.count)
        _CRC.pack_into(out, 17, core.crc32c(memoryview(out)[_CRC_FROM:]))
        self.wire = out
        return out


class _Topic:
    """A topic's partition count and open batches (guarded by the producer's lock;
    `counter` is the keyless round-robin, atomic on its own)."""

    __slots__ = ("name", "count", "counter", "open", "sticky")

    def __init__(self, name: str, count: int):
        self.name, self.count = name, count
        self.counter = itertools.count(random.randrange(1 << 16))
        self.sticky = random.randrange(count)     # keyless="sticky": current partition
        self.open: list[_Batch | None] = [None] * count


class DeliveryResult:
    """The future-like outcome of one send(): `done()`, `result(timeout)` -> offset (or
    raises the error), `exception(timeout)`, `add_done_callback(fn)` (fn(result) runs
    on the sender thread, or at once if already done), and `topic`, `partition`,
    `offset` (-1 until acknowledged, and always -1 with acks=0), `error`."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: _Batch, index: int):
        self._batch, self._index = batch, index

    @property
    def topic(self) -> str:
        return self._batch.topic

    @property
    def partition(self) -> int:
        return self._batch.partition

    @property
    def offset(self) -> int:
        b = self._batch
        return b.base_offset + self._index if b.base_offset >= 0 else -1

    @property
    def error(self) -> BaseException | None:
        return self._batch.error

    def done(self) -> bool:
        return self._batch.done

    def _wait(self, timeout: float | None) -> None:
        b = self._batch
        if b.done:
            return
        event = b.event
        if event is None:
            with _EVENT_LOCK:
                if b.event is None:
                    b.event = threading.Event()
                event = b.event
            if b.done:        # completed while we were creating the event
                return
        if not event.wait(timeout):
            raise TimeoutError(f"delivery to {b.topic}-{b.partition} not done after "
                               f"{timeout}s")

    def result(self, timeout: float | None = None) -> int:
        self._wait(timeout)
        if self._batch.error is not None:
            raise self._batch.error
        return self.offset

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._batch.error

    def add_done_callback(self, fn) -> None:
        b = self._batch
        with _EVENT_LOCK:
            if not b.done:
                if b.callbacks is None:
                    b.callbacks = []
                b.callbacks.append((fn, self))
                return
        fn(self)

    def __repr__(self) -> str:
        state = ("pending" if not self.done() else
                 f"error={self.error}" if self.error else f"offset={self.offset}")
        return f"DeliveryResult({self.topic}-{self.partition}, {state})"


_EVENT_LOCK = threading.Lock()


def _complete(batch: _Batch, base_offset: int, error: BaseException | None) -> None:
    with _EVENT_LOCK:
        batch.base_offset = base_offset
        batch.error = error
        batch.done = True
        callbacks, batch.callbacks = batch.callbacks, None
        event = batch.event
    if event is not None:
        event.set()
    for fn, result in callbacks or ():
        try:
            fn(result)
        except Exception:  # noqa: BLE001 - a user callback must not kill the sender
            log.exception("delivery callback failed for %s-%d", batch.topic, batch.partition)


class Producer:
    """See the module docstring.

    bootstrap           "host:port[,host:port]" of any broker worker(s)
    acks                0, 1 or "all" (-1)
    linger_ms           how long a batch that is not full waits for more records
    batch_size          bytes of records per batch (a larger single record gets its own)
    retries             attempts after the first for a retriable error
    retry_backoff_ms    wait before a retry
    request_timeout_ms  socket timeout per request, and the broker's produce timeout
    buffer_memory       bytes of records in sealed batches not yet acknowledged above
                        which send() blocks (open batches add at most batch_size
                        per partition)
    max_block_ms        how long send() blocks for buffer space or metadata
    keyless             messages without key and partition: "round_robin" (per message),
                        "random", or "sticky" (round-robin per batch: one partition
                        until its batch is sealed, like librdkafka's and Java's default;
                        fewer, fuller batches and requests that pipeline)
    compression         None or "gzip"
    """

    def __init__(self, bootstrap: str, acks=1, linger_ms: float = 5,
                 batch_size: int = 16384, retries: int = 5, *, retry_backoff_ms: int = 100,
                 request_timeout_ms: int = 30_000, buffer_memory: int = 32 * 1024 * 1024,
                 max_block_ms: int = 60_000, keyless: str = "round_robin",
                 compression: str | None = None, client_id: str = "pybroker-producer",
                 allow_auto_create: bool = True):
        if acks not in _ACKS:
            raise ValueError(f"acks {acks!r} is not 0, 1 or 'all'")
        if compression not in (None, "none", "gzip"):
            raise ValueError(f"compression {compression!r}: only None and 'gzip' exist here")
        if batch_size < 1 or retries < 0 or linger_ms < 0:
            raise ValueError(f"batch_size {batch_size}, retries {retries}, linger_ms "
                             f"{linger_ms}: need batch_size >= 1, retries >= 0, "
                             f"linger_ms >= 0")
        self.acks = _ACKS[acks]
        self.linger = linger_ms / 1000             # seconds
        self.batch_size = batch_size                # bytes of encoded records
        self._batch_limit = batch_size + _HEADER.size  # the same, as len(batch.buf)
        self.retries = retries
        self.retry_backoff = retry_backoff_ms / 1000  # seconds
        self.request_timeout_ms = request_timeout_ms
        self.buffer_memory = buffer_memory          # bytes
        self.max_block = max_block_ms / 1000        # seconds
        self.compression = _GZIP if compression == "gzip" else 0
        self.partitioner = Partitioner(keyless)
        self._round_robin = keyless == "round_robin"
        self._sticky = keyless == "sticky"
        self._topics: dict[str, _Topic] = {}        # partitions, open batches per topic
        self.cluster = Cluster(bootstrap, client_id, request_timeout_ms / 1000 + 5,
                               allow_auto_create)
        self.cluster.refresh()

        # --- guarded by _lock ---
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)   # buffer space freed / all sent
        self._queues: dict[tuple[str, int], collections.deque] = {}  # sealed, unsent
        self._buffered = 0          # bytes of records in sealed, unacknowledged batches
        self._pending = 0           # batches not yet completed
        self._flushing = 0          # flush() calls waiting
        self._closed = False
        # --- sender thread only ---
        self._conns: dict = {}                     # node -> BrokerConnection
        self._inflight: dict[int, collections.deque] = {}  # node -> (cid, tps, sent at)
        self._busy: set = set()                    # partitions with a request in flight
        self._stale_topics: set = set()            # retried: refresh their leaders first
        # wake-ups for the sender, which sleeps in select() on its connections
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._notified = False
        self._sender = threading.Thread(target=self._run, name="pybroker-producer-sender",
                                        daemon=True)
        self._sender.start()

    # --- the caller's side -----------------------------------------------------------

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             partition: int | None = None, timestamp_ms: int | None = None) -> DeliveryResult:
        """Queue one message; returns its DeliveryResult. Raises UnknownTopicError if the
        topic does not exist and is not auto-created, ValueError for a partition that
        does not exist, ProducerClosed after close(), BufferError when the buffer stays
        full for max_block_ms."""
        if self._closed:
            raise ProducerClosed()
        t = self._topics.get(topic)
        if t is None:
            t = self._topic(topic)
        count = t.count
        if partition is None:
            if key is None and self._sticky:
                partition = t.sticky % count
            elif key is None and self._round_robin:
                partition = next(t.counter) % count
            else:
                partition = self.partitioner.partition(topic, key, count)
        elif not 0 <= partition < count:
            raise ValueError(f"partition {partition} of topic {topic!r} does not exist "
                             f"(it has {count})")
        # record = length | attributes | tsDelta | offsetDelta | key | value | headers
        if value is None:
            tail = _NULL_VALUE
        else:
            n = len(value)
            tail = b"".join((_V[n] if n < VARINT_CACHE else _varint(n), value, b"\x00"))
        if key is not None:
            n = len(key)
            tail = b"".join((_V[n] if n < VARINT_CACHE else _varint(n), key, tail))
        with self._lock:
            if self._buffered > self.buffer_memory:
                self._wait_for_space()
            batch = t.open[partition]
            if batch is None:
                batch = self._new_batch(t, partition, timestamp_ms)
            index = batch.count
            if timestamp_ms is None and key is None and index < VARINT_CACHE:
                head = _KEYLESS_HEADS[index]
            else:
                head = _HEADS[index] if index < VARINT_CACHE else b"\0\0" + _varint(index)
                if timestamp_ms is not None:
                    head = _timed_head(batch, index, timestamp_ms)
                if key is None:
                    head += _NULL
            size = len(head) + len(tail)
            buf = batch.buf
            if index and len(buf) + size + 3 > self._batch_limit:
                self._seal(t, partition, batch)
                batch = self._new_batch(t, partition, timestamp_ms)
                buf = batch.buf
                index = 0
                head = b"\0\0\0" if key is not None else b"\0\0\0\x01"
                size = len(head) + len(tail)
            buf += _V[size] if size < VARINT_CACHE else _varint(size)
            buf += head
            buf += tail
            batch.count = index + 1
            if len(buf) < self._batch_limit:
                return DeliveryResult(batch, index)
            self._seal(t, partition, batch)
        # A full batch is waiting. Encode it here (header + CRC-32C, which releases the
        # GIL) rather than on the sender, then hand the GIL over: a thread calling
        # send() in a loop otherwise keeps it for a whole switch interval (5 ms) each
        # time the sender returns from I/O or C, and batches pile up unsent.
        batch.encode(self.compression)
        time.sleep(0)
        return DeliveryResult(batch, index)

    produce = send

    def _topic(self, topic: str) -> "_Topic":
        """The state of a topic first sent to (metadata fetched, maybe auto-created)."""
        count = len(self.cluster.ensure_topic(topic, self.max_block))
        with self._lock:
            return self._topics.setdefault(topic, _Topic(topic, count))

    def _grow(self, topic: str) -> None:
        """Take in partitions added to a topic since we first saw it."""
        leaders = self.cluster.partitions(topic)
        with self._lock:
            t = self._topics.get(topic)
            if t is not None and leaders and len(leaders) > t.count:
                t.open.extend([None] * (len(leaders) - t.count))
                t.count = len(leaders)

    def _new_batch(self, t: "_Topic", partition: int, ts: int | None) -> _Batch:
        if ts is None:
            ts = int(time.time() * 1000)
        batch = _Batch(t.name, partition, time.monotonic(), ts)
        t.open[partition] = batch
        self._pending += 1
        self._notify()     # the sender must learn when this batch's linger ends
        return batch

    def _seal(self, t: "_Topic", partition: int, batch: _Batch) -> None:
        t.open[partition] = None
        if t.sticky == partition:
            t.sticky = (partition + 1) % t.count
        self._buffered += len(batch.buf) - _HEADER.size
        tp = (t.name, partition)
        queue = self._queues.get(tp)
        if queue is None:
            queue = self._queues[tp] = collections.deque()
        queue.append(batch)
        self._notify()

    def _wait_for_space(self) -> None:
        deadline = time.monotonic() + self.max_block
        self._notify()
        while self._buffered > self.buffer_memory:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BufferError(f"{self._buffered} bytes buffered (buffer_memory "
                                  f"{self.buffer_memory}) for {self.max_block}s")
            self._space.wait(left)
            if self._closed:
                raise ProducerClosed()

    def flush(self, timeout: float | None = None) -> int:
        """Send everything buffered and wait for its delivery results; returns how many
        batches are still pending (0 unless the timeout passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
            try:
                self._notify()
                while self._pending:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._space.wait(left if left is not None else 1.0)
                return self._pending
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the sender and close connections. Messages still pending
        when the timeout passes fail with ProducerClosed."""
        if self._closed:
            return
        self.flush(timeout)
        with self._lock:
            self._closed = True
            self._space.notify_all()
        self._notify()
        self._sender.join(30)
        self.cluster.close()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- the sender thread -----------------------------------------------------------

    def _notify(self) -> None:
        """Wake the sender (from any thread). One byte on the wake socket while a
        wake-up is pending, not one per call."""
        if not self._notified:
            self._notified = True
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass

    def _run(self) -> None:
        try:
            while True:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                self._notified = False
                if self._stale_topics:
                    self._refresh_stale()
                now = time.monotonic()
                with self._lock:
                    ready, wait = self._take_ready(now, self._busy)
                    closed = self._closed
                if ready:
                    try:
                        self._send_ready(ready)
                    except Exception as exc:  # noqa: BLE001 - never lose track of batches
                        log.exception("producer send failed")
                        for batches in ready.values():
                            for b in batches:
                                self._finish(b, -1, KafkaError(-1, f"send failed: {exc}"))
                    continue
                if closed and not self._inflight_count():
                    break
                self._wait_io(wait)
        finally:
            self._fail_leftovers()
            for conn in self._conns.values():
                conn.close()
            self._wake_r.close()
            self._wake_w.close()

    def _inflight_count(self) -> int:
        return sum(len(q) for q in self._inflight.values())

    def _wait_io(self, wait: float) -> None:
        """Sleep until a response arrives, a wake-up, or `wait` seconds; read the
        responses that arrived."""
        socks = {self._conns[node].sock: node for node, q in self._inflight.items()
                 if q and node in self._conns}
        readable, _, _ = select.select([self._wake_r, *socks], [], [], wait)
        for sock in readable:
            node = socks.get(sock)
            if node is not None:
                self._read_response(node)
        self._check_timeouts()

    def _check_timeouts(self) -> None:
        limit = self.request_timeout_ms / 1000 + 5
        now = time.monotonic()
        for node, queue in list(self._inflight.items()):
            if queue and now - queue[0][2] > limit:
                self._node_failed(node, KafkaError(ErrorCode.REQUEST_TIMED_OUT,
                                                   f"no answer from node {node} in "
                                                   f"{limit:.0f}s"))

    def _read_response(self, node: int) -> None:
        queue = self._inflight[node]
        cid, tps, _sent = queue[0]
        try:
            response = self._conns[node].receive(ApiKey.PRODUCE, PRODUCE_VERSION, cid)
        except KafkaError as exc:
            self._node_failed(node, exc)
            return
        queue.popleft()
        self._busy.difference_update(tps)
        self._handle_response(tps, response)

    def _take_ready(self, now: float, busy: set) -> tuple[dict, float]:
        """Pop ready batches (under _lock) of partitions without a request in flight:
        {(topic, partition): [batch, ...]}, and how long to sleep if none is ready."""
        flushing = self._flushing or self._closed
        wait = 0.1
        for t in self._topics.values():
            for partition, batch in enumerate(t.open):
                if batch is None:
                    continue
                age = now - batch.created
                if flushing or age >= self.linger:
                    self._seal(t, partition, batch)
                else:
                    wait = min(wait, self.linger - age)
        ready = {}
        for tp, queue in self._queues.items():
            if not queue or tp in busy:
                continue
            if queue[0].retry_at > now:
                wait = min(wait, queue[0].retry_at - now)
                continue
            take = [queue.popleft()]
            while queue and len(take) < MAX_BATCHES_PER_REQUEST and not queue[0].attempts:
                take.append(queue.popleft())
            ready[tp] = take
        return ready, max(wait, 0.0005)

    def _connection(self, node: int):
        conn = self._conns.get(node)
        if conn is None:
            conn = self._conns[node] = self.cluster.connection(node)
        return conn

    def _send_ready(self, ready: dict) -> None:
        """One Produce request per leader node for the ready batches; with acks, the
        request joins the node's in-flight queue and its partitions become busy."""
        by_node: dict[int, dict] = {}
        for tp, batches in ready.items():
            for b in batches:
                b.attempts += 1
            node = self.cluster.leader(*tp)
            if node is None or node < 0 or node not in self.cluster.nodes:
                self._retry_or_fail(batches, KafkaError(ErrorCode.LEADER_NOT_AVAILABLE,
                                                        f"no leader for {tp[0]}-{tp[1]}"))
                continue
            by_node.setdefault(node, {})[tp] = batches
        for node, tps in by_node.items():
            topics: dict[str, list] = {}
            for (topic, partition), batches in tps.items():
                records = batches[0].encode(self.compression) if len(batches) == 1 else \
                    b"".join([b.encode(self.compression) for b in batches])
                topics.setdefault(topic, []).append({"index": partition,
                                                     "records": BufferRef(records)})
            body = {"transactional_id": None, "acks": self.acks,
                    "timeout_ms": self.request_timeout_ms,
                    "topic_data": [{"name": t, "partition_data": parts}
                                   for t, parts in topics.items()]}
            try:
                conn = self._connection(node)
                cid = conn.send(ApiKey.PRODUCE, PRODUCE_VERSION, body)
            except KafkaError as exc:
                self._node_failed(node, exc, tps)
                continue
            if self.acks == 0:
                for batches in tps.values():
                    for b in batches:
                        self._finish(b, -1, None)
            else:
                self._inflight.setdefault(node, collections.deque()).append(
                    (cid, tps, time.monotonic()))
                self._busy.update(tps)

    def _handle_response(self, tps: dict, response: dict) -> None:
        answered = set()
        for topic in response["responses"]:
            for p in topic["partition_responses"]:
                tp = (topic["name"], p["index"])
                batches = tps.get(tp)
                if batches is None:
                    continue
                answered.add(tp)
                code = p["error_code"]
                if code == 0:
                    offset = p["base_offset"]
                    for b in batches:
                        self._finish(b, offset, None)
                        offset += b.count
                else:
                    exc = KafkaError(code, f"produce to {tp[0]}-{tp[1]}")
                    if exc.retriable:
                        self._retry_or_fail(batches, exc)
                    else:
                        for b in batches:
                            self._finish(b, -1, exc)
        for tp, batches in tps.items():
            if tp not in answered:
                self._retry_or_fail(batches, KafkaError(ErrorCode.UNKNOWN_SERVER_ERROR,
                                                        f"no answer for {tp[0]}-{tp[1]}"))

    def _node_failed(self, node: int, exc: KafkaError, unsent: dict | None = None) -> None:
        """Close the node's connection; retry every request in flight on it (oldest
        first) and `unsent`. Each partition has at most one request in flight, so
        putting batches back at the head of their queues keeps their order."""
        conn = self._conns.pop(node, None)
        if conn is not None:
            conn.close()
        requests = [tps for _cid, tps, _sent in self._inflight.pop(node, ())]
        if unsent:
            requests.append(unsent)
        log.warning("producer: node %d failed (%s); retrying %d request(s)", node, exc,
                    len(requests))
        for tps in requests:
            self._busy.difference_update(tps)
            for batches in tps.values():
                self._retry_or_fail(batches, exc)

    def _retry_or_fail(self, batches: list, exc: KafkaError) -> None:
        """Put batches back at the head of their queue (in order), or fail them once
        out of attempts. Their topic's leaders are refreshed before the next send (one
        refresh for all the partitions a failed node had in flight)."""
        retry = [b for b in batches if b.attempts <= self.retries]
        for b in batches:
            if b.attempts > self.retries:
                self._finish(b, -1, exc)
        if not retry:
            return
        self._stale_topics.add(retry[0].topic)
        tp = (retry[0].topic, retry[0].partition)
        at = time.monotonic() + self.retry_backoff
        with self._lock:
            queue = self._queues.setdefault(tp, collections.deque())
            for b in reversed(retry):
                b.retry_at = at
                queue.appendleft(b)

    def _refresh_stale(self) -> None:
        topics, self._stale_topics = sorted(self._stale_topics), set()
        try:
            self.cluster.refresh(topics)
            for topic in topics:
                self._grow(topic)
        except KafkaError as exc:
            log.warning("producer: metadata refresh failed: %s", exc)

    def _finish(self, batch: _Batch, base_offset: int, error) -> None:
        _complete(batch, base_offset, error)
        with self._lock:
            self._buffered -= len(batch.buf) - _HEADER.size
            self._pending -= 1
            self._space.notify_all()

    def _fail_leftovers(self) -> None:
        with self._lock:
            left = [b for t in self._topics.values() for b in t.open if b is not None]
            for t in self._topics.values():
                t.open = [None] * t.count
            for queue in self._queues.values():
                left.extend(queue)
                queue.clear()
        for requests in self._inflight.values():     # only if the sender itself failed
            for _cid, tps, _sent in requests:
                left.extend(b for batches in tps.values() for b in batches)
        self._inflight.clear()
        for b in left:
            if not b.done:
                self._finish(b, -1, ProducerClosed("producer closed before delivery"))
