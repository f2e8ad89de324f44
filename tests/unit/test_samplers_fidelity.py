"""Multi-fidelity observations (``Observation.resource``) and the GP fit cap."""

import threading

import numpy as np
import pytest
from ladder.samplers import (
    LocalDraws,
    Observation,
    ObservationStore,
    QuasiRandomSampler,
    SamplerContext,
)
from ladder.samplers.base import select_fidelity
from ladder.samplers.gp import GPSampler, fit_subset, initial_points
from ladder.samplers.tpe import N_STARTUP, TPESampler
from ladder.space import Kind, ParamSpec, Space

LINE = Space([ParamSpec("x", Kind.FLOAT, low=0, high=1)])


def obs(trial: int, value: float, resource: float | None = None, x: float = 0.5) -> Observation:
    return Observation(f"t{trial}", {"x": x}, value, resource)


def test_final_values_win_once_there_are_enough() -> None:
    data = [obs(i, 1.0, 9.0) for i in range(5)] + [obs(i, 2.0) for i in range(3)]
    chosen = select_fidelity(data, min_points=3)
    assert chosen.resource is None
    assert [o.value for o in chosen.observations] == [2.0] * 3


def test_highest_rung_with_enough_points_is_modelled_alone() -> None:
    data = (
        [obs(i, 1.0, 1.0) for i in range(6)]  # lowest rung: most points
        + [obs(i, 3.0, 3.0) for i in range(4)]  # highest rung with >= 4
        + [obs(i, 9.0, 9.0) for i in range(2)]  # highest rung: too few
        + [obs(i, 0.0) for i in range(1)]  # one final value: too few
    )
    chosen = select_fidelity(data, min_points=4)
    assert chosen.resource == 3.0
    assert {o.value for o in chosen.observations} == {3.0}  # never a mix of levels
    assert len(chosen.observations) == 4


def test_too_few_everywhere_falls_back_to_final_values_and_ignores_nan() -> None:
    data = [obs(0, 1.0, 1.0), obs(1, float("nan"), 1.0), obs(2, 0.5), obs(3, float("inf"))]
    chosen = select_fidelity(data, min_points=2)
    assert chosen.resource is None
    assert [o.trial_id for o in chosen.observations] == ["t2"]


def test_replayed_observations_are_idempotent_per_trial_and_resource() -> None:
    store = ObservationStore()
    batch = [obs(1, 0.3, 1.0), obs(1, 0.2, 3.0), obs(1, 0.1)]
    store.add(batch)
    store.add(batch)  # replayed events
    store.add([obs(1, 0.25, 3.0)])  # a corrected value replaces, not adds
    observations = {o.key: o for o in store.snapshot()}
    assert len(observations) == 3
    assert observations[("t1", 3.0)].value == 0.25
    assert observations[("t1", None)].value == 0.1


def test_tpe_is_guided_by_a_rung_before_any_trial_completes() -> None:
    # Rung values: low is good. No trial completed, so only the rung can guide.
    rng = np.random.default_rng(0)
    xs = rng.random(40)
    tpe = TPESampler(SamplerContext(LINE, seed=3, reserve=LocalDraws()))
    rung = [obs(i, abs(x - 0.8), 2.0, x=float(x)) for i, x in enumerate(xs)]
    assert len(select_fidelity(rung, N_STARTUP).observations) == 40
    suggested = [p.params["x"] for p in tpe.suggest(rung, 8)]
    assert np.median(np.abs(np.array(suggested) - 0.8)) < 0.15
    # Without the rung values the same sampler is still in its random start.
    cold = TPESampler(SamplerContext(LINE, seed=3, reserve=LocalDraws()))
    assert len(select_fidelity([], N_STARTUP).observations) == 0
    random_start = QuasiRandomSampler(SamplerContext(LINE, seed=3)).suggest((), 8)
    assert [p.params for p in cold.suggest([], 8)] == [p.params for p in random_start]


def test_gp_models_a_rung_until_final_values_suffice() -> None:
    gp = GPSampler(SamplerContext(LINE, seed=3, reserve=LocalDraws()))
    threshold = initial_points(LINE)
    rung = [obs(i, (i / 20 - 0.3) ** 2, 4.0, x=i / 20) for i in range(20)]
    assert select_fidelity(rung, threshold).resource == 4.0
    proposal = gp.suggest(rung, 1)[0]
    assert abs(proposal.params["x"] - 0.3) < 0.2  # guided by the rung's minimum
    spread = [i / (threshold - 1) for i in range(threshold)]
    finals = [obs(100 + i, (x - 0.7) ** 2, x=x) for i, x in enumerate(spread)]
    assert select_fidelity(rung + finals, threshold).resource is None
    assert abs(gp.suggest(rung + finals, 1)[0].params["x"] - 0.7) < 0.2  # now the finals rule


def test_fit_subset_keeps_the_best_half_and_spreads_the_rest() -> None:
    data = [obs(i, float(i)) for i in range(1000)]
    subset = fit_subset(data, 100, maximize=False)
    values = sorted(o.value for o in subset)
    assert len(subset) == 100
    assert values[:50] == [float(i) for i in range(50)]  # the 50 lowest (minimising)
    assert values[-1] == 999.0 and values[50] < 100  # rest spans the whole history
    assert fit_subset(data[:80], 100, maximize=False) == data[:80]
    best_max = fit_subset(data, 100, maximize=True)
    assert {o.value for o in best_max} >= {float(i) for i in range(950, 1000)}


def test_gp_fit_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    from ladder.samplers import gp as gp_module

    monkeypatch.setattr(gp_module, "MAX_FIT_POINTS", 40)
    seen: list[int] = []
    real_fit = gp_module.fit_model

    def spy(train_x, train_y, start=None, optimise=True):  # noqa: ANN001, ANN202
        seen.append(train_x.shape[0])
        return real_fit(train_x, train_y, start, optimise)

    monkeypatch.setattr(gp_module, "fit_model", spy)
    gp = GPSampler(SamplerContext(LINE, seed=3, reserve=LocalDraws()))
    proposal = gp.suggest([obs(i, (i / 300 - 0.4) ** 2, x=i / 300) for i in range(300)], 1)[0]
    assert seen == [40]
    assert abs(proposal.params["x"] - 0.4) < 0.1


def test_observing_while_suggesting_is_safe() -> None:
    tpe = TPESampler(SamplerContext(LINE, seed=3, reserve=LocalDraws()))
    store = ObservationStore()
    store.add([obs(i, float(i % 7), x=(i % 50) / 50) for i in range(40)])
    errors: list[BaseException] = []
    stop = threading.Event()

    def feed() -> None:
        i = 1000
        while not stop.is_set():
            store.add([obs(i, 1.0, float(i % 3), x=0.5)])
            i += 1

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        for _ in range(30):
            try:
                tpe.suggest(store.snapshot(), 1)
            except RuntimeError as error:  # "dictionary changed size during iteration"
                errors.append(error)
    finally:
        stop.set()
        feeder.join()
    assert errors == []
