"""The one storage owner of a worker: every partition log the node stores, a state per
partition (pybroker.server.partition_state), the flush policy, checkpoints, retention,
and the wake-ups of fetches waiting for data.

    opening --(recovered, replayed)--> online --> closing
        \\                                |
         `--(open failed)--> offline <---'  (failed sync, damaged durable data)

Threads. The event loop owns this object and every log in state ONLINE; nothing here
blocks it. Blocking work runs on two threads and comes back as a completion on the loop:
- the flusher runs FlushTickets (every fdatasync of a running log: the time and message
  bounds of the flush policy, rolls, shutdown), one ticket per log at a time;
- the storage thread opens logs (recovery and producer-state replay), closes and deletes
  them, and writes checkpoints. While a partition is OPENING or CLOSING its log belongs
  to the storage thread: the loop does not touch it (it is not in `logs`);
- the scrubber re-reads the sealed, durable segments of online partitions, one at a
  time at log.scrub.bytes.per.second, every log.scrub.interval.ms after the previous
  pass, and takes a partition whose durable data it finds damaged offline (a bit flip
  after a clean stop would otherwise be served silently). Kafka has no such check.
Jobs of one partition run in submission order on the storage thread, so a topic deleted
and created again closes before it reopens.

Handlers read `logs` (the ONLINE logs) and ask `error_for(tp)` why a partition they
cannot serve is not there: OPENING answers a retriable LEADER_NOT_AVAILABLE, OFFLINE
answers KAFKA_STORAGE_ERROR (its acks=all waiters too), CLOSING NOT_LEADER_OR_FOLLOWER.
Every state change is one log line naming the partition, its directory and the reason.

A partition is stored here exactly when the ZooKeeper assignment names this node as
one of its replicas; its directory is `<data-dir>/<topic>-<partition>`. Whether this
node leads or follows it is the ReplicaManager's business (server/replication.py):
`logs` holds every online log, led or followed.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from pybroker import failpoints
from pybroker.config import BrokerConfig, ConfigError
from pybroker.coord.registry import ClusterState
from pybroker.errors import CorruptLogError, LogSyncFailedError
from pybroker.log import LogConfig, PartitionLog, checkpoint, partition_metadata
from pybroker.log.partition_log import write_recovery_point
from pybroker.protocol import ErrorCode
from pybroker.server.partition_state import PartitionState
from pybroker.server.producer_state import ProducerStates, write_snapshot

log = logging.getLogger("pybroker.server")

ERROR_BY_STATE = {
    PartitionState.OPENING: ErrorCode.LEADER_NOT_AVAILABLE,   # retriable: try again soon
    PartitionState.OFFLINE: ErrorCode.KAFKA_STORAGE_ERROR,
    PartitionState.CLOSING: ErrorCode.NOT_LEADER_OR_FOLLOWER,
}


def partition_dir(data_dir: str, topic: str, partition: int) -> str:
    return os.path.join(data_dir, f"{topic}-{partition}")


class Partition:
    """A partition this node stores: its state, its log once opened, and why it is
    offline when it is."""

    __slots__ = ("tp", "directory", "state", "log", "reason", "wanted", "delete", "successor",
                 "leader_epoch", "replicated", "topic_id")

    def __init__(self, tp: tuple[str, int], directory: str):
        self.tp = tp
        self.directory = directory
        self.state = PartitionState.OPENING
        self.log: PartitionLog | None = None
        self.reason = ""
        self.wanted = True     # False once unassigned: close when the open completes
        self.delete = False    # the topic is gone: delete the directory after closing
        self.successor = None  # (partition, config) to open once this one has closed
        self.leader_epoch = None  # the epoch this node leads in when the open began
        self.replicated = False   # more than one replica: its high watermark is bounded
        self.topic_id = None      # the topic's ID (None: a topic from before IDs, so far)

    @property
    def name(self) -> str:
        return f"{self.tp[0]}-{self.tp[1]}"


class LogManager:
    def __init__(self, data_dir: str, config: BrokerConfig, node_id: int,
                 loop: asyncio.AbstractEventLoop, stats=None,
                 on_change: Callable[[], None] | None = None):
        self.data_dir = data_dir
        self.config = config
        self.node_id = node_id
        self.loop = loop
        self.stats = stats                     # WorkerStats: fsync latencies go there
        self.on_change = on_change             # the set or a state changed (publish stats)
        self.partitions: dict[tuple[str, int], Partition] = {}
        self.logs: dict[tuple[str, int], PartitionLog] = {}  # the ONLINE ones
        self.producers = ProducerStates()
        self._dirty: set[tuple[str, int]] = set()     # logs with a flush deadline pending
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_timer_ms = 0                       # monotonic ms the armed timer fires
        self._flusher = ThreadPoolExecutor(1, thread_name_prefix=f"flusher-{node_id}")
        self._storage = ThreadPoolExecutor(1, thread_name_prefix=f"storage-{node_id}")
        self._scrubber = ThreadPoolExecutor(1, thread_name_prefix=f"scrub-{node_id}")
        self._scrub_timer: asyncio.TimerHandle | None = None
        self.scrubbed_bytes = 0                        # read by scrubs so far (stats)
        self.scrub_passes = 0
        self._waiters: dict[tuple[str, int], set[asyncio.Future]] = {}
        self._append_waiters: dict[tuple[str, int], set[asyncio.Future]] = {}  # followers'
        self._sync_waiters: dict[tuple[str, int], list] = {}  # [(offset, future)] (sync_now)
        self._checkpointing = False
        self._hw_stored: dict[tuple[str, int], int] = {}  # high watermarks last written
        self._replaced: set[Partition] = set()  # closing, while a new open of tp runs
        self._stopping = False

    # --- what handlers ask -----------------------------------------------------------

    def error_for(self, tp: tuple[str, int]) -> ErrorCode | None:
        """Why tp is not served here although this node stores it; None when it is
        online or not stored here at all."""
        part = self.partitions.get(tp)
        if part is None or part.state == PartitionState.ONLINE:
            return None
        return ERROR_BY_STATE[part.state]

    def online_names(self) -> list[str]:
        """"topic-partition" of every online partition: what the node publishes in its
        ZooKeeper registration, so Metadata anywhere shows a leader only once it serves."""
        return [f"{t}-{p}" for t, p in self.logs]

    def offline_names(self) -> list[str]:
        """"topic-partition" of every offline partition: published beside the online
        ones, so every node's Metadata shows it without a leader."""
        return [p.name for p in self.partitions.values()
                if p.state == PartitionState.OFFLINE]

    # --- ownership -------------------------------------------------------------------

    def sync(self, state: ClusterState) -> bool:
        """Open the logs newly assigned to this node, close those no longer assigned and
        delete those whose topic is gone or that were reassigned to other nodes. True if
        the stored set changed."""
        wanted = {tp for tp, info in state.partitions.items() if self.node_id in info.replicas}
        changed = False
        for tp in sorted(tp for tp, part in self.partitions.items()
                         if tp not in wanted and part.wanted):
            # deleted with its topic, or reassigned away (the partition lives on without
            # this node: its replica is of no use here any more, as Kafka's StopReplica)
            self._unassign(self.partitions[tp],
                           delete=tp[0] not in state.topics or tp in state.partitions)
            changed = True
        configs = {topic: self._log_config(topic, state) for topic, _ in wanted}
        for tp in sorted(wanted):
            part = self.partitions.get(tp)
            if part is None or not part.wanted:
                info = state.partitions[tp]
                self._start_open(tp, configs[tp[0]],
                                 info.leader_epoch if info.leader == self.node_id else None,
                                 len(info.replicas) > 1, state.topic_ids.get(tp[0]))
                changed = True
            elif part.topic_id is None and tp[0] in state.topic_ids:
                part.topic_id = state.topic_ids[tp[0]]   # just given one: record it
                self._adopt_topic_id(part)
        for tp, plog in self.logs.items():
            config = configs[tp[0]]
            if config != plog.config:
                plog.reconfigure(config)
                log.info("node=%d tp=%s-%d config now %s", self.node_id, tp[0], tp[1], config)
        return changed

    def _adopt_topic_id(self, part: Partition) -> None:
        def done(fut):
            if fut.exception() is not None:   # retried at the next open of the log
                log.error("node=%d tp=%s: partition.metadata not written: %r", self.node_id,
                          part.name, fut.exception())
        self.run_storage(partition_metadata.adopt, part.directory,
                         part.topic_id).add_done_callback(done)

    def _log_config(self, topic: str, state: ClusterState) -> LogConfig:
        """The broker's log settings under the topic's overrides; without the overrides
        (logged) if ZooKeeper holds one these settings refuse, as written by hand."""
        try:
            return self.config.log_config(state.topic_configs.get(topic, {}))
        except ConfigError as exc:
            log.error("node=%d topic=%s ignores its configs in ZooKeeper: %s", self.node_id,
                      topic, exc)
            return self.config.log_config()

    def _transition(self, part: Partition, state: PartitionState, reason: str) -> None:
        old = part.state
        part.state = state
        part.reason = reason
        level = logging.ERROR if state == PartitionState.OFFLINE else logging.INFO
        log.log(level, "node=%d tp=%s dir=%s %s -> %s: %s", self.node_id, part.name,
                part.directory, old.label, state.label, reason)
        if state != PartitionState.ONLINE and part.tp in self._sync_waiters:
            self._answer_sync_waiters(part, part.log, None)
        if self.on_change is not None:
            self.on_change()

    # --- opening ---------------------------------------------------------------------

    def _start_open(self, tp: tuple[str, int], config: LogConfig,
                    leader_epoch: int | None = None, replicated: bool = False,
                    topic_id=None) -> None:
        directory = partition_dir(self.data_dir, *tp)
        previous = self.partitions.get(tp)
        part = Partition(tp, directory)
        part.leader_epoch = leader_epoch
        part.replicated = replicated
        part.topic_id = topic_id
        self.partitions[tp] = part
        log.info("node=%d tp=%s dir=%s opening", self.node_id, part.name, directory)
        if previous is not None:
            # still opening or closing (deleted and created again): open once it has
            # closed, so the new log never sees the old files or their deletion
            previous.wanted = False
            previous.successor = (part, config)
            self._replaced.add(previous)
            return
        self._submit_open(part, config)

    def _submit_open(self, part: Partition, config: LogConfig) -> None:
        fut = self.loop.run_in_executor(self._storage, self._open_blocking, part, config)
        fut.add_done_callback(lambda f: self._opened(part, f))

    def _open_blocking(self, part: Partition, config: LogConfig) -> PartitionLog:
        """On the storage thread: recover the log and replay its producer state."""
        failpoints.hit("partition.open")
        tp = part.tp
        partition_metadata.claim(part.directory, part.topic_id)  # a deleted topic's: aside
        # a replica shows nothing above its last known high watermark until its leader
        # (or, leading, its followers) say more is in the whole ISR
        bound = (checkpoint.read_high_watermark(part.directory) or 0) if part.replicated else None
        plog = PartitionLog(part.directory, config, name=part.name, replication_bound=bound,
                            on_flush=lambda _hw, seconds: self._flushed(tp, seconds),
                            on_flush_due=lambda: self._flush_due(tp),
                            on_hw=lambda _hw: self._hw_moved(tp),
                            monotonic=time.monotonic)
        try:
            self.producers.load(tp, plog)
            if part.leader_epoch is not None:  # leading: its epoch starts at the log end
                plog.epochs.assign(part.leader_epoch, plog.log_end_offset)
        except BaseException:
            plog.close()
            raise
        return plog

    def run_storage(self, fn, *args) -> asyncio.Future:
        """fn(*args) on the storage thread, after the jobs already queued there."""
        return self.loop.run_in_executor(self._storage, fn, *args)

    def _opened(self, part: Partition, fut: asyncio.Future) -> None:
        exc = fut.exception()
        if exc is not None:
            self._transition(part, PartitionState.OFFLINE,
                             f"open failed: {type(exc).__name__}: {exc}")
            if not part.wanted:
                self._begin_close(part, "unassigned")
            return
        part.log = plog = fut.result()
        if not part.wanted:  # unassigned while it opened
            self._begin_close(part, "unassigned while opening")
            return
        self.logs[part.tp] = plog
        self._transition(part, PartitionState.ONLINE,
                         f"log_start={plog.log_start_offset} log_end={plog.log_end_offset}")
        self._wake(part.tp)

    # --- closing ---------------------------------------------------------------------

    def _unassign(self, part: Partition, delete: bool) -> None:
        part.wanted = False
        part.delete = part.delete or delete
        if part.state in (PartitionState.OPENING, PartitionState.CLOSING):
            return  # _opened closes it; a close under way goes on
        self._begin_close(part, "topic deleted" if part.delete else
                          "unassigned" if not self._stopping else "shutdown")

    def _begin_close(self, part: Partition, reason: str) -> None:
        """Take the log from the loop, flush what it holds (which answers the waiting
        acks=all requests), then close it on the storage thread."""
        if self.logs.get(part.tp) is part.log:
            self.logs.pop(part.tp, None)
        self._dirty.discard(part.tp)
        self._transition(part, PartitionState.CLOSING, reason)
        self._wake(part.tp)
        self._continue_close(part)

    def _continue_close(self, part: Partition) -> None:
        """The next step of a close; called again when a flush ticket of it ends."""
        plog = part.log
        if plog is not None and not plog.sync_failed:
            if plog.flushing or self._start_flush(part, plog):
                return
        snapshot = None
        if plog is not None:
            plog.fail_durable_waiters(LogSyncFailedError(f"tp={part.name} is closing"))
            if not plog.sync_failed:
                snapshot = self.producers.snapshot(part.tp, plog)
        self.producers.forget(part.tp)
        fut = self.loop.run_in_executor(self._storage, _close_blocking, part, snapshot)
        fut.add_done_callback(lambda f: self._closed(part, f))

    def _closed(self, part: Partition, fut: asyncio.Future) -> None:
        exc = fut.exception()
        if exc is not None:
            log.error("node=%d tp=%s dir=%s close failed: %s: %s", self.node_id, part.name,
                      part.directory, type(exc).__name__, exc)
        else:
            log.info("node=%d tp=%s dir=%s closed%s", self.node_id, part.name, part.directory,
                     " and deleted" if part.delete else "")
        self._forget(part)

    def _forget(self, part: Partition) -> None:
        self._replaced.discard(part)
        if self.partitions.get(part.tp) is part:
            del self.partitions[part.tp]
            if self.on_change is not None:
                self.on_change()
        self._wake(part.tp)
        if part.successor is not None:
            successor, config = part.successor
            part.successor = None
            if self.partitions.get(part.tp) is successor:
                if successor.wanted:
                    self._submit_open(successor, config)
                else:
                    self._forget(successor)  # unassigned again before it ever opened

    async def close_all(self) -> None:
        """Shutdown: flush, checkpoint and mark every log cleanly closed (opens under way
        close once they have finished)."""
        self._stopping = True
        closing = list(self.partitions.values()) + list(self._replaced)
        for part in closing:
            self._unassign(part, delete=False)
        while any(self.partitions.get(p.tp) is p or p in self._replaced for p in closing):
            await asyncio.sleep(0.01)
        if self._flush_timer:
            self._flush_timer.cancel()
        if self._scrub_timer:
            self._scrub_timer.cancel()
        await self.loop.run_in_executor(None, self._shutdown_threads)

    def _shutdown_threads(self) -> None:
        self._flusher.shutdown(wait=True)
        self._storage.shutdown(wait=True)
        self._scrubber.shutdown(wait=True, cancel_futures=True)

    def wake_all(self) -> None:
        """Wake every waiting fetch (shutdown: they answer with what they have)."""
        for tp in list(self._waiters):
            self._wake(tp)

    # --- flush policy (P5) -----------------------------------------------------------

    def appended(self, tp: tuple[str, int]) -> None:
        """Note an append: wake the followers' fetches waiting for it, and arm the flush
        timer if the log holds unflushed data."""
        if tp in self._append_waiters:
            self._wake_set(self._append_waiters.get(tp, ()))
        if self._flush_timer is not None and tp in self._dirty:
            return  # the armed timer will look at this log (hot path)
        plog = self.logs[tp]
        deadline = plog.flush_deadline_ms()
        if deadline is None:
            return
        self._dirty.add(tp)
        self._arm_flush_timer(deadline)

    def _flush_due(self, tp: tuple[str, int]) -> None:
        """The log's message bound (or flush_ms=0) wants a flush now (called in append)."""
        part = self.partitions.get(tp)
        if part is not None and part.state == PartitionState.ONLINE:
            self._start_flush(part, part.log)

    def _arm_flush_timer(self, deadline_ms: int) -> None:
        if self._flush_timer is not None:
            if self._flush_timer_ms <= deadline_ms:
                return
            self._flush_timer.cancel()  # an earlier deadline (a ticket ended)
        delay = max(0.0, deadline_ms / 1000 - time.monotonic())
        self._flush_timer_ms = deadline_ms
        self._flush_timer = self.loop.call_later(delay, self._on_flush_timer)

    def _on_flush_timer(self) -> None:
        self._flush_timer = None
        now = int(time.monotonic() * 1000)
        next_deadline = None
        for tp in list(self._dirty):
            plog = self.logs.get(tp)
            deadline = None if plog is None else plog.flush_deadline_ms()
            if deadline is not None and now >= deadline:
                self._start_flush(self.partitions[tp], plog)
                deadline = plog.flush_deadline_ms()
            if deadline is None or plog.flushing:
                self._dirty.discard(tp)  # nothing due, or the ticket's end looks again
            else:
                next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
        if next_deadline is not None:
            self._arm_flush_timer(next_deadline)

    def _start_flush(self, part: Partition, plog: PartitionLog) -> bool:
        """Run a flush ticket of plog on the flusher thread; False when there is nothing
        to flush, a ticket is already out, or the log is fenced."""
        ticket = plog.begin_flush()
        if ticket is None:
            return False
        synced = self.loop.run_in_executor(self._flusher, ticket.sync)
        synced.add_done_callback(lambda fut: self._end_flush(part, plog, ticket, fut))
        return True

    def _end_flush(self, part: Partition, plog: PartitionLog, ticket,
                   fut: asyncio.Future) -> None:
        error = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        plog.end_flush(ticket, error)  # the high watermark, acks=all, fetches; or fenced
        if part.tp in self._sync_waiters:
            self._answer_sync_waiters(part, plog, error)
        if part.state == PartitionState.CLOSING:
            self._continue_close(part)
            return
        if part.state != PartitionState.ONLINE:
            return
        if error is not None:  # the log fenced itself, failing its acks=all waiters
            self._take_offline(part, f"fdatasync failed: {error}")
            return
        deadline = plog.flush_deadline_ms()
        if deadline is not None:  # appends came during the sync
            self._dirty.add(part.tp)
            self._arm_flush_timer(deadline)

    def sync_now(self, tp: tuple[str, int]) -> asyncio.Future:
        """A Future resolved (None) once everything appended to tp so far is durable
        here, flushing now if needed: a follower's group commit after a fetch round.
        Resolved with an exception when the sync failed or the log went away."""
        fut = self.loop.create_future()
        part = self.partitions.get(tp)
        plog = self.logs.get(tp)
        if plog is None or part is None:
            fut.set_exception(LogSyncFailedError(f"tp={tp[0]}-{tp[1]} is not online"))
            return fut
        if plog.sync_failed:
            fut.set_exception(LogSyncFailedError(f"tp={part.name}: an fdatasync failed"))
            return fut
        target = plog.log_end_offset
        if plog.durable_offset >= target:
            fut.set_result(None)
            return fut
        self._sync_waiters.setdefault(tp, []).append((target, fut))
        self._start_flush(part, plog)  # or the ticket out now, then the next one
        return fut

    def _answer_sync_waiters(self, part: Partition, plog: PartitionLog, error) -> None:
        waiting = self._sync_waiters.pop(part.tp, [])
        keep = []
        for target, fut in waiting:
            if fut.done():
                continue
            if error is not None or part.state != PartitionState.ONLINE:
                fut.set_exception(LogSyncFailedError(
                    f"tp={part.name}: {error or 'the log is no longer online'}"))
            elif plog.durable_offset >= target:
                fut.set_result(None)
            else:
                keep.append((target, fut))
        if keep:
            self._sync_waiters[part.tp] = keep
            self._start_flush(part, plog)

    def take_offline(self, tp: tuple[str, int], reason: str, error: BaseException) -> None:
        """Take an online partition offline (a follower's write failed on a broken disk)."""
        part = self.partitions.get(tp)
        if part is not None and part.state == PartitionState.ONLINE and part.log is not None:
            self._take_offline(part, reason, error)

    def _take_offline(self, part: Partition, reason: str,
                      error: BaseException | None = None) -> None:
        """ONLINE -> OFFLINE: out of `logs` (handlers answer KAFKA_STORAGE_ERROR, the node
        publishes it offline, so the controller moves leadership and the ISR away), its
        acks=all waiters failed with error, its fetches woken."""
        self.logs.pop(part.tp, None)
        self._dirty.discard(part.tp)
        self._transition(part, PartitionState.OFFLINE,
                         f"{reason}; produce and fetch answer KAFKA_STORAGE_ERROR until the "
                         "worker restarts and recovers it")
        if error is not None and part.log is not None:
            part.log.fail_durable_waiters(error)
        self._wake(part.tp)

    def flush_all(self) -> None:
        """Start a flush of every online log now (shutdown answers acks=all early)."""
        for tp, plog in list(self.logs.items()):
            self._start_flush(self.partitions[tp], plog)

    # --- checkpoints -----------------------------------------------------------------

    def checkpoint(self) -> None:
        """Periodic work: the recovery points and producer-state snapshots that changed,
        written on the storage thread."""
        if self._checkpointing:
            return  # the previous round is still writing
        jobs = []
        for tp, plog in self.logs.items():
            point = plog.checkpoint_due()
            snapshot = self.producers.snapshot(tp, plog)
            hw = plog.high_watermark if plog.replication_bound is not None else None
            if hw is not None and self._hw_stored.get(tp) == hw:
                hw = None
            if point is not None or snapshot is not None or hw is not None:
                jobs.append((tp, plog, point, snapshot, hw))
        if not jobs:
            return
        self._checkpointing = True
        fut = self.loop.run_in_executor(self._storage, _write_checkpoints, jobs)
        fut.add_done_callback(lambda f: self._checkpointed(jobs, f))

    def _checkpointed(self, jobs, fut: asyncio.Future) -> None:
        self._checkpointing = False
        if fut.exception() is not None:
            log.error("node=%d checkpoint failed: %r", self.node_id, fut.exception())
            return
        for (tp, plog, point, _snapshot, hw), ok in zip(jobs, fut.result()):
            if hw is not None:
                self._hw_stored[tp] = hw
            if ok and point is not None and not plog.closed:
                plog.checkpointed(point)

    # --- waiting for data (fetch long-poll) ------------------------------------------

    def wait_for_data(self, tps: list[tuple[str, int]], timeout: float,
                      appends: bool = False) -> asyncio.Future:
        """A future that completes when any of tps gets newly visible data (or changes
        state), or after timeout seconds; with appends (a follower's fetch), also when
        any of them gets an append, flushed or not."""
        fut = self.loop.create_future()
        tables = (self._waiters, self._append_waiters) if appends else (self._waiters,)
        for table in tables:
            for tp in tps:
                table.setdefault(tp, set()).add(fut)

        def done(_f=None):
            for table in tables:
                for tp in tps:
                    waiters = table.get(tp)
                    if waiters is not None:
                        waiters.discard(fut)
                        if not waiters:
                            del table[tp]
            if not fut.done():
                fut.set_result(None)
        timer = self.loop.call_later(timeout, done)
        fut.add_done_callback(lambda _f: (timer.cancel(), done()))
        return fut

    def _flushed(self, tp: tuple[str, int], seconds: float) -> None:
        if self.stats is not None:
            self.stats.fsync.observe(seconds)
        self._wake(tp)

    def _hw_moved(self, tp: tuple[str, int]) -> None:
        if tp in self.logs:  # not while it opens on the storage thread: nobody waits yet
            self._wake(tp)

    def _wake(self, tp: tuple[str, int]) -> None:
        self._wake_set(self._waiters.get(tp, ()))
        if tp in self._append_waiters:
            self._wake_set(self._append_waiters[tp])

    def wake(self, tp: tuple[str, int]) -> None:
        """Wake tp's waiting fetches (its high watermark moved, or its role changed)."""
        self._wake(tp)

    @staticmethod
    def _wake_set(waiters) -> None:
        for fut in list(waiters):
            if not fut.done():
                fut.set_result(None)

    # --- scrubbing ------------------------------------------------------------------

    def start_scrubbing(self) -> None:
        """Schedule the first scrub pass (log.scrub.interval.ms from now; -1: never)."""
        interval = self.config["log.scrub.interval.ms"]
        if interval >= 0 and not self._stopping:
            self._scrub_timer = self.loop.call_later(interval / 1000, self.scrub_pass)

    def scrub_pass(self) -> None:
        """Scrub every sealed durable segment of the online partitions, one at a time."""
        self._scrub_timer = None
        targets = [(self.partitions[tp], target) for tp, plog in list(self.logs.items())
                   for target in plog.scrub_targets()]
        self._scrub_next(targets)

    def _scrub_next(self, targets: list) -> None:
        if self._stopping:
            for _part, target in targets:
                os.close(target.fd)
            return
        if not targets:
            self.scrub_passes += 1
            self.start_scrubbing()
            return
        part, target = targets.pop(0)
        pace = _Pacer(self.config["log.scrub.bytes.per.second"], self)
        fut = self.loop.run_in_executor(self._scrubber, target.check, pace)
        fut.add_done_callback(lambda f: self._scrubbed(part, target, f, targets))

    def _scrubbed(self, part: Partition, target, fut: asyncio.Future, targets: list) -> None:
        if fut.cancelled():
            return
        problem = (fut.exception() and f"{type(fut.exception()).__name__}: "
                   f"{fut.exception()}") or fut.result()
        if problem and part.state == PartitionState.ONLINE and part.log is not None:
            self._take_offline(part, f"scrub found damaged durable data: {problem}",
                               CorruptLogError(problem))
        self._scrub_next(targets)

    # --- retention (P11) -------------------------------------------------------------

    def enforce_retention(self) -> int:
        """Retention of every online log; the segment files go on the storage thread
        (unlinking a large file frees its extents, which can take a while)."""
        deleted = 0
        for plog in list(self.logs.values()):
            deleted += plog.enforce_retention(delete=self._delete_segment)
        return deleted

    def _delete_segment(self, seg) -> None:
        fut = self.loop.run_in_executor(self._storage, seg.delete)
        fut.add_done_callback(lambda f: f.exception() and log.error(
            "node=%d %s %s delete failed: %r", self.node_id, seg.owner, seg, f.exception()))


