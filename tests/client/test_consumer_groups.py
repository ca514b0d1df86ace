"""The paper's ZooKeeper-coordinated consumer (P14-P20) against a real broker and a real
ZooKeeper: groups consume everything, each partition has at most one owner, a SIGKILLed
consumer's partitions move on with nothing lost and duplicates only after the last
committed offset, 20 consumers settle, extra consumers stay idle, rewind re-delivers,
new groups start at the smallest or largest offset, and bad names are refused.

Waits are bounded conditions polled under a deadline; nothing asserts on time.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from kazoo.exceptions import NoNodeError

from pybroker.client import Producer
from pybroker.client.consumer import Consumer, ConsumerTimeout, decode_messages
from pybroker.client.rebalance import RebalanceError, assign_range, owner_path
from pybroker.coord.offsets import offset_path, read_offset, write_offset
from pybroker.testing import poll

WAIT_S = 60.0
POLL_S = 0.05
FAST = dict(auto_commit_interval_ms=100, rebalance_backoff_ms=50,
            zookeeper_session_timeout_ms=4000)


# --- helpers ---------------------------------------------------------------------------


def produce(broker, topic: str, partitions: int, per_partition: int, start: int = 0) -> set:
    """per_partition messages to each partition, acks=all; returns {(topic, p, offset)}."""
    with Producer(broker.bootstrap, acks="all", linger_ms=2) as producer:
        results = [producer.send(topic, b"%s:%d:%d" % (topic.encode(), p, i), partition=p)
                   for i in range(start, start + per_partition) for p in range(partitions)]
    return {(topic, r.partition, r.result(WAIT_S)) for r in results}


def wait_for(predicate, what: str):
    return poll.wait_for(predicate, what, WAIT_S, POLL_S)


def owners(zk, group: str, topics: dict[str, int]) -> dict[tuple[str, int], str]:
    """{(topic, partition): owning stream id} as ZooKeeper has it now."""
    out = {}
    for topic, count in topics.items():
        for p in range(count):
            try:
                out[(topic, p)] = zk.get(owner_path(group, topic, p))[0].decode()
            except NoNodeError:
                pass
    return out


class Collector:
    """Iterates every stream of a consumer on its own thread, recording
    (consumer id, topic, partition, offset) of each message."""

    def __init__(self, consumer: Consumer, streams: dict, sink: list, lock: threading.Lock):
        self.consumer = consumer
        self.threads = []
        for topic_streams in streams.values():
            for stream in topic_streams:
                t = threading.Thread(target=self._run, args=(stream, sink, lock), daemon=True)
                t.start()
                self.threads.append(t)

    def _run(self, stream, sink, lock) -> None:
        for m in stream:
            with lock:
                sink.append((self.consumer.consumer_id, m.topic, m.partition, m.offset))

    def close(self) -> None:
        self.consumer.close()
        for t in self.threads:
            t.join(30)


def delivered_set(sink: list, lock) -> set:
    with lock:
        return {(t, p, o) for _, t, p, o in sink}


# --- pure parts ------------------------------------------------------------------------

def test_assign_range_spreads_the_remainder_and_leaves_extras_idle():
    streams = [f"c{i}-0" for i in range(3)]
    got = assign_range(list(range(16)), streams)
    assert [len(got[s]) for s in sorted(streams)] == [6, 5, 5]
    assert sorted(p for ps in got.values() for p in ps) == list(range(16))
    assert got["c0-0"] == list(range(6))     # j*N + min(j, R) ..: contiguous ranges
    many = assign_range([0, 1, 2], [f"c{i}-0" for i in range(5)])
    assert sorted(len(ps) for ps in many.values()) == [0, 0, 1, 1, 1]
    assert assign_range([0, 1], []) == {}


@pytest.mark.parametrize("field", ["group", "consumer_id"])
@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "x\x00y", "tab\there", "\ud800",
                                 "a\xa0b", "a\u2028b", "g" * 256])  # the coordinator's rule too
def test_bad_group_or_consumer_id_is_a_clear_value_error(zk_connect, field, bad):
    kwargs = {"group": "g", "consumer_id": "c", field: bad}
    with pytest.raises(ValueError, match="ZooKeeper path element"):
        Consumer(zookeeper=zk_connect, **kwargs)


def test_decode_rejects_codecs_other_than_gzip_clearly():
    from pybroker.records import build_batch
    batch = build_batch([b"x"], attributes=2, compressed_payload=b"not snappy")
    with pytest.raises(Exception, match="snappy"):
        decode_messages("t", 0, bytes(batch), 0)
    import gzip as _gzip
    plain = build_batch([b"a", b"b"])
    packed = build_batch([b"a", b"b"], attributes=1,
                         compressed_payload=_gzip.compress(bytes(plain[61:])))
    assert [m.value for m in decode_messages("t", 0, bytes(packed), 1)] == [b"b"]


# --- groups against the broker ---------------------------------------------------------

def test_three_consumers_over_two_topics_consume_everything(broker, zk):
    topics = {"alpha": 8, "beta": 8}
    for name, n in topics.items():
        broker.create_topic(name, n)
    sink, lock = [], threading.Lock()
    samples, stop = [], threading.Event()
    sessions = {}     # consumer id -> its ZooKeeper session id

    def sample_owners():
        # (owner stream, session holding the znode) of every owned partition
        while not stop.is_set():
            sample = {}
            for topic, n in topics.items():
                for p in range(n):
                    try:
                        data, stat = zk.get(owner_path("g3", topic, p))
                    except NoNodeError:
                        continue
                    sample[(topic, p)] = (data.decode(), stat.ephemeralOwner)
            samples.append(sample)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample_owners, daemon=True)
    sampler.start()
    collectors = []
    try:
        expected = set()
        for i in range(3):
            consumer = Consumer(broker.zk_connect, "g3", f"c{i}",
                                auto_offset_reset="smallest", **FAST)
            sessions[f"c{i}"] = consumer._zk.client_id[0]
            collectors.append(Collector(consumer, consumer.create_message_streams(
                {"alpha": 2, "beta": 1}), sink, lock))
            # produce while the group grows, so partitions move with data in flight
            for name, n in topics.items():
                expected |= produce(broker, name, n, 50, start=i * 50)
        wait_for(lambda: expected <= delivered_set(sink, lock), "every message")
        settled = wait_for(lambda: (lambda o: o if len(o) == 16 else None)(
            owners(zk, "g3", topics)), "all 16 partitions owned")
        # 3 consumers: alpha has 6 streams over 8 partitions, beta 3 over 8
        per_consumer = Counter(stream.rsplit("-", 1)[0] for stream in settled.values())
        assert set(per_consumer) == {"c0", "c1", "c2"}
        wait_for(lambda: all(set(c.consumer.owned_partitions().items())
                             <= set(owners(zk, "g3", topics).items())
                             for c in collectors), "consumers agree with ZooKeeper")
    finally:
        stop.set()
        sampler.join(10)
        for c in collectors:
            c.close()
    # at every observed moment a partition had at most one owner (one znode), a stream
    # of the group, held by the ZooKeeper session of the consumer it names
    assert samples
    valid_streams = {f"c{i}-{s}" for i in range(3) for s in range(2)}
    for sample in samples:
        for stream, session in sample.values():
            assert stream in valid_streams
            assert session == sessions[stream.rsplit("-", 1)[0]], (stream, session, sessions)
    counts = Counter((t, p, o) for _, t, p, o in sink)
    assert set(counts) == expected
    # clean rebalances commit before releasing: the only repeats are the one message
    # per stream returned but not yet processed when its partition moved
    assert sum(n - 1 for n in counts.values()) <= 16 * 6


CHILD = r"""
import sys, threading, time
from pybroker.client.consumer import Consumer
zk, group, cid = sys.argv[1:4]
c = Consumer(zk, group, cid, auto_offset_reset="smallest", auto_commit_interval_ms=50,
             rebalance_backoff_ms=50, zookeeper_session_timeout_ms=2000)
