"""The rules of partition reassignment (pybroker.coord.reassignment), pure functions
over a topic znode's content and a cluster view, and the controller's plan for a
partition being reassigned."""
from pybroker.coord import controller, reassignment
from pybroker.coord.reassignment import Outcome, alter, finish, settle
from pybroker.coord.registry import ClusterState, PartitionInfo
from pybroker.protocol import ErrorCode

NODES = {100, 101, 200, 300, 400}


def znode(partitions: dict, adding=None, removing=None) -> dict:
    out = {"version": 2, "partitions": {str(p): r for p, r in partitions.items()}}
    if adding:
        out["adding_replicas"] = {str(p): r for p, r in adding.items()}
    if removing:
        out["removing_replicas"] = {str(p): r for p, r in removing.items()}
    return out


def test_start_puts_the_target_first_and_records_what_moves():
    new, outcomes = alter(znode({0: [100, 200], 1: [200, 300]}), {0: [300, 200]}, NODES)
    assert outcomes == {0: Outcome()}
    assert new == znode({0: [300, 200, 100], 1: [200, 300]}, adding={0: [300]},
                        removing={0: [100]})


def test_a_new_target_replaces_the_one_under_way():
    under_way = znode({0: [300, 200, 100]}, adding={0: [300]}, removing={0: [100]})
    new, _ = alter(under_way, {0: [400, 100]}, NODES)
    # the original replicas are RS - AR = [200, 100]; 300 (added before) is dropped
    assert new == znode({0: [400, 100, 200]}, adding={0: [400]}, removing={0: [200]})


def test_a_reordering_applies_at_once_and_the_same_set_is_a_no_op():
    new, outcomes = alter(znode({0: [100, 200, 300]}), {0: [200, 300, 100]}, NODES)
    assert outcomes[0] == Outcome() and new == znode({0: [200, 300, 100]})
    assert alter(znode({0: [100, 200]}), {0: [100, 200]}, NODES) == (None, {0: Outcome()})


def test_cancel_restores_the_original_replicas():
    under_way = znode({0: [300, 200, 100], 1: [100]}, adding={0: [300]}, removing={0: [100]})
    new, outcomes = alter(under_way, {0: None}, NODES)
    assert outcomes == {0: Outcome()} and new == znode({0: [200, 100], 1: [100]})
    none, outcomes = alter(znode({0: [100]}), {0: None}, NODES)
    assert none is None and outcomes[0].error_code == ErrorCode.NO_REASSIGNMENT_IN_PROGRESS


def test_invalid_targets():
    z = znode({0: [100, 200]})
    cases = {
        (): ErrorCode.INVALID_REPLICA_ASSIGNMENT,                  # empty
        (300, 300): ErrorCode.INVALID_REPLICA_ASSIGNMENT,          # twice
        (300, 999): ErrorCode.INVALID_REPLICA_ASSIGNMENT,          # not registered
        (300, 400, 401): ErrorCode.INVALID_REPLICA_ASSIGNMENT,     # 401 not registered
        (101, 200): ErrorCode.INVALID_REPLICA_ASSIGNMENT,          # 100 -> 101: one broker
    }
    for target, code in cases.items():
        new, outcomes = alter(z, {0: list(target)}, NODES)
        assert new is None and outcomes[0].error_code == code, (target, outcomes)
    _, outcomes = alter(znode({0: [100]}), {0: [100, 101]}, NODES)
    assert outcomes[0].error_code == ErrorCode.INVALID_REPLICA_ASSIGNMENT  # share a broker
    assert "share a broker" in outcomes[0].error_message
    _, outcomes = alter(z, {5: [100]}, NODES)
    assert outcomes[5].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    _, outcomes = alter(z, {0: [300, 200, 400]}, NODES, allow_rf_change=False)
    assert outcomes[0].error_code == ErrorCode.INVALID_REPLICATION_FACTOR
    new, outcomes = alter(z, {0: [300, 400]}, NODES, allow_rf_change=False)
    assert outcomes[0] == Outcome() and new is not None


def test_finish_only_the_reassignment_decided_on():
    under_way = znode({0: [300, 200, 100]}, adding={0: [300]}, removing={0: [100]})
    assert finish(under_way, 0, (300, 200)) == znode({0: [300, 200]})
    assert finish(under_way, 0, (400, 200)) is None      # replaced meanwhile
    assert finish(znode({0: [300, 200]}), 0, (300, 200)) is None  # done already


def state(info: PartitionInfo, live=(100, 200, 300, 400)) -> ClusterState:
    return ClusterState(nodes={n: ("h", n) for n in live},
                        topics={"t": {0: info.leader}}, partitions={("t", 0): info})


def moving(leader: int, isr: tuple, version: int = 3) -> PartitionInfo:
    return PartitionInfo((300, 200, 100), leader, 5, isr, version, adding=(300,),
                         removing=(100,))


def test_settle_waits_for_the_whole_target_in_sync():
    info = moving(100, (100, 200))
    assert settle(state(info), "t", 0, info) is None
    assert controller.plan(state(info)) == [] and controller.completions(state(info)) == []


def test_settle_moves_the_leader_into_the_target_and_shrinks_the_isr():
    info = moving(100, (100, 200, 300))
    new = settle(state(info), "t", 0, info)
    assert (new.leader, new.leader_epoch, new.isr) == (300, 6, (200, 300))
    assert controller.plan(state(info)) == [("t", 0, new)]
    # a leader in the target stays, in its epoch; only the ISR shrinks
    info = moving(200, (100, 200, 300))
    new = settle(state(info), "t", 0, info)
    assert (new.leader, new.leader_epoch, new.isr) == (200, 5, (200, 300))
    # a dead target replica cannot lead: the next one does
    info = moving(100, (100, 200, 300))
    new = settle(state(info, live=(100, 200)), "t", 0, info)
    assert new is not None and new.leader == 200


def test_a_final_state_completes_the_topic_znode():
    info = moving(300, (200, 300))
    assert settle(state(info), "t", 0, info) == (300, 200)
    assert controller.completions(state(info)) == [("t", 0, (300, 200))]
    assert controller.plan(state(info)) == []


def test_after_a_cancel_nodes_outside_the_replicas_leave_isr_and_leadership():
    # RS is back to [200, 100]; 300 (added, then cancelled) still leads and is in the ISR
    info = PartitionInfo((200, 100), 300, 5, (300, 200, 100), 4)
    [(_, _, new)] = controller.plan(state(info))
    assert (new.leader, new.leader_epoch, new.isr) == (200, 6, (200, 100))
    info = PartitionInfo((200, 100), 200, 5, (300, 200, 100), 4)
    [(_, _, new)] = controller.plan(state(info))
    assert (new.leader, new.leader_epoch, new.isr) == (200, 5, (200, 100))
    assert reassignment.target_of(info) == (200, 100)
