"""Time for a group of 10 consumers to settle after a member joins, leaves or dies, over
a topic of PARTITIONS partitions on a 2-worker broker (`broker` fixture, ZooKeeper
from the session's server), both ways of consuming:

- path:       pybroker_consumer   the paper's consumer (pybroker.client.Consumer,
                                  create_message_streams({topic: 1})): Algorithm 1 run
                                  by every member when a ZooKeeper watch fires (P18),
                                  default rebalance_backoff_ms (200, x random [1, 2))
- reference:  confluent_consumer  confluent_kafka.Consumer, subscribe(): the classic
                                  Kafka group protocol against the broker's group
                                  coordinator (pybroker.server.groups), range
                                  assignor, one thread per member calling poll(0.1)

Settled means: every partition has exactly one owner and each member holds
PARTITIONS // n or one more (so the group of 9 a newcomer joins does not count as
settled until the newcomer holds its share). For the paper's consumer, also every
owner znode /consumers/<group>/owners/<topic>/<p> exists and names the stream that
owns p in memory. For confluent-kafka: what each member's rebalance callbacks
assigned (see CkMember).

One round = one change, timed from the call that makes it until settled (polled every
POLL_S, bounded by SETTLE_TIMEOUT_S); each round's untimed setup brings the group back
to a settled 9 (join) or 10 (leave, die), so each round costs two rebalances:
- join:   a 10th member subscribes (its ZooKeeper session / its client was opened in
          setup), until the 10 are settled;
- leave:  the member first in sort order (whose departure moves every range) calls
          close(), until the other 9 are settled;
- die:    (paper consumer only) that member's threads are stopped in setup, then its
          ZooKeeper session is expired for real (expire_zk_session): its ephemeral
          znodes vanish as when ZooKeeper declares a crashed consumer dead. A real
          crash adds zookeeper_session_timeout_ms (6 s by default) before this starts.
          (The Kafka protocol's counterpart is the coordinator's session timeout,
          45 s in librdkafka by default; not measured.)
The group is reused across rounds; consumer ids count up (c00, c01, ...) so sort
order, and therefore Algorithm 1's ranges, are known.

Recorded with lookups=1, so the throughput table reads ns per rebalance (the time to
settle) and the ratio is pybroker's speed over confluent-kafka's. No target; nothing
here asserts on time, only that every round settled.

What dominates (2-core machine, 2026-11-25; medians of 3-5 rounds, over four runs):
- paper consumer, 0.15-0.20 s join / 0.23-0.27 s leave / 0.14-0.18 s die: a watch
  fires in every member at once and most runs of Algorithm 1 settle on their first
  attempt; a run that collides with an owner znode not yet released backs off
  rebalance_backoff_ms x [1, 2) (200-400 ms), which is where the spread comes from
  (8 conflicts in about 35 rebalances of 10 members, one run of this file);
- confluent-kafka, 0.50 s for join and leave alike: the members learn of the
  rebalance from their next heartbeat, and the round starts just after the previous
  rebalance settled, when every member's heartbeat timer has just restarted: so
  each figure is one full heartbeat interval (the worst case; a change at a random
  moment would wait half an interval on average) plus 20-40 ms of JoinGroup and
  SyncGroup.
  The coordinator's INITIAL_REBALANCE_DELAY_S (0.5 s) applies only to a group
  rebalancing out of Empty, i.e. to the first setup, never to a timed round.
"""
from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer as CkConsumer
from kazoo.exceptions import NoNodeError

from pybroker.client import Consumer
from pybroker.client.rebalance import owner_path

TOPIC = "bench-rebalance"
PARTITIONS = 20
GROUP_SIZE = 10
ROUNDS = 5
SETTLE_TIMEOUT_S = 30.0   # per rebalance; a miss fails the test with the holdings
POLL_S = 0.005            # settle-check period: the resolution of every figure
# librdkafka's heartbeat.interval.ms: a member learns that the group is rebalancing
# only from a heartbeat answer, so this bounds how long the others take to notice a
# join or a leave. Its default (3000) makes each figure 3.0 s (measured); below 500
# nothing changes: with 200, librdkafka's debug log (debug=cgrp) still shows
# heartbeats 0.48-0.5 s apart, and the figures stay at 0.5 s.
HEARTBEAT_MS = 500
SESSION_TIMEOUT_MS = 6000  # librdkafka's session.timeout.ms (coordinator allows 1-300 s)
CASES = ["join", "leave"]