streams = c.create_message_streams({"red": 1, "blue": 1})
lock = threading.Lock()
print("ready", flush=True)
def run(stream):
    for m in stream:
        time.sleep(0.002)          # "processing"
        with lock:
            sys.stdout.write("msg %s %d %d\n" % (m.topic, m.partition, m.offset))
            sys.stdout.flush()
threads = [threading.Thread(target=run, args=(s[0],)) for s in streams.values()]
for t in threads: t.start()
for line in sys.stdin:     # runs until SIGKILL or stdin closes
    pass
c.close()
"""


class Child:
    def __init__(self, zk_connect: str, group: str, cid: str, sink: list, lock):
        self.cid = cid
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, zk_connect, group, cid],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.ready = threading.Event()
        self.count = 0
        self.reader = threading.Thread(target=self._read, args=(sink, lock), daemon=True)
        self.reader.start()

    def _read(self, sink, lock) -> None:
        for line in self.proc.stdout:
            if line.startswith("ready"):
                self.ready.set()
            elif line.startswith("msg "):
                _, topic, p, o = line.split()
                with lock:
                    sink.append((self.cid, topic, int(p), int(o)))
                    self.count += 1

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.reader.join(10)


def test_sigkilled_consumer_partitions_move_nothing_lost(broker, zk):
    topics = {"red": 8, "blue": 8}
    for name, n in topics.items():
        broker.create_topic(name, n)
    sink, lock = [], threading.Lock()
    children = [Child(broker.zk_connect, "gk", f"k{i}", sink, lock) for i in range(3)]
    try:
        for child in children:
            assert child.ready.wait(WAIT_S), f"{child.cid} did not start"
        wait_for(lambda: {s.rsplit("-", 1)[0] for s in owners(zk, "gk", topics).values()}
                 == {"k0", "k1", "k2"} and len(owners(zk, "gk", topics)) == 16,
                 "3 consumers owning all 16 partitions")
        expected = set()
        for name, n in topics.items():
            expected |= produce(broker, name, n, 150)
        victim = children[1]
        wait_for(lambda: victim.count >= 100, "the victim consuming")
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        # the dead consumer's commits can no longer change: read them now
        committed = {(t, p): read_offset(zk, "gk", t, p) or 0
                     for t, n in topics.items() for p in range(n)}
        victim_parts = {tp for tp, s in owners(zk, "gk", topics).items()
                        if s.startswith("k1-")}
        assert victim_parts, "the victim owned nothing when it was killed"
        for name, n in topics.items():
            expected |= produce(broker, name, n, 50, start=150)
        # its session expires (2 s), the others rebalance and take its partitions
        wait_for(lambda: (lambda o: len(o) == 16 and all(
            not s.startswith("k1-") for s in o.values()))(owners(zk, "gk", topics)),
            "the survivors owning every partition")
        wait_for(lambda: expected <= delivered_set(sink, lock), "every message")
    finally:
        for child in children:
            child.stop()
    counts = Counter((t, p, o) for _, t, p, o in sink)
    assert set(counts) == expected                        # nothing lost
    repeats = [(t, p, o) for (t, p, o), n in counts.items() if n > 1]
    for t, p, o in repeats:                               # at-least-once, P20
        assert o >= committed[(t, p)], \
            f"{t}-{p} offset {o} delivered twice but was committed ({committed[(t, p)]})"


def test_twenty_consumers_started_at_once_settle(broker, zk):
    topics = {"wide": 8, "deep": 8}
    for name, n in topics.items():
        broker.create_topic(name, n)
    consumers = [Consumer(broker.zk_connect, "g20", f"m{i:02d}",
                          auto_offset_reset="smallest", **FAST) for i in range(20)]
    errors = []

    def join(c):
        try:
            c.create_message_streams({"wide": 1, "deep": 1})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=join, args=(c,)) for c in consumers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
        assert not errors, errors

        def settled():
            zk_owners = owners(zk, "g20", topics)
            if len(zk_owners) != 16:
                return False
            mine = {}
            for c in consumers:
                mine.update(c.owned_partitions())
            return mine == zk_owners
        wait_for(settled, "20 consumers to settle with every partition owned")
        owning = {c.consumer_id for c in consumers if c.owned_partitions()}
        assert 8 <= len(owning) <= 16
        for c in consumers:            # one stream per topic: at most one of each
            assert Counter(t for t, _ in c.owned_partitions()) <= Counter(wide=1, deep=1)
    finally:
        for c in consumers:
            c.close()


def test_more_consumers_than_partitions_leaves_extras_idle(broker, zk):
    broker.create_topic("few", 3)
    sink, lock = [], threading.Lock()
    collectors = []
    try:
        for i in range(5):
            c = Consumer(broker.zk_connect, "gx", f"x{i}", auto_offset_reset="smallest",
                         **FAST)
            collectors.append(Collector(c, c.create_message_streams({"few": 1}), sink, lock))
        wait_for(lambda: sum(len(c.consumer.owned_partitions()) for c in collectors) == 3
                 and len(owners(zk, "gx", {"few": 3})) == 3, "3 owners")
        expected = produce(broker, "few", 3, 30)
        wait_for(lambda: expected <= delivered_set(sink, lock), "every message")
        busy = {c.consumer.consumer_id for c in collectors if c.consumer.owned_partitions()}
        assert len(busy) == 3
        # sorted streams x0-0 .. x4-0 over partitions 0..2: the first three own one each
        assert busy == {"x0", "x1", "x2"}
        with lock:
            assert {cid for cid, *_ in sink} <= busy
    finally:
        for c in collectors:
            c.close()


def test_rewind_redelivers_from_the_chosen_offset(broker, zk):
    broker.create_topic("replay", 2)
    expected = produce(broker, "replay", 2, 40)
    consumer = Consumer(broker.zk_connect, "gr", "r0", auto_offset_reset="smallest",
                        auto_commit_enable=False, consumer_timeout_ms=int(WAIT_S * 1000))
    try:
        stream = consumer.create_message_streams({"replay": 1})["replay"][0]
        first = [next(stream) for _ in range(80)]
        assert {(m.topic, m.partition, m.offset) for m in first} == expected
        assert consumer.commit() == {("replay", 0): 40, ("replay", 1): 40}
        assert zk.get(offset_path("gr", "replay", 0))[0] == b"40"
        consumer.seek("replay", 0, 10)
        again = [next(stream) for _ in range(30)]
        assert [(m.partition, m.offset) for m in again] == [(0, o) for o in range(10, 40)]
        assert [m.value for m in again] == [b"replay:0:%d" % i for i in range(10, 40)]
        with pytest.raises(ValueError, match="not owned"):
            consumer.seek("replay", 5, 0)
        consumer.seek("replay", 1, 39)
        assert (lambda m: (m.partition, m.offset))(next(stream)) == (1, 39)
        consumer.commit()
        assert read_offset(zk, "gr", "replay", 1) == 40
    finally:
        consumer.close()


def test_new_group_starts_at_smallest_or_largest_and_resumes(broker, zk):
    broker.create_topic("start", 1)
    produce(broker, "start", 1, 10)
    late = Consumer(broker.zk_connect, "g-largest", "l0", auto_offset_reset="largest",
                    consumer_timeout_ms=500)
    try:
        stream = late.create_message_streams({"start": 1})["start"][0]
        with pytest.raises(ConsumerTimeout):
            next(stream)
        produce(broker, "start", 1, 5, start=10)
        late.consumer_timeout = WAIT_S
        assert [next(stream).offset for _ in range(5)] == [10, 11, 12, 13, 14]
    finally:
        late.close()
    early = Consumer(broker.zk_connect, "g-smallest", "s0", auto_offset_reset="smallest",
                     consumer_timeout_ms=int(WAIT_S * 1000))
    try:
        stream = early.create_message_streams({"start": 1})["start"][0]
        assert [next(stream).offset for _ in range(6)] == list(range(6))
        early.commit()
    finally:
        early.close()
    assert read_offset(zk, "g-smallest", "start", 0) == 6
    # a restarted member of the group resumes from the committed offset
    again = Consumer(broker.zk_connect, "g-smallest", "s1", auto_offset_reset="smallest",
                     consumer_timeout_ms=int(WAIT_S * 1000))
    try:
        stream = again.create_message_streams({"start": 1})["start"][0]
        assert next(stream).offset == 6
    finally:
        again.close()
    # an offset written by anyone else (the broker's group coordinator) is honoured
    write_offset(zk, "g-smallest", "start", 0, 12)
    other = Consumer(broker.zk_connect, "g-smallest", "s2", consumer_timeout_ms=30_000)
    try:
        assert next(other.create_message_streams({"start": 1})["start"][0]).offset == 12
    finally:
        other.close()


def test_ownership_conflict_gives_up_with_a_clear_error(broker, zk):
    broker.create_topic("held", 1)
    zk.create(owner_path("gc", "held", 0), b"someone-else-0", ephemeral=True, makepath=True)
    consumer = Consumer(broker.zk_connect, "gc", "c0", rebalance_max_retries=3,
                        rebalance_backoff_ms=10)
    try:
        with pytest.raises(RebalanceError, match="after 3 attempts.*held-0"):
            consumer.create_message_streams({"held": 1})
    finally:
        consumer.close()
    ids = zk.get_children("/consumers/gc/ids")
    assert ids == []


def test_expired_session_drops_partitions_then_rejoins(broker, zk, expire_zk_session):
    """A consumer whose ZooKeeper session expires (a partition from ZooKeeper longer
    than the session timeout) stops pulling at once, registers again under its new
    session, and the group goes on with nothing lost."""
    topics = {"lapse": 4}
    broker.create_topic("lapse", 4)
    sink, lock = [], threading.Lock()
    collectors = []
    try:
        for i in range(2):
            c = Consumer(broker.zk_connect, "ge", f"e{i}", auto_offset_reset="smallest",
                         **FAST)
            collectors.append(Collector(c, c.create_message_streams({"lapse": 1}), sink, lock))
        wait_for(lambda: len(owners(zk, "ge", topics)) == 4, "4 owners")
        expected = produce(broker, "lapse", 4, 50)
        wait_for(lambda: expected <= delivered_set(sink, lock), "the first messages")
        victim = collectors[0].consumer
        rebalances = victim.rebalances
        expire_zk_session(victim._zk)
        expected |= produce(broker, "lapse", 4, 50, start=50)
        wait_for(lambda: victim.rebalances > rebalances and victim.owned_partitions(),
                 "the expired consumer to rejoin and own partitions again")
        wait_for(lambda: expected <= delivered_set(sink, lock), "every message")
        wait_for(lambda: (lambda o: len(o) == 4 and {s.rsplit("-", 1)[0] for s in o.values()}
                          == {"e0", "e1"})(owners(zk, "ge", topics)),
                 "both consumers owning 2 partitions each")
        assert zk.exists("/consumers/ge/ids/e0") is not None
    finally:
        for c in collectors:
            c.close()
    counts = Counter((t, p, o) for _, t, p, o in sink)
    assert set(counts) == expected


def test_consumer_rides_out_a_broker_worker_restart(broker, zk):
    """A worker dies and is restarted by the supervisor: its registry entry goes and
    comes back (a rebalance each time), the fetcher reconnects, nothing is lost."""
    broker.create_topic("bumpy", 4)
    sink, lock = [], threading.Lock()
    c = Consumer(broker.zk_connect, "gw", "w0", auto_offset_reset="smallest", **FAST)
    collector = Collector(c, c.create_message_streams({"bumpy": 2}), sink, lock)
    try:
        expected = produce(broker, "bumpy", 4, 50)
        wait_for(lambda: expected <= delivered_set(sink, lock), "the first messages")
        row = broker.kill_worker(1)
        broker.wait_restarted(1, row)
        expected |= produce(broker, "bumpy", 4, 50, start=50)
        wait_for(lambda: expected <= delivered_set(sink, lock), "every message")
        assert len(c.owned_partitions()) == 4
    finally:
        collector.close()
    assert {(t, p, o) for _, t, p, o in sink} == expected
