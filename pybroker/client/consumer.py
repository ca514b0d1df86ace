"""The paper's consumer (P3, P7, P12, P14-P20): streams that pull from the brokers, a
group coordinated through ZooKeeper, offsets in the offset registry.

    consumer = Consumer(zookeeper="127.0.0.1:2181/kafka", group="G")
    streams = consumer.create_message_streams({"topic1": 1})
    for message in streams["topic1"][0]:     # blocks for new messages, never ends
        process(message.value)               # (the paper's sample code, P3)

Delivery is at-least-once (P20). A message counts as processed once its stream is
asked for the next message (or when `commit()` is called, which takes everything the
streams have returned as processed). Auto-commit (every auto_commit_interval_ms) and
the commit before a rebalance releases a partition store the processed position only;
so after a crash the next owner starts at the last committed offset and may see again
what was delivered after it, never less.

Threads
  caller        iterates the streams (one thread per stream is the intended use);
                seek/commit/close from any thread.
  rebalance     runs Algorithm 1 (rebalance.py) when a watch fires, and auto-commits.
  fetcher       one pull loop for every owned partition: a Fetch per leader node per
                round (long poll, fetch_wait_max_ms), messages into the owning
                stream's queue, at most max_queued_messages ahead of the iterator.
  kazoo         session events: a lost session drops every partition at once (no
                commit: another consumer may own them already) and triggers a
                rebalance after the reconnect.
Partition state is replaced, never mutated across owners: a rebalance or a seek
retires the old `_PartitionState` (valid=False) so messages already queued for it are
dropped by the iterator.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
import zlib
from typing import NamedTuple

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, ZookeeperError

from pybroker.coord.offsets import commit_offsets, fetch_offsets
from pybroker.errors import PyBrokerError
from pybroker.protocol import ApiKey, ErrorCode
from pybroker.records import CONTROL_BIT, parse_batches, parse_records

from .connection import (FETCH_VERSION, LIST_OFFSETS_VERSION, BrokerConnection,
                         KafkaError)
from .rebalance import GroupRegistry, RebalanceError, Snapshot, validate_path_element

log = logging.getLogger("pybroker.client.consumer")

__all__ = ["Consumer", "Message", "MessageStream", "ConsumerClosed", "ConsumerTimeout",
           "RebalanceError"]

EARLIEST, LATEST = -2, -1        # ListOffsets timestamps
_RESET = {"smallest": EARLIEST, "earliest": EARLIEST, "largest": LATEST, "latest": LATEST}
_CODECS = {1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


class ConsumerClosed(PyBrokerError):
    """The consumer was closed."""


class ConsumerTimeout(PyBrokerError, TimeoutError):
    """No message within consumer_timeout_ms (only when that is set)."""


class Message(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: tuple = ()


class _PartitionState:
    """Progress on one owned partition, for one ownership (or one seek).

    fetch_offset  next offset to fetch (None: resolve by auto_offset_reset); fetcher
    consumed      next offset the iterator may return; iterator
    processed     next offset after the last processed message; iterator (commit point)
    committed     last offset written to the offset registry; rebalance thread
    """

    __slots__ = ("topic", "partition", "stream", "fetch_offset", "consumed", "processed",
                 "committed", "valid")

    def __init__(self, topic: str, partition: int, stream: int, offset: int | None,
                 committed: int | None):
        self.topic, self.partition, self.stream = topic, partition, stream
        self.fetch_offset = offset
        self.consumed = offset if offset is not None else -1
        self.processed = offset
        self.committed = committed
        self.valid = True


class MessageStream:
    """An iterator over the messages of the partitions the group gave this stream.
    Blocks while there are none and never ends on its own; it stops (StopIteration)
    only after the consumer is closed, and raises RebalanceError if the consumer's
    rebalance failed, ConsumerTimeout after consumer_timeout_ms if that is set."""

    def __init__(self, consumer: "Consumer", topic: str, index: int):
        self._consumer = consumer
        self.topic, self.index = topic, index
        self.stream_id = f"{consumer.consumer_id}-{index}"
        self._queue: queue.Queue = queue.Queue()
        self._chunk: list = []
        self._pos = 0
        self._chunk_state: _PartitionState | None = None
        self._last: tuple[_PartitionState, int] | None = None

    def __iter__(self) -> "MessageStream":
        return self

    def __repr__(self) -> str:
        return f"MessageStream({self.stream_id!r}, topic={self.topic!r})"

    def _mark_processed(self) -> None:
        """The message returned last was processed (the caller asks for the next one).
        Call with the consumer's lock held."""
        last, self._last = self._last, None
        if last is not None:
            state, offset = last
            if state.valid and state.processed is not None and offset >= state.processed:
                state.processed = offset + 1

    def __next__(self) -> Message:
        consumer = self._consumer
        timeout = consumer.consumer_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if consumer._closed or consumer._error is not None:
                if self._last is not None:
                    with consumer._lock:
                        self._mark_processed()
                if consumer._closed:
                    raise StopIteration
                raise consumer._error
            while self._pos < len(self._chunk):
                message = self._chunk[self._pos]
                self._pos += 1
                state = self._chunk_state
                with consumer._lock:  # one lock per message: mark the last, take this one
                    self._mark_processed()
                    if not state.valid:
                        self._pos = len(self._chunk)
                        break
                    if message.offset < state.consumed:
                        continue
                    state.consumed = message.offset + 1
                self._last = (state, message.offset)
                return message
            if self._last is not None:  # before waiting: commits must see it processed
                with consumer._lock:
                    self._mark_processed()
            wait = 0.2 if deadline is None else min(0.2, max(deadline - time.monotonic(), 0))
            try:
                self._chunk_state, self._chunk = self._queue.get(timeout=wait)
                self._pos = 0
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise ConsumerTimeout(f"no message on {self.stream_id} within "
                                          f"{timeout}s") from None


