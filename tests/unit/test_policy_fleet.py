"""SuggestionPolicy at fleet rates: the stale buffer keeps serving until the refit
with the new observations lands, its points say how stale their model is, the batch
a refit asks for follows the take rate, and a miss is answered by TPE once TPE can
fit (Sobol' before); plus the refit processes' dispatch (no process started)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
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
from ladder.samplers.policy import MODEL_FALLBACK_ALGORITHM, WARM_MAX, WARM_MIN, staleness
from ladder.samplers.quasirandom import QuasiRandomSampler
from ladder.samplers.sizing import HEADROOM
from ladder.samplers.tpe import TPESampler
from test_policy import SPACE, until


class Modelled(Sampler):
    """A fake model: x = observations given / 100, fitted on all of them; can be held
    inside ``suggest`` (``gate``) and made slow (``seconds``, a stand-in for a fit)."""

    algorithm = "modelled"

    def __init__(self, context: SamplerContext) -> None:
        super().__init__(context)
        self.gate = threading.Event()
        self.gate.set()
        self.seconds = 0.0
        self.counts: list[int] = []

    def _suggest(
        self, observations: Sequence[Observation], count: int, pending: Pending
    ) -> list[Proposal]:
        self.gate.wait(10)
        time.sleep(self.seconds)  # the model's cost, not a synchronisation
        self.counts.append(count)
        first = self.reserve(count)
        x = min(1.0, len(observations) / 100)
        return [
            Proposal(
                {"x": x, "y": 0.0},
                first + i,
                algorithm=self.algorithm,
                model_observations=len(observations),
            )
            for i in range(count)
        ]


def make(
    capacity: int = 4,
    max_capacity: int | None = None,
    model_fallback: bool = False,
) -> tuple[SuggestionPolicy, Modelled, ObservationStore]:
    context = SamplerContext(space=SPACE, seed=3, reserve=LocalDraws())
    model = Modelled(context)
    store = ObservationStore()
    policy = SuggestionPolicy(
        store,
        QuasiRandomSampler(context),
        LocalRefit(lambda: model, store),
        capacity,
        name="fleet",
        max_capacity=max_capacity,
        model_fallback=TPESampler(context) if model_fallback else None,
    )
    return policy, model, store


def obs(i: int, value: float = 1.0) -> Observation:
    return Observation(f"t{i}", {"x": (i % 10) / 10, "y": 0.0}, value)


@pytest.fixture
def stoppers() -> Any:
    started: list[SuggestionPolicy] = []
    yield started
    for policy in started:
        assert policy.stop(5)


def test_new_observations_keep_the_buffer_serving_until_the_refit_lands(
    stoppers: list[SuggestionPolicy],
) -> None:
    policy, model, store = make(capacity=4)
    stoppers.append(policy.start())
    until(lambda: policy.stats.buffered == 4)
    model.gate.clear()  # the refit with the new observations is held
    store.add([obs(i) for i in range(30)])
    until(lambda: len(store) == 30 and policy.stats.refits == 1)
    served = policy.take(3)
    # Still the model's points (computed with 0 observations), not a fallback's.
    assert [s.algorithm for s in served] == ["modelled"] * 3
    assert [s.params["x"] for s in served] == [0.0] * 3
    unseen, age = policy.staleness(served[0])
    assert unseen == 30 and age >= 0.0
    assert policy.stats.misses == 0

    model.gate.set()
    until(lambda: policy.stats.observations == 30 and policy.stats.refits >= 2)
    assert policy.stats.dropped == 1  # the one old point left when the batch landed
    fresh = policy.take(1)[0]
    assert fresh.params["x"] == 0.3 and fresh.model_observations == 30
    assert policy.staleness(fresh)[0] == 0


def test_staleness_counts_unseen_observations_and_seconds() -> None:
    stamped = Proposal({"x": 0.1}, 0, study_observations=40, fitted_unix=1000.0)
    assert staleness(stamped, 55, now=1002.5) == (15, 2.5)
    assert staleness(Proposal({"x": 0.1}, 0), 55, now=1002.5) == (0, 0.0)


def test_the_batch_follows_the_take_rate_within_its_bounds(
    stoppers: list[SuggestionPolicy],
) -> None:
    policy, model, store = make(capacity=2, max_capacity=64)
    model.seconds = 0.2
    stoppers.append(policy.start())
    until(lambda: policy.stats.refits >= 1)
    assert model.counts[0] == 2  # nothing taken yet: the least
    for _ in range(60):
        policy.take(1)  # 60 points within a second: >= 60 points/s
    store.add([obs(1)])  # the refit asks for the most taken within a cycle x HEADROOM
    until(lambda: policy.stats.observations == 1 and model.counts[-1] >= 20)
    # The batch is sized to the 60 taken (x HEADROOM, within the bound); the take rate
    # itself depends on how fast this host ran the loop above, so only its sign is checked.
    assert model.counts[-1] <= 64 and policy.stats.take_rate > 0

    bounded, slow, bounded_store = make(capacity=2, max_capacity=8)
    slow.seconds = 0.2
    stoppers.append(bounded.start())
    until(lambda: bounded.stats.refits >= 1)
    for _ in range(60):
        bounded.take(1)
    bounded_store.add([obs(1)])
    until(lambda: bounded.stats.observations == 1 and slow.counts[-1] == 8)
    assert max(slow.counts) == 8


def test_the_batch_covers_a_burst_over_the_whole_cycle_pending_read_included(
    stoppers: list[SuggestionPolicy],
) -> None:
    """The cycle a batch must cover runs from the pending read (a Redis read of every
    running trial in the service) to the landing, not the sampler's call alone."""
    context = SamplerContext(space=SPACE, seed=3, reserve=LocalDraws())
    model, store = Modelled(context), ObservationStore()

    def pending() -> Pending:
        time.sleep(0.3)  # the pending read's cost, not a synchronisation
        return ()

    policy = SuggestionPolicy(
        store, QuasiRandomSampler(context), LocalRefit(lambda: model, store), 2,
        pending=pending, name="cycle", max_capacity=512,
    )
    stoppers.append(policy.start())
    until(lambda: policy.stats.refits >= 1)
    stats = policy.stats
    assert stats.pending_seconds >= 0.3 and stats.last_cycle_seconds >= stats.pending_seconds
    assert stats.cycle_estimate >= 0.3 and stats.last_refit_seconds < stats.pending_seconds
    policy.take(40)  # a burst, within one cycle
    store.add([obs(1)])
    until(lambda: policy.stats.observations == 1)
    assert policy.stats.busiest == 40 and model.counts[-1] == 40 * HEADROOM


