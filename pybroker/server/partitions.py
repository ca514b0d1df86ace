"""The partitions one worker owns: their logs, the flush timer, retention, and the
wake-ups of fetches waiting for data.

Owned by the worker's event loop; not thread-safe. The time-based flushes (flush.ms)
run their fdatasync on one flusher thread, so a slow disk stalls neither the other
partitions nor the connections: the log's high watermark moves, and acks=all answers
and waiting fetches are woken, back on the loop when the sync has returned
(PartitionLog.begin_flush / end_flush). There is one flusher thread per worker, so the
syncs of different partitions run one after another. A failed sync fences its log: no
more appends (KAFKA_STORAGE_ERROR) and no more visible offsets until the worker
restarts and recovers it; it is not retried, since a retry can succeed without the
lost pages (PartitionLog.end_flush).

A partition is owned here exactly when the ZooKeeper assignment names this node as its
leader; its directory is `<data-dir>/<topic>-<partition>`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from pybroker.config import BrokerConfig, ConfigError
from pybroker.coord.registry import ClusterState
from pybroker.log import LogConfig, PartitionLog
from pybroker.server.producer_state import ProducerStates

log = logging.getLogger("pybroker.server")


def partition_dir(data_dir: str, topic: str, partition: int) -> str:
    return os.path.join(data_dir, f"{topic}-{partition}")


class PartitionSet:
    def __init__(self, data_dir: str, config: BrokerConfig, node_id: int,
                 loop: asyncio.AbstractEventLoop, stats=None):
        self.data_dir = data_dir
        self.config = config
        self.node_id = node_id
        self.loop = loop
        self.logs: dict[tuple[str, int], PartitionLog] = {}
        self.stats = stats                    # WorkerStats: fsync latencies go there
        self.producers = ProducerStates()
        self._dirty: set[tuple[str, int]] = set()     # logs with unflushed appends
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_timer_ms = 0                       # when the armed timer fires
        self._flusher = ThreadPoolExecutor(1, thread_name_prefix=f"flusher-{node_id}")
        self._waiters: dict[tuple[str, int], set[asyncio.Future]] = {}

    # --- ownership -------------------------------------------------------------------

    def sync(self, state: ClusterState) -> bool:
        """Open the logs newly assigned to this node, close those no longer assigned and
        delete those whose topic is gone. True if the owned set changed."""
        wanted = {(t, p) for t, parts in state.topics.items()
                  for p, node in parts.items() if node == self.node_id}
        changed = False
        for tp in sorted(set(self.logs) - wanted):
            self._close(tp, delete=tp[0] not in state.topics)
            changed = True
        configs = {topic: self._log_config(topic, state) for topic, _ in wanted}
        for tp in sorted(wanted - set(self.logs)):
            self._open(tp, configs[tp[0]])
            changed = True
        for tp, plog in self.logs.items():
            config = configs[tp[0]]
            if config != plog.config:
                plog.reconfigure(config)
                log.info("node=%d tp=%s-%d config now %s", self.node_id, tp[0], tp[1], config)
        return changed

    def _log_config(self, topic: str, state: ClusterState) -> LogConfig:
        """The broker's log settings under the topic's overrides; without the overrides
        (logged) if ZooKeeper holds one these settings refuse, as written by hand."""
        try:
            return self.config.log_config(state.topic_configs.get(topic, {}))
        except ConfigError as exc:
            log.error("node=%d topic=%s ignores its configs in ZooKeeper: %s", self.node_id,
                      topic, exc)
            return self.config.log_config()

    def _open(self, tp: tuple[str, int], config: LogConfig) -> None:
        topic, partition = tp
        directory = partition_dir(self.data_dir, topic, partition)
        plog = PartitionLog(directory, config,
                            name=f"{topic}-{partition}",
                            on_flush=lambda _hw, seconds, tp=tp: self._flushed(tp, seconds))
        self.producers.load(tp, plog)
        self.logs[tp] = plog

    def _close(self, tp: tuple[str, int], delete: bool) -> None:
        plog = self.logs.pop(tp)
        self._dirty.discard(tp)
        plog.close()
        if not delete:
            self.producers.save(tp, plog)
        self.producers.forget(tp)
        self._wake(tp)
        if delete:
            # rename first so a crash mid-delete never leaves a half-deleted live dir
            doomed = f"{plog.directory}.{uuid.uuid4().hex[:8]}-delete"
            os.rename(plog.directory, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            log.info("node=%d tp=%s deleted", self.node_id, plog.name)

    def close_all(self) -> None:
        """Flush, checkpoint and mark every log cleanly closed."""
        if self._flush_timer:
            self._flush_timer.cancel()
        for tp in list(self.logs):
            self._close(tp, delete=False)
        self._flusher.shutdown(wait=True)  # a sync under way ends; its log has flushed

    def flush_all(self) -> None:
        """Flush every log now and wake every waiting fetch (shutdown)."""
        for plog in self.logs.values():
            plog.flush()
        for tp in list(self._waiters):
            self._wake(tp)

    def checkpoint(self) -> None:
        """Periodic work: recovery-point checkpoints and producer-state snapshots."""
        for tp, plog in self.logs.items():
            plog.maybe_checkpoint()
            self.producers.save(tp, plog)

    def names(self) -> list[str]:
        return [f"{t}-{p}" for t, p in self.logs]

    # --- flush policy (P5) -----------------------------------------------------------

    def appended(self, tp: tuple[str, int]) -> None:
        """Note an append: arm the flush timer if the log still holds unflushed data."""
        if self._flush_timer is not None and tp in self._dirty:
            return  # the armed timer will look at this log (hot path)
        plog = self.logs[tp]
        deadline = plog.flush_deadline_ms()
        if deadline is None:
            return
        self._dirty.add(tp)
        self._arm_flush_timer(deadline)

    def _arm_flush_timer(self, deadline_ms: int) -> None:
        if self._flush_timer is not None:
            if self._flush_timer_ms <= deadline_ms:
                return
            self._flush_timer.cancel()  # an earlier deadline (a retry, a flush ended)
        delay = max(0.0, deadline_ms / 1000 - time.time())
        self._flush_timer_ms = deadline_ms
        self._flush_timer = self.loop.call_later(delay, self._on_flush_timer)

    def _on_flush_timer(self) -> None:
        self._flush_timer = None
        now = int(time.time() * 1000)
        next_deadline = None
        for tp in list(self._dirty):
            plog = self.logs.get(tp)
            deadline = None if plog is None else plog.flush_deadline_ms()
            if deadline is not None and now >= deadline:
                self._start_flush(tp, plog)
                deadline = plog.flush_deadline_ms()
            if deadline is None or plog.flushing:
                self._dirty.discard(tp)  # nothing due, or the ticket's end looks again
            else:
                next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
        if next_deadline is not None:
            self._arm_flush_timer(next_deadline)

    def _start_flush(self, tp: tuple[str, int], plog: PartitionLog) -> None:
        ticket = plog.begin_flush()
        if ticket is None:
            return
        synced = self.loop.run_in_executor(self._flusher, ticket.sync)
        synced.add_done_callback(lambda fut: self._end_flush(tp, plog, ticket, fut))

    def _end_flush(self, tp, plog: PartitionLog, ticket, fut: asyncio.Future) -> None:
        error = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        plog.end_flush(ticket, error)  # the high watermark, acks=all, fetches; or fenced
        if plog.closed or self.logs.get(tp) is not plog:
            return
        deadline = plog.flush_deadline_ms()
        if deadline is not None:  # appends came during the sync
            self._dirty.add(tp)
            self._arm_flush_timer(deadline)

    # --- waiting for data (fetch long-poll) ------------------------------------------

    def wait_for_data(self, tps: list[tuple[str, int]], timeout: float) -> asyncio.Future:
        """A future that completes when any of tps gets newly flushed data (or its log
        closes), or after timeout seconds."""
        fut = self.loop.create_future()
        for tp in tps:
            self._waiters.setdefault(tp, set()).add(fut)

        def done(_f=None):
            for tp in tps:
                waiters = self._waiters.get(tp)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[tp]
            if not fut.done():
                fut.set_result(None)
        timer = self.loop.call_later(timeout, done)
        fut.add_done_callback(lambda _f: (timer.cancel(), done()))
        return fut

    def _flushed(self, tp: tuple[str, int], seconds: float) -> None:
        if self.stats is not None:
            self.stats.fsync.observe(seconds)
        self._wake(tp)

    def _wake(self, tp: tuple[str, int]) -> None:
        for fut in list(self._waiters.get(tp, ())):
            if not fut.done():
                fut.set_result(None)

    # --- retention (P11) -------------------------------------------------------------

    def enforce_retention(self) -> int:
        deleted = 0
        for plog in self.logs.values():
            deleted += plog.enforce_retention()
        return deleted

