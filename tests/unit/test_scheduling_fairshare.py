"""Weighted fair share, priorities and quotas in a scheduling round (ladder.scheduling)."""

from __future__ import annotations

import heapq
import random

from ladder.scheduling import resources as res
from ladder.scheduling.chooser import schedule
from ladder.scheduling.fairshare import Ledger, dominant_share, jain_index
from ladder.scheduling.resources import Node, Resources, TenantPolicy, Trial

TOTAL = Resources(80, 640, 5120)


def nodes(count: int = 10) -> list[Node]:
    return [res.node(f"n{i:02d}", 8, "a100", 64, 512) for i in range(count)]


def trial(tid: str, tenant: str, gpus: int, seq: int, priority: int = 0) -> Trial:
    return Trial(tid, tenant, f"{tenant}-study", res.demand(gpus, cpu=8 * gpus,
                 memory_gb=64 * gpus), priority=priority, seq=seq)


def saturated_shares(policies: dict[str, TenantPolicy], seconds: float = 20_000.0,
                     warmup: float = 2_000.0, seed: int = 7) -> tuple[dict[str, float], int]:
    """Every tenant always has 12 trials waiting (1, 2 or 4 GPUs, exponential run
    times); a round after every completion. Returns the GPUs each tenant held on average
    after warm-up, and the most GPUs any tenant held above its quota."""
    rng = random.Random(seed)
    free = {n.node_id: n for n in nodes()}
    ledger = Ledger(TOTAL, policies)
    pending: list[Trial] = []
    seq = 0
    events: list[tuple[float, int, Trial, str]] = []
    gpu_time = dict.fromkeys(policies, 0.0)
    worst_excess = 0
    now = 0.0

    def top_up() -> None:
        nonlocal seq
        for tenant in policies:
            while sum(t.tenant == tenant for t in pending) < 12:
                seq += 1
                pending.append(trial(f"t{seq}", tenant, rng.choice([1, 2, 4]), seq))

    while now < seconds:
        top_up()
        decided = schedule(pending, free.values(), ledger)
        for placed, node_id in decided.placements:
            pending.remove(placed)
            free[node_id] = free[node_id].take(placed.demand)
            heapq.heappush(events, (now + rng.expovariate(1 / 600), placed.seq, placed, node_id))
        for tenant, policy in policies.items():
            if policy.max_gpus is not None:
                worst_excess = max(worst_excess, ledger.usage(tenant).gpus - policy.max_gpus)
        end, _, done, node_id = heapq.heappop(events)
        if end > warmup:
            for tenant in policies:
                gpu_time[tenant] += ledger.usage(tenant).gpus * (end - max(now, warmup))
        now = end
        free[node_id] = free[node_id].give(done.demand)
        ledger.remove(done.tenant, done.demand.resources)
    return {t: g / (now - warmup) for t, g in gpu_time.items()}, worst_excess


def test_weighted_shares_converge_to_the_weights_within_10_percent() -> None:
    weights = {"a": 2.0, "b": 1.0, "c": 1.0}
    held, _ = saturated_shares({t: TenantPolicy(w) for t, w in weights.items()})
    shares = {t: g / sum(held.values()) for t, g in held.items()}
    for tenant, weight in weights.items():
        target = weight / sum(weights.values())
        assert abs(shares[tenant] / target - 1) < 0.10, (tenant, shares)
    assert jain_index(shares[t] / w for t, w in weights.items()) > 0.99


def test_quota_is_never_exceeded_and_the_rest_goes_to_the_others() -> None:
    policies = {"a": TenantPolicy(2.0), "b": TenantPolicy(1.0, max_gpus=10),
                "c": TenantPolicy(1.0)}
    held, worst_excess = saturated_shares(policies, seconds=8_000.0)
    assert worst_excess <= 0 and held["b"] <= 10
    assert held["a"] > 40 and held["c"] > 20  # work-conserving: what b may not take is used
    assert abs(held["a"] / held["c"] - 2) < 0.2  # and split by the others' weights


def test_quota_skips_a_trial_but_lets_a_smaller_one_through() -> None:
    ledger = Ledger(TOTAL, {"a": TenantPolicy(1.0, max_gpus=3)})
    decided = schedule([trial("big", "a", 4, 0), trial("small", "a", 2, 1)], nodes(), ledger)
    assert [t.trial_id for t, _ in decided.placements] == ["small"]
    assert ledger.usage("a").gpus == 2


def test_the_poorest_tenant_by_weight_goes_first() -> None:
    ledger = Ledger(TOTAL, {"a": TenantPolicy(2.0), "b": TenantPolicy(1.0)})
    ledger.add("a", Resources(6))
    ledger.add("b", Resources(4))  # a: 6/80/2 = 0.0375 < b: 4/80 = 0.05
    decided = schedule([trial("b1", "b", 1, 0), trial("a1", "a", 1, 1)], nodes(1), ledger)
    assert [t.trial_id for t, _ in decided.placements] == ["a1", "b1"]


def test_priority_orders_a_tenants_own_studies_not_the_fair_share() -> None:
    ledger = Ledger(TOTAL)
    ledger.add("rich", Resources(40))
    pending = [trial("rich-low", "rich", 8, 0), trial("rich-urgent", "rich", 8, 1, priority=5),
               trial("poor", "poor", 8, 2)]
    decided = schedule(pending, nodes(2), ledger)
    # poor goes first (smaller share); rich's urgent trial beats rich's older one.
    assert [t.trial_id for t, _ in decided.placements] == ["poor", "rich-urgent"]
    assert [t.trial_id for t in decided.blocked] == ["rich-low"]


def test_dominant_share_takes_the_scarcest_resource() -> None:
    assert dominant_share(Resources(1, 320, 0), TOTAL) == 0.5  # CPU dominates
    assert dominant_share(Resources(), Resources()) == 0.0
    assert jain_index([1, 1, 1]) == 1.0 and abs(jain_index([1, 0, 0]) - 1 / 3) < 1e-12
