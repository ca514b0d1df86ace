"""The ZooKeeper registries a worker keeps (P16, P17), against a real ZooKeeper."""
import json
import threading
import time

import pytest

from pybroker.coord.registry import (CONTROLLER, IDS, PRODUCER_ID_BLOCK_SIZE, Registry,
                                     TopicExists, ensure_chroot)

WAIT_S = 20


class Watcher:
    """Collects the ClusterState snapshots a registry hands over."""

    def __init__(self):
        self.states = []
        self.changed = threading.Condition()

    def __call__(self, state):
        with self.changed:
            self.states.append(state)
            self.changed.notify_all()

    def wait_for(self, predicate, timeout=WAIT_S):
        deadline = time.monotonic() + timeout
        with self.changed:
            while not (self.states and predicate(self.states[-1])):
                left = deadline - time.monotonic()
                assert left > 0, f"no matching cluster state; last: {self.states[-1:]}"
                self.changed.wait(left)
            return self.states[-1]


@pytest.fixture
def registries(zk_connect):
    made = []

    def make(node_id, port=9092):
        watcher = Watcher()
        reg = Registry(zk_connect, node_id, "127.0.0.1", port, watcher, 4000)
        reg.start()
        made.append(reg)
        return reg, watcher

    yield make
    for reg in made:
        reg.stop()


def test_nodes_register_and_see_each_other(registries, zk):
    a, wa = registries(0, 9092)
    b, wb = registries(1, 9093)
    state = wa.wait_for(lambda s: set(s.nodes) == {0, 1})
    assert state.nodes == {0: ("127.0.0.1", 9092), 1: ("127.0.0.1", 9093)}
    assert state.controller_id in (0, 1)
    assert state.cluster_id
    data = json.loads(zk.get(f"{IDS}/1")[0])
    assert (data["host"], data["port"]) == ("127.0.0.1", 9093)
    assert zk.get(f"{IDS}/1")[1].ephemeralOwner != 0


def test_topics_partitions_and_configs(registries):
    a, wa = registries(0)
    a.create_topic("orders", {0: 0, 1: 0}, {"retention.ms": "1000"})
    state = wa.wait_for(lambda s: "orders" in s.topics)
    assert state.topics["orders"] == {0: 0, 1: 0}
    assert state.topic_configs["orders"] == {"retention.ms": "1000"}
    with pytest.raises(TopicExists):
        a.create_topic("orders", {0: 0}, {})
    assert a.delete_topic("orders")
    wa.wait_for(lambda s: "orders" not in s.topics)
    assert not a.delete_topic("orders")


def test_published_partitions_reach_the_broker_registry(registries, zk):
    a, _ = registries(3)
    a.set_partitions(["orders-1", "orders-0"])
    assert json.loads(zk.get(f"{IDS}/3")[0])["partitions"] == ["orders-0", "orders-1"]


def test_producer_ids_are_unique_across_nodes(registries):
    a, _ = registries(0)
    b, _ = registries(1)
    ids = [a.next_producer_id() for _ in range(PRODUCER_ID_BLOCK_SIZE + 5)]
    ids += [b.next_producer_id() for _ in range(PRODUCER_ID_BLOCK_SIZE + 5)]
    assert len(set(ids)) == len(ids)


def test_controller_moves_when_its_node_leaves(registries, zk):
    a, wa = registries(0)
    b, wb = registries(1)
    first = wb.wait_for(lambda s: s.controller_id >= 0).controller_id
    (a if first == 0 else b).stop()
    survivor = wb if first == 0 else wa
    state = survivor.wait_for(lambda s: s.controller_id not in (-1, first))
    assert state.controller_id == (1 if first == 0 else 0)
    assert json.loads(zk.get(CONTROLLER)[0])["brokerid"] == state.controller_id


def test_expired_session_re_registers(registries, zk, expire_zk_session):
    a, wa = registries(7)
    a.set_partitions(["t-0"])
    expire_zk_session(a._zk)
    deadline = time.monotonic() + WAIT_S
    while not zk.exists(f"{IDS}/7"):
        assert time.monotonic() < deadline, "node 7 did not re-register after expiry"
        time.sleep(0.05)
    data = json.loads(zk.get(f"{IDS}/7")[0])
    assert data["partitions"] == ["t-0"]
    wa.wait_for(lambda s: 7 in s.nodes)


def test_missing_chroot_is_created(zk_server, zk_root):
    chroot = f"/made-by-registry-{time.monotonic_ns()}/nested"
    ensure_chroot(zk_server.connect_string + chroot)
    try:
        assert zk_root.exists(chroot)
    finally:
        zk_root.delete(chroot.rsplit("/", 1)[0], recursive=True)
