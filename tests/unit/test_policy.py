"""SuggestionPolicy: the observations, the ready buffer and its background refit
loop, with cheap samplers (a scripted fake and the real TPE / quasi-random
samplers); and the suggest service's pool of policies."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from ladder.params import PlainValue
from ladder.samplers import (
    FALLBACK_ALGORITHM,
    LocalDraws,
    LocalRefit,
    Observation,
    ObservationStore,
    Pending,
    Proposal,
    Sampler,
    SamplerContext,
    SuggestionPolicy,
)
from ladder.samplers.quasirandom import QuasiRandomSampler
from ladder.samplers.tpe import TPESampler
from ladder.space import Space
from ladder.study import StudySpec
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
    """Proposes x = number of observations given; can be held inside ``suggest``."""

    algorithm = "scripted"

    def __init__(self, context: SamplerContext) -> None:
        super().__init__(context)
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[tuple[int, list[Mapping[str, PlainValue]]]] = []
        self.fail_next = 0

    def _suggest(
        self, observations: Sequence[Observation], count: int, pending: Pending
    ) -> list[Proposal]:
        self.gate.wait(10)
        self.calls.append((count, list(pending)))
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("scripted failure")
        first = self.reserve(count)
        x = min(1.0, len(observations) / 100)
        return [
            Proposal({"x": x, "y": 0.0}, first + i, x, 0.1, algorithm=self.algorithm)
            for i in range(count)
        ]


def make(
    capacity: int = 4,
    pending: Callable[[], Pending] = tuple,
) -> tuple[SuggestionPolicy, Scripted, ObservationStore]:
    draws = LocalDraws()
    context = SamplerContext(space=SPACE, seed=3, reserve=draws)
    scripted = Scripted(context)
    store = ObservationStore()
    fallback = QuasiRandomSampler(context)
    refit = LocalRefit(lambda: scripted, store)
    policy = SuggestionPolicy(store, fallback, refit, capacity, pending=pending, name="t")
    return policy, scripted, store


def obs(i: int, value: float = 1.0, resource: float | None = None) -> Observation:
    return Observation(f"t{i}", {"x": i / 100, "y": 0.0}, value, resource)


@pytest.fixture
def stoppers() -> Any:
    started: list[SuggestionPolicy] = []
    yield started
    for buffer in started:
        assert buffer.stop(5)


def test_a_request_never_waits_for_a_refit(stoppers: list[SuggestionPolicy]) -> None:
    buffer, model, store = make()
    model.gate.clear()  # the first refit is stuck inside suggest
    stoppers.append(buffer.start())
    until(lambda: len(model.calls) == 0 and buffer._thread.is_alive())
    started = time.perf_counter()
    served = buffer.take(2)
    assert time.perf_counter() - started < 0.5
    assert {s.algorithm for s in served} == {FALLBACK_ALGORITHM}
    assert all(s.predicted_std == 0 for s in served)
    assert buffer.stats.misses == 2 and buffer.stats.hits == 0

    model.gate.set()
    until(lambda: buffer.stats.buffered == 4)
    served = buffer.take(3)
    assert {s.algorithm for s in served} == {"scripted"}
    assert buffer.stats.hits == 3
    # Fallback and model share the partition's draw counter: no draw used twice.
    draws = [s.draw for s in served] + [0, 1]
    assert len(set(draws)) == 5


def test_new_observations_replace_the_stale_buffer(stoppers: list[SuggestionPolicy]) -> None:
    buffer, model, store = make(capacity=3)
    stoppers.append(buffer.start())
    until(lambda: buffer.stats.buffered == 3)
    assert buffer.take(1)[0].params["x"] == 0.0  # computed with no observations

    assert store.add([obs(i) for i in range(50)]) == 50
    until(lambda: buffer.stats.observations == 50 and buffer.stats.buffered == 3)
    assert buffer.stats.dropped == 2  # the two left from the old model
    served = buffer.take(3)
    assert [s.params["x"] for s in served] == [0.5, 0.5, 0.5]
    assert model.calls[-1][0] == 3  # a full joint batch after new data

    assert store.add([obs(i) for i in range(50)]) == 0  # a replay: same keys, nothing new
    until(lambda: buffer.stats.buffered == 3)
    assert len(store) == 50


def test_top_up_passes_buffered_and_external_pending(stoppers: list[SuggestionPolicy]) -> None:
    running = [{"x": 0.9, "y": 0.9}]
    buffer, model, store = make(capacity=4, pending=lambda: running)
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
    stoppers: list[SuggestionPolicy],
) -> None:
    buffer, model, store = make(capacity=2)
    model.fail_next = 1
    stoppers.append(buffer.start())
    until(lambda: buffer.stats.failed_refits == 1)
    assert [s.algorithm for s in buffer.take(1)] == [FALLBACK_ALGORITHM]
    until(lambda: buffer.stats.buffered == 2, timeout=5)  # retried after RETRY_SECONDS
    assert buffer.take(1)[0].algorithm == "scripted"


def test_a_refit_failing_after_new_observations_is_retried_until_the_buffer_is_fresh(
    stoppers: list[SuggestionPolicy],
) -> None:
    buffer, model, store = make(capacity=4)
    stoppers.append(buffer.start())
    until(lambda: buffer.stats.buffered == 4)  # computed with no observations
    model.fail_next = 1
    store.add([obs(i) for i in range(50)])
    until(lambda: buffer.stats.failed_refits == 1)
    # The buffer is still full (above low water), but stale: the retry must come.
    until(lambda: buffer.stats.observations == 50 and buffer.stats.buffered == 4, timeout=5)
    assert [s.params["x"] for s in buffer.take(4)] == [0.5] * 4


def test_stop_ends_the_refit_thread_and_is_idempotent() -> None:
    buffer, _, _ = make()
    buffer.start()
    until(lambda: buffer.stats.buffered == 4)
    assert buffer.stop(5) and buffer.stop(5)
    assert not buffer._thread.is_alive()
    assert len(buffer.take(5)) == 5  # still answers (4 buffered + 1 fallback)


def test_a_model_factory_runs_on_the_refit_thread(stoppers: list[SuggestionPolicy]) -> None:
    built_on: list[str] = []
    draws = LocalDraws()
    context = SamplerContext(space=SPACE, seed=3, reserve=draws)

    def factory() -> Sampler:
        built_on.append(threading.current_thread().name)
        return Scripted(context)

    store = ObservationStore()
    refit = LocalRefit(factory, store)
    buffer = SuggestionPolicy(store, QuasiRandomSampler(context), refit, 2, name="f")
    store.add([obs(1)])  # observed before the model exists
    assert built_on == []
    stoppers.append(buffer.start())
    until(lambda: buffer.stats.buffered == 2)
    assert built_on == ["refit-f"] and buffer.take(1)[0].algorithm == "scripted"
    assert buffer.stats.observations == 1


def test_real_tpe_sampler_behind_the_policy(stoppers: list[SuggestionPolicy]) -> None:
    draws = LocalDraws()
    context = SamplerContext(space=SPACE, seed=9, reserve=draws)
    store = ObservationStore()
    tpe = TPESampler(context)
    buffer = SuggestionPolicy(
        store, QuasiRandomSampler(context), LocalRefit(lambda: tpe, store), 4, name="tpe"
    )
    # A bowl around (0.3, -0.2): after 30 observations TPE proposes from its model.
    points = QuasiRandomSampler(SamplerContext(space=SPACE, seed=1)).suggest((), 30)
    store.add(
        [
            Observation(f"t{i}", p.params, (p.params["x"] - 0.3) ** 2 + (p.params["y"] + 0.2) ** 2)
            for i, p in enumerate(points)
        ]
    )
    stoppers.append(buffer.start())
    until(lambda: buffer.stats.observations == 30 and buffer.stats.buffered == 4)
    served = buffer.take(6)
    assert [s.algorithm for s in served] == ["tpe"] * 4 + [FALLBACK_ALGORITHM] * 2
    for s in served:
        SPACE.check_params(s.params)
    assert len({s.draw for s in served}) == 6


def test_without_a_refit_the_fallback_is_the_algorithm() -> None:
    context = SamplerContext(space=SPACE, seed=3, reserve=LocalDraws())
    policy = SuggestionPolicy(ObservationStore(), QuasiRandomSampler(context)).start()
    served = policy.take(3)
    assert [s.algorithm for s in served] == ["quasi-random"] * 3
    assert [s.draw for s in served] == [0, 1, 2]
    assert not policy._thread.is_alive()


def test_capacity_must_be_positive() -> None:
    context = SamplerContext(space=SPACE, seed=1)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        SuggestionPolicy(ObservationStore(), QuasiRandomSampler(context), capacity=0)


def test_the_store_keeps_one_observation_per_trial_and_resource() -> None:
    store = ObservationStore()
    woken: list[int] = []
    store.subscribe(lambda: woken.append(len(store)))
    batch = [obs(1, 0.3, 1.0), obs(1, 0.2, 3.0), obs(1, 0.1)]
    assert store.add(batch) == 3
    assert store.add(batch) == 0  # replayed events
    assert store.add([obs(1, 0.25, 3.0)]) == 1  # a corrected value replaces, not adds
    assert len(store) == 3 and woken == [3, 3]
    assert {o.key: o.value for o in store.snapshot()}[("t1", 3.0)] == 0.25
    changes, cursor = store.changes_since(0)
    assert len(changes) == cursor == 4
    assert store.changes_since(3) == ([obs(1, 0.25, 3.0)], 4)


# ------------------------------------------------------------- the suggest service's pool


def _study(algorithm: int) -> tuple[str, StudySpec]:
    config = study_pb2.StudyConfig(
        metric="loss",
        seed=5,
        partitions=4,
        algorithm=algorithm,
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
    )
    config.space.CopyFrom(
        S.SearchSpace(parameters=[S.Parameter(name="x", float_range=S.FloatRange(low=0, high=1))])
    )
    return f"st-{algorithm}", StudySpec.from_proto(config)


def test_pool_refits_model_studies_and_feeds_every_fidelity_once() -> None:
    from ladder.params import fill_params
    from ladder.v1 import trial_pb2

    from services.suggest.pool import PolicyPool

    store = FakeDraws()
    pool = PolicyPool(store, None, 2, lambda study_id: ())  # type: ignore[arg-type]
    random = pool.policy(*_study(study_pb2.RANDOM), 0)
    assert random.refit is None and [s.algorithm for s in random.take(2)] == ["quasi-random"] * 2

    study_id, spec = _study(study_pb2.TPE)
    early = pool.policy(study_id, spec, 0)
    assert early.refit is not None
    trial = trial_pb2.Trial(trial_id="t1", study_id=study_id, has_final_value=True)
    trial.final_value = 0.3
    fill_params(trial.params, {"x": 0.5})
    assert pool.observe_completed(trial) and not pool.observe_completed(trial)
    rung = Observation("t1", {"x": 0.5}, 0.6, resource=3.0)
    assert pool.observe(study_id, [rung, rung]) == 1  # another fidelity, once
    assert pool.observe(study_id, [rung]) == 0
    late = pool.policy(study_id, spec, 1)  # built after the observations: starts with them
    try:
        for policy in (early, late):
            until(lambda p=policy: p.stats.observations == 2 and p.stats.buffered)
        assert len(pool.observations(study_id)) == 2
        assert early.take(1)[0].algorithm == "tpe"
        assert store.next[(study_id, 0)] >= 2 and store.next[(study_id, 1)] >= 2
    finally:
        pool.stop(5)
    assert not early._thread.is_alive() and not late._thread.is_alive()


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