def test_a_fixed_size_by_default() -> None:
    policy, _, _ = make(capacity=5)
    assert policy.max_capacity == 5 and policy.low_water == 2
    with pytest.raises(ValueError, match="max_capacity must be >= capacity"):
        make(capacity=5, max_capacity=4)


def test_a_miss_is_answered_by_tpe_once_it_can_fit(stoppers: list[SuggestionPolicy]) -> None:
    policy, model, store = make(capacity=2, model_fallback=True)
    model.gate.clear()  # the buffer never fills: every request misses
    stoppers.append(policy.start())
    store.add([obs(i, value=float(i)) for i in range(5)])  # too few for TPE (10)
    first = policy.take(2)
    assert [s.algorithm for s in first] == [FALLBACK_ALGORITHM] * 2
    assert all(s.model_observations == 0 for s in first)

    store.add([obs(i, value=float(i)) for i in range(5, 20)])
    served = policy.take(3)
    assert [s.algorithm for s in served] == [MODEL_FALLBACK_ALGORITHM] * 3
    assert all(s.model_observations == 20 for s in served)
    assert all(policy.staleness(s)[0] == 0 for s in served)  # fitted on the latest
    assert policy.stats.model_fallbacks == 3 and policy.stats.misses == 5
    # Fallback points share the partition's draw counter.
    assert len({s.draw for s in first + served}) == 5
    for s in served:
        SPACE.check_params(s.params)
    model.gate.set()


def test_a_miss_pops_tpe_points_fitted_in_the_background(
    stoppers: list[SuggestionPolicy],
) -> None:
    policy, model, store = make(capacity=2, model_fallback=True)
    model.gate.clear()  # the buffer never fills: every request misses
    stoppers.append(policy.start())
    store.add([obs(i, value=float(i)) for i in range(20)])
    until(lambda: policy.stats.warm == WARM_MIN)
    fallback = policy.model_fallback
    assert fallback is not None
    fits: list[int] = []
    fit = fallback.suggest
    fallback.suggest = lambda *a, **k: fits.append(1) or fit(*a, **k)  # type: ignore[method-assign]

    served = policy.take(3)
    assert fits == []  # no TPE fit on the request path
    assert [s.algorithm for s in served] == [MODEL_FALLBACK_ALGORITHM] * 3
    assert all(s.model_observations == 20 and policy.staleness(s)[0] == 0 for s in served)
    assert policy.stats.model_fallbacks == 3 and policy.stats.warm == WARM_MIN - 3

    # New observations: the warm points still serve, saying what their model missed;
    # once half are gone the refill replaces the rest with points fitted on all 30.
    store.add([obs(i, value=float(i)) for i in range(20, 30)])
    stale = policy.take(WARM_MIN // 2 - 3)
    assert {s.algorithm for s in stale} == {MODEL_FALLBACK_ALGORITHM}
    assert {policy.staleness(s)[0] for s in stale} == {10}
    until(lambda: policy.stats.warm >= WARM_MIN and fits)
    fresh = policy.take(1)[0]
    assert fresh.model_observations == 30 and policy.staleness(fresh)[0] == 0
    # Drained faster than it refills: the rest is fitted on the request path at once.
    many = policy.take(WARM_MAX + 5)
    assert [s.algorithm for s in many] == [MODEL_FALLBACK_ALGORITHM] * (WARM_MAX + 5)
    drawn = {s.draw for s in [*served, *stale, fresh, *many]}
    assert len(drawn) == len(served) + len(stale) + 1 + len(many)
    model.gate.set()


def test_no_warm_fallback_without_a_model_fallback(stoppers: list[SuggestionPolicy]) -> None:
    policy, model, store = make(capacity=2)
    model.gate.clear()
    stoppers.append(policy.start())
    store.add([obs(i, value=float(i)) for i in range(20)])
    assert [s.algorithm for s in policy.take(2)] == [FALLBACK_ALGORITHM] * 2
    assert policy.stats.warm == 0
    model.gate.set()


# ------------------------------------------------------- the refit processes' dispatch


def test_refits_of_other_partitions_do_not_wait_behind_a_busy_child() -> None:
    from ladder.config import Settings

    from services.suggest.refit import RefitProcess

    settings = Settings(kafka_bootstrap="", redis_url="redis://127.0.0.1:1")
    pool = RefitProcess(settings, nice=0, processes=2)
    slow = pool._acquire(("gp", 0))  # a slow GP refit holds the first child
    other = pool._acquire(("tpe", 0))
    assert other is not slow  # a second child, not a wait
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool._acquire(("tpe", 1))))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not got  # both children busy: it waits
    pool._release(other)
    waiter.join(5)
    assert got == [other]
    pool._release(slow)
    pool._release(other)
    # The child that last served a partition is preferred when idle.
    assert pool._acquire(("gp", 0)) is slow
    pool.stop()
