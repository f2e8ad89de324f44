"""The contract every registered sampler keeps (``ladder.samplers.FACTORIES``).

A new algorithm registered there is checked here without writing a test: its
points are valid points of a conditional mixed space, reproducible for a seed,
numbered by unique draws, stamped with their provenance, and it copes with no
observations at all. Samplers that promise not to repeat a point (GP, and AUTO
when it uses the GP) are held to it for observed and pending points. Model-based
samplers steer away from a region where every trial failed; the others ignore
failures. On finite spaces every sampler wastes no evaluation (samplers/distinct.py):
no configuration evaluated or in flight is suggested again until the space is
exhausted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import pytest
from ladder import failures, study
from ladder.samplers import FACTORIES, LocalDraws, Observation, Sampler, make_sampler
from ladder.space import Space
from ladder.study import Algorithm, StudySpec
from ladder.testing.samplers import random_observations
from ladder.v1 import space_pb2 as S
from ladder.v1 import study_pb2

SPACE_CONFIG = S.SearchSpace(
    parameters=[
        S.Parameter(name="x", float_range=S.FloatRange(low=0, high=1)),
        S.Parameter(name="opt", categorical=S.Categorical(choices=["a", "b"])),
        S.Parameter(
            name="mom",
            float_range=S.FloatRange(low=0, high=1),
            condition=S.Condition(parent="opt", parent_values=["a"]),
        ),
        S.Parameter(name="n", int_range=S.IntRange(low=1, high=4)),
    ]
)
SPACE = Space.from_proto(SPACE_CONFIG)
# Enough for every model-based sampler to leave its quasi-random start.
OBSERVED = 12
# Samplers that never suggest an observed or pending point again (README, "gp").
NO_REPEATS = {Algorithm.GP, Algorithm.AUTO}
MIN_DISTANCE = 1e-4

ALGORITHMS = [pytest.param(a, id=a.name) for a in sorted(FACTORIES)]


def value(p: dict) -> float:
    return (p["x"] - 0.3) ** 2 + (p["opt"] == "b") * 0.5 + abs(p["n"] - 2) / 10


def observations(seed: int = 0) -> list[Observation]:
    return random_observations(SPACE, OBSERVED, value, seed)


def sampler(algorithm: Algorithm, seed: int = 7, space: S.SearchSpace = SPACE_CONFIG) -> Sampler:
    config = study_pb2.StudyConfig(
        metric="loss",
        space=space,
        seed=seed,
        algorithm=study.ALGORITHMS.number(algorithm),
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
    )
    return make_sampler(StudySpec.from_proto(config), reserve=LocalDraws())


def distance(a: dict, b: dict) -> float:
    return float(np.linalg.norm(SPACE.params_to_unit(a) - SPACE.params_to_unit(b)))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_zero_observations_give_valid_points_with_unique_draws(algorithm: Algorithm) -> None:
    s = sampler(algorithm)
    proposals = s.suggest((), 4) + s.suggest((), 2)
    assert len(proposals) == 6
    for p in proposals:
        SPACE.check_params(p.params)  # children present exactly when active
        assert p.algorithm and p.predicted_std >= 0
    assert len({p.draw for p in proposals}) == 6
    assert s.suggest((), 0) == []


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_observed_points_give_valid_points_of_the_conditional_space(algorithm: Algorithm) -> None:
    data = observations()
    pending = [data[0].params, SPACE.sample_to_params(np.full(SPACE.dim(), 0.5))]
    proposals = sampler(algorithm).suggest(data, 2, pending)
    assert len(proposals) == 2 and proposals[0].draw != proposals[1].draw
    for p in proposals:
        SPACE.check_params(p.params)
        assert isinstance(p.params["n"], int)
        assert p.algorithm
    if algorithm in NO_REPEATS:
        for p in proposals:
            taken = [o.params for o in data] + pending
            assert min(distance(p.params, q) for q in taken) >= MIN_DISTANCE


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_same_seed_same_inputs_same_points(algorithm: Algorithm) -> None:
    data = observations()
    a, b = sampler(algorithm).suggest(data, 2), sampler(algorithm).suggest(data, 2)
    assert [p.params for p in a] == [p.params for p in b]
    assert [p.draw for p in a] == [p.draw for p in b]
    other = sampler(algorithm, seed=8).suggest(data, 2)
    assert [p.params for p in other] != [p.params for p in a]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_sampler_keeps_no_observations(algorithm: Algorithm) -> None:
    """Observations are the caller's: what one call was given does not leak
    into the next (the next call starts from the quasi-random design again)."""
    s, fresh = sampler(algorithm), sampler(algorithm)
    s.suggest(observations(), 1)
    fresh.suggest((), 1)  # the same draws consumed
    assert [p.params for p in s.suggest((), 2)] == [p.params for p in fresh.suggest((), 2)]


# A block of the space where every trial ran out of memory, next to where the best
# feasible values are (as for the largest model that still fits): the objective
# improves towards the block, so a sampler that is not told about the failures
# goes there.
BLOCK = 0.7
FEASIBLE, FAILED, ROUNDS, BATCH = 16, 8, 5, 4


def towards_the_block(p: dict) -> float:
    return (p["x"] - 0.85) ** 2 + (p["opt"] == "b") * 0.2 + abs(p["n"] - 2) / 20


def feasible_and_failed(seed: int) -> tuple[list[Observation], list[Observation]]:
    """FEASIBLE observations with x <= BLOCK and FAILED out-of-memory trials above."""
    rng = np.random.default_rng(seed)
    feasible: list[Observation] = []
    failed: list[Observation] = []
    while len(feasible) < FEASIBLE or len(failed) < FAILED:
        p = SPACE.sample_to_params(rng.random(SPACE.dim()))
        if p["x"] > BLOCK and len(failed) < FAILED:
            failed.append(Observation.of_failure(f"f{len(failed)}", p, failures.OUT_OF_MEMORY))
        elif p["x"] <= BLOCK and len(feasible) < FEASIBLE:
            feasible.append(Observation(f"t{len(feasible)}", p, towards_the_block(p)))
    return feasible, failed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_failed_region_is_avoided_by_model_based_samplers(algorithm: Algorithm) -> None:
    """ROUNDS fixed seeds, one batch each, with the failures given and withheld: a
    model-based sampler puts at most half as many points in the failed block (a
    quasi-random one proposes the same points either way)."""
    inside = {"given": 0, "withheld": 0}
    same = True
    for seed in range(ROUNDS):
        feasible, failed = feasible_and_failed(seed)
        given = sampler(algorithm, seed).suggest(feasible + failed, BATCH)
        withheld = sampler(algorithm, seed).suggest(feasible, BATCH)
        same &= [p.params for p in given] == [p.params for p in withheld]
        inside["given"] += sum(p.params["x"] > BLOCK for p in given)
        inside["withheld"] += sum(p.params["x"] > BLOCK for p in withheld)
    if not sampler(algorithm).model_based:
        assert same
        return
    assert inside["withheld"] >= ROUNDS * BATCH // 4, inside  # the block is attractive
    assert inside["given"] * 2 <= inside["withheld"], inside


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_failures_that_are_bugs_change_no_points(algorithm: Algorithm) -> None:
    """USER_ERROR failures are not properties of their region (samplers.INFEASIBLE_KINDS)."""
    feasible, failed = feasible_and_failed(0)
    bugs = [Observation.of_failure(o.trial_id, o.params, failures.USER_ERROR) for o in failed]
    given = sampler(algorithm).suggest(feasible + bugs, 2)
    assert [p.params for p in given] == [p.params for p in sampler(algorithm).suggest(feasible, 2)]


# No wasted evaluations. Categorical grids: 3 x 3 = 27 configurations (exhausted
# within the run) and 6 x 5 = 15,625, with an additive objective plus pair terms.
def grid(n_params: int, n_choices: int) -> S.SearchSpace:
    return S.SearchSpace(
        parameters=[
            S.Parameter(
                name=f"p{j}",
                categorical=S.Categorical(choices=[f"c{i}" for i in range(n_choices)]),
            )
            for j in range(n_params)
        ]
    )


def grid_objective(n_params: int, n_choices: int) -> Callable[[dict], float]:
    rng = np.random.default_rng(n_params * 10 + n_choices)
    main, pairs = rng.random((n_params, n_choices)), rng.random((n_params, n_choices, n_choices))

    def objective(p: dict) -> float:
        c = [int(p[f"p{j}"][1:]) for j in range(n_params)]
        return float(
            sum(main[j, c[j]] for j in range(n_params))
            + 0.4 * sum(pairs[j, c[j], c[j + 1]] for j in range(n_params - 1))
        )

    return objective


def asynchronous(
    s: Sampler, objective: Callable[[dict], float], budget: int, batch: int = 1, workers: int = 8
) -> list[dict]:
    """The points a study suggests with ``workers`` trials in flight: the ``batch``
    oldest finish, then one ask for ``batch`` points with the others pending (a
    suggestion buffer asks in batches too)."""
    running: deque[dict] = deque()
    observed: list[Observation] = []
    suggested: list[dict] = []
    while len(suggested) < budget:
        count = min(workers - len(running), budget - len(suggested))
        for proposal in s.suggest(observed, count, list(running)):
            running.append(proposal.params)
            suggested.append(proposal.params)
        for _ in range(min(batch, len(running))):
            done = running.popleft()
            observed.append(Observation(f"t{len(observed)}", done, objective(done)))
    return suggested


def configs(points: list[dict]) -> set[tuple]:
    return {tuple(sorted(p.items())) for p in points}


@pytest.fixture
def quick_gp(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lighter GP fit and acquisition search: which configurations a sampler may
    propose does not depend on the effort, and the full effort costs over a second per
    ask at 30 one-hot columns (6 x 5 categoricals)."""
    from ladder.samplers import gp

    monkeypatch.setattr(gp, "FIT_ITERATIONS", 10)
    monkeypatch.setattr(gp, "MAX_ITERATIONS", 10)
    monkeypatch.setattr(gp, "RAW_SAMPLES", 64)
    monkeypatch.setattr(gp, "NUM_RESTARTS", 2)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_small_finite_space_is_covered_before_any_repeat(
    algorithm: Algorithm, quick_gp: None
) -> None:
    """27 configurations, 8 in flight: the first 27 suggestions are all of them; past
    that (the space exhausted) points are still valid ones."""
    suggested = asynchronous(sampler(algorithm, space=grid(3, 3)), grid_objective(3, 3), 32)
    assert len(configs(suggested[:27])) == 27
    small = Space.from_proto(grid(3, 3))
    for p in suggested[27:]:
        small.check_params(p)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_larger_finite_space_gets_no_repeat_in_100_evaluations(
    algorithm: Algorithm, quick_gp: None
) -> None:
    """Six 5-way categoricals (15,625 configurations), 100 evaluations, 8 in flight
    (asks of 4 points, to keep the GP's share of this test short): every suggestion a
    configuration not evaluated nor in flight (at least 95 distinct is the
    requirement; the rule gives 100)."""
    s = sampler(algorithm, space=grid(6, 5))
    suggested = asynchronous(s, grid_objective(6, 5), 100, batch=4)
    assert len(configs(suggested)) == 100


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_batch_takes_the_last_free_configurations(algorithm: Algorithm, quick_gp: None) -> None:
    """22 configurations of 27 observed, 3 pending: a batch of 4 holds the 2 free ones
    (then the space is exhausted and repeats are allowed)."""
    small = Space.from_proto(grid(3, 3))
    everything = [
        {"p0": f"c{a}", "p1": f"c{b}", "p2": f"c{c}"}
        for a in range(3)
        for b in range(3)
        for c in range(3)
    ]
    order = np.random.default_rng(5).permutation(27)
    shuffled = [everything[i] for i in order]
    objective = grid_objective(3, 3)
    observed = [Observation(f"t{i}", p, objective(p)) for i, p in enumerate(shuffled[:22])]
    pending, free = shuffled[22:25], shuffled[25:]
    proposals = sampler(algorithm, space=grid(3, 3)).suggest(observed, 4, pending)
    assert len(proposals) == 4
    for p in proposals:
        small.check_params(p.params)
    assert configs(free) <= configs([p.params for p in proposals])