def balanced(holdings: list[set[int]]) -> bool:
    """Every partition held by exactly one member, each holding P // n or one more."""
    if not holdings:
        return False
    low = PARTITIONS // len(holdings)
    high = low + (1 if PARTITIONS % len(holdings) else 0)
    seen: set[int] = set()
    for held in holdings:
        if not low <= len(held) <= high or seen & held:
            return False
        seen |= held
    return seen == set(range(PARTITIONS))


def wait_until(settled, describe) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not settled():
        if time.monotonic() > deadline:
            raise AssertionError(f"group not settled after {SETTLE_TIMEOUT_S} s: "
                                 f"{describe()}")
        time.sleep(POLL_S)


# --- the paper's consumer ---------------------------------------------------------------

class PaperGroup:
    """The live members of one group of pybroker consumers, plus the ZooKeeper client
    the settle check reads owner znodes with."""

    def __init__(self, connect: str, zk, group: str):
        self.connect, self.zk, self.group = connect, zk, group
        self.members: list[Consumer] = []
        self.gone: list[Consumer] = []      # dead members, closed at the end
        self._next_id = 0

    def new_consumer(self) -> Consumer:
        """A consumer with its ZooKeeper session open, not yet in the group."""
        consumer_id, self._next_id = f"c{self._next_id:02d}", self._next_id + 1
        return Consumer(self.connect, self.group, consumer_id)

    def join(self, consumer: Consumer) -> None:
        consumer.create_message_streams({TOPIC: 1})
        self.members.append(consumer)

    def leave(self, consumer: Consumer) -> None:
        self.members.remove(consumer)
        consumer.close()

    def resize(self, n: int) -> None:
        while len(self.members) > n:
            self.leave(self.members[-1])
        while len(self.members) < n:
            self.join(self.new_consumer())
        self.wait_settled()

    def first(self) -> Consumer:
        return min(self.members, key=lambda c: c.consumer_id)

    def holdings(self) -> list[dict]:
        return [c.owned_partitions() for c in self.members]

    def settled(self) -> bool:
        owned = self.holdings()
        if not balanced([{p for t, p in o if t == TOPIC} for o in owned]):
            return False
        stream_of = {p: stream for o in owned for (_, p), stream in o.items()}
        for p in range(PARTITIONS):
            try:
                data, _ = self.zk.get(owner_path(self.group, TOPIC, p))
            except NoNodeError:
                return False
            if data.decode() != stream_of[p]:
                return False
        return True

    def wait_settled(self) -> None:
        wait_until(self.settled, lambda: {c.consumer_id: sorted(p for _, p in o)
                                          for c, o in zip(self.members, self.holdings())})

    def close(self) -> None:
        for consumer in self.members + self.gone:
            consumer.close()
        self.members, self.gone = [], []


@pytest.fixture
def paper_group(broker, zk):
    broker.create_topic(TOPIC, PARTITIONS)
    group = PaperGroup(broker.zk_connect, zk, "bench-paper")
    yield group
    group.close()


def time_membership_change(benchmark, g, case: str, new_member, oldest) -> None:
    """Time rounds of one membership change, either kind of group: "join" adds
    new_member() to a settled group of GROUP_SIZE - 1, "leave" removes oldest() from a
    settled group of GROUP_SIZE; a round ends when the group has settled again."""
    joining = case == "join"

    def setup():
        g.resize(GROUP_SIZE - 1 if joining else GROUP_SIZE)
        return ((new_member() if joining else oldest()),), {}

    def round_(member):
        (g.join if joining else g.leave)(member)
        g.wait_settled()

    benchmark.pedantic(round_, setup=setup, rounds=ROUNDS, iterations=1)
    assert len(g.members) == GROUP_SIZE - (not joining) and g.settled()


@pytest.mark.parametrize("case", CASES)
def test_pybroker_consumer(benchmark, record, paper_group, case):
    record("rebalance 10", "path", lookups=1, members=GROUP_SIZE, partitions=PARTITIONS)
    time_membership_change(benchmark, paper_group, case, paper_group.new_consumer,
                           paper_group.first)


