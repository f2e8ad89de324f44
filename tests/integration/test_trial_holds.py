"""RequestWork's resource holds in real Redis (ladder.state.holds and the trial scripts):
taken with the trial, refused past the tenant's max_gpus or the node's capacity, and
released by every way an attempt (or a claim) ends; promoted trials of a study with
stable_for_promoted are not claimed onto spot nodes, and are in the stable tier on the
others."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from ladder import failures
from ladder.config import Settings
from ladder.errors import AtCapacity
from ladder.params import fill_params
from ladder.scheduling import resources as res
from ladder.state import State, open_state
from ladder.state.holds import Hold, HoldStore
from ladder.tenancy import TenantStore
from ladder.testing import wait_for
from ladder.v1 import events_pb2, study_pb2, trial_pb2

pytestmark = pytest.mark.integration

CAPACITY = res.Resources(8, 32.0, 256.0)
DEMAND = res.demand(gpus=2, cpu=1.5, memory_gb=10.0)


@pytest.fixture
def store(infra: Settings) -> Iterator[State]:
    state = open_state(infra)
    yield state
    state.close()


def _study(store: State, tenant: str = "", max_trials: int = 0) -> str:
    study_id = f"holds-{uuid.uuid4().hex[:8]}"
    config = study_pb2.StudyConfig(name="holds", metric="loss", max_trials=max_trials)
    config.space.parameters.add(name="x").float_range.high = 1.0
    config.scheduler.kind = study_pb2.NONE
    store.studies.create(study_pb2.Study(study_id=study_id, config=config, created_unix_ms=1,
                                         tenant=tenant))
    return study_id


def _placed(store: State, study_id: str, hold: Hold, claim_seconds: float = 60) -> str:
    proto = trial_pb2.Trial(study_id=study_id)
    fill_params(proto.params, {"x": 0.5})
    [made] = store.trials.create_trials(study_id, [proto], 0, claim_seconds, "test", hold=hold)
    return made.trial.trial_id


def _hold(node: str, spot: bool = False, stable_for_promoted: bool = False) -> Hold:
    return Hold(node, DEMAND, CAPACITY, priority=0, spot=spot,
                stable_for_promoted=stable_for_promoted)


def _ends() -> dict[str, Callable[[State, str], None]]:
    def complete(store: State, trial_id: str) -> None:
        store.trials.start(trial_id, "a1", "w", 30)
        store.trials.complete(trial_id, "a1", 0.5, 1)

    def prune(store: State, trial_id: str) -> None:
        store.trials.start(trial_id, "a1", "w", 30)
        store.trials.prune(trial_id, "a1", 1, 0.5)

    def fail(store: State, trial_id: str) -> None:
        store.trials.start(trial_id, "a1", "w", 30)
        store.trials.fail(trial_id, "a1", "boom", failures.INFRASTRUCTURE)

    def preempted_pause(store: State, trial_id: str) -> None:
        store.trials.start(trial_id, "a1", "w", 30)
        node = store.client.hget(store.keys.trial(trial_id), "hold_node").decode()
        assert HoldStore(store.client, store.keys).preempt(trial_id, node)
        decision, _ = store.trials.heartbeat_verdict(trial_id, "a1", 1, 30)
        assert decision is not None and decision.action == events_pb2.PAUSE
        paused = store.trials.pause(trial_id, "a1", 1, decision.rung)
        assert paused.trial.state == trial_pb2.RESUMABLE

    def stop(store: State, trial_id: str) -> None:
        decision = events_pb2.Decision(trial_id=trial_id, action=events_pb2.STOP)
        store.trials.stop(trial_id, "operator", decision)

    def lease_expiry(store: State, trial_id: str) -> None:
        store.trials.start(trial_id, "a1", "w", 0.05)
        wait_for(lambda: (store.trials.expire_due(), store.trials.get(trial_id).state)[1]
                 == trial_pb2.RESUMABLE, 10, "the lease expired")

    return {f.__name__: f for f in (complete, prune, fail, preempted_pause, stop,
                                    lease_expiry)}


@pytest.mark.parametrize("end", sorted(_ends()))
def test_every_way_an_attempt_ends_releases_its_hold(store: State, end: str) -> None:
    holds = HoldStore(store.client, store.keys)
    node = f"node-{uuid.uuid4().hex[:8]}"
    trial_id = _placed(store, _study(store), _hold(node))
    assert holds.node_held(node) == DEMAND.resources
    assert [h.trial.trial_id for h in holds.on_node(node)] == [trial_id]
    _ends()[end](store, trial_id)
    assert holds.node_held(node) == res.Resources()
    assert holds.on_node(node) == []
    assert store.client.hget(store.keys.trial(trial_id), "hold_node") is None


def test_the_cluster_is_the_nodes_that_asked_recently_with_their_trials(store: State) -> None:
    holds = HoldStore(store.client, store.keys)
    old, new = (f"node-{uuid.uuid4().hex[:8]}" for _ in range(2))
    now = int(time.time() * 1000)
    holds.offers(res.node(old, 8, cpu=32, memory_gb=256), True, 300, now_ms=now - 301_000)
    trial_id = _placed(store, _study(store), _hold(new))
    offers = holds.offers(res.node(new, 8, cpu=32, memory_gb=256), False, 300, now_ms=now)
    mine = [o for o in offers if o.node_id in (old, new)]
    assert [(o.node_id, o.capacity, o.spot) for o in mine] == [(new, CAPACITY, False)]
    nodes, running = holds.cluster(mine)
    assert [n.free for n in nodes] == [CAPACITY - DEMAND.resources]
    assert [h.trial.trial_id for h in running[new]] == [trial_id]


def test_an_unstarted_claim_that_expires_releases_its_hold(store: State) -> None:
    holds = HoldStore(store.client, store.keys)
    node = f"node-{uuid.uuid4().hex[:8]}"
    trial_id = _placed(store, _study(store), _hold(node), claim_seconds=0.05)
    wait_for(lambda: (store.trials.expire_due(), holds.node_held(node))[1] == res.Resources(),
             10, "the claim expired")
    assert store.trials.get(trial_id).state == trial_pb2.RESUMABLE


def test_holds_stop_at_the_tenants_max_gpus_and_the_nodes_capacity(store: State) -> None:
    tenants = TenantStore(store.client, store.keys.root)
    tenant = f"holds-{uuid.uuid4().hex[:8]}"
    tenants.create(tenant)
    tenants.set_quota(tenant, None, None, max_gpus=4)
    study_id = _study(store, tenant)
    nodes = [f"node-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for node in nodes[:2]:
        _placed(store, study_id, _hold(node))
    with pytest.raises(AtCapacity, match="max_gpus 4"):
        _placed(store, study_id, _hold(nodes[2]))
    assert HoldStore(store.client, store.keys).usage([tenant])[tenant].gpus == 4
    small = Hold(nodes[2], DEMAND, res.Resources(1, 32.0, 256.0))
    with pytest.raises(AtCapacity, match="node's g is taken"):
        _placed(store, _study(store), small)


def test_promoted_trials_of_a_stable_study_are_not_claimed_onto_spot_nodes(
    store: State,
) -> None:
    study_id = _study(store)
    node = f"node-{uuid.uuid4().hex[:8]}"
    trial_id = _placed(store, study_id, _hold(node))
    store.trials.start(trial_id, "a1", "w", 30)
    rung = {"study_id": study_id, "trial_id": trial_id, "rung": 1}
    store.trials.apply_decision(events_pb2.Decision(action=events_pb2.PAUSE, **rung))
    store.trials.pause(trial_id, "a1", 3, 1)
    status, _ = store.trials.apply_decision(events_pb2.Decision(action=events_pb2.PROMOTE,
                                                                **rung))
    assert status == "RESUMED"
    spot = _hold(f"spot-{uuid.uuid4().hex[:8]}", spot=True, stable_for_promoted=True)
    assert store.trials.claim_resumable(study_id, 1, 60, hold=spot) == []
    assert store.trials.resumable(study_id) == [trial_id]  # still queued
    stable = _hold(f"stable-{uuid.uuid4().hex[:8]}", stable_for_promoted=True)
    [claimed] = store.trials.claim_resumable(study_id, 1, 60, hold=stable)
    assert claimed.trial_id == trial_id
    # There it is in the stable tier: no preemption plan may pick it. An exploration
    # trial of the same study on a node that is not spot is in the spot tier.
    holds = HoldStore(store.client, store.keys)
    [held] = holds.on_node(stable.node_id)
    assert held.trial.tier is res.Tier.STABLE
    exploring = _placed(store, study_id, _hold(stable.node_id, stable_for_promoted=True))
    tiers = {h.trial.trial_id: h.trial.tier for h in holds.on_node(stable.node_id)}
    assert tiers == {trial_id: res.Tier.STABLE, exploring: res.Tier.SPOT}
