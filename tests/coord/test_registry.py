"""The ZooKeeper registries a worker keeps (P16, P17), against a real ZooKeeper."""
import json
import socket
import threading
import time

import pytest
from kazoo.client import KazooClient

from pybroker.coord.registry import (CONTROLLER, IDS, PRODUCER_ID_BLOCK_SIZE, Registration,
                                     Registry, TopicExists, ZooKeeperUnreachable,
                                     ensure_chroot)
from pybroker.testing.poll import wait_for

WAIT_S = 20
EXPIRY_ROUNDS = 10


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

    def make(node_id, port=9092, owner=None):
        watcher = Watcher()
        reg = Registry(zk_connect, node_id, "127.0.0.1", port, watcher, 4000, owner=owner)
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
    a.create_topic("orders", {0: [0], 1: [0]}, {"retention.ms": "1000"})
    state = wa.wait_for(lambda s: "orders" in s.topics)
    assert state.topics["orders"] == {0: 0, 1: 0}
    assert state.topic_configs["orders"] == {"retention.ms": "1000"}
    with pytest.raises(TopicExists):
        a.create_topic("orders", {0: [0]}, {})
    assert a.delete_topic("orders")
    wa.wait_for(lambda s: "orders" not in s.topics)
    assert not a.delete_topic("orders")


def test_published_partitions_reach_the_broker_registry(registries, zk):
    a, _ = registries(3)
    a.set_partitions(["orders-1", "orders-0"])  # returns at once: the registry thread writes
    wait_for(lambda: json.loads(zk.get(f"{IDS}/3")[0])["partitions"] == ["orders-0", "orders-1"],
             "the partitions in /brokers/ids/3", WAIT_S, detail=lambda: zk.get(f"{IDS}/3")[0])


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
    wait_for(lambda: json.loads(zk.get(f"{IDS}/7")[0])["partitions"] == ["t-0"],
             "the partitions in /brokers/ids/7", WAIT_S)
    expire_zk_session(a.zk)
    wait_for(lambda: zk.exists(f"{IDS}/7"), "node 7 to re-register after expiry", WAIT_S)
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


# --- re-registration after faults (KAFKA-7165, KAFKA-14845) -------------------------------

def owner_of(zk, node_id):
    """ephemeralOwner of /brokers/ids/<node_id>, None when it does not exist."""
    stat = zk.exists(f"{IDS}/{node_id}")
    return stat.ephemeralOwner if stat is not None else None


def wait_registered(reg, zk, what, timeout=WAIT_S):
    """Until the registry's znode is owned by its current session and it says so."""
    return wait_for(lambda: reg.zk.client_id is not None
                    and owner_of(zk, reg.node_id) == reg.zk.client_id[0]
                    and reg.registration is Registration.REGISTERED, what, timeout, poll=0.005,
                    detail=lambda: (owner_of(zk, reg.node_id), reg.zk.client_id,
                                    reg.registration))


def test_every_one_of_ten_expiries_re_registers_under_the_new_session(
        registries, zk, expire_zk_session, record_property):
    a, wa = registries(7)
    a.set_partitions(["t-0"])
    wait_registered(a, zk, "the first registration")
    seconds = []
    for n in range(EXPIRY_ROUNDS):
        old = a.zk.client_id[0]
        expire_zk_session(a.zk)  # returns once kazoo holds a new session
        assert a.zk.client_id[0] != old
        began = time.monotonic()
        wait_registered(a, zk, f"round {n}: /brokers/ids/7 owned by the new session")
        seconds.append(round(time.monotonic() - began, 4))
        assert json.loads(zk.get(f"{IDS}/7")[0])["partitions"] == ["t-0"]
    wa.wait_for(lambda s: 7 in s.nodes)
    # measured, reported, never asserted on: new session -> znode owned by it
    record_property("reregister_seconds", seconds)
    print(f"re-registration after expiry, s: {seconds}")


