"""Preemption across nodes (ladder.scheduling.work: plan_elsewhere, and plan_work's
reservations for a plan's room): a higher-priority trial blocked on the asking node
pauses lower-priority trials on another node and holds that node for its study."""

from __future__ import annotations

from ladder.scheduling import resources as res
from ladder.scheduling import work
from ladder.scheduling.fairshare import Ledger
from ladder.scheduling.reservation import Reservation, Reserved
from ladder.scheduling.resources import Resources, TenantPolicy, Trial
from ladder.scheduling.work import (
    StudyWork,
    elsewhere_due,
    nodes_to_read,
    plan_elsewhere,
    plan_work,
)

TOTAL = Resources(gpus=32, cpu=256, memory_gb=0)
FOUR = res.demand(gpus=4, cpu=4)


def _trial(tid: str, gpus: int, priority: int = 0, tenant: str = "a", study: str = "low"
           ) -> Trial:
    return Trial(tid, tenant, study, res.demand(gpus=gpus, cpu=gpus), priority)


def _cluster(layout: dict[str, list[Trial]], ledger: Ledger | None = None
             ) -> tuple[list[res.Node], dict[str, list[tuple[Trial, bool]]], Ledger]:
    ledger = ledger or Ledger(TOTAL)
    nodes, running = [], {}
    for node_id, trials in layout.items():
        used = sum(t.demand.gpus for t in trials)
        nodes.append(res.node(node_id, 8, cpu=32, free=Resources(8 - used, 32.0 - used, 0)))
        running[node_id] = [(t, False) for t in trials]
        for t in trials:
            ledger.add(t.tenant, t.demand.resources)
    return nodes, running, ledger


def _high(room: int = 10, tenant: str = "a") -> StudyWork:
    return StudyWork("high", tenant, FOUR, 5, 0, 0, room, 100)


def _waiting(tenant: str = "a") -> Trial:
    return Trial("high#n0", tenant, "high", FOUR, 5)


def _layout() -> dict[str, list[Trial]]:
    return {"n0": [_trial(f"h{i}", 4, priority=5, study="high") for i in range(2)],
            "n1": [_trial("x", 4), _trial("y", 4)],
            "n2": [_trial(f"s{i}", 1) for i in range(8)],
            "n3": [_trial("z", 4), _trial("top", 4, priority=9, study="other")]}


def test_the_asking_nodes_blocked_trial_pauses_the_least_on_another_node() -> None:
    nodes, running, ledger = _cluster(_layout())
    # n0 asks: full of trials of the same priority, no plan there; the cluster has one.
    plan = plan_work(nodes[0], [_high()], ledger, running["n0"])
    assert plan.pause == [] and plan.elsewhere is not None
    found = plan_elsewhere(plan.elsewhere, _high(), nodes, running, ledger, {}, 4, "n0")
    assert found is not None
    where, held = found
    # n1 and n3 free 4 GPUs with one victim, n2 with four; n1 by id (n3's 4-GPU victim
    # sits beside a trial of higher priority: same cost, later id).
    assert where.node_id == "n1" and [v.trial_id for v in where.victims] == ["x"]
    assert held == Reservation("n1", "a", "high", FOUR, preempting=True)


def test_no_plan_beyond_the_bound_or_the_studys_room_nor_on_nodes_held_or_pausing() -> None:
    nodes, running, ledger = _cluster(_layout())
    waiting = _waiting()
    under_way = {"n1": Reservation("n1", "a", "high", FOUR, preempting=True)}
    assert plan_elsewhere(waiting, _high(room=1), nodes, running, ledger, under_way, 4) is None
    assert plan_elsewhere(waiting, _high(), nodes, running, ledger, under_way, 1) is None
    assert not elsewhere_due(_high(), under_way, 1) and elsewhere_due(_high(), under_way, 2)
    # With room for more: not on the held n1; n3's trial z already pausing (its room
    # is promised): n2, whose four 1-GPU trials make the room.
    running["n3"] = [(t, t.trial_id == "z") for t, _ in running["n3"]]
    found = plan_elsewhere(waiting, _high(room=2), nodes, running, ledger, under_way, 4)
    assert found is not None and found[0].node_id == "n2" and len(found[0].victims) == 4
    # The tenant's max_gpus counts the room held for it: 32 held + 4 under way + 4 > 36.
    capped = Ledger(TOTAL, {"a": TenantPolicy(max_gpus=36)})
    nodes, running, capped = _cluster(_layout(), capped)
    assert plan_elsewhere(waiting, _high(room=2), nodes, running, capped, {}, 4) is not None
    assert plan_elsewhere(waiting, _high(room=2), nodes, running, capped, under_way, 4) is None


