"""Nemesis soak (issue 8): real Kafka clients under a schedule of faults, then a history
check (pybroker.testing.history).

Load: two acks=all confluent-kafka producers (one idempotent, one not; RATE msgs/s each,
linger 5 ms, retries on) writing unique values b"<producer>-<seq>" round-robin over
PARTITIONS partitions, and one confluent-kafka group consumer (manual commits after
processing, every COMMIT_EVERY messages and at the end).

Broker: 2 workers whose data dir is a loop-mounted 512 MiB ext4 image, on a private
EmbeddedZooKeeper this test starts (so it can stop and start it, same port and data).

Faults, one every GAP_S seconds (kinds round-robin in a seeded order, victims and gaps
seeded; the seed and each fault with its time are printed; NEMESIS_SEED=<n> replays):
  kill        kill -9 a worker; the supervisor restarts it (1 restart expected)
  hang        SIGSTOP a worker past worker.heartbeat.timeout.ms; the supervisor
              SIGKILLs and restarts it (1 restart expected); SIGCONT whatever is left
  zk-outage   ZooKeeper stopped ZK_DOWN_S, then started again (no restart expected)
  expiry      SIGSTOP a worker until ZooKeeper has expired its session (its
              registration is gone; always shorter than the heartbeat timeout), then
              SIGCONT: it must register again (no restart expected)
  disk-full   the ext4 image filled with a filler file to ENOSPC, held DISK_FULL_S,
              deleted (produce answers KAFKA_STORAGE_ERROR meanwhile, the producers
              retry; no restart expected)
  zk-hang     the ZooKeeper JVM SIGSTOPped ZK_DOWN_S, then SIGCONT: connections stay
              open and nothing answers; the server expires every session when it
              resumes (no restart expected)
  kill-in-zk-outage
              ZooKeeper stopped, a worker killed -9 meanwhile, ZooKeeper started after
              ZK_DOWN_S: the successor has no view of the cluster until then (1
              restart expected)

A metadata watcher asks every worker for the topic every METADATA_POLL_S (back to back
for BURST_S after each restart): an answer without the topic's partitions is an anomaly.

Afterwards: producers flushed, the consumer drained until it has delivered every acked
value (bounded), the final log read from offset 0 to each high watermark, and asserted:
lost, unseen, inconsistent, idempotent duplicates, idempotent reorders and poll skips all
0, no failed delivery, no metadata anomaly, committed offsets at the high watermarks
after the final commit, the same log after a clean restart, and no worker restart beyond
the ones kill/hang cause (control-block restart counts and the supervisor's log lines,
per fault window). Every wait is bounded; nothing
asserts on time.
"""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from kazoo.client import KazooClient

from pybroker import core
from pybroker.coord.zkserver import EmbeddedZooKeeper
from pybroker.protocol import ApiKey
from pybroker.records import build_batch
from pybroker.server import controlblock
from pybroker.testing import history
from pybroker.testing.broker_plugin import RawClient
from pybroker.testing.poll import wait_for

TOPIC = "nemesis"
PARTITIONS = 4           # two per worker
RATE = 200               # msgs/s per producer: ~33,000 acked writes in the 80 s run
COMMIT_EVERY = 100       # consumer commits after this many processed messages
SESSION_MS = 2000        # ZooKeeper session of each worker (ticks are 500 ms)
# Above the longest expiry pause (EXPIRY_MAX_S plus a heartbeat interval of slack on a
# loaded 2-core host) and far above the 0.25 s heartbeat interval.
HEARTBEAT_TIMEOUT_MS = 5000
SETTINGS = {"zookeeper.session.timeout.ms": SESSION_MS,
            "worker.heartbeat.timeout.ms": HEARTBEAT_TIMEOUT_MS}