def test_a_znode_held_by_a_foreign_session_is_waited_out_never_taken(
        registries, zk, zk_connect, expire_zk_session):
    # KAFKA-7165's trap seen from the other side: /brokers/ids/8 is held by a session
    # that is not ours (a predecessor whose session has not expired yet).
    other = KazooClient(zk_connect)
    other.start(timeout=WAIT_S)
    try:
        other.create(f"{IDS}/8", b'{"host":"10.9.9.9","port":1}', ephemeral=True,
                     makepath=True)
        a, wa = registries(8)
        assert a.registration is Registration.WAITING
        assert owner_of(zk, 8) == other.client_id[0]  # not taken over
        expire_zk_session(other, wait_reconnected=False)  # the old session ends
        wait_registered(a, zk, "node 8 to register once the foreign session is gone")
        assert json.loads(zk.get(f"{IDS}/8")[0])["host"] == "127.0.0.1"
        wa.wait_for(lambda s: s.nodes.get(8) == ("127.0.0.1", 9092))
    finally:
        other.stop()
        other.close()


def test_our_znode_under_a_session_we_never_learnt_is_replaced_then_expiry_handled(
        registries, zk, zk_connect, expire_zk_session):
    # KAFKA-14845: a create whose answer was lost ran under a session id we never learnt.
    # Played by another client re-creating our znode with our own data (token included).
    a, _ = registries(9)
    wait_registered(a, zk, "the first registration")
    ours, _ = zk.get(f"{IDS}/9")
    other = KazooClient(zk_connect)
    other.start(timeout=WAIT_S)
    try:
        # one atomic multi: the registry's watch must not see the gap between the two
        tx = other.transaction()
        tx.delete(f"{IDS}/9")
        tx.create(f"{IDS}/9", ours, ephemeral=True)
        assert tx.commit() == [True, f"{IDS}/9"]
        wait_registered(a, zk, "node 9 to take back its znode from the unknown session")
        assert owner_of(zk, 9) != other.client_id[0]
        expire_zk_session(a.zk)  # and the registry still re-registers after an expiry
        wait_registered(a, zk, "node 9 to re-register after the expiry")
    finally:
        other.stop()
        other.close()


def test_a_restarted_incarnation_replaces_its_dead_predecessor_at_once(
        registries, zk, zk_connect):
    # A worker SIGKILLed by its supervisor leaves its znode until its session expires.
    # The supervisor gives the successor the same owner token: provably ours.
    dead = KazooClient(zk_connect)
    dead.start(timeout=WAIT_S)
    try:
        dead.create(f"{IDS}/10", json.dumps({"host": "127.0.0.1", "port": 9092,
                                             "pybroker_owner": "worker-0-of-sup-1"}).encode(),
                    ephemeral=True, makepath=True)
        a, _ = registries(10, owner="worker-0-of-sup-1")
        wait_registered(a, zk, "the successor to replace its predecessor's znode")
        assert dead.connected  # the predecessor's session was still alive all along
    finally:
        dead.stop()
        dead.close()


def test_start_against_a_closed_port_names_the_address(zk_root):
    with socket.socket() as probe:  # a port nobody listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        connect = f"127.0.0.1:{probe.getsockname()[1]}/nowhere"
        before = set(threading.enumerate())
        reg = Registry(connect, 11, "127.0.0.1", 9092, lambda s: None)
        with pytest.raises(ZooKeeperUnreachable, match=connect):
            reg.start(timeout=0.3)
        reg.stop()
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == []  # no kazoo thread keeps trying in the background


def test_a_znode_deleted_under_a_live_session_is_created_again(registries, zk):
    a, _ = registries(12)
    a.set_partitions(["x-0"])
    wait_for(lambda: json.loads(zk.get(f"{IDS}/12")[0])["partitions"] == ["x-0"],
             "the partitions in /brokers/ids/12", WAIT_S)
    session = a.zk.client_id[0]
    zk.delete(f"{IDS}/12")  # an operator's mistake; the session itself is fine
    wait_registered(a, zk, "node 12 to notice (exists-watch) and register again")
    assert a.zk.client_id[0] == session
    assert json.loads(zk.get(f"{IDS}/12")[0])["partitions"] == ["x-0"]
