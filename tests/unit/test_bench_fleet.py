"""bench/fleet.py's scenario: the studies, their arrival times and the trials' run times
are drawn from the seed alone, so the fair and fifo runs face the same work."""

from __future__ import annotations

from bench import fleet, fleet_sim


def scenario(nodes: int = 20, duration: float = 60.0) -> fleet.Scenario:
    return fleet.Scenario(nodes=nodes, duration=duration, minute=0.25, seed=7, warmup=0.2,
                          hp_at=0.5, spot_share=0.5, trials_per_study=10, poll=2.0,
                          lease=20.0, sample=1.0)


def test_the_plan_is_the_seeds_and_covers_every_tenant_and_size() -> None:
    plans = fleet.study_plan(scenario())
    assert plans == fleet.study_plan(scenario())
    at_start = {(p.tenant, p.gpus) for p in plans if p.at == 0.0}
    assert at_start == {(t, g) for t in fleet.TENANT_NAMES for g in fleet_sim.SIZES}
    assert all(0.0 <= p.at < 60.0 for p in plans)
    assert [p.at for p in plans] == sorted(p.at for p in plans)


def test_one_high_priority_study_of_c_at_hp_at_sized_to_cs_share() -> None:
    sc = scenario(nodes=200, duration=600.0)
    urgent = [p for p in fleet.study_plan(sc) if p.priority]
    assert len(urgent) == 1
    hp = urgent[0]
    assert (hp.tenant, hp.gpus, hp.at, hp.parallel, hp.trials) == ("C", 4, 300.0, 100, 200)
    assert sc.hp_target == 400  # C's quarter of 1,600 GPUs = 100 parallel trials x 4 GPUs
    assert fleet.study_config(hp).max_parallel_trials == 100


def test_quotas_and_time_scale_with_the_fleet() -> None:
    assert scenario(nodes=200).quotas == {"A": 1000, "B": 500, "C": 500}
    assert scenario(nodes=20).quotas == {"A": 100, "B": 50, "C": 50}
    sc = scenario()
    assert sc.wall(60.0) == 0.25 and sc.sim_hours(15.0) == 1.0


def test_run_times_depend_on_study_and_ordinal_only() -> None:
    first = fleet.run_minutes(7, "A-1g-0", 0, fleet_sim.MEDIAN_S)
    assert first == fleet.run_minutes(7, "A-1g-0", 0, fleet_sim.MEDIAN_S)
    assert first != fleet.run_minutes(7, "A-1g-0", 1, fleet_sim.MEDIAN_S)
    draws = sorted(fleet.run_minutes(7, "s", k, fleet_sim.MEDIAN_S) for k in range(2001))
    assert 30 < draws[1000] < 50  # median near fleet_sim's 40 minutes
    assert draws[-1] > 5 * draws[1000]  # a heavy tail


def test_fleet_sim_studies_are_of_one_size_with_one_of_each_size_at_the_start() -> None:
    jobs, _ = fleet_sim.workload(7, 2.0, per_study=5)
    by_study: dict[str, set[int]] = {}
    for job in jobs:
        by_study.setdefault(job.trial.study, set()).add(job.trial.demand.gpus)
    assert all(len(sizes) == 1 for sizes in by_study.values())
    counts = {s: sum(j.trial.study == s for j in jobs) for s in by_study}
    assert {n for s, n in counts.items() if s != "C-urgent"} == {5}
    at_start = {(j.trial.tenant, j.trial.demand.gpus) for j in jobs if j.arrival == 0.0}
    assert at_start == {(t, g) for t in fleet_sim.TENANTS for g in fleet_sim.SIZES}


def test_contended_shares_count_only_samples_where_every_tenant_waits() -> None:
    def sample(a: int, b: int, c: int, waiting_a: int) -> dict[str, int]:
        return {"busy": a + b + c, "up_gpus": 8, "gpus_A": a, "gpus_B": b, "gpus_C": c,
                "waiting_gpus_A": waiting_a, "waiting_gpus_B": 1, "waiting_gpus_C": 1}

    weights = {"A": 2.0, "B": 1.0, "C": 1.0}
    # A has nothing waiting in the first sample: its low share there is not unfairness.
    found = fleet_sim.contended([sample(0, 4, 4, 0), sample(4, 2, 2, 3)], 8, weights)
    assert (found["samples"], found["of_samples"]) == (1, 2)
    assert found["share_of_busy_gpus"] == {"A": 0.5, "B": 0.25, "C": 0.25}
    assert found["share_over_target_worst"] == 0 and found["waiting_fraction"]["A"] == 0.5