IMAGE_BYTES = 512 << 20
ZK_DOWN_S = 4.0          # two session timeouts
DISK_FULL_S = 4.0
EXPIRY_MAX_S = 3.8       # stop at most this long waiting for the server to expire it
RECOVER_TIMEOUT_S = 60.0
CLIENT_TIMEOUT_S = 30.0
FLUSH_TIMEOUT_S = 150.0  # above message.timeout.ms: every message is settled by then
MESSAGE_TIMEOUT_MS = 120_000
DRAIN_TIMEOUT_S = 90.0
FINAL_COMMIT_ATTEMPTS = 5
SCAN_RACE_S = 3.0        # the two-thread scan test's length
METADATA_POLL_S = 0.02   # the metadata watcher's period per worker
BURST_S = 2.0            # ... and how long it probes back to back after a restart
KINDS = ("kill", "hang", "zk-outage", "expiry", "disk-full", "zk-hang", "kill-in-zk-outage")
EXPECTED_RESTARTS = {"kill": 1, "hang": 1, "zk-outage": 0, "expiry": 0, "disk-full": 0,
                     "zk-hang": 0, "kill-in-zk-outage": 1}
NO_VICTIM = ("zk-outage", "disk-full", "zk-hang")


# --- the environment: ext4 image, private ZooKeeper ------------------------------------

def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def ext4_data_dir(tmp_path):
    """tmp_path/broker0-data (the name broker_factory gives its first broker's data dir)
    as the mount point of a fresh 512 MiB ext4 image; unmounted and detached after."""
    image, data = tmp_path / "data.img", tmp_path / "broker0-data"
    data.mkdir()
    with open(image, "wb") as f:
        f.truncate(IMAGE_BYTES)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    assert made.returncode == 0, f"mkfs.ext4 failed: {made.stderr}"
    mounted = _run("mount", "-o", "loop", str(image), str(data))
    assert mounted.returncode == 0, \
        f"cannot loop-mount ext4 (tests run as root): {mounted.stderr}"
    try:
        yield data
    finally:
        # the broker must be stopped before: the nemesis_env teardown runs first
        umounted = _run("umount", str(data))
        if umounted.returncode != 0:
            _run("umount", "-l", str(data))
        for line in _run("losetup", "-j", str(image)).stdout.splitlines():
            _run("losetup", "-d", line.split(":", 1)[0])
        if not _run("losetup", "-j", str(image)).stdout.strip():
            image.unlink()   # 512 MiB, mostly written by the disk-full fault


@dataclass
class Env:
    zk: EmbeddedZooKeeper
    chroot: str
    broker: object = None
    zkc: KazooClient | None = None   # our own ZooKeeper client on the chroot


@pytest.fixture
def nemesis_env(tmp_path, ext4_data_dir, broker_factory):
    """A private ZooKeeper, a 2-worker broker on the ext4 data dir, a kazoo client.
    Teardown: the broker is stopped while ZooKeeper runs (checked by the test body
    itself when it gets that far), then ZooKeeper."""
    env = Env(EmbeddedZooKeeper(tmp_path / "zk", tick_ms=500, fast_unsafe=True).start(),
              "/nemesis")
    try:
        env.broker = broker_factory(workers=2, zk_connect=env.zk.connect_string + env.chroot,
                                    settings=SETTINGS)
        assert str(env.broker.data_dir) == str(ext4_data_dir)
        env.zkc = KazooClient(env.zk.connect_string + env.chroot)
        env.zkc.start(timeout=CLIENT_TIMEOUT_S)
        yield env
    finally:
        if env.zkc is not None:
            env.zkc.stop()
            env.zkc.close()
        if not env.zk.is_running():
            env.zk.start()  # so the workers can deregister on the way out
        if env.broker is not None and env.broker.running():
            env.broker.stop(check=False)
        env.zk.stop()


# --- load ----------------------------------------------------------------------------------

