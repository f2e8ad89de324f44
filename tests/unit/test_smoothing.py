import math

import pytest
from ladder.schedulers import (
    CurveState,
    Ema,
    MovingWindow,
    NoSmoothing,
    SchedulerSpec,
    SmoothingKind,
    is_divergent,
    make_smoother,
    observe,
)


def run(smoother: Ema | MovingWindow | NoSmoothing, values: list[float]) -> list[float]:
    state: dict | None = None
    out = []
    for value in values:
        state, smoothed = smoother.update(state, value)
        out.append(smoothed)
    return out


def test_ema_starts_at_first_value_then_blends_with_alpha() -> None:
    assert run(Ema(0.5), [1.0, 0.0, 0.0]) == [1.0, 0.5, 0.25]
    assert run(Ema(1.0), [3.0, 2.0]) == [3.0, 2.0]  # alpha 1 = no memory
    assert run(Ema(0.2), [1.0, 2.0]) == pytest.approx([1.0, 1.2])


def test_moving_window_averages_the_last_n_values() -> None:
    assert run(MovingWindow(3), [3.0, 6.0, 9.0, 12.0]) == [3.0, 4.5, 6.0, 9.0]
    assert run(MovingWindow(1), [5.0, 1.0]) == [5.0, 1.0]


def test_no_smoothing_passes_values_through() -> None:
    assert run(NoSmoothing(), [0.3, 0.9, 0.1]) == [0.3, 0.9, 0.1]


def test_smoother_state_is_json_friendly_and_resumable() -> None:
    # A stream processor stores the state in a changelog table and restarts from it.
    import json

    ema = Ema(0.5)
    state, _ = ema.update(None, 1.0)
    state = json.loads(json.dumps(state))
    assert ema.update(state, 0.0)[1] == 0.5
    window = MovingWindow(2)
    state, _ = window.update(None, 1.0)
    state, _ = window.update(json.loads(json.dumps(state)), 3.0)
    assert state == {"window": [1.0, 3.0]}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_divergence_and_never_smoothed(value: float) -> None:
    assert is_divergent(value)
    for smoother in (Ema(0.5), MovingWindow(3), NoSmoothing()):
        with pytest.raises(ValueError, match="diverged"):
            smoother.update(None, value)
    assert not is_divergent(1e308)


def test_make_smoother_follows_the_spec() -> None:
    assert make_smoother(SchedulerSpec(smoothing=SmoothingKind.EMA, ema_alpha=0.3)) == Ema(0.3)
    assert make_smoother(SchedulerSpec(smoothing=SmoothingKind.WINDOW, window=5)) == MovingWindow(5)
    assert make_smoother(SchedulerSpec(smoothing=SmoothingKind.NONE)) == NoSmoothing()


def test_a_diverged_value_is_not_averaged_into_the_curve() -> None:
    spec = SchedulerSpec(max_resource=27, smoothing=SmoothingKind.WINDOW, window=3)
    state = CurveState()
    state = observe(spec, state, 1, 0.5).state
    diverged = observe(spec, state, 2, math.nan)
    assert diverged.divergence is not None
    assert diverged.state.diverged
    assert diverged.state.smoother == {"window": [0.5]}
    assert diverged.state.smoothed == 0.5
    # Everything after the divergence is ignored.
    later = observe(spec, diverged.state, 3, 0.1)
    assert later.ignored == "trial already diverged"
    assert later.crossings == []
