"""Fair-share reclaim (``preemption.plan_reclaim``, ``work.reclaim``): a tenant below
its weighted part whose big trial is blocked pauses richer tenants' trials, never
making them poorer than itself."""

from __future__ import annotations

from ladder.scheduling import resources as res
from ladder.scheduling.fairshare import Ledger
from ladder.scheduling.reservation import Reservation, Reserved
from ladder.scheduling.resources import Resources, TenantPolicy, Tier, Trial
from ladder.scheduling.work import StudyWork, plan_work

TOTAL = Resources(gpus=64, cpu=512, memory_gb=0)
EIGHT = res.demand(gpus=8, cpu=8)
WEIGHTS = {"a": TenantPolicy(2.0), "b": TenantPolicy(1.0), "c": TenantPolicy(1.0)}


def _trial(tid: str, tenant: str, gpus: int, priority: int = 0, tier: Tier = Tier.SPOT
           ) -> Trial:
    return Trial(tid, tenant, f"{tenant}-study", res.demand(gpus=gpus, cpu=gpus), priority,
                 tier)


def _ledger(held: dict[str, int]) -> Ledger:
    ledger = Ledger(TOTAL, WEIGHTS)
    for tenant, gpus in held.items():
        ledger.add(tenant, Resources(gpus, float(gpus), 0))
    return ledger


def _big(priority: int = 0) -> StudyWork:
    return StudyWork("a-big", "a", EIGHT, priority, 0, 0, 10, 10)


def _answer(node_trials: list[Trial], ledger: Ledger, free: int = 4,
            studies: list[StudyWork] | None = None):
    node = res.node("n1", 8, cpu=64, free=Resources(free, 64.0 - 8 + free, 0))
    return plan_work(node, studies or [_big()], ledger, [(t, False) for t in node_trials],
                     reserved=Reserved({}, lambda: [node], limit=0))


def test_a_short_tenants_blocked_big_trial_pauses_a_richer_tenants_trial() -> None:
    # a (weight 2) holds 16 of 64 GPUs: weighted .125; c holds 24: weighted .375.
    ledger = _ledger({"a": 16, "b": 16, "c": 24})
    plan = _answer([_trial("c1", "c", 4)], ledger)
    assert plan.pause == ["c1"] and plan.placements == []
    assert plan.reserve == Reservation("n1", "a", "a-big", EIGHT, preempting=True)


def test_no_reclaim_that_would_leave_the_victims_tenant_poorer_than_the_waiting_one() -> None:
    # a holds 40 (weighted .3125); c 20 (.3125): after the move c .25 < a .375.
    ledger = _ledger({"a": 40, "c": 20})
    assert _answer([_trial("c1", "c", 4)], ledger).pause == []


def test_victims_are_counted_together_for_the_guard() -> None:
    # a holds nothing (.0625 with the trial; 8 GPUs short of its part), b 6, c 10 (.156).
    # Any one of c's trials alone leaves c at .094 or more; the node needs all three
    # (8 GPUs with none free), which would leave c at .031 < .0625: refused.
    ledger = _ledger({"a": 0, "b": 6, "c": 10})
    trials = [_trial(f"c{i}", "c", g) for i, g in enumerate((4, 2, 2))]
    assert _answer(trials, ledger, free=0).pause == []
    # With 4 GPUs free, one 4-GPU trial of c is enough: c stays at .094 >= .0625.
    assert _answer(trials[:1], ledger, free=4).pause == ["c0"]


def test_no_reclaim_of_higher_priority_stable_or_own_trials_nor_when_not_short() -> None:
    ledger = _ledger({"a": 16, "b": 16, "c": 24})
    assert _answer([_trial("c1", "c", 4, priority=1)], ledger).pause == []
    assert _answer([_trial("c1", "c", 4, tier=Tier.STABLE)], ledger).pause == []
    assert _answer([_trial("a1", "a", 4)], ledger).pause == []
    # a holds its part (32 of 64 with weight 2 of 4): nothing to reclaim; nor when it is
    # short by less than its trial needs (placing it would take it past its part).
    rich = _ledger({"a": 32, "b": 16, "c": 16})
    assert _answer([_trial("c1", "c", 4)], rich).pause == []
    nearly = _ledger({"a": 24, "b": 8, "c": 20})  # a short by 2 GPUs; c would stay as rich
    assert _answer([_trial("c1", "c", 4)], nearly).pause == []


def test_the_fifo_baseline_and_answers_without_reservations_never_reclaim() -> None:
    ledger = _ledger({"a": 16, "b": 16, "c": 24})
    node = res.node("n1", 8, cpu=64, free=Resources(4, 60.0, 0))
    plan = plan_work(node, [_big()], ledger, [(_trial("c1", "c", 4), False)])
    assert plan.pause == [] and plan.elsewhere is not None