class Consumer:
    """See the module docstring.

    zookeeper               "host:port[,host:port][/chroot]"
    group                   group name (a ZooKeeper path element)
    consumer_id             this consumer's id in the group (default: host-pid-random)
    auto_offset_reset       "smallest" or "largest": where a partition without a
                            committed offset (or with one out of range) starts (P19)
    auto_commit_enable      commit processed offsets every auto_commit_interval_ms
                            and before a rebalance releases partitions
    rebalance_max_retries   attempts of Algorithm 1 before RebalanceError
    rebalance_backoff_ms    base wait after an ownership conflict (x random [1, 2))
    fetch_wait_max_ms       long-poll time of a fetch with nothing new
    fetch_max_bytes         bytes per partition per fetch
    max_queued_messages     per partition, fetched but not yet returned
    consumer_timeout_ms     None: iterators block forever (the paper); else raise
                            ConsumerTimeout after this long without a message
    zookeeper_session_timeout_ms  the consumer is declared dead this long after it
                            stops answering ZooKeeper (its partitions move on)
    """

    def __init__(self, zookeeper: str, group: str, consumer_id: str | None = None, *,
                 auto_offset_reset: str = "largest", auto_commit_enable: bool = True,
                 auto_commit_interval_ms: int = 1000, rebalance_max_retries: int = 20,
                 rebalance_backoff_ms: int = 200, fetch_wait_max_ms: int = 100,
                 fetch_max_bytes: int = 1024 * 1024, max_queued_messages: int = 2000,
                 consumer_timeout_ms: int | None = None,
                 zookeeper_session_timeout_ms: int = 6000,
                 client_id: str = "pybroker-consumer"):
        validate_path_element(group, "group name")
        if consumer_id is None:
            consumer_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        validate_path_element(consumer_id, "consumer id")
        if auto_offset_reset not in _RESET:
            raise ValueError(f"auto_offset_reset {auto_offset_reset!r} is not 'smallest' "
                             f"or 'largest'")
        self.group, self.consumer_id = group, consumer_id
        self.client_id = client_id
        self.auto_offset_reset = auto_offset_reset
        self.auto_commit_enable = auto_commit_enable
        self.auto_commit_interval = auto_commit_interval_ms / 1000   # seconds
        self.rebalance_max_retries = rebalance_max_retries
        self.rebalance_backoff_ms = rebalance_backoff_ms
        self.fetch_wait_max_ms = fetch_wait_max_ms
        self.fetch_max_bytes = fetch_max_bytes
        self.max_queued_messages = max_queued_messages
        self.consumer_timeout = None if consumer_timeout_ms is None else \
            consumer_timeout_ms / 1000
        self.session_timeout = zookeeper_session_timeout_ms / 1000

        # guarded by _lock: partition states, the cluster view, flags
        self._lock = threading.RLock()
        self._states: dict[tuple[str, int], _PartitionState] = {}
        self._snapshot = Snapshot()
        self._streams: dict[str, list[MessageStream]] = {}
        self._error: BaseException | None = None
        self._closed = False
        self._paused = False            # ZooKeeper connection suspended
        self._session_lost = False
        self.rebalances = 0             # completed rebalances (for tests and stats)

        self._rebalance_needed = threading.Event()
        self._stop = threading.Event()
        self._registry: GroupRegistry | None = None
        self._zk = KazooClient(hosts=zookeeper, timeout=self.session_timeout)
        self._zk.start(timeout=30)
        self._zk.add_listener(self._on_zk_state)
        self._threads: list[threading.Thread] = []

    # --- the paper's API -------------------------------------------------------------

    def create_message_streams(self, topic_count: dict[str, int]) -> dict[str, list]:
        """Subscribe: {topic: n} -> {topic: [n MessageStream]}. Registers this consumer
        in the group, runs the first rebalance (raising RebalanceError if it cannot
        settle) and starts pulling. Call once per consumer."""
        if self._registry is not None:
            raise ValueError("create_message_streams was already called on this consumer")
        if not topic_count:
            raise ValueError("subscribe to at least one topic")
        self._registry = GroupRegistry(self._zk, self.group, self.consumer_id, topic_count,
                                       self._rebalance_needed.set,
                                       self.rebalance_max_retries,
                                       self.rebalance_backoff_ms)
        self._streams = {t: [MessageStream(self, t, i) for i in range(n)]
                         for t, n in sorted(topic_count.items())}
        self._registry.register()
        self._rebalance_needed.clear()
        self._rebalance()
        for target, name in ((self._rebalance_loop, "rebalance"),
                             (self._fetch_loop, "fetcher")):
            thread = threading.Thread(target=target, daemon=True,
                                      name=f"pybroker-consumer-{name}-{self.consumer_id}")
            thread.start()
            self._threads.append(thread)
        return {t: list(s) for t, s in self._streams.items()}

    def owned_partitions(self) -> dict[tuple[str, int], str]:
        """{(topic, partition): stream id} this consumer owns now."""
        with self._lock:
            return {tp: f"{self.consumer_id}-{s.stream}" for tp, s in self._states.items()}

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Rewind (or skip) an owned partition to `offset` (P12): its stream returns
        messages from there on, and the next commit stores `offset`. ValueError if this
        consumer does not own the partition now."""
        if offset < 0:
            raise ValueError(f"offset {offset} is negative")
        with self._lock:
            old = self._states.get((topic, partition))
            if old is None:
                raise ValueError(f"{topic}-{partition} is not owned by consumer "
                                 f"{self.consumer_id!r} of group {self.group!r}; owned: "
                                 f"{sorted(self._states)}")
            old.valid = False
            self._states[(topic, partition)] = _PartitionState(
                topic, partition, old.stream, offset, old.committed)

    def commit(self) -> dict[tuple[str, int], int]:
        """Store the offsets of everything the streams have returned so far (call it
        after processing them); returns {(topic, partition): offset} written."""
        with self._lock:
            for state in self._states.values():
                if state.processed is not None and state.consumed > state.processed:
                    state.processed = state.consumed
        return self._commit_processed()

    def close(self) -> None:
        """Stop pulling, commit processed offsets (if auto-commit is on), release the
        partitions and leave the group. Streams then stop iterating."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._rebalance_needed.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(30)
        try:
            if self._zk.connected and not self._session_lost:
                if self.auto_commit_enable:
                    self._commit_processed()
                if self._registry is not None:
                    self._registry.release()
                    self._registry.deregister()
        except KazooException as exc:
            log.warning("consumer=%s close: ZooKeeper error %s", self.consumer_id, exc)
        finally:
            with self._lock:
                for state in self._states.values():
                    state.valid = False
                self._states = {}
            self._zk.stop()
            self._zk.close()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- offsets ---------------------------------------------------------------------

    def _commit_processed(self) -> dict[tuple[str, int], int]:
        with self._lock:
            todo = [(s, s.processed) for s in self._states.values()
                    if s.valid and s.processed is not None and s.processed != s.committed]
        self._commit(todo)
        return {(state.topic, state.partition): offset for state, offset in todo}

    def _commit(self, todo: list) -> None:
        """Store [(partition state, offset)] in the offset registry in one transaction."""
        if todo:
            commit_offsets(self._zk, self.group, {(s.topic, s.partition): (offset, None, -1)
                                                  for s, offset in todo})
            for state, offset in todo:
                state.committed = offset

    # --- rebalance -------------------------------------------------------------------

    def _on_zk_state(self, state) -> None:
        """kazoo's thread: never block here."""
        if state == KazooState.LOST:
            with self._lock:
                self._session_lost = True
                for s in self._states.values():
                    s.valid = False
                self._states = {}
            if not self._closed:
                log.warning("consumer=%s ZooKeeper session lost: dropped all partitions",
                            self.consumer_id)
        elif state == KazooState.SUSPENDED:
            self._paused = True
        else:
            self._paused = False
            if self._session_lost:
                self._rebalance_needed.set()   # re-register and take partitions again

    def _rebalance(self) -> None:
        """Stop pulling our partitions, commit them, run Algorithm 1, start pulling
        what we own now from the offset registry."""
        with self._lock:
            old, self._states = self._states, {}
            for state in old.values():
                state.valid = False
            lost, self._session_lost = self._session_lost, False
        if lost:
            self._registry.owned.clear()      # those znodes died with the session
            self._registry.register()
        elif self.auto_commit_enable:
            self._commit([(s, s.processed) for s in old.values()
                          if s.processed is not None and s.processed != s.committed])
        snap, owned = self._registry.rebalance(sleep=self._backoff)
        stream_index = {s.stream_id: s.index for streams in self._streams.values()
                        for s in streams}
        offsets = fetch_offsets(self._zk, self.group, owned)  # one batch of reads
        states = {}
        for (topic, partition), stream_id in owned.items():
            committed = offsets.get((topic, partition), (None,))[0]
            states[(topic, partition)] = _PartitionState(
                topic, partition, stream_index[stream_id], committed, committed)
        with self._lock:
            if self._session_lost or self._closed:
                return                      # the next round (or close) cleans up
            self._snapshot = snap
            self._states = states
            self.rebalances += 1

    def _backoff(self, delay: float) -> None:
        if self._stop.wait(delay):
            raise ConsumerClosed(f"consumer {self.consumer_id!r} closed during a rebalance")

    def _rebalance_loop(self) -> None:
        next_commit = time.monotonic() + self.auto_commit_interval
        while not self._stop.is_set():
            timeout = max(next_commit - time.monotonic(), 0.0) \
                if self.auto_commit_enable else None
            if self._rebalance_needed.wait(timeout):
                if self._stop.is_set():
                    return
                self._rebalance_needed.clear()
                if not self._zk.connected:
                    self._stop.wait(0.1)
                    self._rebalance_needed.set()   # retry once reconnected
                    continue
                try:
                    self._rebalance()
                except ConsumerClosed:
                    return
                except RebalanceError as exc:
                    log.error("consumer=%s %s", self.consumer_id, exc)
                    self._error = exc
                    return
                except (KazooException, ZookeeperError) as exc:
                    log.warning("consumer=%s rebalance interrupted by ZooKeeper (%r); "
                                "retrying", self.consumer_id, exc)
                    self._stop.wait(0.2)
                    self._rebalance_needed.set()
            if self.auto_commit_enable and time.monotonic() >= next_commit:
                next_commit = time.monotonic() + self.auto_commit_interval
                if self._zk.connected and not self._session_lost:
                    try:
                        self._commit_processed()
                    except KazooException as exc:
                        log.warning("consumer=%s auto-commit failed: %r",
                                    self.consumer_id, exc)

    # --- fetching --------------------------------------------------------------------

    def _fetch_loop(self) -> None:
        conns: dict[int, BrokerConnection] = {}
        try:
            while not self._stop.is_set():
                try:
                    if not self._fetch_round(conns):
                        self._stop.wait(0.01)
                except KafkaError as exc:
                    log.warning("consumer=%s fetch failed: %s", self.consumer_id, exc)
                    self._stop.wait(0.2)
        except Exception as exc:  # noqa: BLE001 - surfaced to the iterating threads
            log.exception("consumer=%s fetcher stopped", self.consumer_id)
            self._error = exc if isinstance(exc, PyBrokerError) else \
                KafkaError(-1, f"fetcher failed: {exc!r}")
        finally:
            for conn in conns.values():
                conn.close()

    def _connection(self, conns: dict, node: int) -> BrokerConnection | None:
        conn = conns.get(node)
        if conn is None:
            addr = self._snapshot.nodes.get(node)
            if addr is None:
                return None
            conn = conns[node] = BrokerConnection(addr[0], addr[1], self.client_id,
                                                  timeout=30.0, node_id=node)
        return conn

    def _fetch_round(self, conns: dict) -> bool:
        """One Fetch per leader node for the partitions with room in their queue; False
        if there was nothing to fetch."""
        if self._paused:
            return False
        with self._lock:
            states = [s for s in self._states.values() if s.valid and
                      (s.fetch_offset is None or
                       s.fetch_offset - s.consumed < self.max_queued_messages)]
            leaders = self._snapshot.leaders
        by_node: dict[int, list[_PartitionState]] = {}
        for state in states:
            if state.fetch_offset is None:
                self._reset_offset(conns, state)
                if state.fetch_offset is None:
                    continue
            node = leaders.get((state.topic, state.partition), -1)
            by_node.setdefault(node, []).append(state)
        sent = []
        for node, group in by_node.items():
            conn = self._connection(conns, node)
            if conn is None:
                continue
            topics: dict[str, list] = {}
            for s in group:
                topics.setdefault(s.topic, []).append({
                    "partition": s.partition, "fetch_offset": s.fetch_offset,
                    "partition_max_bytes": self.fetch_max_bytes})
            body = {"replica_id": -1, "max_wait_ms": self.fetch_wait_max_ms,
                    "min_bytes": 1, "max_bytes": 0x7FFFFFFF, "isolation_level": 0,
                    "topics": [{"topic": t, "partitions": ps} for t, ps in topics.items()]}
            try:
                sent.append((node, conn, conn.send(ApiKey.FETCH, FETCH_VERSION, body),
                             {(s.topic, s.partition): s for s in group}))
            except KafkaError as exc:
                conns.pop(node, None)
                log.info("consumer=%s fetch from node %d: %s", self.consumer_id, node, exc)
        if not sent:
            if by_node:
                self._stop.wait(0.2)        # leaders unknown or unreachable: back off
            return False
        for node, conn, cid, by_tp in sent:
            try:
                response = conn.receive(ApiKey.FETCH, FETCH_VERSION, cid,
                                        timeout=self.fetch_wait_max_ms / 1000 + 30)
            except KafkaError as exc:
                conns.pop(node, None)
                log.info("consumer=%s fetch from node %d: %s", self.consumer_id, node, exc)
                self._stop.wait(0.2)
                continue
            for topic in response["responses"]:
                for part in topic["partitions"]:
                    state = by_tp.get((topic["topic"], part["partition_index"]))
                    if state is not None:
                        self._deliver(conns, state, part)
        return True

    def _deliver(self, conns: dict, state: _PartitionState, part: dict) -> None:
        code = part["error_code"]
        if code == ErrorCode.OFFSET_OUT_OF_RANGE:
            log.warning("consumer=%s tp=%s-%d offset %s out of range; resetting to %s",
                        self.consumer_id, state.topic, state.partition, state.fetch_offset,
                        self.auto_offset_reset)
            self._reset_offset(conns, state)
            return
        if code != 0:
            log.info("consumer=%s tp=%s-%d fetch error %s", self.consumer_id, state.topic,
                     state.partition, KafkaError(code))
            return
        messages = decode_messages(state.topic, state.partition, part["records"],
                                   state.fetch_offset)
        if not messages:
            return
        with self._lock:
            if not state.valid:
                return
            state.fetch_offset = messages[-1].offset + 1
        stream = self._streams[state.topic][state.stream]
        stream._queue.put((state, messages))

    def _reset_offset(self, conns: dict, state: _PartitionState) -> None:
        """Set fetch_offset by auto_offset_reset (ListOffsets to the leader)."""
        node = self._snapshot.leaders.get((state.topic, state.partition), -1)
        conn = self._connection(conns, node)
        if conn is None:
            return
        body = {"replica_id": -1, "topics": [{"name": state.topic, "partitions": [{
            "partition_index": state.partition,
            "timestamp": _RESET[self.auto_offset_reset]}]}]}
        try:
            response = conn.request(ApiKey.LIST_OFFSETS, LIST_OFFSETS_VERSION, body)
        except KafkaError as exc:
            conns.pop(node, None)
            log.info("consumer=%s ListOffsets to node %d: %s", self.consumer_id, node, exc)
            return
        part = response["topics"][0]["partitions"][0]
        if part["error_code"] != 0:
            log.info("consumer=%s tp=%s-%d ListOffsets error %s", self.consumer_id,
                     state.topic, state.partition, KafkaError(part["error_code"]))
            return
        offset = part["offset"]
        with self._lock:
            if not state.valid:
                return
            state.fetch_offset = state.consumed = offset
            state.processed = offset        # a commit keeps this start (P19)


def decode_messages(topic: str, partition: int, records, from_offset: int) -> list[Message]:
    """The messages at or after from_offset in a fetch's records (whole batches only;
    control batches skipped). gzip batches are decompressed; other codecs raise
    KafkaError naming the codec."""
    if not records:
        return []
    out = []
    for batch in parse_batches(records):
        if batch.last_offset < from_offset or batch.attributes & CONTROL_BIT:
            continue
        payload = None
        if batch.compression:
            if batch.compression != 1:
                name = _CODECS.get(batch.compression, str(batch.compression))
                raise KafkaError(ErrorCode.UNSUPPORTED_COMPRESSION_TYPE,
                                 f"{topic}-{partition} batch at offset {batch.base_offset} "
                                 f"uses {name}; pybroker.client decodes only gzip")
            payload = zlib.decompress(batch.payload, 47)   # 32 + 15: gzip or zlib header
        for r in parse_records(batch, payload):
            if r.offset >= from_offset:
                out.append(Message(topic, partition, r.offset, r.key, r.value, r.timestamp,
                                   r.headers))
    return out
