"""Replication: this node's role, leader or follower, for every replica it stores
(Kafka's ReplicaManager, Partition and ReplicaFetcherThread, ZooKeeper-based).

The cluster view (ZooKeeper's partition states, written by the controller and by
leaders) says who leads each partition in which leader epoch. `sync()` applies it to
the online logs of the LogManager after every view and every partition state change.

Leader. `leader_logs` holds the logs this node leads; the handlers serve clients from
it only. Becoming leader first records the epoch in the log's leader-epoch cache (the
storage thread writes the file), then the log joins `leader_logs`; produced batches
are stamped with the epoch. Each follower's fetch reports its fetch offset, which is
durable on it (a follower flushes before it fetches again); the high watermark is the
smallest of the leader's durable offset and the fetch offsets of the other ISR
members (PartitionLog.set_replication_bound). So acks=all is answered only when the
batch is durable on every ISR member. A follower that has not caught up for
replica.lag.time.max.ms leaves the ISR; one that reaches the high watermark (and the
start of this leader's epoch) joins it again. Every ISR change is a compare-and-set
of the state znode by the leader, and takes effect here only once written: the ISR
the high watermark is computed over is never smaller than the one in ZooKeeper.

Follower. One ReplicaFetcher per leader node fetches every partition this node
follows from it: first, for a partition newly followed, OffsetForLeaderEpoch with
its latest epoch, and truncation to the divergence point (KIP-101/KIP-279), so no
two replicas hold different records at one offset; then Fetch rounds with this
node's replica id. A round appends what it got, makes it durable (one group commit
over its partitions) and only then sends the next fetch, whose offsets are therefore
durable here. The follower's visible high watermark follows the leader's.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time

from kazoo.exceptions import BadVersionError

from pybroker.coord.placement import broker_of
from pybroker.coord.registry import PartitionInfo
from pybroker.errors import CorruptRecordError
from pybroker.log.partition_log import whole_batches
from pybroker.protocol import ApiKey, ErrorCode
from pybroker.server.peer import PeerConnection, PeerError

log = logging.getLogger("pybroker.replication")

FETCH_VERSION = 11                # replica_id and current_leader_epoch, not flexible
EPOCH_REQUEST_VERSION = 3         # OffsetForLeaderEpoch with replica_id
BACKOFF_S = 0.5                   # after a failed round, or a partition-level error
REQUEST_TIMEOUT_S = 30.0          # beyond the fetch's own max wait
# A leader's answers that mean "this node's view is behind or ahead of the leader's":
# the partition waits for the next view (or BACKOFF_S) before it is fetched again.
_WAIT_FOR_VIEW = {ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.FENCED_LEADER_EPOCH,
                  ErrorCode.UNKNOWN_LEADER_EPOCH, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                  ErrorCode.LEADER_NOT_AVAILABLE, ErrorCode.KAFKA_STORAGE_ERROR,
                  ErrorCode.REPLICA_NOT_AVAILABLE}


# A follower's write failing with these is retried (space may be freed, as a leader's
# appends are); any other errno takes the partition offline, so the controller drops
# this replica from the ISR at once instead of after replica.lag.time.max.ms.
_RETRY_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class NotLeaderError(Exception):
    """An acks=all wait ended because this node stopped leading the partition."""

    error_code = ErrorCode.NOT_LEADER_OR_FOLLOWER


class LeaderState:
    """A partition this node leads in `epoch`, with its followers' progress."""

    __slots__ = ("tp", "plog", "replicas", "removing", "epoch", "isr", "version",
                 "epoch_start", "progress", "caught_up", "last_fetch", "pending", "min_isr")

    def __init__(self, tp, plog, info: PartitionInfo, node_id: int, now: float):
        self.tp = tp
        self.plog = plog
        self.replicas = info.replicas
        self.removing = frozenset(info.removing)  # never added to the ISR: on their way out
        self.epoch = info.leader_epoch
        self.isr = set(info.isr) | {node_id}
        self.version = info.version          # of the state znode, for our CAS
        self.epoch_start = plog.log_end_offset
        # A follower's last reported fetch offset (durable on it). Until it reports,
        # an ISR member counts as at the high watermark: it was in sync up to there.
        self.progress = {n: plog.high_watermark for n in info.replicas if n != node_id}
        self.caught_up = {n: now for n in info.replicas if n != node_id}
        self.last_fetch: dict[int, tuple[float, int]] = {}  # node -> (when, leader's LEO)
        self.pending: set | None = None      # the ISR being written, if a write is out
        self.min_isr = 1                     # min.insync.replicas, refreshed every view

    @property
    def writing(self) -> bool:
        return self.pending is not None

    def reassigned(self, info: PartitionInfo, node_id: int, now: float) -> None:
        """The replica set changed in this epoch (a reassignment): a new follower starts
        from nothing and out of the ISR; a removed one is forgotten."""
        for n in info.replicas:
            if n != node_id and n not in self.progress:
                self.progress[n] = 0
                self.caught_up[n] = now
        for n in set(self.replicas) - set(info.replicas):
            self.progress.pop(n, None)
            self.caught_up.pop(n, None)
            self.last_fetch.pop(n, None)
        self.replicas = info.replicas
        self.removing = frozenset(info.removing)

    def followers_in_sync(self, node_id: int) -> list[int]:
        return [n for n in self.isr if n != node_id]

    def maximal_isr(self) -> set:
        """The ISR and a member being added (KIP-497's maximal ISR): while an expansion
        is being written, ZooKeeper may already list the new member, which the
        controller could then elect, so the high watermark waits for it too."""
        return self.isr | self.pending if self.pending else self.isr