@pytest.mark.parametrize("case", ["die"])
def test_pybroker_consumer_dies(benchmark, record, paper_group, expire_zk_session, case):
    record("rebalance 10", "path", lookups=1, members=GROUP_SIZE, partitions=PARTITIONS)
    g = paper_group

    def setup():
        g.resize(GROUP_SIZE)
        victim = g.first()
        # Silence it first (as a crash would): no rebalance thread to re-register it
        # when its client reconnects with a new session, no fetcher.
        victim._stop.set()
        victim._rebalance_needed.set()
        for thread in victim._threads:
            thread.join(10)
        g.members.remove(victim)
        g.gone.append(victim)
        return (victim,), {}

    def round_(victim):
        expire_zk_session(victim._zk, wait_reconnected=False)
        g.wait_settled()

    benchmark.pedantic(round_, setup=setup, rounds=ROUNDS, iterations=1)
    assert len(g.members) == GROUP_SIZE - 1 and g.settled()


# --- confluent-kafka, the Kafka group protocol ------------------------------------------

class CkMember:
    """One confluent-kafka consumer and the thread that polls it (librdkafka serves
    rebalances, and the Python client assigns, only inside poll()). What it holds is
    tracked by its rebalance callbacks, on the polling thread: calling assignment()
    from another thread while poll() runs deadlocks (confluent-kafka 2.16 holds the GIL
    while it waits for librdkafka, whose rebalance callback waits for the GIL)."""

    def __init__(self, bootstrap: str, group: str, name: str):
        self.name = name
        self.consumer = CkConsumer({
            "bootstrap.servers": bootstrap, "group.id": group, "client.id": name,
            "partition.assignment.strategy": "range",
            "heartbeat.interval.ms": HEARTBEAT_MS,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "enable.auto.commit": False})
        self.held: frozenset[int] = frozenset()   # replaced whole by the poll thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.consumer.subscribe([TOPIC], on_assign=self._on_assign,
                                on_revoke=self._on_revoke)
        self._thread = threading.Thread(target=self._poll, daemon=True,
                                        name=f"bench-poll-{self.name}")
        self._thread.start()

    def _on_assign(self, consumer, partitions) -> None:
        consumer.assign(partitions)
        self.held = frozenset(tp.partition for tp in partitions if tp.topic == TOPIC)

    def _on_revoke(self, consumer, partitions) -> None:
        self.held = frozenset()
        consumer.unassign()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.consumer.poll(0.1)

    def partitions(self) -> set[int]:
        return set(self.held)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.consumer.close()


class CkGroup:
    def __init__(self, bootstrap: str, group: str):
        self.bootstrap, self.group = bootstrap, group
        self.members: list[CkMember] = []
        self._next_id = 0

    def new_member(self) -> CkMember:
        name, self._next_id = f"c{self._next_id:02d}", self._next_id + 1
        return CkMember(self.bootstrap, self.group, name)

    def join(self, member: CkMember) -> None:
        member.start()
        self.members.append(member)

    def leave(self, member: CkMember) -> None:
        self.members.remove(member)
        member.close()

    def resize(self, n: int) -> None:
        while len(self.members) > n:
            self.leave(self.members[-1])
        while len(self.members) < n:   # all at once: one rebalance, not one each
            self.join(self.new_member())
        self.wait_settled()

    def settled(self) -> bool:
        return balanced([m.partitions() for m in self.members])

    def wait_settled(self) -> None:
        wait_until(self.settled, lambda: {m.name: sorted(m.partitions())
                                          for m in self.members})

    def close(self) -> None:
        for member in self.members:
            member._stop.set()
        for member in self.members:
            member.close()
        self.members = []


@pytest.fixture
def ck_group(broker):
    broker.create_topic(TOPIC, PARTITIONS)
    group = CkGroup(broker.bootstrap, "bench-kafka")
    yield group
    group.close()


@pytest.mark.parametrize("case", CASES)
def test_confluent_consumer(benchmark, record, ck_group, case):
    record("rebalance 10", "reference", lookups=1, members=GROUP_SIZE, guard=False,
           partitions=PARTITIONS, heartbeat_ms=HEARTBEAT_MS)
    # The coordinator's member ids begin with client.id ("c00-<uuid>") and the range
    # assignor sorts by member id: the oldest member is the first.
    time_membership_change(benchmark, ck_group, case, ck_group.new_member,
                           lambda: ck_group.members[0])
