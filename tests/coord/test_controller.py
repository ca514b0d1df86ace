"""The controller's decisions (pure: a view in, the state znodes to write out)."""
from __future__ import annotations

from pybroker.coord.controller import decide, plan
from pybroker.coord.registry import ClusterState, PartitionInfo

TP = ("t", 0)


def view(live, info: PartitionInfo, offline=None) -> ClusterState:
    return ClusterState(nodes={n: ("127.0.0.1", 1) for n in live},
                        topics={"t": {0: info.leader}}, partitions={TP: info},
                        offline=offline or {})


def info(leader, isr, epoch=3, replicas=(1, 2, 3), version=7) -> PartitionInfo:
    return PartitionInfo(tuple(replicas), leader, epoch, tuple(isr), version)


def test_a_live_leader_with_a_live_isr_is_left_alone():
    assert decide(view({1, 2, 3}, info(1, (1, 2, 3))), *TP, info(1, (1, 2, 3))) is None


def test_a_dead_leader_is_replaced_by_the_first_live_isr_member_with_a_new_epoch():
    old = info(1, (1, 2, 3))
    new = decide(view({2, 3}, old), *TP, old)
    assert (new.leader, new.leader_epoch, new.isr) == (2, 4, (2, 3))
    assert new.version == old.version  # the compare-and-set is over the version read


def test_a_replica_outside_the_isr_never_becomes_leader():
    old = info(1, (1, 3))
    new = decide(view({2, 3}, old), *TP, old)
    assert new.leader == 3


def test_no_live_isr_member_keeps_the_partition_offline_unchanged():
    old = info(1, (1,))
    assert decide(view({2, 3}, old), *TP, old) is None  # unclean election is off


def test_a_dead_follower_leaves_the_isr_under_a_live_leader_in_the_same_epoch():
    old = info(1, (1, 2, 3))
    new = decide(view({1, 2}, old), *TP, old)
    assert (new.leader, new.leader_epoch, new.isr) == (1, 3, (1, 2))


def test_a_leader_that_has_the_partition_offline_is_replaced():
    old = info(1, (1, 2, 3))
    new = decide(view({1, 2, 3}, old, offline={1: frozenset({"t-0"})}), *TP, old)
    assert new.leader == 2 and 1 not in new.isr


def test_a_partition_without_a_state_znode_gets_one_from_its_live_replicas():
    old = PartitionInfo((1, 2, 3), 1, 0, (1, 2, 3), -1)
    new = decide(view({2, 3}, old), *TP, old)
    assert (new.leader, new.leader_epoch, new.isr) == (2, 0, (2, 3))


def test_plan_lists_only_the_partitions_that_change():
    ok, dead = info(2, (2, 3)), info(1, (1, 2))
    state = ClusterState(nodes={2: ("h", 1), 3: ("h", 2)},
                         topics={"t": {0: 2, 1: 1}},
                         partitions={("t", 0): ok, ("t", 1): dead})
    changes = plan(state)
    assert [(t, p, i.leader) for t, p, i in changes] == [("t", 1, 2)]


def test_a_rebalance_gives_leadership_back_to_a_live_in_sync_preferred_replica():
    moved = info(2, (1, 2, 3))
    state = view({1, 2, 3}, moved)
    assert plan(state) == []                       # no rebalance asked: left alone
    [(_t, _p, new)] = plan(state, rebalance=True)
    assert (new.leader, new.leader_epoch, new.isr) == (1, 4, (1, 2, 3))


def test_a_preferred_replica_out_of_sync_is_not_made_leader():
    assert plan(view({1, 2, 3}, info(2, (2, 3))), rebalance=True) == []
