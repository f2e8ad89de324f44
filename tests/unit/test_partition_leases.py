"""Owned suggestion partitions, pure logic: the fair-share rebalance, the lease value,
the policy over a shared ready buffer (only the owner refits, a fenced fill stops it)
and the ownership loop over an in-memory lease table with a manual clock (the Lua
scripts themselves run against a real Redis in tests/integration/test_suggest_replicas.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from ladder.samplers import LocalDraws, LocalRefit, ObservationStore, Proposal, SamplerContext
from ladder.samplers.policy import SuggestionPolicy
from ladder.samplers.quasirandom import QuasiRandomSampler
from ladder.samplers.ready import LocalBuffer, decode, encode
from ladder.state.leases import (
    LeaseSettings,
    PartitionKey,
    fair_share,
    lease_value,
    parse_lease,
    rebalance,
)
from ladder.study import StudySpec
from ladder.testing import wait_for
from ladder.v1 import study_pb2

from services.suggest.ownership import PartitionOwnership, SharedBuffer
from tests.unit.test_policy import SPACE, Scripted, obs

KEYS = [("s", p) for p in range(6)]


def test_fair_share_rounds_up_and_survives_zero_members() -> None:
    assert fair_share(6, 2) == 3
    assert fair_share(7, 2) == 4
    assert fair_share(6, 0) == 6


def test_a_lone_member_takes_every_free_partition() -> None:
    take, give = rebalance("a", KEYS, [None] * 6, live=1)
    assert sorted(take) == KEYS and give == []


def test_a_member_gives_back_what_exceeds_its_share_when_another_joins() -> None:
    take, give = rebalance("a", KEYS, ["a"] * 6, live=2)
    assert take == [] and len(give) == 3
    # The newcomer then takes exactly what was given back, and no more.
    owners = ["a" if key not in give else None for key in KEYS]
    take_b, give_b = rebalance("b", KEYS, owners, live=2)
    assert sorted(take_b) == sorted(give) and give_b == []
    # The first member, at its share, takes none of the free ones back.
    assert rebalance("a", KEYS, owners, live=2) == ([], [])


def test_members_prefer_different_free_partitions() -> None:
    take_a, _ = rebalance("a", KEYS, [None] * 6, live=2)
    take_b, _ = rebalance("b", KEYS, [None] * 6, live=2)
    assert len(take_a) == len(take_b) == 3
    assert set(take_a) != set(take_b)


def test_a_survivor_takes_a_dead_members_partitions() -> None:
    owners = ["a", "b", "a", "b", "a", "b"]
    assert rebalance("a", KEYS, owners, live=2) == ([], [])
    freed = [None if o == "b" else o for o in owners]
    take, give = rebalance("a", KEYS, freed, live=1)
    assert sorted(take) == [k for k, o in zip(KEYS, owners, strict=True) if o == "b"]
    assert give == []


def test_lease_value_round_trips_a_member_with_bars() -> None:
    assert parse_lease(lease_value("host|7-1", 42).encode()) == ("host|7-1", 42)
    assert parse_lease(None) is None


@pytest.mark.parametrize(("ttl", "renew"), [(3.0, 3.0), (3.0, 0.0), (1.0, 2.0)])
def test_lease_settings_need_renewal_within_the_ttl(ttl: float, renew: float) -> None:
    with pytest.raises(ValueError, match="renew"):
        LeaseSettings(ttl=ttl, renew=renew)


def test_a_proposal_survives_the_shared_buffer_wire_form() -> None:
    proposal = Proposal({"x": 0.5, "n": 3, "opt": "adam"}, 7, 1.5, 0.25, "gp", 12, 14, 1e9)
    back = decode(encode(proposal))
    assert back == proposal and isinstance(back.params["n"], int)


# ------------------------------------------------------------------ fakes


@dataclass
class FakeRedisLeases:
    """``PartitionLeases`` in memory, with a manual clock (what the Lua scripts do)."""

    settings: LeaseSettings = field(default_factory=LeaseSettings)
    now: float = 0.0
    leases: dict[PartitionKey, tuple[str, int, float]] = field(default_factory=dict)
    fences: dict[PartitionKey, int] = field(default_factory=dict)
    members: dict[str, float] = field(default_factory=dict)
    lists: dict[PartitionKey, list[str]] = field(default_factory=dict)
    asked: dict[PartitionKey, int] = field(default_factory=dict)

    def _lease(self, key: PartitionKey) -> tuple[str, int] | None:
        held = self.leases.get(key)
        if held is None or held[2] <= self.now:
            self.leases.pop(key, None)
            return None
        return held[0], held[1]

    def view(self, member: str) -> FakeMemberLeases:
        return FakeMemberLeases(self, member)


@dataclass
class FakeMemberLeases:
    redis: FakeRedisLeases
    member: str

    @property
    def settings(self) -> LeaseSettings:
        return self.redis.settings

    def heartbeat(self) -> int:
        r = self.redis
        r.members[self.member] = r.now
        for name, seen in list(r.members.items()):
            if seen <= r.now - r.settings.ttl:
                del r.members[name]
        return len(r.members)

    def leave(self) -> None:
        self.redis.members.pop(self.member, None)

    def acquire(self, key: PartitionKey) -> int:
        r = self.redis
        if r._lease(key) is not None:
            return 0
        r.fences[key] = token = r.fences.get(key, 0) + 1
        r.leases[key] = (self.member, token, r.now + r.settings.ttl)
        return token

    def renew_many(self, held: Sequence[tuple[PartitionKey, int]]) -> list[bool]:
        r = self.redis
        out = []
        for key, token in held:
            ok = r._lease(key) == (self.member, token)
            if ok:
                r.leases[key] = (self.member, token, r.now + r.settings.ttl)
            out.append(ok)
        return out

    def release(self, key: PartitionKey, token: int) -> bool:
        if self.redis._lease(key) != (self.member, token):
            return False
        del self.redis.leases[key]
        return True

    def owners(self, keys: Sequence[PartitionKey]) -> list[tuple[str, int] | None]:
        return [self.redis._lease(key) for key in keys]

    def push(self, key: PartitionKey, token: int, items: Sequence[str], replace: bool = False
             ) -> int:
        if self.redis._lease(key) != (self.member, token):
            return -1
        ready = self.redis.lists.setdefault(key, [])
        if replace:
            ready.clear()
        ready.extend(items)
        return len(ready)

    def pop(self, key: PartitionKey, count: int) -> tuple[list[str], int]:
        ready = self.redis.lists.setdefault(key, [])
        self.redis.asked[key] = self.redis.asked.get(key, 0) + count
        taken, ready[:] = ready[:count], ready[count:]
        return taken, len(ready)

    def peek(self, key: PartitionKey) -> list[str]:
        return list(self.redis.lists.get(key, []))

    def poll(self, key: PartitionKey) -> tuple[int, int]:
        return len(self.redis.lists.get(key, [])), self.redis.asked.get(key, 0)


class FakeStudies:
    active = True

    def __init__(self, partitions: int) -> None:
        config = study_pb2.StudyConfig(name="s", metric="loss", partitions=partitions)
        config.space.parameters.add(name="x").float_range.high = 1.0
        config.algorithm = study_pb2.TPE
        config.scheduler.kind = study_pb2.NONE
        self.spec = StudySpec.from_proto(config)

    def list(self) -> list[study_pb2.Study]:
        if not self.active:
            return []
        config = self.spec.to_proto()
        return [study_pb2.Study(study_id="s", state=study_pb2.STUDY_ACTIVE, config=config)]


def ownership_of(redis: FakeRedisLeases, member: str, studies: FakeStudies,
                 built: list[tuple[str, int]]) -> PartitionOwnership:
    return PartitionOwnership(
        redis.view(member),  # type: ignore[arg-type]
        studies,  # type: ignore[arg-type]
        lambda sid, spec, p: built.append((sid, p)),  # type: ignore[arg-type,return-value]
    )


def test_two_members_split_the_partitions_and_a_survivor_takes_all_within_a_ttl() -> None:
    redis = FakeRedisLeases()
    studies = FakeStudies(partitions=6)
    built_a: list[tuple[str, int]] = []
    a = ownership_of(redis, "a", studies, built_a)
    b = ownership_of(redis, "b", studies, [])
    a.scan_once()
    assert len(a.owned()) == 6 and sorted(built_a) == KEYS  # alone: everything
    b.scan_once()  # b is seen; a gives half back on its next scan, b takes it
    a.scan_once()
    b.scan_once()
    assert len(a.owned()) == len(b.owned()) == 3
    assert not set(a.owned()) & set(b.owned())
    tokens = {key: redis.leases[key][1] for key in b.owned()}

    # b dies (no more scans): a keeps renewing; once b's leases lapse a owns them all.
    redis.now += 1.0
    a.scan_once()
    assert len(a.owned()) == 3
    redis.now += redis.settings.ttl
    a.scan_once()
    assert sorted(a.owned()) == KEYS
    # Every moved partition got a larger fencing token than b's.
    assert all(redis.leases[key][1] > token for key, token in tokens.items())


def test_a_deposed_owner_cannot_fill_the_buffer() -> None:
    redis = FakeRedisLeases()
    studies = FakeStudies(partitions=1)
    a = ownership_of(redis, "a", studies, [])
    a.scan_once()
    key = ("s", 0)
    buffer = a.buffer(key)
    assert buffer.owned()
    assert buffer.fill([Proposal({"x": 0.1}, 0)], replace=False) == 1
    # a's lease lapses (it was paused) and b takes the partition.
    redis.now += redis.settings.ttl
    b = ownership_of(redis, "b", studies, [])
    b.scan_once()
    assert b.owned() == [key]
    assert buffer.fill([Proposal({"x": 0.2}, 1)], replace=True) == -1
    assert not buffer.owned()  # and a knows it lost the lease
    assert [p.draw for p in b.buffer(key).take(5)[0]] == [0]


def test_graceful_stop_hands_every_partition_back_at_once() -> None:
    redis = FakeRedisLeases()
    studies = FakeStudies(partitions=4)
    a = ownership_of(redis, "a", studies, [])
    b = ownership_of(redis, "b", studies, [])
    a.scan_once()
    b.scan_once()
    a.stop()
    assert redis.members.keys() == {"b"}
    b.scan_once()  # no ttl to wait for
    assert len(b.owned()) == 4


# ------------------------------------------------------- the policy over it


class Switch:
    """A shared ``ReadyBuffer`` whose ownership the test switches (a LocalBuffer inside)."""

    shared = True

    def __init__(self) -> None:
        self.inner = LocalBuffer()
        self.is_owned = False
        self.fenced = False

    def take(self, count: int) -> tuple[list[Proposal], int]:
        return self.inner.take(count)

    def size(self) -> int:
        return self.inner.size()

    def proposals(self) -> list[Proposal]:
        return self.inner.proposals()

    def fill(self, proposals: Sequence[Proposal], replace: bool) -> int:
        return -1 if self.fenced else self.inner.fill(proposals, replace)

    def owned(self) -> bool:
        return self.is_owned

    def poll(self) -> tuple[int, int]:
        return self.inner.poll()


def shared_policy() -> tuple[SuggestionPolicy, Scripted, ObservationStore, Switch]:
    context = SamplerContext(space=SPACE, seed=3, reserve=LocalDraws())
    scripted = Scripted(context)
    store = ObservationStore()
    buffer = Switch()
    policy = SuggestionPolicy(
        store, QuasiRandomSampler(context), LocalRefit(lambda: scripted, store), 4,
        name="shared", ready=buffer,
    )
    return policy, scripted, store, buffer


def test_only_the_owner_refits_a_shared_buffer() -> None:
    policy, model, store, buffer = shared_policy()
    policy.start()
    try:
        store.add([obs(1)])
        # Not owned: requests are served (fallback), the loop never refits.
        assert len(policy.take(2)) == 2
        assert wait_for(lambda: policy._thread.is_alive(), 5, "refit loop")
        assert model.calls == [] and buffer.size() == 0
        buffer.is_owned = True  # gained: the first refit fills the buffer
        wait_for(lambda: buffer.size() == 4, 5, "the owner's refit")
        assert [p.algorithm for p in policy.take(2)] == ["scripted", "scripted"]
        # Other replicas take the rest: the owner tops up from its poll.
        buffer.inner.take(2)
        wait_for(lambda: buffer.size() >= 4, 5, "a top-up after another replica's takes")
        assert policy.take_rate() > 0
    finally:
        assert policy.stop(5)


def test_a_fenced_fill_buffers_nothing_and_the_loop_carries_on() -> None:
    policy, model, store, buffer = shared_policy()
    buffer.is_owned = buffer.fenced = True
    policy.start()
    try:
        wait_for(lambda: policy.stats.refits >= 1, 5, "a refit")
        assert buffer.size() == 0 and policy.stats.buffered == 0
        buffer.fenced = False
        store.add([obs(2)])
        wait_for(lambda: buffer.size() == 4, 5, "a refit once fencing lifts")
    finally:
        assert policy.stop(5)


def test_shared_buffer_encodes_into_the_leases() -> None:
    redis = FakeRedisLeases()
    a = ownership_of(redis, "a", FakeStudies(partitions=1), [])
    a.scan_once()
    buffer = SharedBuffer(redis.view("a"), ("s", 0), a)  # type: ignore[arg-type]
    assert buffer.fill([Proposal({"x": 0.3}, 5, algorithm="tpe")], replace=False) == 1
    assert buffer.proposals()[0].draw == 5
    taken, left = buffer.take(3)
    assert [p.params for p in taken] == [{"x": 0.3}] and left == 0
    assert buffer.poll() == (0, 3)


def test_a_partitions_first_request_here_takes_its_lease_without_waiting_a_renewal() -> None:
    redis = FakeRedisLeases(settings=LeaseSettings(ttl=60, renew=30))
    studies = FakeStudies(partitions=2)
    studies.active = False  # no study yet when the process starts
    a = ownership_of(redis, "a", studies, [])
    a.start()
    try:
        assert a.owned() == []
        studies.active = True  # created; its first Suggest here builds the policy
        a.buffer(("s", 0))
        wait_for(lambda: len(a.owned()) == 2, 5, "the nudged scan")
    finally:
        a.stop()
