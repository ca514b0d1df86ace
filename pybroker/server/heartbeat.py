"""A worker's heartbeat: a daemon thread that publishes the worker's row, partition rows
and histograms into the control block every interval, and the supervisor's rule for
when a worker is hung.

The thread, not the event loop, publishes, so the two failure modes look different:
  - the process is stopped or wedged (SIGSTOP, a C call holding the GIL): nothing runs,
    heartbeat_ms goes stale;
  - the event loop is stuck (a blocking call, an endless callback): the thread still
    beats, but loop_ms (the loop's own record of its last progress, which the thread
    copies into the row) goes stale;
  - the loop is busy (recovering partitions on storage threads, many requests): both
    stay fresh, and the supervisor leaves it alone.
All times are monotonic ms (controlblock.monotonic_ms): CLOCK_MONOTONIC is
system-wide on Linux, so the supervisor compares a worker's values with its own clock,
and a wall-clock step changes nothing.

Ownership: the thread is the only writer of its worker's part, partition rows and
histogram rows (controlblock's single-writer rule); nothing else in the worker may
call write_worker/write_partitions/write_histograms while it runs. stop() publishes a
last time from the caller's thread, after the heartbeat thread has ended.
"""
from __future__ import annotations

import logging
import threading

from pybroker.server import controlblock
from pybroker.server.controlblock import ControlBlock, monotonic_ms
from pybroker.server.partition_state import PartitionState

log = logging.getLogger("pybroker.server")

INTERVAL_S = 0.25   # 4 beats a second: ages in `pybroker stats` stay within 0.25 s
STOP_JOIN_S = 5.0   # stop() waits this long for a publish in progress
STARTUP_GRACE_MS = 30_000  # a new worker may take this long to write its first row


class Heartbeat:
    """Publishes `collect()` into `control` for worker `index` every interval_s.

    collect runs on the heartbeat thread and returns (worker_fields, partition_rows,
    (by_api, fsync)): worker_fields a dict of controlblock.WORKER_FIELDS (pid, node_id,
    port, state, connections, ...), partition_rows a list of controlblock.PartitionRow,
    by_api {api key: stats.Histogram} and fsync a stats.Histogram. It reads structures
    the event loop mutates, so it must copy them with C-level copies (list(d.items()),
    dict(d)), which hold the GIL throughout, rather than iterate them in Python.
    The thread adds heartbeat_ms (now) and loop_ms (the loop_ms attribute), and fills
    partitions, opening, offline and flushes from the rows unless collect gave them.

    The event loop records its progress in `loop_ms` (a plain attribute: an int store
    is atomic under the GIL); watch_loop(loop) schedules that on the loop itself."""

    def __init__(self, control: ControlBlock, index: int, collect, interval_s: float = INTERVAL_S):
        self.control = control
        self.index = index
        self.collect = collect
        self.interval_s = interval_s
        self.loop_ms = 0          # written by the event loop, read by the thread
        self.beats = 0            # publishes completed (tests and logs)
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{index}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch_loop(self, loop) -> None:
        """Record loop progress every interval_s from callbacks on `loop` (call on the
        loop's thread). A loop that runs no callback for longer than the supervisor's
        timeout is hung."""
        def tick():
            self.loop_ms = monotonic_ms()
            if not self._stopping:
                loop.call_later(self.interval_s, tick)
        tick()

    def publish_now(self) -> None:
        """Wake the thread for an immediate publish (e.g. the partition set changed);
        safe from any thread."""
        self._wake.set()

    def stop(self, **final_fields) -> None:
        """End the thread, then publish once more from this thread, with
        final_fields (e.g. state=controlblock.STOPPED) over what collect returns."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(STOP_JOIN_S)
        if self._thread.is_alive():  # stuck in collect: a second writer would race it
            log.error("worker=%d heartbeat thread did not stop in %.0f s; no final publish",
                      self.index, STOP_JOIN_S)
            return
        self._publish_safely(final_fields)

    def _run(self) -> None:
        while not self._stopping:
            self._publish_safely({})
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def _publish_safely(self, overrides: dict) -> None:
        try:
            self.publish(overrides)
        except Exception:  # noqa: BLE001 - a failed beat is logged; the next one retries
            log.exception("worker=%d heartbeat publish failed", self.index)

    def publish(self, overrides: dict | None = None) -> None:
        fields, rows, (by_api, fsync) = self.collect()
        fields = dict(fields)
        fields.setdefault("partitions", len(rows))
        fields.setdefault("opening", sum(r.state == PartitionState.OPENING for r in rows))
        fields.setdefault("offline", sum(r.state == PartitionState.OFFLINE for r in rows))
        fields.setdefault("flushes", sum(r.flushes for r in rows))
        fields.update(overrides or {})
        self.control.write_partitions(self.index, rows)
        self.control.write_histograms(self.index, by_api, fsync)
        # the worker part last: its heartbeat_ms says everything above is published
        fields["loop_ms"] = self.loop_ms
        fields["heartbeat_ms"] = monotonic_ms()
        self.control.write_worker(self.index, **fields)
        self.beats += 1


def stale_reason(row: dict, pid: int, now_ms: int, timeout_ms: int,
                 since_fork_ms: float) -> str | None:
    """Why the supervisor should kill worker process `pid` whose control-block row
    (read_worker) is `row`, at monotonic `now_ms`; None when it is healthy.

    - stopping or stopped: never (it is draining or exiting on its own);
    - no row of its own yet (another pid, or no heartbeat): only after
      max(timeout_ms, STARTUP_GRACE_MS) since the fork;
    - heartbeat_ms older than timeout_ms: the process does not run (stopped, wedged);
    - loop_ms older than timeout_ms at the last heartbeat: the event loop is hung while
      the thread still beats. Measured against heartbeat_ms, not now: in a stopped
      process the loop's record is always a little older than the thread's, and that
      must read as a stopped process, not a hung loop.
    A row that could not be read whole (torn) still has whole 8-byte fields; its
    heartbeat is at worst one beat old."""
    if row["state"] in (controlblock.STOPPING, controlblock.STOPPED):
        return None
    if row["pid"] != pid or not row["heartbeat_ms"]:
        grace_ms = max(timeout_ms, STARTUP_GRACE_MS)
        if since_fork_ms > grace_ms:
            return f"wrote no heartbeat in {since_fork_ms:.0f} ms since its fork " \
                   f"(grace {grace_ms} ms)"
        return None
    heartbeat_age = now_ms - row["heartbeat_ms"]
    if heartbeat_age > timeout_ms:
        return f"heartbeat is {heartbeat_age} ms old (timeout {timeout_ms} ms)"
    if row["loop_ms"]:
        loop_stuck = row["heartbeat_ms"] - row["loop_ms"]
        if loop_stuck > timeout_ms:
            return (f"event loop made no progress for {loop_stuck} ms before its last "
                    f"heartbeat, {heartbeat_age} ms ago (timeout {timeout_ms} ms)")
    return None

