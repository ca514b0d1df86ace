"""OffsetForLeaderEpoch (key 23): the handler's rules on stand-in workers (fencing,
the epoch cache's answers, a node without replica state or a log without a cache), then
a real 2-worker broker answering an existing, a foreign and an unknown partition.

Error codes are written out as Kafka numbers, not taken from our ErrorCode table.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from pybroker.protocol import SUPPORTED, ApiKey
from pybroker.server.handlers import HANDLERS, leader_epoch

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
NOT_LEADER_OR_FOLLOWER = 6
FENCED_LEADER_EPOCH = 74
UNKNOWN_LEADER_EPOCH = 75


# --- stand-ins ----------------------------------------------------------------------------

class Cache:
    """The LeaderEpochCache contract the handler relies on: records its calls and
    answers from a table (epoch -> (epoch, end offset)); unknown epochs (-1, -1)."""

    def __init__(self, answers: dict[int, tuple[int, int]]):
        self.answers = answers
        self.calls: list[tuple[int, int]] = []

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        self.calls.append((epoch, log_end_offset))
        return self.answers.get(epoch, (-1, -1))


class Replicas:
    def __init__(self, epochs: dict):
        self.epochs = epochs

    def leader_epoch(self, tp) -> int:
        return self.epochs.get(tp, -1)


def make_worker(logs: dict, replicas=None, errors: dict | None = None):
    """A worker holding `logs`, with replica state `replicas` (None: no attribute at
    all, as before replication). `errors` is what partition_error says of other
    partitions (absent: UNKNOWN_TOPIC_OR_PARTITION); see `serving`."""
    worker = SimpleNamespace(partitions=SimpleNamespace(logs=logs), errors=errors or {})
    if replicas is not None:
        worker.replicas = replicas
    return worker


@pytest.fixture(autouse=True)
def serving(request, monkeypatch):
    """The stand-in tests replace partition_error (tested with its own module, and
    changing with replication) by the worker's table: the handler's own rules are
    what these tests check. The real-broker test keeps the real one."""
    if "broker" in request.fixturenames:
        return

    def partition_error(worker, topic, partition):
        if (topic, partition) in worker.partitions.logs:
            return NONE
        return worker.errors.get((topic, partition), UNKNOWN_TOPIC_OR_PARTITION)
    monkeypatch.setattr(leader_epoch, "partition_error", partition_error)


def ask(worker, partitions: list[dict], topic: str = "t") -> list[dict]:
    body = leader_epoch.handle(SimpleNamespace(worker=worker),
                               {"replica_id": -1, "topics": [{"topic": topic,
                                                              "partitions": partitions}]})
    assert body["throttle_time_ms"] == 0
    [t] = body["topics"]
    assert t["topic"] == topic
    return t["partitions"]


def part(partition: int, epoch: int, current: int = -1) -> dict:
    return {"partition": partition, "current_leader_epoch": current, "leader_epoch": epoch}


# --- the handler's rules ------------------------------------------------------------------

def test_registered_and_advertised():
    assert HANDLERS[ApiKey.OFFSET_FOR_LEADER_EPOCH] is leader_epoch.handle
    assert SUPPORTED[ApiKey.OFFSET_FOR_LEADER_EPOCH] == (0, 4)


def test_cache_answers_pass_through_with_the_log_end_offset():
    cache = Cache({3: (3, 120), 1: (0, 40)})
    worker = make_worker({("t", 0): SimpleNamespace(epochs=cache, log_end_offset=120)})
    assert ask(worker, [part(0, 3), part(0, 1), part(0, 9)]) == [
        {"error_code": NONE, "partition": 0, "leader_epoch": 3, "end_offset": 120},
        {"error_code": NONE, "partition": 0, "leader_epoch": 0, "end_offset": 40},
        {"error_code": NONE, "partition": 0, "leader_epoch": -1, "end_offset": -1}]
    assert cache.calls == [(3, 120), (1, 120), (9, 120)]


def test_an_undefined_end_offset_is_answered_as_undefined_epoch_too():
    # Kafka's UnifiedLog.endOffsetForEpoch: an UNDEFINED_EPOCH_OFFSET end is "no answer"
    worker = make_worker({("t", 0): SimpleNamespace(epochs=Cache({2: (2, -1)}),
                                                    log_end_offset=5)})
    assert ask(worker, [part(0, 2)])[0] == {"error_code": NONE, "partition": 0,
                                            "leader_epoch": -1, "end_offset": -1}


def test_a_log_without_an_epoch_cache_answers_as_an_empty_cache():
    worker = make_worker({("t", 0): SimpleNamespace(log_end_offset=7)})
    assert ask(worker, [part(0, 0)])[0] == {"error_code": NONE, "partition": 0,
                                            "leader_epoch": -1, "end_offset": -1}


@pytest.mark.parametrize("current, node, error", [
    (-1, 5, NONE),                    # no current epoch sent (v0-v1, or -1): no check
    (5, 5, NONE),
    (4, 5, FENCED_LEADER_EPOCH),      # the client's leader is older than ours
    (6, 5, UNKNOWN_LEADER_EPOCH),     # the client knows a newer leader than we do
    (0, -1, NONE),                    # this node knows no epoch: nothing to fence with
    (9, -1, NONE),
])
def test_fencing(current, node, error):
    cache = Cache({5: (5, 30)})
    worker = make_worker({("t", 0): SimpleNamespace(epochs=cache, log_end_offset=30)},
                         replicas=Replicas({("t", 0): node}))
    [answer] = ask(worker, [part(0, 5, current)])
    assert answer["error_code"] == error
    if error:
        assert (answer["leader_epoch"], answer["end_offset"]) == (-1, -1)
        assert cache.calls == []      # a fenced request does not read the log
    else:
        assert (answer["leader_epoch"], answer["end_offset"]) == (5, 30)


def test_no_replica_state_means_no_fencing():
    worker = make_worker({("t", 0): SimpleNamespace(epochs=Cache({5: (5, 30)}),
                                                    log_end_offset=30)})
    assert not hasattr(worker, "replicas")
    assert ask(worker, [part(0, 5, current=3)])[0]["error_code"] == NONE


def test_partitions_this_node_cannot_serve():
    worker = make_worker({("t", 0): SimpleNamespace(log_end_offset=1)},
                         replicas=Replicas({}), errors={("t", 1): NOT_LEADER_OR_FOLLOWER})
    answers = ask(worker, [part(1, 0), part(2, 0), part(0, 0)])
    assert [(a["partition"], a["error_code"], a["leader_epoch"], a["end_offset"])
            for a in answers] == [(1, NOT_LEADER_OR_FOLLOWER, -1, -1),
                                  (2, UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
                                  (0, NONE, -1, -1)]


# --- a real broker ------------------------------------------------------------------------

def offsets_for(client, topic: str, partition: int, epoch: int, version: int) -> dict:
    body = client.request(ApiKey.OFFSET_FOR_LEADER_EPOCH, version, {
        "replica_id": -1, "topics": [{"topic": topic, "partitions": [
            {"partition": partition, "current_leader_epoch": -1, "leader_epoch": epoch}]}]})
    [t] = body["topics"]
    [p] = t["partitions"]
    assert (t["topic"], p["partition"]) == (topic, partition)
    return p


def test_broker_answers_every_version(broker):
    broker.create_topic("epochs", partitions=2)
    for value in (b"a", b"b", b"c"):
        broker.produce_one("epochs", 0, value)    # log end offset of partition 0: 3
    leader = broker.node_ids.index(broker.leaders("epochs")[0])
    with broker.client(leader) as c:
        for version in range(0, 5):
            p = offsets_for(c, "epochs", 0, 0, version)
            assert p["error_code"] == NONE, (version, p)
            # Two documented outcomes. The log has no epochs until this node assigns
            # one: an empty cache answers (-1, -1). If leader epoch 0 is assigned at
            # creation, epoch 0 is the latest and ends at the log end offset, 3.
            # v0 carries no leader_epoch (decoded as -1): only the end offset tells.
            if version == 0:
                assert p["end_offset"] in (-1, 3), p
            else:
                assert (p["leader_epoch"], p["end_offset"]) in ((-1, -1), (0, 3)), p
            # An undefined epoch (-1) is answered as undefined either way.
            p = offsets_for(c, "epochs", 0, -1, version)
            assert (p["error_code"], p["end_offset"]) == (NONE, -1), (version, p)
            for topic, partition in (("epochs", 7), ("no-such-topic", 0)):
                p = offsets_for(c, topic, partition, 0, version)
                assert (p["error_code"], p["leader_epoch"], p["end_offset"]) == \
                    (UNKNOWN_TOPIC_OR_PARTITION, -1, -1), (version, p)
    # A partition led by the other node is not served here (Kafka answers only from
    # the leader). That node learns of the topic from ZooKeeper: wait until it does.
    with broker.client(1 - leader) as c:
        for _ in range(200):   # bounded: 200 round trips, 20 ms apart
            p = offsets_for(c, "epochs", 0, 0, 4)
            if p["error_code"] != UNKNOWN_TOPIC_OR_PARTITION:
                break
            time.sleep(0.02)
        for version in range(0, 5):
            p = offsets_for(c, "epochs", 0, 0, version)
            assert (p["error_code"], p["end_offset"]) == (NOT_LEADER_OR_FOLLOWER, -1), p
