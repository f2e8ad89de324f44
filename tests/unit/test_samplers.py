import numpy as np
import pytest
from ladder.samplers import (
    FACTORIES,
    LocalDraws,
    Observation,
    ObservationStore,
    QuasiRandomSampler,
    SamplerContext,
    derive_seed,
    make_sampler,
    quasirandom,
)
from ladder.space import Space
from ladder.study import Algorithm, StudySpec
from ladder.testing import FakeDraws
from ladder.v1 import space_pb2 as S
from ladder.v1 import study_pb2
from scipy.stats import qmc

SPACE_CONFIG = S.SearchSpace(
    parameters=[
        S.Parameter(name="x", float_range=S.FloatRange(low=0, high=1)),
        S.Parameter(name="lr", float_range=S.FloatRange(low=1e-5, high=1, scale=S.SCALE_LOG)),
        S.Parameter(name="opt", categorical=S.Categorical(choices=["adam", "sgd", "rms"])),
    ]
)
SPACE = Space.from_proto(SPACE_CONFIG)


def spec(**kw: object) -> StudySpec:
    """A valid study over ``SPACE`` without early stopping."""
    config = study_pb2.StudyConfig(
        metric="loss",
        space=SPACE_CONFIG,
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
        **kw,  # type: ignore[arg-type]
    )
    return StudySpec.from_proto(config)


def sampler(seed: int = 7, partition: int = 0, start: int = 0) -> QuasiRandomSampler:
    return QuasiRandomSampler(
        SamplerContext(SPACE, seed=seed, partition=partition, reserve=LocalDraws(start))
    )


def test_same_seed_and_partition_give_the_same_stream() -> None:
    a = [p.params for p in sampler().suggest((), 16)]
    b = [p.params for p in sampler().suggest((), 16)]
    assert a == b


def test_partitions_and_seeds_draw_different_streams() -> None:
    base = sampler().points(0, 64)
    assert not np.allclose(base, sampler(partition=1).points(0, 64))
    assert not np.allclose(base, sampler(seed=8).points(0, 64))
    # no point of partition 0 reappears in partition 1
    other = sampler(partition=1).points(0, 64)
    assert min(np.abs(base[:, None, :] - other[None, :, :]).max(axis=2).ravel()) > 1e-9


def test_a_restarted_sampler_continues_instead_of_repeating() -> None:
    first = sampler()
    handed_out = [p.params for p in first.suggest((), 5)]
    more = [p.params for p in first.suggest((), 3)]
    # the restarted process resumes at the persisted draw index 5
    restarted = sampler(start=5)
    assert [p.params for p in restarted.suggest((), 3)] == more
    assert not set(map(str, more)) & set(map(str, handed_out))


def test_draw_indexes_are_reported_and_jumps_are_honoured() -> None:
    s = sampler()
    assert [p.draw for p in s.suggest((), 3)] == [0, 1, 2]
    ahead = s.points(40, 2)
    assert np.allclose(ahead, sampler().points(0, 42)[40:])
    assert np.allclose(s.points(1, 1), sampler().points(0, 2)[1:])  # backwards works too


def test_stream_is_low_discrepancy() -> None:
    points = sampler().points(0, 256)
    random = np.random.default_rng(0).random((256, SPACE.dim()))
    assert qmc.discrepancy(points) < qmc.discrepancy(random)
    assert points.min() >= 0 and points.max() < 1


