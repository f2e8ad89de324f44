"""Replicas of suggest and evaluate against the real Redis and broker: the partition
lease scripts; two suggest processes splitting a study's partitions, one killed -9 and
its partitions owned by the other within 5 s, no suggestion handed out twice, no error
to a worker (the client balances over the address list and fails over); an evaluate
replica killed -9 mid-run, no error to a worker."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from ladder.client import LadderClient, study_config
from ladder.config import Settings, Topics
from ladder.state import Keys
from ladder.state.leases import LeaseSettings, PartitionLeases
from ladder.testing import ServiceGroup, ServiceProcess, own_topics, wait_for
from ladder.testing.replicas import TrialLoop, duplicates, partition_owners

pytestmark = pytest.mark.integration

PARTITIONS = 4
LEASES = {"LADDER_SUGGEST_LEASES": "1", "LADDER_SUGGEST_REFIT": "thread"}


@pytest.fixture
def r(infra: Settings) -> Any:
    client = redis.Redis.from_url(infra.redis_url)
    yield client
    client.close()


@pytest.fixture
def own_stack(
    infra: Settings, infra_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Settings, Callable[..., ServiceProcess]]]:
    """Settings and a service starter under a topic prefix of this test's own: the
    replicas balance every ACTIVE model-based study they see, so the studies earlier tests
    of this session left would change how this test's study splits."""
    env = own_topics(infra_env, "replicas")
    group = ServiceGroup(env, tmp_path)
    yield dataclasses.replace(infra, topics=Topics(env["LADDER_TOPIC_PREFIX"])), group.start
    group.stop_all()


def _study(client: LadderClient, name: str) -> str:
    config = study_config(
        {"x": {"type": "float", "low": 0, "high": 1}, "y": {"type": "float", "low": 0, "high": 1}},
        name=name, metric="loss", algorithm="tpe", partitions=PARTITIONS,
    )
    return client.create_study(config).study_id


def test_lease_scripts_fence_a_deposed_owner_and_pop_atomically(infra: Settings, r: Any) -> None:
    keys = Keys.for_prefix(f"leases-{uuid.uuid4().hex[:6]}")
    fast = LeaseSettings(ttl=0.3, renew=0.1)
    a = PartitionLeases(r, keys, "a", fast)
    b = PartitionLeases(r, keys, "b", fast)
    key = ("s", 0)
    token_a = a.acquire(key)
    assert token_a > 0 and b.acquire(key) == 0
    assert a.owners([key]) == [("a", token_a)]
    assert a.push(key, token_a, ["p1", "p2", "p3"]) == 3
    assert b.push(key, token_a, ["x"]) == -1  # b never held it
    assert a.renew(key, token_a)
    wait_for(lambda: a.owners([key]) == [None], 5, "a's lease to lapse", every=0.05)
    token_b = b.acquire(key)
    assert token_b > token_a
    assert not a.renew(key, token_a)  # deposed: no renewal, no push
    assert a.push(key, token_a, ["stale"], replace=True) == -1
    assert b.push(key, token_b, ["p4"]) == 4
    # Two poppers never get the same item; the asked counter counts what was asked.
    first, left = a.pop(key, 2)
    second, left2 = b.pop(key, 5)
    assert [*first, *second] == [b"p1", b"p2", b"p3", b"p4"] and (left, left2) == (2, 0)
    assert a.poll(key) == (0, 7)
    assert b.release(key, token_b) and a.owners([key]) == [None]
    assert a.heartbeat() == 1 and b.heartbeat() == 2
    a.leave()
    assert b.heartbeat() == 1


def test_two_suggest_replicas_split_partitions_and_fail_over_within_5_s(
    own_stack: tuple[Settings, Callable[..., ServiceProcess]], r: Any
) -> None:
    infra, start_service = own_stack
    one = start_service("services.suggest", LEASES)
    two = start_service("services.suggest", LEASES)
    evaluate = start_service("services.evaluate")
    settings = dataclasses.replace(
        infra, suggest_addr=f"{one.addr},{two.addr}", evaluate_addr=evaluate.addr
    )
    keys = Keys.for_prefix(infra.topics.prefix)
    with LadderClient(settings, retry_timeout=20) as client:
        study_id = _study(client, "replicas")

        def members() -> set[str | None]:
            return set(partition_owners(r, keys, study_id, PARTITIONS))

        def split() -> list[int]:
            owners = partition_owners(r, keys, study_id, PARTITIONS)
            return sorted(owners.count(m) for m in set(owners) if m is not None)

        # Split: every partition owned, two members with two each. The second replica
        # takes its share as the first one's leases come up, so 1/3 may show on the way.
        wait_for(lambda: split() == [2, 2], 20,
                 "the partitions split two and two between the replicas", every=0.1)
        assert None not in members()

        loop = TrialLoop(client, study_id, workers=6).start()
        try:
            wait_for(lambda: loop.count() >= 30, 30, "trials handed out by both replicas")
            doomed = f"-{one.proc.pid}-"
            one.proc.kill()
            killed = time.monotonic()
            survivor = {m for m in members() if m and doomed not in m}
            wait_for(lambda: members() == survivor, 10, "the survivor owning every partition",
                     every=0.05)
            failover = time.monotonic() - killed
            before = loop.count()
            wait_for(lambda: loop.count() >= before + 30, 30, "trials after the kill")
        finally:
            loop.stop()
    print(f"partition failover after kill -9: {failover:.2f} s; "
          f"{len(loop.handed)} suggestions, none twice")
    assert failover < 5.0, f"partitions moved after {failover:.2f} s"
    assert loop.errors == []
    assert duplicates(loop.handed) == []
    # The owners' models served (not only the fallbacks), before and after the kill.
    assert {h.algorithm for h in loop.handed} - {"sobol-fallback", "tpe-fallback"}


def test_an_evaluate_replica_killed_mid_run_costs_workers_no_error(
    infra: Settings, start_service: Callable[..., Any]
) -> None:
    suggest = start_service("services.suggest")
    one = start_service("services.evaluate")
    two = start_service("services.evaluate")
    settings = dataclasses.replace(
        infra, suggest_addr=suggest.addr, evaluate_addr=f"{one.addr},{two.addr}"
    )
    with LadderClient(settings, retry_timeout=20) as client:
        study_id = _study(client, "evaluate-replicas")
        loop = TrialLoop(client, study_id, workers=6).start()
        try:
            wait_for(lambda: loop.count() >= 20, 30, "trials before the kill")
            two.proc.kill()
            before = loop.count()
            wait_for(lambda: loop.count() >= before + 40, 30, "trials after the kill")
        finally:
            loop.stop()
    assert loop.errors == []
    assert duplicates(loop.handed) == []
