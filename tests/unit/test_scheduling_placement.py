"""Resources validation and best-fit placement (ladder.scheduling)."""

from __future__ import annotations

import pytest
from ladder.errors import InvalidArgument
from ladder.scheduling import resources as res
from ladder.scheduling.chooser import fill_node, schedule
from ladder.scheduling.fairshare import Ledger
from ladder.scheduling.placement import best_fit, first_fit
from ladder.scheduling.resources import Node, Resources, Trial


def gpu_node(node_id: str, free_gpus: int = 8, gpu_type: str = "a100") -> Node:
    return res.node(node_id, 8, gpu_type, 64, 512,
                    free=Resources(free_gpus, 64 - 8 * (8 - free_gpus), 512 - 64 * (8 - free_gpus)))


def trial(tid: str, gpus: int, tenant: str = "t", seq: int = 0, gpu_type: str = "") -> Trial:
    return Trial(tid, tenant, "s", res.demand(gpus, gpu_type, cpu=8 * gpus, memory_gb=64 * gpus),
                 seq=seq)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"gpus": -1}, "demand.gpus"),
    ({"gpus": 1.5}, "demand.gpus"),
    ({"gpus": True}, "demand.gpus"),
    ({"gpus": 1, "cpu": -2}, "demand.cpu"),
    ({"gpus": 1, "memory_gb": float("nan")}, "demand.memory_gb"),
    ({}, "demand must ask"),
])
def test_bad_demand_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        res.demand(**kwargs)


def test_bad_node_and_policy_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="node.node_id"):
        res.node("", 8)
    with pytest.raises(InvalidArgument, match="node.free"):
        res.node("n", 8, free=Resources(9))
    with pytest.raises(InvalidArgument, match="tenant.weight"):
        res.tenant_policy(weight=0)
    with pytest.raises(InvalidArgument, match="tenant.max_gpus"):
        res.tenant_policy(max_gpus=-1)


def test_gpu_type_must_match_unless_any() -> None:
    v100 = gpu_node("v", gpu_type="v100")
    assert not v100.fits(res.demand(1, "a100"))
    assert v100.fits(res.demand(1))
    assert v100.fits(res.demand(0, "a100", cpu=1))  # no GPU asked: type irrelevant


def test_best_fit_picks_the_tightest_node_with_documented_tie_breaks() -> None:
    nodes = [gpu_node("c", 8), gpu_node("b", 3), gpu_node("a", 3), gpu_node("d", 1)]
    assert best_fit(res.demand(2), nodes).node_id == "a"  # 1 left on a and b: id breaks
    assert best_fit(res.demand(1), nodes).node_id == "d"  # 0 left
    assert best_fit(res.demand(4), nodes).node_id == "c"  # only one fits
    assert best_fit(res.demand(9), nodes) is None
    assert first_fit(res.demand(1), nodes).node_id == "c"


def stranded_gpus(nodes: list[Node], big: int = 8) -> int:
    """Free GPUs that exist in total but on no node with room for a ``big`` trial."""
    if any(n.free.gpus >= big for n in nodes):
        return 0
    return sum(n.free.gpus for n in nodes)


@pytest.mark.parametrize("rule", [first_fit, best_fit])
def test_best_fit_beats_first_fit_on_fragmentation(rule) -> None:
    # An empty node listed first and a half-busy one: four 1-GPU trials, then an 8-GPU one.
    nodes = {"empty": gpu_node("empty", 8), "half": gpu_node("half", 4)}
    for i in range(4):
        chosen = rule(trial(f"small{i}", 1).demand, list(nodes.values()))
        nodes[chosen.node_id] = chosen.take(trial("x", 1).demand)
    big = trial("big", 8).demand
    placed = rule(big, list(nodes.values()))
    if rule is best_fit:
        assert placed is not None and placed.node_id == "empty"
        assert stranded_gpus(list(nodes.values())) == 0
    else:
        assert placed is None  # 8 GPUs free in total, 4 + 4: stranded
        assert stranded_gpus(list(nodes.values())) == 8


def test_an_8_gpu_trial_goes_only_to_an_empty_node() -> None:
    nodes = [gpu_node(f"n{i}", free) for i, free in enumerate([7, 4, 8, 1, 6])]
    decided = schedule([trial("big", 8)], nodes, Ledger(Resources(40, 320, 2560)))
    assert decided.placements == [(decided.placements[0][0], "n2")]
    busy = [n for n in nodes if n.free.gpus < 8]
    decided = schedule([trial("big", 8)], busy, Ledger(Resources(40, 320, 2560)))
    assert decided.placements == [] and [t.trial_id for t in decided.blocked] == ["big"]


def test_a_blocked_big_trial_reserves_the_node_closest_to_fitting() -> None:
    nodes = [gpu_node("n0", 6), gpu_node("n1", 2)]
    pending = [trial("big", 8, seq=0), trial("s1", 1, seq=1), trial("s2", 1, seq=2)]
    decided = schedule(pending, nodes, Ledger(Resources(16, 128, 1024)))
    assert decided.reserved == {"n0": "big"}
    assert [(t.trial_id, n) for t, n in decided.placements] == [("s1", "n1"), ("s2", "n1")]
    # Without the reservation the small trials would go where the big one must.
    assert best_fit(trial("s", 1).demand, nodes).node_id == "n1"


def test_fill_node_answers_a_worker_agent_with_the_trials_that_fit() -> None:
    node = gpu_node("agent", 5)
    pending = [trial("a", 4, "x", 0), trial("b", 4, "y", 1), trial("c", 1, "y", 2),
               trial("d", 8, "x", 3)]
    ledger = Ledger(Resources(80, 640, 5120))
    started = fill_node(node, pending, ledger)
    assert [t.trial_id for t in started] == ["a", "c"]  # x first (tie on share: name), then y
    assert ledger.usage("x").gpus == 4 and ledger.usage("y").gpus == 1
