"""No wasted evaluations (``ladder.samplers.distinct``): which configurations are
taken, how each sampler replaces a taken candidate, the study-level opt-out, and the
suggestion policy's buffer, fallback and refits. Every registered sampler's
behaviour on finite spaces is in test_sampler_contract.py."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from ladder import failures
from ladder.samplers import (
    LocalDraws,
    LocalRefit,
    Observation,
    ObservationStore,
    Pending,
    Proposal,
    Sampler,
    SamplerContext,
    SuggestionPolicy,
    tpe,
)
from ladder.samplers.distinct import (
    ENUMERATE_LIMIT,
    Taken,
    config_key,
    configurations,
    repeatable,
    space_size,
    unseen,
)
from ladder.samplers.quasirandom import QuasiRandomSampler
from ladder.samplers.tpe import TPESampler
from ladder.space import Kind, ParamSpec, Space
from ladder.testing import wait_for


def categorical(name: str, n: int, **condition: object) -> ParamSpec:
    values = tuple(f"c{i}" for i in range(n))
    return ParamSpec(name, Kind.CATEGORICAL, values=values, **condition)  # type: ignore[arg-type]


GRID = Space([categorical(f"p{j}", 3) for j in range(3)])  # 27 configurations
# A conditional space: "opt" a gates an int (4 values) and an ordinal (3), "opt" b a float.
TREE = Space(
    [
        categorical("opt", 3),
        ParamSpec("n", Kind.INT, low=1, high=4, parent="opt", parent_indexes=frozenset({0})),
        ParamSpec(
            "width", Kind.ORDINAL, values=(16, 32, 64), parent="opt", parent_indexes=frozenset({0})
        ),
        ParamSpec("lr", Kind.FLOAT, low=0, high=1, parent="opt", parent_indexes=frozenset({1})),
    ]
)
PLANE = Space([ParamSpec("x", Kind.FLOAT, low=0, high=1), categorical("c", 2)])


def objective(p: dict) -> float:
    return sum(int(str(p[f"p{j}"])[1:]) * (j + 1) for j in range(3)) / 10


def everything() -> list[dict]:
    return configurations(GRID)


def observed(points: Sequence[dict]) -> list[Observation]:
    return [Observation(f"t{i}", p, objective(p)) for i, p in enumerate(points)]


def distinct(points: Sequence[dict]) -> int:
    return len({config_key(GRID, p) for p in points})


# ------------------------------------------------------------------ the helpers


def test_space_size_counts_children_only_under_their_parent() -> None:
    assert space_size(GRID) == 27 == len(configurations(GRID))
    # a: 4 x 3 configurations, b: a float (infinitely many), c: one.
    assert space_size(TREE) == math.inf
    assert repeatable(TREE)  # "c" (and every "a") can come twice
    assert not repeatable(PLANE)  # every configuration has a float
    finite = Space([p for p in TREE.params if p.name != "lr"])
    assert space_size(finite) == 4 * 3 + 1 + 1 == len(configurations(finite))
    assert {"opt": "c1"} in configurations(finite)


def test_keys_are_exact_for_discrete_values() -> None:
    a = {"opt": "c0", "n": 3, "width": 32}
    assert config_key(TREE, a) == config_key(TREE, {"opt": "c0", "n": 3.0, "width": 32.0})
    assert config_key(TREE, a) != config_key(TREE, {**a, "n": 2})
    assert config_key(TREE, {"opt": "c1", "lr": 0.5}) != config_key(
        TREE, {"opt": "c1", "lr": 0.5000001}
    )


def test_what_takes_a_configuration() -> None:
    a, b, c, d, e = everything()[:5]
    taken = Taken.of(
        GRID,
        [
            Observation("t0", a, 1.0),
            Observation("t1", b, 0.5, resource=3.0),  # a rung value: evaluated too
            Observation.of_failure("t2", c, failures.OUT_OF_MEMORY),  # infeasible
            Observation.of_failure("t3", d, failures.USER_ERROR),  # a bug: not evaluated
        ],
        [e],
    )
    assert [p in taken for p in (a, b, c, d, e)] == [True, True, True, False, True]
    assert taken.blocks(a) and not taken.blocks(d)
    assert not Taken.of(GRID, observed([a]), [], repeats=True).blocks(a)  # the opt-out


def test_an_exhausted_space_blocks_nothing() -> None:
    taken = Taken.of(GRID, observed(everything()[:26]), [])
    last = everything()[26]
    assert not taken.exhausted and taken.blocks(everything()[0]) and not taken.blocks(last)
    taken.add(last)
    assert taken.exhausted and not taken.blocks(everything()[0])


def test_unseen_configurations_are_free_and_distinct() -> None:
    taken = Taken.of(GRID, observed(everything()[:20]), everything()[20:24])
    free = unseen(GRID, taken, np.random.default_rng(0), 10)
    assert {config_key(GRID, p) for p in free} == {config_key(GRID, p) for p in everything()[24:]}
    big = Space([categorical(f"p{j}", 5) for j in range(6)])  # sampled, not enumerated
    assert space_size(big) > ENUMERATE_LIMIT
    points = [big.sample_to_params(u) for u in np.random.default_rng(1).random((50, 6))]
    taken = Taken.of(big, [], points)
    found = unseen(big, taken, np.random.default_rng(2), 64)
    assert len(found) == 64 == len({config_key(big, p) for p in found})
    assert not any(p in taken for p in found)


# ------------------------------------------------------------------ the samplers


def test_tpe_takes_the_next_best_candidate_by_its_score() -> None:
    """The same candidates as without the rule; the winner is the best-scoring one
    whose configuration is not taken."""
    good, bad = everything()[:3], everything()[10:20]
    best = tpe.propose(GRID, good, bad, np.random.default_rng(4))
    taken = Taken.of(GRID, [], [best])
    second = tpe.propose(GRID, good, bad, np.random.default_rng(4), taken=taken)

    rng = np.random.default_rng(4)
    good_enc, bad_enc = tpe._encode(GRID, good), tpe._encode(GRID, bad)
    bandwidth = max(tpe.BANDWIDTH * 13 ** (-1.0 / 7), tpe.MIN_BANDWIDTH)
    candidates = tpe._sample(GRID, good_enc, bandwidth, rng, tpe.N_CANDIDATES)
    score = tpe._log_density(GRID, candidates, good_enc, bandwidth) - tpe._log_density(
        GRID, candidates, bad_enc, bandwidth
    )
    ranked = [
        tpe._decode(GRID, candidates.values[i], candidates.active[i])
        for i in np.argsort(-score, kind="stable")
    ]
    assert ranked[0] == best
    assert second == next(p for p in ranked if p != best)


def asynchronous(s: Sampler, budget: int, workers: int = 8) -> list[dict]:
    running: list[dict] = []
    observations: list[Observation] = []
    suggested: list[dict] = []
    while len(suggested) < budget:
        count = min(workers - len(running), budget - len(suggested))
        for proposal in s.suggest(observations, count, running):
            running.append(proposal.params)
            suggested.append(proposal.params)
        done = running.pop(0)
        observations.append(Observation(f"t{len(observations)}", done, objective(done)))
    return suggested


def test_a_study_that_asks_for_repeats_gets_them() -> None:
    """``SamplerContext.repeats``: TPE then re-evaluates its best configurations (the
    behaviour without the rule); with the rule the first 27 points are all 27."""
    repeating = TPESampler(SamplerContext(GRID, seed=2, reserve=LocalDraws(), repeats=True))
    assert distinct(asynchronous(repeating, 27)) < 24
    ruled = TPESampler(SamplerContext(GRID, seed=2, reserve=LocalDraws()))
    assert distinct(asynchronous(ruled, 27)) == 27


def test_quasi_random_replaces_a_taken_point_without_extra_draws() -> None:
    def quasi(repeats: bool = False) -> QuasiRandomSampler:
        return QuasiRandomSampler(SamplerContext(GRID, 3, reserve=LocalDraws(), repeats=repeats))

    # A study that wants repeats gets the stream as it is, observations ignored.
    stream = [p.params for p in quasi(repeats=True).suggest((), 12)]
    assert distinct(stream) == 11  # Sobol' bins of a 3-way grid collide (point 10)
    assert [p.params for p in quasi(repeats=True).suggest(observed(stream), 12)] == stream
    ruled = [p.params for p in quasi().suggest((), 12)]
    assert distinct(ruled) == 12 and ruled[:10] == stream[:10] and ruled[11] == stream[11]
    # A fresh sampler's stream starts with the 6 observed points: each is replaced.
    proposals = quasi().suggest(observed(stream[:6]), 6, stream[6:8])
    assert [p.draw for p in proposals] == list(range(6))  # the stream's own draws
    points = [p.params for p in proposals]
    assert distinct(points) == 6
    assert not {config_key(GRID, p) for p in points} & {config_key(GRID, p) for p in stream[:8]}


# ------------------------------------------------------------------ the policy


class Fixed(Sampler):
    """Proposes the first ``count`` of ``points`` whatever it is told (a sampler
    that does not know what was handed out while it ran); can be held."""

    algorithm = "fixed"

    def __init__(self, context: SamplerContext, points: list[dict]) -> None:
        super().__init__(context)
        self.points = points
        self.gate = threading.Event()
        self.gate.set()
        self.inside = threading.Event()

    def _suggest(
        self, observations: Sequence[Observation], count: int, pending: Pending
    ) -> list[Proposal]:
        self.inside.set()
        self.gate.wait(10)
        first = self.reserve(count)
        chosen = self.points[:count]
        return [
            Proposal(dict(p), first + i, algorithm=self.algorithm) for i, p in enumerate(chosen)
        ]


@pytest.fixture
def policies() -> list[SuggestionPolicy]:
    started: list[SuggestionPolicy] = []
    yield started
    for policy in started:
        assert policy.stop(5)


def test_a_quasi_random_study_hands_out_each_configuration_once() -> None:
    """No refit: every take is the fallback's, which remembers what it handed out
    (before it is pending in Redis), also across concurrent requests."""
    context = SamplerContext(GRID, seed=5, reserve=LocalDraws())
    policy = SuggestionPolicy(ObservationStore(), QuasiRandomSampler(context), None, 4)
    served: list[dict] = []

    def ask() -> None:
        for _ in range(9):
            served.extend(p.params for p in policy.take(1))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(served) == 27 and distinct(served) == 27


def test_a_refit_drops_what_was_handed_out_while_it_ran(
    policies: list[SuggestionPolicy],
) -> None:
    """The buffer holds a, b, c; new observations make it stale and the refit (which
    proposes a, d, e again) is held while a is handed out from the old buffer: a is
    dropped when the refit lands, and misses meanwhile avoid what is buffered."""
    points = everything()
    a, b, c, d, e = points[0], points[1], points[2], points[3], points[4]
    context = SamplerContext(GRID, seed=1, reserve=LocalDraws())
    model = Fixed(context, [a, b, c])
    store = ObservationStore()
    policy = SuggestionPolicy(
        store,
        QuasiRandomSampler(context),
        LocalRefit(lambda: model, store),
        capacity=3,
        low_water=0,
    )
    policies.append(policy.start())
    wait_for(lambda: policy.stats.buffered == 3, 10, "the first refit")
    model.gate.clear()
    model.inside.clear()
    model.points = [a, d, e]
    store.add(observed([points[10]]))
    wait_for(model.inside.is_set, 10, "the stale refit")
    assert policy.take(1)[0].params == a  # from the old buffer
    model.gate.set()
    wait_for(lambda: policy.stats.refits == 2, 10, "the stale refit to land")
    served = [p.params for p in policy.take(3)]
    assert served[:2] == [d, e]  # a was dropped, not handed out twice
    assert distinct([a, *served, points[10]]) == 5  # the miss avoided all of them