class _Pacer:
    """Keeps a scrub's reads at or below `rate` bytes a second (sleeps on the scrub
    thread) and counts them into the manager's scrubbed_bytes."""

    def __init__(self, rate: int, manager: LogManager):
        self.rate = rate
        self.manager = manager
        self.started = time.monotonic()
        self.done = 0

    def __call__(self, n: int) -> None:
        self.done += n
        self.manager.scrubbed_bytes += n
        ahead = self.done / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


def _close_blocking(part: Partition, snapshot: bytes | None) -> None:
    """On the storage thread: the last producer snapshot, then seal, checkpoint and mark
    the log clean (PartitionLog.close); rename and remove the directory when the topic
    is gone (renamed first, so a crash mid-delete never leaves a half-deleted live dir)."""
    plog = part.log
    if plog is not None:
        if snapshot is not None:
            write_snapshot(plog.directory, snapshot)
        if plog.replication_bound is not None and not part.delete:
            try:
                checkpoint.write_high_watermark(plog.directory, plog.high_watermark)
            except OSError as exc:
                log.error("%s cannot write the high watermark: %s", plog.owner, exc)
        plog.close()
    if part.delete and os.path.isdir(part.directory):
        doomed = f"{part.directory}.{uuid.uuid4().hex[:8]}-delete"
        os.rename(part.directory, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def _write_checkpoints(jobs) -> list[bool]:
    """On the storage thread: each job's recovery point and producer snapshot."""
    results = []
    for _tp, plog, point, snapshot, hw in jobs:
        ok = True
        if point is not None:
            ok = write_recovery_point(plog.directory, point, plog.owner)
        if hw is not None:
            try:
                checkpoint.write_high_watermark(plog.directory, hw)
            except OSError as exc:
                log.error("%s cannot write the high watermark %d: %s", plog.owner, hw, exc)
        if snapshot is not None:
            try:
                write_snapshot(plog.directory, snapshot)
            except OSError as exc:
                log.error("%s cannot write the producer-state snapshot: %s", plog.owner, exc)
        results.append(ok)
    return results