class FollowerState:
    """A partition this node follows: its leader and epoch as the view says."""

    __slots__ = ("tp", "plog", "leader", "epoch", "truncated", "retry_at", "leader_hw")

    def __init__(self, tp, plog, info: PartitionInfo):
        self.tp = tp
        self.plog = plog
        self.leader = info.leader
        self.epoch = info.leader_epoch
        self.truncated = False   # the divergence check with this leader is done
        self.retry_at = 0.0      # monotonic s: not fetched before (after an error)
        self.leader_hw = -1


class ReplicaManager:
    def __init__(self, worker):
        self.worker = worker
        self.node_id = worker.node_id
        self.leader_logs: dict = {}         # tp -> PartitionLog this node leads (online)
        self.leading: dict = {}             # tp -> LeaderState
        self.following: dict = {}           # tp -> FollowerState
        self.fetchers: dict = {}            # leader node -> ReplicaFetcher
        self._becoming: dict = {}           # tp -> epoch being recorded (storage thread)
        self.isr_shrinks = 0
        self.isr_expands = 0
        self.stopped = False

    # --- what handlers ask -----------------------------------------------------------

    def leader_epoch(self, tp) -> int:
        """This node's epoch for tp as leader, else the view's; -1 if unknown."""
        ls = self.leading.get(tp)
        if ls is not None:
            return ls.epoch
        info = self.worker.cluster.partition(*tp)
        return info.leader_epoch if info is not None else -1

    def led_log(self, tp):
        """The log of a partition led here (also while a controlled shutdown hands it
        over, when it is out of leader_logs), or None."""
        ls = self.leading.get(tp)
        return ls.plog if ls is not None else None

    def min_insync(self, tp) -> int:
        return self.worker.config.for_topic(
            "min.insync.replicas", self.worker.cluster.topic_configs.get(tp[0]))

    def row(self, tp) -> tuple[int, int, int, int]:
        """(leading, replicas, ISR size, lag in messages) of tp for the control block.
        Runs on the heartbeat thread: reads only, each a single lookup."""
        ls = self.leading.get(tp)
        if ls is not None:
            progress = [ls.progress.get(n, 0) for n in list(ls.isr) if n != self.node_id]
            lag = ls.plog.log_end_offset - min(progress) if progress else 0
            return 1, len(ls.replicas), len(ls.isr), max(lag, 0)
        info = self.worker.cluster.partition(*tp)
        fs = self.following.get(tp)
        lag = max(fs.leader_hw - fs.plog.log_end_offset, 0) if fs is not None else 0
        if info is None:
            return 0, 1, 0, lag
        return int(info.leader == self.node_id), len(info.replicas), len(info.isr), lag

    def isr_short(self, tp) -> bool:
        """The ISR of a partition led here is smaller than min.insync.replicas (per
        acks=all request: the setting is resolved once per view, not here)."""
        ls = self.leading.get(tp)
        return ls is not None and len(ls.isr) < ls.min_isr

    # --- roles -----------------------------------------------------------------------

    def sync(self) -> None:
        """Apply the view's leaders to the online logs (after every view and every
        change of the stored partitions)."""
        if self.stopped:
            return
        state = self.worker.cluster
        logs = self.worker.partitions.logs
        for tp, plog in list(logs.items()):
            info = state.partition(*tp)
            if info is None or self.node_id not in info.replicas:
                self._drop(tp)
            elif info.leader == self.node_id:
                self._lead(tp, plog, info)
            else:
                self._follow(tp, plog, info)
        for tp in (set(self.leading) | set(self.following) | set(self.leader_logs)) - set(logs):
            self._drop(tp)

    def _lead(self, tp, plog, info: PartitionInfo) -> None:
        ls = self.leading.get(tp)
        if ls is not None and ls.plog is plog and ls.epoch == info.leader_epoch:
            ls.min_isr = self.min_insync(tp)  # a topic config change comes with a view
            if info.replicas != ls.replicas or frozenset(info.removing) != ls.removing:
                ls.reassigned(info, self.node_id, time.monotonic())
            if info.version > ls.version:  # a newer write (the controller's, or ours)
                ls.isr = set(info.isr) | {self.node_id}
                ls.version = info.version
                self._bound(ls)
            return
        if self._becoming.get(tp) == info.leader_epoch:
            return
        self._unlead(tp)
        self._unfollow(tp)
        if plog.epochs.latest_epoch() >= info.leader_epoch:
            self._start_leading(tp, plog, info)
            return
        self._becoming[tp] = info.leader_epoch
        fut = self.worker.partitions.run_storage(plog.epochs.assign, info.leader_epoch,
                                                 plog.log_end_offset)
        fut.add_done_callback(lambda f: self._epoch_recorded(tp, plog, info.leader_epoch, f))

    def _epoch_recorded(self, tp, plog, epoch: int, fut: asyncio.Future) -> None:
        if self._becoming.get(tp) == epoch:
            del self._becoming[tp]
        if fut.exception() is not None:
            log.error("node=%d tp=%s-%d cannot record leader epoch %d: %r; not leading",
                      self.node_id, tp[0], tp[1], epoch, fut.exception())
            return
        info = self.worker.cluster.partition(*tp)
        if (not self.stopped and info is not None and info.leader == self.node_id
                and info.leader_epoch == epoch and self.worker.partitions.logs.get(tp) is plog):
            self._start_leading(tp, plog, info)

    def _start_leading(self, tp, plog, info: PartitionInfo) -> None:
        ls = LeaderState(tp, plog, info, self.node_id, time.monotonic())
        ls.min_isr = self.min_insync(tp)
        plog.leader_epoch = ls.epoch  # stamped into every batch produced from now on
        self.leading[tp] = ls
        self.leader_logs[tp] = plog
        self._bound(ls)
        self.worker.partitions.wake(tp)
        log.info("node=%d tp=%s-%d leading in epoch %d from offset %d, isr %s",
                 self.node_id, tp[0], tp[1], ls.epoch, ls.epoch_start, sorted(ls.isr))

    def _follow(self, tp, plog, info: PartitionInfo) -> None:
        fs = self.following.get(tp)
        if (fs is not None and fs.plog is plog and fs.leader == info.leader
                and fs.epoch == info.leader_epoch):
            return
        self._unlead(tp)
        self._unfollow(tp)
        fs = FollowerState(tp, plog, info)
        self.following[tp] = fs
        if info.leader >= 0:
            fetcher = self.fetchers.get(info.leader)
            if fetcher is None:
                self.fetchers[info.leader] = fetcher = ReplicaFetcher(self, info.leader)
            fetcher.add(fs)
        log.info("node=%d tp=%s-%d following node %d in epoch %d", self.node_id, tp[0],
                 tp[1], info.leader, info.leader_epoch)

    def _unlead(self, tp) -> None:
        self.leader_logs.pop(tp, None)
        ls = self.leading.pop(tp, None)
        if ls is not None:
            ls.plog.leader_epoch = None
            ls.plog.fail_durable_waiters(NotLeaderError(
                f"tp={tp[0]}-{tp[1]}: node {self.node_id} no longer leads it"))
            self.worker.partitions.wake(tp)
            log.info("node=%d tp=%s-%d no longer leading (epoch %d)", self.node_id, tp[0],
                     tp[1], ls.epoch)

    def _unfollow(self, tp) -> None:
        fs = self.following.pop(tp, None)
        if fs is None:
            return
        fetcher = self.fetchers.get(fs.leader)
        if fetcher is not None:
            fetcher.remove(tp)
            if not fetcher.partitions:
                fetcher.stop()
                del self.fetchers[fs.leader]

    def _drop(self, tp) -> None:
        self._becoming.pop(tp, None)
        self._unlead(tp)
        self._unfollow(tp)

    # --- controlled shutdown ------------------------------------------------------------

    async def hand_over(self, timeout: float) -> int:
        """SIGTERM: move the leadership of every partition led here to a live in-sync
        follower on another broker before this node stops (Kafka's controlled
        shutdown), so clients see one retriable NOT_LEADER_OR_FOLLOWER and find the new
        leader. New appends stop first; the successor gets up to `timeout` s to copy
        the log end; the change is a compare-and-set of the state znode (epoch + 1, this
        node out of the ISR). Returns the partitions handed over."""
        deadline = time.monotonic() + timeout
        moves = []
        for tp, ls in list(self.leading.items()):
            successor = self._successor(ls)
            if successor is not None:
                self.leader_logs.pop(tp, None)  # no new appends: clients retry elsewhere
                moves.append((ls, successor))
        while moves and time.monotonic() < deadline and any(
                ls.progress.get(n, -1) < ls.plog.log_end_offset for ls, n in moves):
            await asyncio.sleep(0.01)  # followers' fetches come in on this loop
        writes = []
        for ls, successor in moves:
            info = PartitionInfo(ls.replicas, successor, ls.epoch + 1,
                                 tuple(n for n in ls.replicas
                                       if n in ls.isr and n != self.node_id), ls.version)
            writes.append(self.worker.run_zk(self.worker.registry.write_partition_state,
                                             ls.tp[0], ls.tp[1], info,
                                             self.worker.cluster.controller_epoch))
        moved = 0
        for (ls, successor), fut in zip(moves, writes):
            try:
                await asyncio.wait_for(asyncio.shield(fut),
                                       max(deadline - time.monotonic(), 0.1))
                moved += 1
                log.info("node=%d tp=%s-%d leadership handed to node %d (epoch %d)",
                         self.node_id, ls.tp[0], ls.tp[1], successor, ls.epoch + 1)
            except Exception as exc:  # noqa: BLE001 - the controller moves it instead
                log.warning("node=%d tp=%s-%d hand-over to node %d failed (%r); the "
                            "controller moves it once this node is gone", self.node_id,
                            ls.tp[0], ls.tp[1], successor, exc)
        return moved

    def _successor(self, ls: LeaderState) -> int | None:
        state = self.worker.cluster
        me = broker_of(self.node_id)
        for n in ls.replicas:
            if (n in ls.isr and n != self.node_id and broker_of(n) != me
                    and state.is_live(n, *ls.tp)):
                return n
        return None

    def stop(self) -> None:
        self.stopped = True
        for tp in list(self.leading) + list(self.following):
            self._drop(tp)
        for fetcher in list(self.fetchers.values()):
            fetcher.stop()
        self.fetchers.clear()

    # --- leader: followers' progress, high watermark, ISR ------------------------------

    def follower_fetched(self, tp, node: int, offset: int) -> ErrorCode:
        """A follower fetched tp from offset (durable on it). NONE, or why it may not."""
        ls = self.leading.get(tp)
        if ls is None or node not in ls.replicas or node == self.node_id:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER
        plog = ls.plog
        end = plog.log_end_offset
        if offset > end or offset < plog.log_start_offset:
            return ErrorCode.OFFSET_OUT_OF_RANGE
        now = time.monotonic()
        previous_offset = ls.progress.get(node)
        ls.progress[node] = offset
        previous = ls.last_fetch.get(node)
        if offset >= end:
            ls.caught_up[node] = now
        elif previous is not None and offset >= previous[1]:
            ls.caught_up[node] = max(ls.caught_up.get(node, 0.0), previous[0])
        ls.last_fetch[node] = (now, end)
        if node in ls.isr:
            try:
                self._bound(ls)
            except ValueError as exc:  # not a batch boundary: no follower of ours sends it
                ls.progress[node] = previous_offset if previous_offset is not None else 0
                log.warning("node=%d tp=%s-%d node %d fetched from %d: %s", self.node_id,
                            tp[0], tp[1], node, offset, exc)
                return ErrorCode.OFFSET_OUT_OF_RANGE
        elif (not ls.writing and node not in ls.removing and offset >= plog.high_watermark
              and offset >= ls.epoch_start):
            self._change_isr(ls, ls.isr | {node}, f"node {node} caught up at {offset}")
        return ErrorCode.NONE

    def _bound(self, ls: LeaderState) -> None:
        # An ISR member outside the replicas (a cancelled reassignment's, until the
        # controller drops it) is never elected (controller.decide), so it bounds nothing.
        followers = [n for n in ls.maximal_isr() if n != self.node_id and n in ls.progress]
        bound = min(ls.progress.get(n, 0) for n in followers) if followers else None
        ls.plog.set_replication_bound(bound)

    def check_isr(self) -> None:
        """Periodic: followers not caught up for replica.lag.time.max.ms leave the ISR."""
        lag = self.worker.config["replica.lag.time.max.ms"] / 1000
        now = time.monotonic()
        for ls in list(self.leading.values()):
            if ls.writing:
                continue
            out = {n for n in ls.followers_in_sync(self.node_id)
                   if now - ls.caught_up.get(n, now) > lag}
            if out:
                self._change_isr(ls, ls.isr - out, f"node(s) {sorted(out)} not caught up "
                                 f"for {lag * 1000:.0f} ms (replica.lag.time.max.ms)")

    def _change_isr(self, ls: LeaderState, isr: set, why: str) -> None:
        ls.pending = set(isr)
        topic, p = ls.tp
        info = PartitionInfo(ls.replicas, self.node_id, ls.epoch,
                             tuple(n for n in ls.replicas if n in isr), ls.version)
        registry = self.worker.registry
        fut = self.worker.run_zk(registry.write_partition_state, topic, p, info,
                                 self.worker.cluster.controller_epoch)
        fut.add_done_callback(lambda f: self._isr_written(ls, info, why, f))

    def _isr_written(self, ls: LeaderState, info: PartitionInfo, why: str, fut) -> None:
        ls.pending = None
        tp = ls.tp
        exc = fut.exception()
        if exc is not None:
            level = logging.INFO if isinstance(exc, BadVersionError) else logging.WARNING
            log.log(level, "node=%d tp=%s-%d ISR change to %s not written (%s: %s); %s",
                    self.node_id, tp[0], tp[1], list(info.isr), type(exc).__name__, exc,
                    "the state changed meanwhile: waiting for the new view"
                    if isinstance(exc, BadVersionError) else "retrying at the next check")
            return
        if self.leading.get(tp) is not ls:
            return
        grew = len(info.isr) > len(ls.isr)
        self.isr_expands += grew
        self.isr_shrinks += not grew
        ls.isr = set(info.isr)
        ls.version = max(ls.version, fut.result())
        log.info("node=%d tp=%s-%d ISR now %s: %s", self.node_id, tp[0], tp[1],
                 list(info.isr), why)
        self._bound(ls)
        self.worker.partitions.wake(tp)


