"""Preemption plans: the fewest GPUs paused, never a stable trial (ladder.scheduling)."""

from __future__ import annotations

from ladder.scheduling import resources as res
from ladder.scheduling.fairshare import Ledger
from ladder.scheduling.preemption import plan_preemption
from ladder.scheduling.resources import Node, Resources, Tier, Trial, tier

TOTAL = Resources(24, 192, 1536)


def trial(tid: str, gpus: int, priority: int = 0, tenant: str = "t",
          tier: Tier = Tier.SPOT) -> Trial:
    return Trial(tid, tenant, "s", res.demand(gpus), priority=priority, tier=tier)


def cluster(layout: dict[str, list[Trial]]) -> tuple[list[Node], Ledger]:
    ledger = Ledger(TOTAL)
    out = []
    for node_id, running in layout.items():
        used = sum(t.demand.gpus for t in running)
        out.append(res.node(node_id, 8, "a100", free=Resources(8 - used)))
        for t in running:
            ledger.add(t.tenant, t.demand.resources)
    return out, ledger


def test_the_plan_pauses_the_fewest_gpus() -> None:
    layout = {"n0": [trial("a", 4), trial("b", 4)],
              "n1": [trial("c", 2), trial("d", 2), trial("e", 1), trial("f", 1), trial("g", 2)],
              "n2": [trial("h", 8)]}
    nodes, ledger = cluster(layout)
    plan = plan_preemption(trial("w", 3, priority=5), nodes, layout, ledger)
    # n1: pausing d (2) + e (1) frees exactly 3; n0 would pause 4, n2 8.
    assert plan is not None and plan.node_id == "n1" and plan.gpus_freed == 3
    assert sorted(v.trial_id for v in plan.victims) in (["c", "e"], ["c", "f"], ["d", "e"],
                                                        ["d", "f"], ["e", "g"], ["f", "g"])


def test_free_space_counts_so_less_is_paused() -> None:
    layout = {"n0": [trial("a", 4), trial("b", 2)], "n1": [trial("c", 8)]}
    nodes, ledger = cluster(layout)
    plan = plan_preemption(trial("w", 4, priority=1), nodes, layout, ledger)
    assert plan.node_id == "n0" and [v.trial_id for v in plan.victims] == ["b"]


def test_a_trial_that_fits_needs_no_victim() -> None:
    layout = {"n0": [trial("a", 4)]}
    nodes, ledger = cluster(layout)
    plan = plan_preemption(trial("w", 4, priority=1), nodes, layout, ledger)
    assert plan.victims == () and plan.node_id == "n0"


def test_a_stable_trial_is_never_paused() -> None:
    layout = {"n0": [trial("stable", 8, tier=Tier.STABLE)],
              "n1": [trial("s1", 4, tier=Tier.STABLE), trial("s2", 4, tier=Tier.STABLE)]}
    nodes, ledger = cluster(layout)
    assert plan_preemption(trial("w", 1, priority=99), nodes, layout, ledger) is None
    layout["n2"] = [trial("spot", 8, tier=Tier.SPOT)]
    nodes, ledger = cluster(layout)
    plan = plan_preemption(trial("w", 1, priority=99), nodes, layout, ledger)
    assert [v.trial_id for v in plan.victims] == ["spot"]


def test_equal_or_higher_priority_is_never_paused() -> None:
    layout = {"n0": [trial("same", 4, priority=3), trial("higher", 4, priority=4)]}
    nodes, ledger = cluster(layout)
    assert plan_preemption(trial("w", 2, priority=3), nodes, layout, ledger) is None


def test_lowest_priority_victims_among_equal_cost_plans() -> None:
    layout = {"n0": [trial("p2", 4, priority=2), trial("x", 4, priority=9)],
              "n1": [trial("p0", 4, priority=0), trial("y", 4, priority=9)]}
    nodes, ledger = cluster(layout)
    plan = plan_preemption(trial("w", 4, priority=5), nodes, layout, ledger)
    assert [v.trial_id for v in plan.victims] == ["p0"]


def test_another_tenant_is_paused_only_while_richer_than_the_waiting_one() -> None:
    rich = {"n0": [trial("r", 8, tenant="rich")], "n1": [trial("r2", 8, tenant="rich")]}
    nodes, ledger = cluster(rich)
    plan = plan_preemption(trial("w", 8, priority=1, tenant="poor"), nodes, rich, ledger)
    assert plan is not None and plan.gpus_freed == 8
    poor = {"n0": [trial("p", 8, tenant="poor")]}
    nodes, ledger = cluster(poor)
    ledger.add("waiting", Resources(16))  # the waiting tenant already holds more
    plan = plan_preemption(trial("w", 8, priority=1, tenant="waiting"), nodes, poor, ledger)
    assert plan is None


def test_only_promoted_trials_of_a_stable_study_off_spot_nodes_are_stable() -> None:
    assert tier(spot_node=False, stable_for_promoted=True, promoted=True) is Tier.STABLE
    # Exploration, a study that asked for no stable tier, or a spot node: spot tier.
    assert tier(spot_node=False, stable_for_promoted=True, promoted=False) is Tier.SPOT
    assert tier(spot_node=False, stable_for_promoted=False, promoted=True) is Tier.SPOT
    assert tier(spot_node=True, stable_for_promoted=True, promoted=True) is Tier.SPOT
