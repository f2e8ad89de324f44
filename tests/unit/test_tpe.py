import math

import numpy as np
from ladder.samplers import FACTORIES, LocalDraws, Observation, QuasiRandomSampler, SamplerContext
from ladder.samplers.auto import AutoSampler, prefers_gp
from ladder.samplers.tpe import N_STARTUP, TPESampler
from ladder.space import Kind, ParamSpec, Space
from ladder.study import Algorithm
from ladder.testing.samplers import random_observations

LINE = Space([ParamSpec("x", Kind.FLOAT, low=0, high=10)])
TREE = Space(
    [
        ParamSpec("opt", Kind.CATEGORICAL, values=("sgd", "adam")),
        ParamSpec(
            "momentum", Kind.FLOAT, low=0, high=1, parent="opt", parent_indexes=frozenset({0})
        ),
        ParamSpec(
            "lr",
            Kind.FLOAT,
            low=1e-5,
            high=1,
            log=True,
            parent="opt",
            parent_indexes=frozenset({1}),
        ),
        ParamSpec("layers", Kind.ORDINAL, values=(1, 2, 4, 8)),
    ]
)


def tree_value(p: dict) -> float:
    if p["opt"] == "sgd":
        return 1 + (p["momentum"] - 0.9) ** 2
    return (math.log10(p["lr"]) + 3) ** 2 / 10 + abs(p["layers"] - 4) / 10


def tpe(space: Space, seed: int = 3, maximize: bool = False) -> TPESampler:
    return TPESampler(SamplerContext(space, seed=seed, maximize=maximize, reserve=LocalDraws()))


def test_startup_is_the_quasi_random_stream() -> None:
    ctx = SamplerContext(LINE, seed=5)
    expected = [p.params for p in QuasiRandomSampler(ctx).suggest((), 3)]
    assert [p.params for p in TPESampler(ctx).suggest((), 3)] == expected
    assert FACTORIES[Algorithm.TPE] is TPESampler


def test_concentrates_near_the_minimum_and_follows_direction() -> None:
    data = random_observations(LINE, 40, lambda p: (p["x"] - 2) ** 2)
    xs = [p.params["x"] for p in tpe(LINE).suggest(data, 8)]
    assert abs(np.median(xs) - 2) < 1.0
    data = random_observations(LINE, 40, lambda p: -((p["x"] - 8) ** 2))
    xs = [p.params["x"] for p in tpe(LINE, maximize=True).suggest(data, 8)]
    assert abs(np.median(xs) - 8) < 1.0


def test_deterministic_and_draws_unique() -> None:
    a, b = tpe(LINE), tpe(LINE)
    data = random_observations(LINE, 20, lambda p: p["x"])
    pa, pb = a.suggest(data, 3), b.suggest(data, 3)
    assert [p.params for p in pa] == [p.params for p in pb]
    assert len({p.draw for p in pa}) == 3


def test_pending_points_push_suggestions_away() -> None:
    """Constant liar: with the good region already pending, new points spread out."""
    with_pending, without = [], []
    for seed in range(6):
        s = tpe(LINE, seed=seed)
        data = random_observations(LINE, 30, lambda p: (p["x"] - 5) ** 2, seed=seed)
        pending = [s.suggest(data, 1)[0].params for _ in range(1)]
        pending += [{"x": 5.0 + d} for d in (-0.3, -0.1, 0.1, 0.3)]
        for store, given in ((with_pending, pending), (without, [])):
            x = s.suggest(data, 1, given)[0].params["x"]
            store.append(min(abs(x - q["x"]) for q in pending))
    assert np.mean(with_pending) > np.mean(without)


def test_conditional_space_gives_valid_points_and_ignores_non_finite() -> None:
    s = tpe(TREE)
    data = random_observations(TREE, N_STARTUP + 20, tree_value)
    data.append(Observation("bad", {"opt": "adam", "lr": 0.1, "layers": 2}, math.nan))
    proposals = s.suggest(data, 6, pending=[{"opt": "adam", "lr": 1e-3, "layers": 4}])
    for proposal in proposals:
        TREE.check_params(proposal.params)  # children present exactly when active
    assert sum(p.params["opt"] == "adam" for p in proposals) >= 4


def test_auto_rule() -> None:
    # The quality suite's evidence: a GP on every shape it covers (auto.py's table).
    assert prefers_gp(LINE)
    assert prefers_gp(TREE)
    categorical = Space(
        [ParamSpec(f"c{i}", Kind.CATEGORICAL, values=tuple("abcdef")) for i in range(2)]
    )
    assert prefers_gp(categorical)
    # Wider than any suite space: TPE.
    wide = Space([ParamSpec(f"c{i}", Kind.CATEGORICAL, values=tuple("abcdef")) for i in range(6)])
    assert not prefers_gp(wide)
    auto = AutoSampler(SamplerContext(TREE, seed=1))
    [proposal] = auto.suggest(random_observations(TREE, N_STARTUP + 2, tree_value), 1)
    assert proposal.algorithm == "auto:gp"
    assert auto.algorithm == "auto"  # the sampler's own name does not change per call
    wide_auto = AutoSampler(SamplerContext(wide, seed=1))
    [proposal] = wide_auto.suggest(random_observations(wide, N_STARTUP + 2, lambda p: 0.0), 1)
    assert proposal.algorithm == "auto:tpe"