class ReplicaFetcher:
    """The fetches of every partition this node follows from one leader node, over one
    connection, one round at a time."""

    def __init__(self, manager: ReplicaManager, leader: int):
        self.manager = manager
        self.worker = manager.worker
        self.leader = leader
        self.partitions: dict = {}       # tp -> FollowerState
        self.conn: PeerConnection | None = None
        self.failing = False
        self.stopped = False
        self._wake = asyncio.Event()
        self.task = self.worker.loop.create_task(self._run())

    def add(self, fs: FollowerState) -> None:
        self.partitions[fs.tp] = fs
        self._wake.set()

    def remove(self, tp) -> None:
        self.partitions.pop(tp, None)

    def stop(self) -> None:
        self.stopped = True
        self.task.cancel()
        if self.conn is not None:
            self.conn.close()

    def _current(self, fs: FollowerState) -> bool:
        """fs is still what this node does with its partition (roles change while a
        round is out)."""
        return (not self.stopped and self.partitions.get(fs.tp) is fs
                and self.manager.following.get(fs.tp) is fs
                and self.worker.partitions.logs.get(fs.tp) is fs.plog)

    async def _run(self) -> None:
        node = self.manager.node_id
        while not self.stopped:
            try:
                if not self.partitions:
                    await self._idle(BACKOFF_S)
                    continue
                conn = self._connection()
                await self._truncate(conn)
                await self._fetch(conn)
                if self.failing:
                    self.failing = False
                    log.info("node=%d fetching from node %d again", node, self.leader)
            except asyncio.CancelledError:
                raise
            except PeerError as exc:
                if not self.failing:
                    self.failing = True
                    log.warning("node=%d replica fetch from node %d failed: %s; retrying "
                                "every %.1f s", node, self.leader, exc, BACKOFF_S)
                await asyncio.sleep(BACKOFF_S)
            except Exception:  # noqa: BLE001 - the fetcher must outlive any one bad round
                log.exception("node=%d replica fetch round from node %d failed", node,
                              self.leader)
                await asyncio.sleep(BACKOFF_S)

    async def _idle(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _connection(self) -> PeerConnection:
        address = self.worker.cluster.nodes.get(self.leader)
        if address is None:
            raise PeerError(f"leader node {self.leader} is not registered")
        if self.conn is not None and (self.conn.host, self.conn.port) == tuple(address):
            return self.conn
        if self.conn is not None:
            self.conn.close()
        self.conn = PeerConnection(address[0], address[1],
                                   f"pybroker-replica-{self.manager.node_id}")
        return self.conn

    # --- divergence: OffsetForLeaderEpoch and truncation -------------------------------

    async def _truncate(self, conn: PeerConnection) -> None:
        now = time.monotonic()
        pending = [fs for fs in self.partitions.values()
                   if not fs.truncated and fs.retry_at <= now]
        if not pending:
            return
        topics: dict = {}
        for fs in pending:
            topics.setdefault(fs.tp[0], []).append({
                "partition": fs.tp[1], "current_leader_epoch": fs.epoch,
                "leader_epoch": fs.plog.epochs.latest_epoch()})
        body = {"replica_id": self.manager.node_id, "topics": [
            {"topic": t, "partitions": parts} for t, parts in topics.items()]}
        response = await conn.request(ApiKey.OFFSET_FOR_LEADER_EPOCH, EPOCH_REQUEST_VERSION,
                                      body, REQUEST_TIMEOUT_S)
        asked = {fs.tp: fs for fs in pending}
        for topic in response["topics"]:
            for answer in topic["partitions"]:
                fs = asked.get((topic["topic"], answer["partition"]))
                if fs is not None and self._current(fs):
                    await self._apply_divergence(fs, answer)

    async def _apply_divergence(self, fs: FollowerState, answer: dict) -> None:
        code = answer["error_code"]
        if code != ErrorCode.NONE:
            fs.retry_at = time.monotonic() + BACKOFF_S
            return
        plog = fs.plog
        end = plog.log_end_offset
        mine = plog.epochs.latest_epoch()
        epoch, leader_end = answer["leader_epoch"], answer["end_offset"]
        if mine < 0 or epoch < 0 or leader_end < 0:
            target = plog.high_watermark  # nothing to compare: what is known committed
        elif epoch < mine:
            target = min(leader_end, plog.epochs.end_offset_for(epoch, end)[1])
        else:
            target = leader_end
        target = max(min(target, end), plog.log_start_offset)
        if target < end:
            await self.worker.partitions.sync_now(fs.tp)  # no flush ticket may be out
            if not self._current(fs):
                return
            log.warning("node=%d tp=%s-%d truncating from %d to %d (leader %d epoch %d "
                        "ends at %d; ours %d)", self.manager.node_id, fs.tp[0], fs.tp[1],
                        end, target, self.leader, epoch, leader_end, mine)
            plog.truncate_to(target)
            await self._reload_producers(fs)
        fs.truncated = True

    async def _reload_producers(self, fs: FollowerState) -> None:
        """The producer table after a cut of the log: replayed again (storage thread)."""
        self.worker.producers.forget(fs.tp)
        await self.worker.partitions.run_storage(self.worker.producers.load, fs.tp, fs.plog)

    # --- fetching ------------------------------------------------------------------

    async def _fetch(self, conn: PeerConnection) -> None:
        now = time.monotonic()
        config = self.worker.config
        ready = []
        for fs in self.partitions.values():
            if not fs.truncated or fs.retry_at > now:
                continue
            if fs.plog.durable_offset < fs.plog.log_end_offset:
                await self.worker.partitions.sync_now(fs.tp)  # a failed round's leftovers
                continue
            ready.append(fs)
        if not ready:
            await self._idle(BACKOFF_S)
            return
        topics: dict = {}
        for fs in ready:
            topics.setdefault(fs.tp[0], []).append({
                "partition": fs.tp[1], "current_leader_epoch": fs.epoch,
                "fetch_offset": fs.plog.log_end_offset,
                "log_start_offset": fs.plog.log_start_offset,
                "partition_max_bytes": config["replica.fetch.max.bytes"]})
        wait_ms = config["replica.fetch.wait.max.ms"]
        body = {"replica_id": self.manager.node_id, "max_wait_ms": wait_ms, "min_bytes": 1,
                "max_bytes": config["replica.fetch.response.max.bytes"],
                "isolation_level": 0, "session_id": 0, "session_epoch": -1,
                "topics": [{"topic": t, "partitions": parts} for t, parts in topics.items()],
                "forgotten_topics_data": [], "rack_id": ""}
        response = await conn.request(ApiKey.FETCH, FETCH_VERSION, body,
                                      wait_ms / 1000 + REQUEST_TIMEOUT_S)
        asked = {fs.tp: fs for fs in ready}
        touched, appended = [], []
        for topic in response["responses"]:
            for answer in topic["partitions"]:
                fs = asked.get((topic["topic"], answer["partition_index"]))
                if fs is None or not self._current(fs):
                    continue
                if await self._take(fs, answer):
                    touched.append(fs)
                    if fs.plog.durable_offset < fs.plog.log_end_offset:
                        appended.append(fs)
        syncs = [self.worker.partitions.sync_now(fs.tp) for fs in appended]
        if syncs:  # one group commit for the round, before the next fetch
            await asyncio.gather(*syncs, return_exceptions=True)
        for fs in touched:
            if self._current(fs) and fs.leader_hw >= 0:
                fs.plog.set_replication_bound(fs.leader_hw)

    async def _take(self, fs: FollowerState, answer: dict) -> bool:
        """Apply one partition's answer; True if the partition's state may have moved."""
        code = answer["error_code"]
        plog = fs.plog
        if code == ErrorCode.OFFSET_OUT_OF_RANGE:
            start = answer["log_start_offset"]
            if 0 <= plog.log_end_offset < start:
                await self.worker.partitions.sync_now(fs.tp)
                if self._current(fs):
                    log.warning("node=%d tp=%s-%d behind the leader's log start %d: "
                                "starting over there", self.manager.node_id, fs.tp[0],
                                fs.tp[1], start)
                    plog.reset_to(start)
                    await self._reload_producers(fs)
            else:
                fs.truncated = False  # ahead of the leader: find the divergence again
            return False
        if code != ErrorCode.NONE:
            if code not in _WAIT_FOR_VIEW:
                log.warning("node=%d tp=%s-%d leader %d answered %s", self.manager.node_id,
                            fs.tp[0], fs.tp[1], self.leader, ErrorCode(code).name)
            fs.retry_at = time.monotonic() + BACKOFF_S
            return False
        fs.leader_hw = answer["high_watermark"]
        records = answer["records"]
        if records:
            whole = whole_batches(records)
            if whole:
                try:
                    plog.append_replica(records[:whole])
                except CorruptRecordError as exc:
                    log.error("node=%d tp=%s-%d leader %d sent a bad batch: %s",
                              self.manager.node_id, fs.tp[0], fs.tp[1], self.leader, exc)
                    fs.retry_at = time.monotonic() + BACKOFF_S
                    return False
                except ValueError as exc:  # not at our log end: check divergence again
                    log.warning("node=%d tp=%s-%d %s", self.manager.node_id, fs.tp[0],
                                fs.tp[1], exc)
                    fs.truncated = False
                    return False
                except OSError as exc:
                    self.worker.log_storage_error(fs.tp, exc)
                    if exc.errno not in _RETRY_ERRNOS:  # a broken disk, not a full one
                        self.worker.partitions.take_offline(
                            fs.tp, f"replica append failed: {exc}", exc)
                    fs.retry_at = time.monotonic() + BACKOFF_S
                    return False
                self.worker.producers.replicated(fs.tp, records[:whole])
                self.worker.partitions.appended(fs.tp)
        return True
