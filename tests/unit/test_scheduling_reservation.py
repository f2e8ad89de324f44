"""Node reservations for RequestWork (ladder.scheduling.reservation, through
work.plan_work): a short tenant's blocked big trial holds the node closest to fitting
it; a held node takes only that study's trials until one lands; bounds and releases."""

from __future__ import annotations

from ladder.scheduling import resources as res
from ladder.scheduling.fairshare import Ledger
from ladder.scheduling.reservation import (
    Reservation,
    Reserved,
    new_reservation,
    reserve_limit,
    shortfall,
)
from ladder.scheduling.resources import Resources, TenantPolicy, Trial
from ladder.scheduling.work import StudyWork, plan_work

EIGHT = res.demand(gpus=8, cpu=8)
ONE = res.demand(gpus=1, cpu=1)
TOTAL = Resources(gpus=32, cpu=256, memory_gb=0)


def _ledger(a_gpus: int, b_gpus: int) -> Ledger:
    ledger = Ledger(TOTAL, {"a": TenantPolicy(2.0), "b": TenantPolicy(1.0)})
    ledger.add("a", Resources(a_gpus, a_gpus, 0))
    ledger.add("b", Resources(b_gpus, b_gpus, 0))
    return ledger


def _node(node_id: str, free_gpus: int) -> res.Node:
    return res.node(node_id, 8, cpu=32, free=Resources(free_gpus, 32 - (8 - free_gpus), 0))


def _study(sid: str, tenant: str, demand: res.Demand) -> StudyWork:
    return StudyWork(sid, tenant, demand, 0, 0, 0, 100, 100)


def _reserved(held: dict[str, Reservation], nodes: list[res.Node], limit: int = 4
              ) -> Reserved:
    return Reserved(held, lambda: nodes, limit)


def test_shortfall_is_the_gpus_below_the_weighted_part_of_what_is_held() -> None:
    # a (weight 2) holds 8, b holds 16: the level is 24 / 3 = 8 per weight unit.
    ledger = _ledger(8, 16)
    assert shortfall(ledger, "a", ["a", "b"]) == 8
    assert shortfall(ledger, "b", ["a", "b"]) == -8
    assert shortfall(ledger, "a", ["a"]) == 0  # alone, a holds all its part
    assert reserve_limit(100) == 5 and reserve_limit(3) == 1
    assert reserve_limit(100, 0.0) == 0 and reserve_limit(100, 0.2) == 20


def test_a_short_tenants_blocked_trial_holds_the_node_closest_to_fitting_it() -> None:
    ledger = _ledger(8, 16)
    cluster = [_node("n1", 2), _node("n2", 5), _node("n3", 5), _node("n4", 0)]
    asking = _node("n1", 2)
    studies = [_study("a8", "a", EIGHT), _study("b1", "b", ONE)]
    plan = plan_work(asking, studies, ledger, [], reserved=_reserved({}, cluster))
    # The asking node's two GPUs go to the fair share's next picks; a's 8-GPU trial
    # does not fit anywhere and holds n2 (most free, then id), not the asking node.
    assert len(plan.placements) == 2
    assert plan.reserve == Reservation("n2", "a", "a8", EIGHT)
    # b holds more than its part: its blocked trial reserves nothing.
    b_only = [_study("b8", "b", EIGHT)]
    assert plan_work(_node("n1", 2), b_only, _ledger(8, 16), [],
                     reserved=_reserved({}, cluster)).reserve is None
    # No reservation without ``reserved`` (the service's fifo, or none asked for).
    assert plan_work(_node("n1", 2), studies, _ledger(8, 16), []).reserve is None


def test_bounds_the_limit_and_the_tenants_shortfall() -> None:
    cluster = [_node("n1", 2), _node("n2", 5), _node("n3", 5)]
    blocked = [Trial("a8#n0", "a", "a8", EIGHT)]
    held = {"n9": Reservation("n9", "b", "b8", EIGHT)}
    assert new_reservation(blocked, ["a", "b"], _ledger(8, 16),
                           _reserved(held, cluster, limit=1)) is None
    # a is 8 GPUs short and already holds a node for 8: nothing more.
    mine = {"n3": Reservation("n3", "a", "a8", EIGHT)}
    assert new_reservation(blocked, ["a", "b"], _ledger(8, 16),
                           _reserved(mine, cluster)) is None
    # 16 short (a 0, b 24): a second node, the closest one not held.
    second = new_reservation(blocked, ["a", "b"], _ledger(0, 24), _reserved(mine, cluster))
    assert second == Reservation("n2", "a", "a8", EIGHT)


def test_a_held_node_drains_for_its_study_and_is_released_when_it_lands() -> None:
    held = {"n2": Reservation("n2", "a", "a8", EIGHT)}
    studies = [_study("a8", "a", EIGHT), _study("b1", "b", ONE)]
    draining = plan_work(_node("n2", 5), studies, _ledger(8, 16), [],
                         reserved=_reserved(held, [_node("n2", 5)]))
    assert draining.placements == [] and not draining.release  # b's 1-GPU trials wait
    drained = plan_work(_node("n2", 8), studies, _ledger(8, 16), [],
                        reserved=_reserved(held, [_node("n2", 8)]))
    assert [t.study for t in drained.placements] == ["a8"] and drained.release


def test_a_reservation_ends_when_its_tenant_is_no_longer_short_or_at_quota() -> None:
    held = {"n2": Reservation("n2", "a", "a8", EIGHT)}
    studies = [_study("a8", "a", EIGHT), _study("b1", "b", ONE)]
    even = plan_work(_node("n2", 5), studies, _ledger(16, 8), [],
                     reserved=_reserved(held, [_node("n2", 5)]))
    assert even.release and {t.study for t in even.placements} == {"b1"}
    capped = Ledger(TOTAL, {"a": TenantPolicy(2.0, max_gpus=10), "b": TenantPolicy(1.0)})
    capped.add("a", Resources(8, 8, 0))
    capped.add("b", Resources(16, 16, 0))
    assert plan_work(_node("n2", 5), studies, capped, [],
                     reserved=_reserved(held, [_node("n2", 5)])).release
    gone = plan_work(_node("n2", 5), [_study("b1", "b", ONE)], _ledger(8, 16), [],
                     reserved=_reserved(held, [_node("n2", 5)]))
    assert gone.release and len(gone.placements) == 5