def test_another_tenants_trials_only_while_it_stays_as_rich() -> None:
    policies = {"a": TenantPolicy(1.0), "b": TenantPolicy(1.0)}
    # b holds 16 GPUs on n1 and n2, a 8 on n0: pausing 4 of b's leaves b as rich as a.
    layout = {"n0": [_trial("a0", 8, priority=5, study="high")],
              "n1": [_trial(f"b{i}", 4, tenant="b", study="bs") for i in (1, 2)],
              "n2": [_trial(f"b{i}", 4, tenant="b", study="bs") for i in (3, 4)]}
    nodes, running, ledger = _cluster(layout, Ledger(TOTAL, policies))
    found = plan_elsewhere(_waiting(), _high(), nodes, running, ledger, {}, 4, "n0")
    assert found is not None and [v.trial_id for v in found[0].victims] == ["b1"]
    # That plan under way (b1 pausing, n1 held for a) counts: a second one would make a
    # richer than b (with the ledger alone it would look fair).
    running["n1"] = [(t, t.trial_id == "b1") for t, _ in running["n1"]]
    held = {"n1": Reservation("n1", "a", "high", FOUR, preempting=True)}
    assert plan_elsewhere(_waiting(), _high(), nodes, running, ledger, held, 4, "n0") is None
    assert plan_elsewhere(_waiting(), _high(), nodes[::2], {"n0": running["n0"],
                          "n2": running["n2"]}, ledger, {}, 4, "n0") is not None


def test_a_plan_holds_its_node_for_the_waiting_study_until_its_trial_lands() -> None:
    ledger = Ledger(TOTAL, {"a": TenantPolicy(2.0), "b": TenantPolicy(1.0)})
    ledger.add("a", Resources(16, 16, 0))  # a holds more than its part: not short
    node = res.node("n1", 8, cpu=32, free=Resources(0, 24.0, 0))
    low = [(_trial(f"l{i}", 2), False) for i in range(4)]
    studies = [_high(), StudyWork("small", "b", res.demand(gpus=1, cpu=1), 0, 0, 0, 100, 100)]
    plan = plan_work(node, studies, ledger, low,
                     reserved=Reserved({}, lambda: [node], limit=0))
    assert len(plan.pause) == 2  # the local plan: two 2-GPU trials
    assert plan.reserve == Reservation("n1", "a", "high", FOUR, preempting=True)
    # Its victims gone, the node asks: only the waiting study is placed there, though a
    # is not short (the limit of the short tenants' reservations does not apply).
    drained = res.node("n1", 8, cpu=32, free=Resources(4, 28.0, 0))
    held = {"n1": plan.reserve}
    after = plan_work(drained, studies, ledger, low[2:],
                      reserved=Reserved(held, lambda: [drained], limit=0))
    assert [t.study for t in after.placements] == ["high"] and after.release


def test_a_plan_reads_the_trials_of_the_nearest_nodes_and_of_those_pausing_only() -> None:
    many = {f"n{i:03d}": [_trial(f"t{i}", 8 - i % 8)] for i in range(200)}
    nodes, _, _ = _cluster(many)
    held = {"n000": Reservation("n000", "a", "high", FOUR, preempting=True),
            "n001": Reservation("n001", "b", "big", res.demand(gpus=8))}
    read = nodes_to_read(_waiting(), nodes, held, asking="n004")
    limit = work.READ_FACTOR * work.MAX_NODES_SEARCHED
    assert len(read) == limit + 1  # the nearest ones and the node held for a plan
    assert "n000" in read and "n001" not in read and "n004" not in read
    # Nearest: 4 or more GPUs free (nothing to free) before 3 free, before 2 free...
    need = {n.node_id: max(0, 4 - n.free.gpus) for n in nodes}
    assert max(need[n] for n in read if n != "n000") <= min(
        need[n] for n in need if n not in read and n not in ("n001", "n004"))
    # A node where the waiting trial can never fit is not read.
    small = [res.node("tiny", 2, cpu=32)]
    assert nodes_to_read(_waiting(), small, {}) == []
