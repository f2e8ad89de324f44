"""SuggestionBuffer: the ready buffer and its background refit loop, with cheap
samplers (a scripted fake and the real TPE / quasi-random samplers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from ladder.params import PlainValue
from ladder.samplers import LocalDraws, Observation, Proposal, Sampler, SamplerContext
from ladder.samplers.buffered import FALLBACK_ALGORITHM, SuggestionBuffer
from ladder.samplers.quasirandom import QuasiRandomSampler
from ladder.samplers.tpe import TPESampler
from ladder.space import Space
from ladder.testing import FakeDraws, wait_for
from ladder.v1 import space_pb2 as S
from ladder.v1 import study_pb2

SPACE = Space.from_proto(
    S.SearchSpace(
        parameters=[
            S.Parameter(name="x", float_range=S.FloatRange(low=0, high=1)),
            S.Parameter(name="y", float_range=S.FloatRange(low=-1, high=1)),
        ]
    )
)


def until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    return wait_for(condition, timeout, "the buffer's condition", every=0.005)


class Scripted(Sampler):
    """Proposes x = number of observations seen; can be held inside ``suggest``."""

    algorithm = "scripted"
    uses_pending = True

    def __init__(self, context: SamplerContext) -> None:
        super().__init__(context)
        self.draws = context.reserve or LocalDraws()
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[tuple[int, list[Mapping[str, PlainValue]]]] = []
        self.fail_next = 0

    def suggest(
        self, count: int, pending: Sequence[Mapping[str, PlainValue]] = ()
    ) -> list[Proposal]:
        self.gate.wait(10)
        self.calls.append((count, list(pending)))
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("scripted failure")
        first = self.draws(count)
        x = min(1.0, len(self.observations) / 100)
        return [
            Proposal({"x": x, "y": 0.0}, first + i, predicted_mean=x, predicted_std=0.1)
            for i in range(count)
        ]


def make(
    capacity: int = 4,
    pending: Callable[[], Sequence[Mapping[str, PlainValue]]] = tuple,
    model: Sampler | None = None,
) -> tuple[SuggestionBuffer, Scripted, LocalDraws]:
    draws = LocalDraws()
    context = SamplerContext(space=SPACE, seed=3, reserve=draws)
    scripted = Scripted(context)
    fallback = QuasiRandomSampler(context)
    buffer = SuggestionBuffer(model or scripted, fallback, capacity, pending=pending, name="t")
    return buffer, scripted, draws


def obs(i: int, value: float = 1.0, resource: float | None = None) -> Observation:
    return Observation(f"t{i}", {"x": i / 100, "y": 0.0}, value, resource)


@pytest.fixture
def stoppers() -> Any:
    started: list[SuggestionBuffer] = []
    yield started
    for buffer in started:
        assert buffer.stop(5)


def test_a_request_never_waits_for_a_refit(stoppers: list[SuggestionBuffer]) -> None:
    buffer, model, _ = make()
    model.gate.clear()  # the first refit is stuck inside suggest
    stoppers.append(buffer.start())
    until(lambda: len(model.calls) == 0 and buffer._thread.is_alive())
    started = time.perf_counter()
    served = buffer.take(2)
    assert time.perf_counter() - started < 0.5
    assert [s.hit for s in served] == [False, False]
    assert {s.algorithm for s in served} == {FALLBACK_ALGORITHM}
    assert all(s.proposal.predicted_std == 0 for s in served)
    assert buffer.stats.misses == 2 and buffer.stats.hits == 0

    model.gate.set()
    until(lambda: buffer.stats.buffered == 4)
    served = buffer.take(3)
    assert [s.hit for s in served] == [True, True, True]
    assert {s.algorithm for s in served} == {"scripted"}
    assert buffer.stats.hits == 3
    # Fallback and model share the partition's draw counter: no draw used twice.
    draws = [s.proposal.draw for s in served] + [0, 1]
    assert len(set(draws)) == 5


def test_new_observations_replace_the_stale_buffer(stoppers: list[SuggestionBuffer]) -> None:
    buffer, model, _ = make(capacity=3)
    stoppers.append(buffer.start())
    until(lambda: buffer.stats.buffered == 3)
    assert buffer.take(1)[0].proposal.params["x"] == 0.0  # computed with no observations

    buffer.update([obs(i) for i in range(50)])
    until(lambda: buffer.stats.observations == 50 and buffer.stats.buffered == 3)
    assert buffer.stats.dropped == 2  # the two left from the old model
    served = buffer.take(3)
    assert [s.proposal.params["x"] for s in served] == [0.5, 0.5, 0.5]
    assert model.calls[-1][0] == 3  # a full joint batch after new data

    buffer.update([obs(i) for i in range(50)])  # a replay: same keys, nothing new
    until(lambda: buffer.stats.buffered == 3)
    assert len(model.observations) == 50


def test_top_up_passes_buffered_and_external_pending(stoppers: list[SuggestionBuffer]) -> None:
    running = [{"x": 0.9, "y": 0.9}]
    buffer, model, _ = make(capacity=4, pending=lambda: running)
    stoppers.append(buffer.start())
    until(lambda: buffer.stats.buffered == 4)
    assert model.calls[0] == (4, running)
    buffer.take(2)  # 2 left == low water (capacity // 2): top up 2
    until(lambda: len(model.calls) == 2 and buffer.stats.buffered == 4)
    count, pending = model.calls[1]
    assert count == 2
    assert pending[0] == running[0] and len(pending) == 3  # running + the 2 still buffered
    buffer.take(1)  # 3 left, above low water: no refit
    assert buffer.stats.refits == 2


def test_a_failing_refit_is_retried_and_the_loop_survives(
    stoppers: list[SuggestionBuffer],
) -> None:
    buffer, model, _ = make(capacity=2)
    model.fail_next = 1
    stoppers.append(buffer.start())
    until(lambda: buffer.stats.failed_refits == 1)
    assert [s.hit for s in buffer.take(1)] == [False]
    until(lambda: buffer.stats.buffered == 2, timeout=5)  # retried after RETRY_SECONDS
    assert buffer.take(1)[0].hit


def test_stop_ends_the_refit_thread_and_is_idempotent() -> None:
    buffer, _, _ = make()
    buffer.start()
    until(lambda: buffer.stats.buffered == 4)
    assert buffer.stop(5) and buffer.stop(5)
    assert not buffer._thread.is_alive()
    assert len(buffer.take(5)) == 5  # still answers (4 buffered + 1 fallback)


def test_a_model_factory_runs_on_the_refit_thread(stoppers: list[SuggestionBuffer]) -> None:
    built_on: list[str] = []
    draws = LocalDraws()
    context = SamplerContext(space=SPACE, seed=3, reserve=draws)

    def factory() -> Sampler:
        built_on.append(threading.current_thread().name)
        return Scripted(context)

    buffer = SuggestionBuffer(factory, QuasiRandomSampler(context), 2, name="f")
    assert buffer.algorithm == ""
    buffer.update([obs(1)])  # queued before the model exists
    stoppers.append(buffer.start())
    until(lambda: buffer.stats.buffered == 2)
    assert built_on == ["refit-f"] and buffer.algorithm == "scripted"
    assert buffer.stats.observations == 1


def test_real_tpe_sampler_behind_the_buffer(stoppers: list[SuggestionBuffer]) -> None:
    draws = LocalDraws()
    context = SamplerContext(space=SPACE, seed=9, reserve=draws)
    buffer = SuggestionBuffer(TPESampler(context), QuasiRandomSampler(context), 4, name="tpe")
    # A bowl around (0.3, -0.2): after 30 observations TPE proposes from its model.
    points = QuasiRandomSampler(SamplerContext(space=SPACE, seed=1)).suggest(30)
    buffer.update(
        [
            Observation(f"t{i}", p.params, (p.params["x"] - 0.3) ** 2 + (p.params["y"] + 0.2) ** 2)
            for i, p in enumerate(points)
        ]
    )
    stoppers.append(buffer.start())
    until(lambda: buffer.stats.observations == 30 and buffer.stats.buffered == 4)
    served = buffer.take(6)
    assert [s.hit for s in served] == [True] * 4 + [False] * 2
    assert [s.algorithm for s in served] == ["tpe"] * 4 + [FALLBACK_ALGORITHM] * 2
    for s in served:
        SPACE.check_params(s.proposal.params)
    assert len({s.proposal.draw for s in served}) == 6


def test_capacity_must_be_positive() -> None:
    context = SamplerContext(space=SPACE, seed=1)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        SuggestionBuffer(Scripted(context), QuasiRandomSampler(context), 0)


# ------------------------------------------------------------- the suggest service's pool


def _study(algorithm: int) -> study_pb2.Study:
    config = study_pb2.StudyConfig(seed=5, partitions=4, algorithm=algorithm)
    config.space.CopyFrom(
        S.SearchSpace(parameters=[S.Parameter(name="x", float_range=S.FloatRange(low=0, high=1))])
    )
    return study_pb2.Study(study_id=f"st-{algorithm}", config=config)


def test_pool_buffers_model_studies_and_feeds_every_fidelity_once() -> None:
    from ladder.params import fill_params
    from ladder.v1 import trial_pb2

    from services.suggest.pool import SamplerPool

    store = FakeDraws()
    pool = SamplerPool(store, None, 2, lambda study: ())  # type: ignore[arg-type]
    random = pool.partition(_study(study_pb2.RANDOM), 0)
    assert random.buffer is None and [s.algorithm for s in random.take(2)] == ["quasi-random"] * 2

    study = _study(study_pb2.TPE)
    early = pool.partition(study, 0)
    assert early.buffer is not None
    trial = trial_pb2.Trial(trial_id="t1", study_id=study.study_id, has_final_value=True)
    trial.final_value = 0.3
    fill_params(trial.params, {"x": 0.5})
    assert pool.observe_completed(trial) and not pool.observe_completed(trial)
    rung = Observation("t1", {"x": 0.5}, 0.6, resource=3.0)
    assert pool.observe(study.study_id, [rung, rung]) == 1  # another fidelity, once
    assert pool.observe(study.study_id, [rung]) == 0
    late = pool.partition(study, 1)  # built after the observations: starts with them
    try:
        for entry in (early, late):
            until(lambda e=entry: e.buffer.stats.observations == 2 and e.buffer.stats.buffered)
        assert pool.observation_count(study.study_id) == 2
        assert early.take(1)[0].algorithm == "tpe"
        assert store.next[(study.study_id, 0)] >= 2 and store.next[(study.study_id, 1)] >= 2
    finally:
        pool.stop(5)
    assert all(not b._thread.is_alive() for b in pool.buffers())


def test_fallback_draws_come_in_blocks_without_overlap() -> None:
    from services.suggest.pool import BlockReserver

    store = FakeDraws()
    other = BlockReserver(lambda n: store.reserve_draws("s", 0, n), 4)
    blocks = BlockReserver(lambda n: store.reserve_draws("s", 0, n), 4)
    got = [blocks(1) for _ in range(5)] + [other(2), blocks(6)]
    assert got[:5] == [0, 1, 2, 3, 4]  # one reservation served four draws
    assert got[5] == 8  # the other process' block: 8..11
    assert got[6] == 12  # 5..7 are too few for 6: a fresh reservation of 12..17
    assert store.next[("s", 0)] == 18