class ProducerThread(threading.Thread):
    """RATE msgs/s of b"<name>-<seq>" to partition seq % PARTITIONS until stopped, then
    a bounded flush. acks: (value, partition, offset, monotonic time) per delivery."""

    def __init__(self, name: str, idempotent: bool, bootstrap: str):
        super().__init__(name=f"producer-{name}", daemon=True)
        self.label, self.idempotent, self.bootstrap = name, idempotent, bootstrap
        self.stop = threading.Event()
        self.acks: list[tuple[bytes, int, int, float]] = []
        self.failed: list[tuple[bytes, str]] = []
        self.errors: list[str] = []       # error_cb: client-level errors, fatal flagged
        self.sent = 0
        self.unflushed: int | None = None

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.failed.append((msg.value(), str(err)))
        else:
            self.acks.append((msg.value(), msg.partition(), msg.offset(), time.monotonic()))

    def _on_error(self, err) -> None:
        self.errors.append(f"{'FATAL ' if err.fatal() else ''}{err}")

    def run(self) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all",
                             "enable.idempotence": self.idempotent, "linger.ms": 5,
                             "message.timeout.ms": MESSAGE_TIMEOUT_MS,
                             "retry.backoff.ms": 100, "error_cb": self._on_error})
        next_at = time.monotonic()
        while not self.stop.is_set():
            value = b"%s-%d" % (self.label.encode(), self.sent)
            try:
                producer.produce(TOPIC, value=value, partition=self.sent % PARTITIONS,
                                 on_delivery=self._on_delivery)
            except BufferError:
                producer.poll(0.05)
                continue
            self.sent += 1
            next_at += 1.0 / RATE
            producer.poll(max(0.0, next_at - time.monotonic()))
        self.unflushed = producer.flush(FLUSH_TIMEOUT_S)

    def history(self) -> list[history.Ack]:
        return [history.Ack(v, p, o, self.label, self.idempotent) for v, p, o, _ in self.acks]


class ConsumerThread(threading.Thread):
    """A group member (subscribe, manual commit after processing every COMMIT_EVERY
    messages and at the end) recording every delivery in order."""

    def __init__(self, bootstrap: str):
        super().__init__(name="group-consumer", daemon=True)
        self.bootstrap = bootstrap
        self.stop = threading.Event()
        self.delivered: list[history.Delivery] = []
        self.seen: set[bytes] = set()
        self.errors: list[str] = []
        self.commit_errors: list[str] = []
        self.commits = 0

    def run(self) -> None:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "nemesis",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest",
                             "session.timeout.ms": 10_000, "heartbeat.interval.ms": 1000,
                             "error_cb": lambda err: self.errors.append(str(err))})
        consumer.subscribe([TOPIC])
        since_commit = 0
        try:
            while not self.stop.is_set():
                for msg in consumer.consume(num_messages=500, timeout=0.2):
                    if msg.error() is not None:
                        self.errors.append(str(msg.error()))
                        continue
                    self.delivered.append(history.Delivery(msg.value(), msg.partition(),
                                                           msg.offset()))
                    self.seen.add(msg.value())
                    since_commit += 1
                if since_commit >= COMMIT_EVERY:
                    since_commit = 0 if self._commit(consumer) else since_commit
            for _ in range(FINAL_COMMIT_ATTEMPTS):   # the drain is over: no fault now
                if self._commit(consumer):
                    break
                time.sleep(1.0)
        finally:
            consumer.close()

    def _commit(self, consumer) -> bool:
        try:
            consumer.commit(asynchronous=False)
            self.commits += 1
            return True
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                self.commit_errors.append(str(exc))
            return False


def read_final_log(bootstrap: str) -> tuple[list[history.LogRecord], dict[int, int]]:
    """Every record of every partition, from offset 0 to its high watermark, read by an
    assign-mode consumer; and {partition: high watermark}."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "nemesis-reader",
                         "enable.auto.commit": False, "auto.offset.reset": "error"})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(TOPIC, p),
                                                  timeout=CLIENT_TIMEOUT_S)
                for p in range(PARTITIONS)}
        assert all(low == 0 for low, _ in ends.values()), f"log start moved: {ends}"
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
        records, last = [], {p: -1 for p in range(PARTITIONS)}
        deadline = time.monotonic() + 120
        while any(last[p] < ends[p][1] - 1 for p in last):
            assert time.monotonic() < deadline, f"final read stuck at {last}, ends {ends}"
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                assert msg.error() is None, msg.error()
                if msg.offset() < ends[msg.partition()][1]:
                    records.append(history.LogRecord(msg.partition(), msg.offset(), msg.value()))
                last[msg.partition()] = max(last[msg.partition()], msg.offset())
        return records, {p: high for p, (_, high) in ends.items()}
    finally:
        consumer.close()


def committed_offsets(bootstrap: str) -> dict[int, int]:
    """The group's committed offsets, read by a client that does not join it."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "nemesis",
                         "enable.auto.commit": False})
    try:
        parts = consumer.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)],
                                   timeout=CLIENT_TIMEOUT_S)
        return {tp.partition: tp.offset for tp in parts}
    finally:
        consumer.close()


