"""Replica placement: distinct brokers, even leaders and followers, checked assignments."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from pybroker.coord.placement import PlacementError, assign, broker_of, check_assignment

THREE_BY_TWO = [100, 101, 200, 201, 300, 301]  # brokers 1-3, two workers each


@pytest.mark.parametrize("seed", range(5))
def test_replicas_of_a_partition_are_on_distinct_brokers(seed):
    placed = assign(THREE_BY_TWO, 12, 3, random.Random(seed))
    assert sorted(placed) == list(range(12))
    for replicas in placed.values():
        assert len({broker_of(n) for n in replicas}) == 3


@pytest.mark.parametrize("seed", range(5))
def test_leaders_and_replicas_are_even_over_brokers_and_workers(seed):
    placed = assign(THREE_BY_TWO, 12, 3, random.Random(seed))
    leaders = Counter(r[0] for r in placed.values())
    replicas = Counter(n for r in placed.values() for n in r)
    assert sorted(Counter(broker_of(n) for n in leaders.elements()).values()) == [4, 4, 4]
    assert set(leaders.values()) == {2}       # 12 leaders over 6 workers
    assert set(replicas.values()) == {6}      # 36 replicas over 6 workers


def test_one_broker_spreads_over_its_workers():
    placed = assign([0, 1], 4, 1, random.Random(3))
    assert Counter(r[0] for r in placed.values()) == {0: 2, 1: 2}


def test_more_replicas_than_brokers_is_refused():
    with pytest.raises(PlacementError, match="larger than the 3 live broker"):
        assign(THREE_BY_TWO, 1, 4)


@pytest.mark.parametrize("assignment, problem", [
    ({0: [100, 200], 2: [200, 300]}, "partitions 0..n-1"),
    ({0: [100, 200], 1: [200]}, "same, nonzero"),
    ({0: [100, 101]}, "share a broker"),
    ({0: [100, 900]}, "not registered"),
])
def test_explicit_assignments_are_checked(assignment, problem):
    with pytest.raises(PlacementError, match=problem):
        check_assignment(assignment, THREE_BY_TWO)


def test_a_good_explicit_assignment_passes():
    check_assignment({0: [300, 100], 1: [201, 101]}, THREE_BY_TWO)


@pytest.mark.parametrize("seed", range(5))
def test_with_racks_the_replicas_of_a_partition_span_the_racks(seed):
    nodes = [100, 200, 300, 400, 500, 600]          # six brokers of one worker
    racks = {100: "a", 200: "a", 300: "b", 400: "b", 500: "c", 600: "c"}
    placed = assign(nodes, 12, 3, random.Random(seed), racks=racks)
    for replicas in placed.values():
        assert {racks[n] for n in replicas} == {"a", "b", "c"}, replicas
        assert len({broker_of(n) for n in replicas}) == 3
    assert set(Counter(r[0] for r in placed.values()).values()) == {2}  # leaders even


def test_two_racks_and_three_replicas_use_both_racks():
    racks = {100: "a", 200: "a", 300: "b", 400: "b"}
    for replicas in assign([100, 200, 300, 400], 8, 3, random.Random(4), racks=racks).values():
        assert {racks[n] for n in replicas} == {"a", "b"}


def test_racks_are_ignored_unless_every_broker_has_one():
    placed = assign(THREE_BY_TWO, 6, 3, random.Random(1), racks={100: "a"})
    assert placed == assign(THREE_BY_TWO, 6, 3, random.Random(1))
