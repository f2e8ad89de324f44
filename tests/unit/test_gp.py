import numpy as np
from ladder.samplers import (
    FACTORIES,
    LocalDraws,
    Observation,
    QuasiRandomSampler,
    SamplerContext,
    make_sampler,
)
from ladder.samplers.gp import ENCODING, GPSampler, initial_points
from ladder.space import Kind, ParamSpec, Space
from ladder.v1 import study_pb2

PLANE = Space(
    [ParamSpec("x", Kind.FLOAT, low=0, high=1), ParamSpec("y", Kind.FLOAT, low=-2, high=2)]
)
MIXED = Space(
    [
        ParamSpec("x", Kind.FLOAT, low=0, high=1),
        ParamSpec("lr", Kind.FLOAT, low=1e-4, high=1, log=True),
        ParamSpec("n", Kind.INT, low=1, high=6),
        ParamSpec("opt", Kind.CATEGORICAL, values=("a", "b", "c")),
        ParamSpec("mom", Kind.FLOAT, low=0, high=1, parent="opt", parent_indexes=frozenset({0})),
    ]
)


def bowl(p: dict) -> float:
    return (p["x"] - 0.3) ** 2 + (p["y"] - 1.0) ** 2


def gp(space: Space, seed: int = 1, maximize: bool = False) -> GPSampler:
    return GPSampler(SamplerContext(space, seed=seed, maximize=maximize, reserve=LocalDraws()))


def observed(space: Space, n: int, value, seed: int = 0) -> list[Observation]:  # noqa: ANN001
    rng = np.random.default_rng(seed)
    points = [space.sample_to_params(rng.random(space.dim())) for _ in range(n)]
    return [Observation(f"t{i}", p, value(p)) for i, p in enumerate(points)]


def test_initial_design_is_the_quasi_random_stream() -> None:
    ctx = SamplerContext(PLANE, seed=4)
    expected = [p.params for p in QuasiRandomSampler(ctx).suggest(initial_points(PLANE))]
    got = [p.params for p in GPSampler(ctx).suggest(initial_points(PLANE))]
    assert got == expected
    assert isinstance(make_sampler(study_pb2.StudyConfig(algorithm=study_pb2.GP), PLANE), GPSampler)
    assert study_pb2.GP in FACTORIES


def test_model_based_suggestion_is_deterministic_and_predicts() -> None:
    data = observed(PLANE, 14, bowl)
    a, b = gp(PLANE), gp(PLANE)
    a.update(data)
    b.update(data)
    pa, pb = a.suggest(1)[0], b.suggest(1)[0]
    assert pa.params == pb.params and pa.draw == 0
    assert pa.predicted_std > 0
    # The model has seen values between ~0 and ~5; it predicts a low value there.
    assert -1 < pa.predicted_mean < min(o.value for o in data) + 0.5
    assert bowl(pa.params) < np.median([o.value for o in data])


def test_maximize_reports_values_in_the_metric_direction() -> None:
    s = gp(PLANE, maximize=True)
    data = observed(PLANE, 14, lambda p: 10 - bowl(p))
    s.update(data)
    proposal = s.suggest(1)[0]
    assert proposal.predicted_mean > np.median([o.value for o in data])


def test_pending_points_are_not_suggested_again() -> None:
    s = gp(PLANE)
    s.update(observed(PLANE, 14, bowl))
    first = s.suggest(1)[0].params
    unit = PLANE.params_to_unit
    again = s.suggest(1)[0].params
    diverted = s.suggest(1, pending=[first])[0].params
    assert np.linalg.norm(unit(again) - unit(first)) < 0.05  # same state, same optimum
    assert np.linalg.norm(unit(diverted) - unit(first)) > np.linalg.norm(unit(again) - unit(first))


def test_mixed_conditional_space_batch_is_valid() -> None:
    def value(p: dict) -> float:
        return (p["x"] - 0.5) ** 2 + (np.log10(p["lr"]) + 2) ** 2 + (p["opt"] != "a")

    s = gp(MIXED)
    s.update(observed(MIXED, initial_points(MIXED), value))
    s.update([Observation("nan", {"x": 0.1, "lr": 0.1, "n": 2, "opt": "b"}, float("nan"))])
    batch = s.suggest(2)
    assert [p.draw for p in batch] == [0, 1]
    for proposal in batch:
        MIXED.check_params(proposal.params)  # ints are ints, inactive child omitted
        assert isinstance(proposal.params["n"], int)
    assert batch[0].params != batch[1].params


def test_zero_count_is_empty() -> None:
    assert gp(PLANE).suggest(0) == []


CHOICES = Space(
    [
        ParamSpec("x", Kind.FLOAT, low=0, high=1),
        ParamSpec("n", Kind.INT, low=1, high=6),
        ParamSpec("opt", Kind.CATEGORICAL, values=("a", "b", "c")),
        ParamSpec("mom", Kind.FLOAT, low=0, high=1, parent="opt", parent_indexes=frozenset({0})),
    ]
)


def test_discrete_neighbours_are_valid_one_step_moves() -> None:
    s = gp(CHOICES)
    point = {"x": 0.2, "n": 1, "opt": "b"}
    moves = s._neighbours(point)
    for move in moves:
        CHOICES.check_params(move)  # switching to "a" activates "mom"
    assert {m["opt"] for m in moves if m["n"] == 1} == {"a", "c"}
    assert sorted(m["n"] for m in moves if m["opt"] == "b") == [2]  # n=0 is out of range


def test_discrete_choices_are_optimised_not_rounded() -> None:
    def value(p: dict) -> float:
        return (p["x"] - 0.5) ** 2 + 0.3 * (p["n"] - 4) ** 2 + (0.0 if p["opt"] == "c" else 1.0)

    s = gp(CHOICES, seed=2)
    s.update(observed(CHOICES, 40, value, seed=5))
    proposal = s.suggest(1)[0]
    CHOICES.check_params(proposal.params)
    assert proposal.params["opt"] == "c"
    assert proposal.params["n"] in (3, 4, 5)


def test_local_search_walks_discrete_moves_to_the_acquisition_optimum() -> None:
    import torch

    s = gp(CHOICES)
    target = torch.tensor(CHOICES.params_to_unit({"x": 0.2, "n": 4, "opt": "c"}, ENCODING))

    def acquisition(x: torch.Tensor) -> torch.Tensor:  # batch x q x d -> batch
        return -((x - target) ** 2).sum(dim=(-1, -2))

    start = {"x": 0.2, "n": 1, "opt": "a", "mom": 0.3}
    found = s._local_search(acquisition, [start], 0)  # type: ignore[arg-type]
    assert found == {"x": 0.2, "n": 4, "opt": "c"}  # 3 int steps + 1 switch, mom dropped