class MetadataWatcher(threading.Thread):
    """Metadata v8 for TOPIC from every worker, every METADATA_POLL_S, on one kept
    connection per worker (re-opened after an error: a killed or stopped worker is
    expected). An answer for the existing topic with an error or without its
    PARTITIONS partitions is an anomaly: Kafka always lists an existing topic's
    partitions (a partition without a leader has LEADER_NOT_AVAILABLE and leader -1)."""

    def __init__(self, broker, begin: float):
        super().__init__(name="metadata-watcher", daemon=True)
        self.broker, self.begin = broker, begin
        self.stop = threading.Event()
        self.answers = 0
        self.unreachable = 0
        self.anomalies: list[dict] = []
        self.period = METADATA_POLL_S
        self.burst_until = 0.0     # monotonic: no pause between probes until then

    def burst(self, seconds: float) -> None:
        """Probe back to back for `seconds` (around a restart: its window is short)."""
        self.burst_until = time.monotonic() + seconds

    def run(self) -> None:
        clients: dict[int, RawClient] = {}
        try:
            while not self.stop.is_set():
                for w in range(self.broker.workers):
                    self._probe(clients, w)
                if time.monotonic() >= self.burst_until:
                    self.stop.wait(self.period)
        finally:
            for c in clients.values():
                c.close()

    def _probe(self, clients: dict, w: int) -> None:
        try:
            if w not in clients:
                clients[w] = RawClient(self.broker.ports[w], timeout=2.0)
            body = clients[w].request(ApiKey.METADATA, 8, {
                "topics": [{"name": TOPIC}], "allow_auto_topic_creation": False})
        except (OSError, ConnectionError, AssertionError):
            self.unreachable += 1
            c = clients.pop(w, None)
            if c is not None:
                c.close()
            return
        self.answers += 1
        [t] = body["topics"]
        if t["error_code"] != 0 or len(t["partitions"]) != PARTITIONS:
            self.anomalies.append({
                "t": round(time.monotonic() - self.begin, 3), "worker": w,
                "error_code": t["error_code"], "partitions": len(t["partitions"]),
                "brokers": sorted(b["node_id"] for b in body["brokers"])})


# --- faults ----------------------------------------------------------------------------------

@dataclass
class Fault:
    kind: str
    victim: int | None
    at_s: float                    # since the nemesis phase began
    started: float = 0.0           # monotonic
    ended: float = 0.0
    log_offset: int = 0            # broker log size when it began
    restarts_before: list = field(default_factory=list)
    restarts_after: list = field(default_factory=list)   # before the next fault
    kill_lines: list = field(default_factory=list)       # supervisor lines in the window
    exit_lines: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    gaps: dict = field(default_factory=dict)   # producer -> longest ack gap of a partition (s)
    applied: bool = True           # False: the fault did not take (e.g. no expiry)
    storage_errors: int = 0        # "storage error" lines in the window

    def unexpected(self) -> list[str]:
        expected = EXPECTED_RESTARTS[self.kind]
        out = [] if self.applied else ["the fault did not take effect: " + " ".join(self.notes)]
        for w, (b, a) in enumerate(zip(self.restarts_before, self.restarts_after)):
            want = expected if w == self.victim else 0
            if a - b != want:
                out.append(f"worker {w}: {a - b} restarts, expected {want}")
        if self.kind == "disk-full" and self.storage_errors == 0:
            out.append("the full disk caused no 'storage error' line: it did not take")
        want_kills = 1 if self.kind == "hang" else 0
        if len(self.kill_lines) != want_kills:
            out.append(f"{len(self.kill_lines)} 'killing it' lines, expected {want_kills}: "
                       f"{self.kill_lines}")
        if len(self.exit_lines) != expected:
            out.append(f"{len(self.exit_lines)} 'exited ... restarting' lines, expected "
                       f"{expected}: {self.exit_lines}")
        return out

    def describe(self) -> str:
        gaps = " ".join(f"{k}={v:.1f}s" for k, v in self.gaps.items())
        return (f"t={self.at_s:5.1f}s {self.kind:9s} victim={self.victim} "
                f"took={self.ended - self.started:.1f}s restarts {self.restarts_before}->"
                f"{self.restarts_after} storage-error lines {self.storage_errors} "
                f"longest ack gap {gaps} {' '.join(self.notes)}")