def test_generation_boundary_switches_scramble(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real generation is 2**30 points; a small one keeps the test fast.
    monkeypatch.setattr(quasirandom, "GENERATION_SIZE", 64)
    s = sampler()
    tail = s.points(63, 2)
    assert np.allclose(tail[0], sampler().points(0, 64)[63])
    assert np.allclose(tail[1], sampler().points(64, 1)[0])
    assert not np.allclose(tail[1], sampler().points(0, 1)[0])  # fresh scramble


def test_observations_are_idempotent_per_trial() -> None:
    store = ObservationStore()
    obs = Observation("t1", {"x": 0.5}, 1.0)
    store.add([obs, obs])
    store.add([Observation("t1", {"x": 0.5}, 1.0)])
    assert len(store) == 1


def test_every_algorithm_has_a_sampler() -> None:
    # An unspecified algorithm is RANDOM in the StudySpec: no factory of its own.
    assert set(FACTORIES) == set(Algorithm)
    assert isinstance(make_sampler(spec()), QuasiRandomSampler)


def test_make_sampler_uses_the_reserver() -> None:
    calls: list[int] = []

    def reserve(n: int) -> int:
        calls.append(n)
        return 100

    proposals = make_sampler(spec(seed=3), partition=2, reserve=reserve).suggest((), 2)
    assert calls == [2] and [p.draw for p in proposals] == [100, 101]


def test_make_sampler_reads_the_study_spec() -> None:
    study = spec(seed=3, direction=study_pb2.MAXIMIZE, partitions=4)
    made = make_sampler(study, partition=2)
    assert made.context == SamplerContext(study.space, seed=3, partition=2, maximize=True)
    same = sampler(seed=3, partition=2).suggest((), 4)
    assert [p.params for p in made.suggest((), 4)] == [p.params for p in same]


def test_derive_seed_is_deterministic_and_distinct() -> None:
    assert derive_seed(1, 0, 5) == derive_seed(1, 0, 5)
    seeds = {derive_seed(1, p, d) for p in range(4) for d in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)


# ------------------------------------------------------------- the suggest service's pool


def _study() -> StudySpec:
    return spec(seed=5, partitions=4, algorithm=study_pb2.RANDOM)


def test_pool_feeds_observations_once_and_to_late_samplers() -> None:
    from ladder.params import fill_params
    from ladder.v1 import trial_pb2

    from services.suggest.pool import PolicyPool

    draws = FakeDraws()
    pool = PolicyPool(draws, None, 2, lambda study_id: ())  # type: ignore[arg-type]
    early = pool.policy("st-p", _study(), 0)
    trial = trial_pb2.Trial(
        trial_id="st-p-t1", study_id="st-p", has_final_value=True, final_value=0.3
    )
    fill_params(trial.params, {"x": 0.5})
    # A replayed event changes nothing (model studies: tests/unit/test_policy.py).
    assert pool.observe_completed(trial) and not pool.observe_completed(trial)
    late = pool.policy("st-p", _study(), 1)
    assert len(pool.observations("st-p")) == 1
    early.take(2)
    late.take(1)
    assert draws.next == {("st-p", 0): 2, ("st-p", 1): 1}


def test_worker_routing_is_stable_and_spread() -> None:
    from services.suggest.pool import partition_of

    assert partition_of("worker-17", 8) == partition_of("worker-17", 8)
    assert partition_of("anything", 1) == 0
    used = {partition_of(f"worker-{i}", 8) for i in range(200)}
    assert used == set(range(8))


def test_the_pool_builds_a_policy_from_the_study_spec() -> None:
    from services.suggest.pool import PolicyPool

    pool = PolicyPool(FakeDraws(), None, 2, lambda study_id: ())  # type: ignore[arg-type]
    # An unspecified algorithm is RANDOM in the spec: served at once, no refit.
    instant = pool.policy("st-r", spec(seed=5, partitions=4), 1)
    assert instant.refit is None
    study = spec(seed=5, partitions=4, algorithm=study_pb2.TPE)
    model = pool.policy("st-m", study, 1)
    try:
        assert model.refit is not None
        # The fallback is the partition's quasi-random stream of the study seed.
        assert isinstance(model.fallback, QuasiRandomSampler)
        assert model.fallback.space is study.space
        expected = sampler(seed=5, partition=1).points(0, 4)
        assert np.array_equal(model.fallback.points(0, 4), expected)
    finally:
        pool.stop(5)
