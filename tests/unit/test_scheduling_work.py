"""RequestWork's plan for one node (ladder.scheduling.work): candidates per study,
fair share with weights and quotas, FIFO baseline, preemption of the spot tier."""

from __future__ import annotations

from collections import Counter

from ladder.scheduling import resources as res
from ladder.scheduling.fairshare import Ledger
from ladder.scheduling.resources import Resources, TenantPolicy, Tier, Trial
from ladder.scheduling.work import Policy, StudyWork, candidates, plan_work, resumed

GPU1 = res.demand(gpus=1, cpu=1)
TOTAL = Resources(gpus=16, cpu=64, memory_gb=512)


def _node(free_gpus: int = 8) -> res.Node:
    return res.node("n1", 8, cpu=32, memory_gb=256,
                    free=Resources(free_gpus, 32 - (8 - free_gpus), 256))


def _study(sid: str, tenant: str, *, priority: int = 0, created: int = 0, resumable: int = 0,
           room: int = 100, new_left: int = 100, demand: res.Demand = GPU1) -> StudyWork:
    return StudyWork(sid, tenant, demand, priority, created, resumable, room, new_left)


def test_candidates_resumable_first_then_round_robin_within_limits() -> None:
    found = candidates([_study("b", "t", created=2), _study("a", "t", created=1, resumable=1,
                                                           room=2, new_left=5)], 3)
    by_seq = sorted(found, key=lambda t: t.seq)
    assert [t.trial_id for t in by_seq] == ["a#r0", "a#n0", "b#n0", "b#n1", "b#n2"]
    assert resumed(by_seq[0]) and not resumed(by_seq[1])
    assert candidates([_study("c", "t", room=0)], 8) == []
    assert len(candidates([_study("d", "t", new_left=1)], 8)) == 1


def test_weights_two_to_one_share_a_node() -> None:
    ledger = Ledger(Resources(gpus=6, cpu=64, memory_gb=512),
                    {"a": TenantPolicy(2.0), "b": TenantPolicy(1.0)})
    node = res.node("n1", 6, cpu=32, memory_gb=256)
    plan = plan_work(node, [_study("sa", "a"), _study("sb", "b")], ledger, [])
    tenants = [t.tenant for t in plan.placements]
    assert sorted(tenants) == ["a", "a", "a", "a", "b", "b"]
    assert plan.pause == []


def test_gpu_quota_is_never_passed_and_fifo_ignores_weights() -> None:
    ledger = Ledger(TOTAL, {"a": TenantPolicy(1.0, max_gpus=3)})
    plan = plan_work(_node(), [_study("sa", "a"), _study("sb", "b", created=5)],
                     ledger, [])
    assert sum(t.tenant == "a" for t in plan.placements) == 3
    assert len(plan.placements) == 8
    fifo = plan_work(_node(), [_study("sa", "a", created=1), _study("sb", "b", created=2)],
                     Ledger(TOTAL, {"b": TenantPolicy(100.0)}), [], Policy.FIFO)
    assert [t.study for t in fifo.placements] == ["sa"] * 8


def test_max_trials_caps_one_answer_and_a_big_trial_needs_a_big_hole() -> None:
    plan = plan_work(_node(), [_study("sa", "a")], Ledger(TOTAL), [], max_trials=3)
    assert len(plan.placements) == 3
    eight = res.demand(gpus=8, cpu=8)
    assert plan_work(_node(7), [_study("s8", "a", demand=eight)], Ledger(TOTAL),
                     []).placements == []


def _running(trial_id: str, priority: int, tier: Tier = Tier.SPOT) -> Trial:
    return Trial(trial_id, "a", "low", GPU1, priority, tier)


def test_high_priority_arrival_preempts_lower_priority_but_never_the_stable_tier() -> None:
    ledger = Ledger(TOTAL)
    ledger.add("a", Resources(8, 8, 0))
    running = [(_running(f"low-t{i}", 0), False) for i in range(8)]
    urgent = [_study("high", "a", priority=5, demand=res.demand(gpus=2, cpu=1))]
    plan = plan_work(_node(0), urgent, ledger, running)
    assert plan.placements == [] and len(plan.pause) == 2
    # Victims already asked to pause make the room: no second plan.
    pausing = [(t, t.trial_id in plan.pause) for t, _ in running]
    assert plan_work(_node(0), urgent, ledger, pausing).pause == []
    # Equal priority, or stable trials: nothing to preempt.
    same = [_study("same", "a", priority=0)]
    assert plan_work(_node(0), same, ledger, running).pause == []
    stable = [(_running(f"s{i}", 0, Tier.STABLE), False) for i in range(8)]
    assert plan_work(_node(0), urgent, ledger, stable).pause == []


def test_candidates_per_study_are_capped_by_what_the_node_takes() -> None:
    node = _node(3)  # 3 GPUs, 27 CPU, 256 GB free
    four = res.demand(gpus=4, cpu=1)
    other_type = res.demand(gpus=1, gpu_type="h100")
    studies = [_study("one", "t", created=1), _study("four", "t", created=2, demand=four),
               _study("h100", "t", created=3, demand=other_type),
               _study("cpu", "t", created=4, demand=res.demand(cpu=10))]
    counts = Counter(t.study for t in candidates(studies, 8, node))
    # 3 of one GPU; one 4-GPU trial (blocked, kept for a preemption plan); none that
    # can never fit the node; CPU-bound: 27 // 10.
    assert counts == {"one": 3, "four": 1, "cpu": 2}
    # A tenant whose long backlog of large trials is blocked still gets its small ones.
    backlog = [_study(f"big{i}", "a", created=i, demand=four) for i in range(80)]
    plan = plan_work(node, [*backlog, _study("small", "a", created=99)],
                     Ledger(TOTAL), [])
    assert [t.study for t in plan.placements] == ["small"] * 3