class Nemesis:
    def __init__(self, env: Env, seed: int, meta: MetadataWatcher):
        self.env, self.broker, self.rng = env, env.broker, random.Random(seed)
        self.meta = meta
        self.faults: list[Fault] = []

    def schedule(self, count: int) -> list[tuple[str, int]]:
        """(kind, victim) for `count` faults: every kind once per round, in a seeded
        order, then again."""
        kinds: list[str] = []
        while len(kinds) < count:
            kinds += self.rng.sample(KINDS, len(KINDS))
        return [(k, self.rng.randrange(self.broker.workers)) for k in kinds[:count]]

    def restarts(self) -> list[int]:
        return [row["restarts"] for row in self.broker.worker_rows()]

    def apply(self, kind: str, victim: int, at_s: float) -> Fault:
        fault = Fault(kind, None if kind in NO_VICTIM else victim, at_s)
        fault.restarts_before = self.restarts()
        fault.log_offset = self.broker.log_path.stat().st_size
        fault.started = time.monotonic()
        print(f"nemesis: t={at_s:5.1f}s {kind} victim={fault.victim}", flush=True)
        getattr(self, "_" + kind.replace("-", "_"))(fault)
        self.recover(fault)
        fault.ended = time.monotonic()
        self.faults.append(fault)
        return fault

    def close_window(self, fault: Fault) -> None:
        """Account the restarts and supervisor lines since `fault` began (called just
        before the next fault, and at the end)."""
        fault.restarts_after = self.restarts()
        with open(self.broker.log_path, "rb") as f:
            f.seek(fault.log_offset)
            text = f.read().decode(errors="replace")
        fault.kill_lines = [l for l in text.splitlines() if "; killing it" in l]
        fault.exit_lines = [l for l in text.splitlines() if "; restarting" in l]
        fault.storage_errors = sum(1 for l in text.splitlines() if "storage error" in l)

    # --- the kinds ---

    def _kill(self, fault: Fault) -> None:
        self.meta.burst(BURST_S)
        row = self.broker.kill_worker(fault.victim)
        self.broker.wait_restarted(fault.victim, row, timeout=RECOVER_TIMEOUT_S)

    def _hang(self, fault: Fault) -> None:
        row = self.broker.worker_row(fault.victim)
        os.kill(row["pid"], signal.SIGSTOP)
        try:
            wait_for(lambda: self.broker.worker_row(fault.victim)["pid"] != row["pid"],
                     f"the supervisor to replace stopped worker {fault.victim}",
                     RECOVER_TIMEOUT_S, poll=0.01)
            self.meta.burst(BURST_S)
            self.broker.wait_restarted(fault.victim, row, timeout=RECOVER_TIMEOUT_S)
        finally:
            try:
                os.kill(row["pid"], signal.SIGCONT)   # if the supervisor did not kill it
                fault.notes.append(f"old pid {row['pid']} was still there at SIGCONT")
            except ProcessLookupError:
                pass

    def _zk_outage(self, fault: Fault) -> None:
        self.env.zk.stop()
        try:
            time.sleep(ZK_DOWN_S)   # the outage's length, not a synchronisation
        finally:
            self.env.zk.start()

    def _zk_hang(self, fault: Fault) -> None:
        pid = self.env.zk.pid
        os.kill(pid, signal.SIGSTOP)   # connections stay open, nothing answers
        try:
            time.sleep(ZK_DOWN_S)   # the hang's length, not a synchronisation
        finally:
            os.kill(pid, signal.SIGCONT)

    def _kill_in_zk_outage(self, fault: Fault) -> None:
        """kill -9 a worker while ZooKeeper is down: its successor starts without a
        view of the cluster and must wait for one (not answer from nothing)."""
        self.env.zk.stop()
        try:
            row = self.broker.kill_worker(fault.victim)
            self.meta.burst(ZK_DOWN_S + BURST_S)
            time.sleep(ZK_DOWN_S)   # the outage's length, not a synchronisation
        finally:
            self.env.zk.start()
        self.broker.wait_restarted(fault.victim, row, timeout=RECOVER_TIMEOUT_S)

    def _expiry(self, fault: Fault) -> None:
        node = self.broker.node_ids[fault.victim]
        path = f"/brokers/ids/{node}"
        zk = self.env.zkc
        before = zk.exists(path)
        row = self.broker.worker_row(fault.victim)
        os.kill(row["pid"], signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            deadline = stopped + EXPIRY_MAX_S
            while zk.exists(path) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            os.kill(row["pid"], signal.SIGCONT)
        gone = zk.exists(path) is None
        fault.applied = gone
        fault.notes.append(f"stopped {time.monotonic() - stopped:.1f}s, registration "
                           f"{'expired' if gone else 'NOT expired (pause too short)'}")
        if before is not None and gone:
            wait_for(lambda: (s := zk.exists(path)) and s.ephemeralOwner != before.ephemeralOwner,
                     f"{path} re-registered under a new session", RECOVER_TIMEOUT_S,
                     detail=lambda: (zk.exists(path), self.broker.log_tail(4096)))
            fault.notes.append("re-registered")

    def _disk_full(self, fault: Fault) -> None:
        filler = self.broker.data_dir / "nemesis.filler"
        written = fill_to_enospc(filler)
        fault.notes.append(f"filler {written >> 20} MiB")
        try:
            time.sleep(DISK_FULL_S)   # the fault's length, not a synchronisation
        finally:
            filler.unlink()

    # --- after each fault ---

    def recover(self, fault: Fault) -> None:
        """Every node registered and serving again (bounded)."""
        zk = self.env.zkc
        wait_for(lambda: all(zk.exists(f"/brokers/ids/{n}") for n in self.broker.node_ids),
                 f"every node registered after {fault.kind}", RECOVER_TIMEOUT_S,
                 detail=lambda: self.broker.log_tail(4096))
        wait_for(lambda: all(r["state"] == controlblock.SERVING and r["opening"] == 0
                             for r in self.broker.worker_rows()),
                 f"every worker serving after {fault.kind}", RECOVER_TIMEOUT_S,
                 detail=lambda: self.broker.worker_rows())


def fill_to_enospc(path) -> int:
    """Fill the file system of `path` with one file until a write fails with ENOSPC;
    returns the bytes written. fallocate takes all but 1 MiB at once, writes take the
    rest (64 KiB, then 4 KiB at a time: bounded by the free space)."""
    st = os.statvfs(path.parent)
    free = st.f_bfree * st.f_frsize   # root may use the reserved blocks too
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = max(0, free - (1 << 20))
        if size:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                size = 0
        os.lseek(fd, size, os.SEEK_SET)
        for chunk in (bytes(64 << 10), bytes(4 << 10)):
            for _ in range((free // len(chunk)) + 16):
                try:
                    size += os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
            else:
                raise AssertionError(f"{path}: no ENOSPC after {size} bytes of {free} free")
        return size
    finally:
        os.close(fd)


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest time without an ack in [start, end] (from start to the first ack)."""
    last, gap = start, 0.0
    for t in times:
        if t < start:
            continue
        if t > end:
            break
        gap, last = max(gap, t - last), t
    return max(gap, end - last) if last == start else gap


# --- the run ---------------------------------------------------------------------------------

def run_nemesis(env: Env, phase_s: float, gap_s: tuple[float, float], faults: int) -> None:
    seed = int(os.environ.get("NEMESIS_SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"\nnemesis: seed {seed} (NEMESIS_SEED={seed} replays), phase {phase_s:.0f}s, "
          f"{faults} faults", flush=True)
    broker = env.broker
    broker.create_topic(TOPIC, PARTITIONS)
    producers = [ProducerThread("idem", True, broker.bootstrap_all),
                 ProducerThread("plain", False, broker.bootstrap_all)]
    consumer = ConsumerThread(broker.bootstrap_all)
    for t in (*producers, consumer):
        t.start()
    meta = MetadataWatcher(broker, time.monotonic())
    nemesis = Nemesis(env, seed, meta)
    try:
        wait_for(lambda: all(p.acks for p in producers) and consumer.delivered,
                 "first acks and deliveries", CLIENT_TIMEOUT_S)
        begin = meta.begin = time.monotonic()
        meta.start()
        next_at = 2.0
        for kind, victim in nemesis.schedule(faults):
            while time.monotonic() - begin < next_at:
                time.sleep(0.1)
            if nemesis.faults:
                nemesis.close_window(nemesis.faults[-1])
            fault = nemesis.apply(kind, victim, time.monotonic() - begin)
            next_at = fault.at_s + nemesis.rng.uniform(*gap_s)
        while time.monotonic() - begin < phase_s:
            time.sleep(0.1)
    finally:
        meta.stop.set()
        if meta.is_alive():
            meta.join(10)
        for p in producers:
            p.stop.set()
        for p in producers:
            p.join(FLUSH_TIMEOUT_S + 30)
    produced_end = time.monotonic()
    try:
        acked = {v for p in producers for v, *_ in p.acks}
        wait_for(lambda: acked <= consumer.seen, "the consumer to deliver every acked value",
                 DRAIN_TIMEOUT_S, poll=0.2,
                 detail=lambda: f"{len(acked - consumer.seen)} not yet delivered")
    except AssertionError as exc:
        print(f"nemesis: drain: {exc}", flush=True)   # the checker counts them as unseen
    finally:
        consumer.stop.set()
        consumer.join(CLIENT_TIMEOUT_S * 2)
    if nemesis.faults:
        nemesis.close_window(nemesis.faults[-1])
    ack_times = {(p.label, part): sorted(t for _, pp, _, t in p.acks if pp == part)
                 for p in producers for part in range(PARTITIONS)}
    for i, f in enumerate(nemesis.faults):
        end = nemesis.faults[i + 1].started if i + 1 < len(nemesis.faults) else produced_end
        for p in producers:
            f.gaps[p.label] = max(longest_gap(ack_times[(p.label, part)], f.started, end)
                                  for part in range(PARTITIONS))

    log, ends = read_final_log(broker.bootstrap_all)
    committed = committed_offsets(broker.bootstrap_all)
    report = history.check([a for p in producers for a in p.history()], consumer.delivered, log)
    print("nemesis: faults:\n  " + "\n  ".join(f.describe() for f in nemesis.faults))
    for p in producers:
        print(f"nemesis: producer {p.label}: sent {p.sent} acked {len(p.acks)} failed "
              f"{len(p.failed)} unflushed {p.unflushed} errors {len(p.errors)} "
              f"{p.errors[:3]}")
    print(f"nemesis: consumer: delivered {len(consumer.delivered)} commits {consumer.commits} "
          f"commit errors {len(consumer.commit_errors)} {consumer.commit_errors[:3]} "
          f"errors {len(consumer.errors)} {consumer.errors[:3]}")
    print(f"nemesis: metadata watcher: {meta.answers} answers, {meta.unreachable} "
          f"unreachable, {len(meta.anomalies)} anomalies {meta.anomalies[:5]}")
    print(f"nemesis: history: {report.summary()}")
    print(f"nemesis: high watermarks {ends}, committed {committed}")
    acked_at = {v: (pp, o) for p in producers for v, pp, o, _ in p.acks}
    for name in ("plain_duplicates", "idempotent_duplicates"):
        examples = getattr(report, name).examples
        print(f"nemesis: {name} e.g. {examples[:3]}, acked at "
              f"{[acked_at.get(e['value']) for e in examples[:3]]}")
    print(f"nemesis: broker log {broker.log_path}", flush=True)

    problems = [f"fault {f.kind} at t={f.at_s:.1f}s: {u}"
                for f in nemesis.faults for u in f.unexpected()]
    problems += report.violations()
    if meta.anomalies:
        problems.append(f"Metadata answered {len(meta.anomalies)} times without the "
                        f"topic's {PARTITIONS} partitions, e.g. {meta.anomalies[:5]}")
    for p in producers:
        if p.failed:
            problems.append(f"producer {p.label}: {len(p.failed)} deliveries failed, e.g. "
                            f"{p.failed[:3]}")
        if p.unflushed:
            problems.append(f"producer {p.label}: {p.unflushed} messages unflushed")
        if any(e.startswith("FATAL") for e in p.errors):
            problems.append(f"producer {p.label}: fatal errors {p.errors}")
    # no fault here may take a partition offline (a full disk fails appends with
    # KAFKA_STORAGE_ERROR, the partition stays online): an offline one is a broker bug
    offline = [l for l in broker.log_text().splitlines() if "-> offline" in l]
    if offline:
        problems.append(f"{len(offline)} partition(s) went offline: {offline[:5]}")
    if acked <= consumer.seen and committed != ends:
        problems.append(f"after the final commit the committed offsets {committed} are "
                        f"not the high watermarks {ends}")
    # the broker still exits 0 on SIGTERM after all that (ZooKeeper running), and
    # after a clean restart the log reads the same
    assert broker.stop() == 0
    broker.start()
    again, ends_again = read_final_log(broker.bootstrap_all)
    if (sorted(again), ends_again) != (sorted(log), ends):
        problems.append(f"after a clean restart the log differs: high watermarks "
                        f"{ends_again} (before {ends}), {len(set(again) ^ set(log))} records "
                        f"differ, e.g. {sorted(set(again) ^ set(log))[:5]}")
    assert not problems, "\n".join(problems)
    assert report.acked > 0 and len(nemesis.faults) == faults
    assert broker.stop() == 0


def test_nemesis_80s(nemesis_env):
    """Seven faults, one of each kind in a seeded order, 10-11 s apart, in an 80 s
    phase (about 100 s in all)."""
    run_nemesis(nemesis_env, phase_s=80.0, gap_s=(10.0, 11.0), faults=len(KINDS))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_nemesis_300s(nemesis_env):
    """Four rounds of the seven kinds (28 faults), 10-11 s apart, in a 300 s phase."""
    run_nemesis(nemesis_env, phase_s=300.0, gap_s=(10.0, 11.0), faults=4 * len(KINDS))


def test_a_restarted_worker_answers_metadata_with_every_topic(broker_factory):
    """The window the nemesis's metadata watcher found, alone: a worker restarted after
    kill -9 must not answer Metadata for an existing topic as if it did not exist (it
    accepts connections on the supervisor's listening socket from its first moment).
    Probed on one connection per attempt, as fast as it answers, from before the kill
    until a second after the successor serves; three kills."""
    broker = broker_factory(workers=2, settings={"zookeeper.session.timeout.ms": SESSION_MS})
    broker.create_topic(TOPIC, PARTITIONS)
    meta = MetadataWatcher(broker, time.monotonic())
    meta.period = 0.0
    meta.start()
    try:
        for _ in range(3):
            wait_for(lambda n=meta.answers: meta.answers > n + 10, "metadata answers", 30.0)
            row = broker.kill_worker(0)
            broker.wait_restarted(0, row)
            answered = meta.answers
            wait_for(lambda: meta.answers > answered + 50, "answers after the restart", 30.0)
    finally:
        meta.stop.set()
        meta.join(10)
    assert meta.anomalies == [], (f"{len(meta.anomalies)} of {meta.answers} Metadata "
                                  f"answers without {TOPIC}'s {PARTITIONS} partitions, e.g. "
                                  f"{meta.anomalies[:5]}")


def test_scans_on_two_threads_see_their_own_results():
    """What the 300 s soak's "open failed: ValueError: no offset gap in the N bytes
    scanned" came down to: a worker scans record batches on several threads (produce
    validation on the event loop, recovery at open on the storage thread, the scrub on
    its own), and core.scan_batches must give each caller its own scan. Two threads
    scan two different logs for SCAN_RACE_S: every result must be that log's."""
    logs = {}
    for name, batches in (("small", 1), ("big", 2000)):
        values = [b"%s-%d" % (name.encode(), i) for i in range(batches)]
        buf = bytearray(b"".join(bytes(build_batch([v])) for v in values))
        core.scan_batches(buf, stamp_offset=0)   # offsets 0..batches-1, as in a log
        logs[name] = (bytes(buf), core.scan_batches(bytes(buf), min_offset=0))
    wrong = {name: [] for name in logs}
    runs = {name: 0 for name in logs}
    until = time.monotonic() + SCAN_RACE_S

    def scan(name: str) -> None:
        buf, want = logs[name]
        while time.monotonic() < until and len(wrong[name]) < 5:
            got = core.scan_batches(buf, min_offset=0)
            runs[name] += 1
            if got != want:
                wrong[name].append((got.batches, got.records, got.last_offset))

    threads = [threading.Thread(target=scan, args=(name,), daemon=True) for name in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SCAN_RACE_S + 30)
    expected = {name: (w.batches, w.records, w.last_offset) for name, (_, w) in logs.items()}
    assert not any(wrong.values()), (
        f"scans returned another thread's result (batches, records, last offset) in "
        f"{runs} runs: {wrong}; expected {expected}")
