"""Tenant quotas and study budgets (issue 19 item 4) through real suggest and evaluate
processes with LADDER_AUTH on: max_studies refuses CreateStudy, max_trials_running
refuses Suggest across two studies until a trial ends and stays exact through a lease
expiry and a resume; the wall-clock, trial-hours and GPU-hours budgets trip the
circuit breaker, which STOPS the study and says why (GetStudy, the StudyEvent,
lineage's listing, `ladder study show`)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis
from ladder import channels, quotas
from ladder.client import LadderClient, study_config
from ladder.config import Settings
from ladder.errors import AtCapacity, BudgetExhausted
from ladder.state.keys import Keys
from ladder.state.trials import TrialStore
from ladder.study import TrialPolicySpec
from ladder.tenancy import TenantStore
from ladder.testing import decoded, read_topic, wait_for
from ladder.v1 import events_pb2, lineage_pb2, lineage_pb2_grpc, study_pb2, trial_pb2

pytestmark = pytest.mark.integration

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
LEASE_S = 1.0


@dataclasses.dataclass
class Stack:
    infra: Settings
    settings: Settings
    store: TenantStore
    keys: Keys
    env: dict[str, str]

    def tenant(self, **quota: int) -> tuple[str, LadderClient]:
        """A new tenant with ``quota`` and a client holding its token."""
        name = f"q-{uuid.uuid4().hex[:8]}"
        token = self.store.create(name).token
        if quota:
            self.store.set_quota(name, quota.get("max_studies"), quota.get("max_trials_running"))
        client = LadderClient(dataclasses.replace(self.settings, token=token), retry_timeout=5)
        return name, client


@pytest.fixture(scope="module")
def stack(infra: Settings, infra_env: dict[str, str],
          start_module_service: Callable[..., Any]) -> Stack:
    auth = {"LADDER_AUTH": "on", "LADDER_AUTH_CACHE_S": "0.5"}
    # Settle 2 s: the completion sweep (and with it the breaker) runs every 0.5 s.
    suggest = start_module_service("services.suggest", {**auth, "LADDER_STUDY_SETTLE_S": "2"})
    evaluate = start_module_service("services.evaluate",
                                    {**auth, "LADDER_LEASE_SECONDS": str(LEASE_S)})
    lineage = start_module_service("services.lineage", auth)
    keys = Keys.for_prefix(infra.topics.prefix)
    store = TenantStore(redis.Redis.from_url(infra.redis_url), keys.root)
    settings = dataclasses.replace(infra, suggest_addr=suggest.addr, evaluate_addr=evaluate.addr,
                                   lineage_addr=lineage.addr)
    env = {**infra_env, "LADDER_SUGGEST_ADDR": suggest.addr,
           "LADDER_EVALUATE_ADDR": evaluate.addr}
    return Stack(infra, settings, store, keys, env)


def _config(**extra: Any) -> study_pb2.StudyConfig:
    return study_config(space=SPACE, metric="loss", **extra)


def _refusal(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def _cli(stack: Stack, *args: str, token: str = "") -> subprocess.CompletedProcess:
    env = {**stack.env, "LADDER_TOKEN": token} if token else stack.env
    return subprocess.run([sys.executable, "-m", "ladder.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def _started(client: LadderClient, study_id: str, worker: str = "w") -> tuple[str, str]:
    """(trial id, attempt id) of a new trial of the study, started."""
    trial = client.suggest(study_id, worker)[0].trial
    attempt = f"att-{uuid.uuid4().hex[:8]}"
    client.start_trial(trial.trial_id, worker, attempt)
    return trial.trial_id, attempt


def test_max_studies_refuses_create_until_one_is_cancelled(stack: Stack) -> None:
    name, client = stack.tenant(max_studies=2)
    first = client.create_study(_config()).study_id
    client.create_study(_config())
    code, details = _refusal(lambda: client.create_study(_config()))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"tenant {name!r} has 2 live studies" in details and "max_studies is 2" in details
    # Repeating a create that succeeded is no new study: never refused.
    assert client.create_study(_config(), study_id=first).study_id == first
    client.cancel_study(first)
    client.create_study(_config())
    assert quotas.usage(stack.store.r, stack.keys, name).live_studies == 2
    # The admin CLI raises the quota and lists it with the use.
    raised = _cli(stack, "tenant", "quota", name, "--max-studies", "3")
    assert raised.returncode == 0, raised.stderr
    assert "max_studies 3, max_trials_running unbounded" in raised.stdout
    client.create_study(_config())
    listed = _cli(stack, "tenant", "list")
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(name))
    assert row[2:6] == ["3/3", "0/-", "0/-", "1"]  # STUDIES TRIALS GPUS WEIGHT


def test_max_trials_running_across_two_studies_stays_exact_through_expiry(
    stack: Stack,
) -> None:
    name, client = stack.tenant(max_trials_running=2)
    a = client.create_study(_config()).study_id
    b = client.create_study(_config()).study_id
    running, attempt = _started(client, a)
    started, _ = _started(client, b)
    code, details = _refusal(lambda: client.suggest(b, "w2"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_trials_running is 2" in details and f"tenant {name!r} has 2 trials out" in details
    # A trial that ends makes room, in either study.
    client.complete(running, attempt, 0.5, 1.0)
    expiring, _ = _started(client, b)
    # No heartbeats: both of b's leases expire, the trials are RESUMABLE (queued, not out).
    wait_for(lambda: all(client.get_trial(t).state == trial_pb2.RESUMABLE
                         for t in (started, expiring)),
             10 * LEASE_S + 10, "both leases to expire")
    assert quotas.usage(stack.store.r, stack.keys, name).trials_out == 0
    # Handed out again: the resumed trials count once more, and the limit holds.
    resumed = client.suggest(b, "w4", count=3)
    assert sorted(s.trial.trial_id for s in resumed) == sorted([started, expiring])
    assert all(s.resumed for s in resumed)
    assert quotas.usage(stack.store.r, stack.keys, name).trials_out == 2
    assert _refusal(lambda: client.suggest(a, "w5"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_scripts_enforce_the_tenant_quota_without_the_gate(stack: Stack) -> None:
    """CREATE_TRIALS holds the quota itself (the gate's check is
    only Suggest's early exit): a race past it cannot overshoot."""
    name, client = stack.tenant(max_trials_running=1)
    a = client.create_study(_config()).study_id
    b = client.create_study(_config()).study_id
    trials = TrialStore(stack.store.r, stack.keys, lambda _sid: TrialPolicySpec())
    protos = [trial_pb2.Trial(study_id=b), trial_pb2.Trial(study_id=b)]
    created = trials.create_trials(b, protos, 0, 60.0, "test")
    assert len(created) == 1  # two asked, room for one
    with pytest.raises(AtCapacity, match="max_trials_running is 1"):
        trials.create_trials(a, protos[:1], 0, 60.0, "test")


def _stopped_by_breaker(client: LadderClient, study_id: str, budget: str) -> study_pb2.Study:
    study = wait_for(
        lambda: (s := client.get_study(study_id)).state == study_pb2.STUDY_STOPPED and s,
        15, f"the breaker to stop {study_id} ({budget})")
    assert study.state_reason.startswith("budget exceeded") and budget in study.state_reason
    return study


def test_wall_clock_budget_stops_the_study_with_its_reason(stack: Stack) -> None:
    _, client = stack.tenant()
    study_id = client.create_study(_config(max_wall_clock_seconds=3)).study_id
    client.suggest(study_id, "w")
    # Nobody asks for trials: the suggest service's sweep trips the breaker.
    study = _stopped_by_breaker(client, study_id, "max_wall_clock_seconds is 3")
    # The SDK's word for a study that hands out nothing more, with the service's reason.
    with pytest.raises(BudgetExhausted, match="budget exceeded"):
        client.suggest(study_id, "w")
    events = [e.study for e in decoded(events_pb2.StudyEvent,
                                       read_topic(stack.infra, stack.infra.topics.studies))
              if e.study.study_id == study_id]
    assert events[-1].state == study_pb2.STUDY_STOPPED
    assert events[-1].state_reason == study.state_reason
    # Lineage lists the study as its newest StudyEvent carried it: stopped, and why.
    channel = channels.channel(stack.settings.lineage_addr, client.settings)
    listings = lineage_pb2_grpc.LineageServiceStub(channel).ListStudyListings

    def listed() -> study_pb2.Study | None:
        found = [item.study for item in
                 listings(lineage_pb2.ListStudyListingsRequest(), timeout=10).studies
                 if item.study.study_id == study_id]
        return found[0] if found and found[0].state_reason else None

    assert wait_for(listed, 15, "lineage's listing").state_reason == study.state_reason
    channel.close()
    shown = _cli(stack, "study", "show", study_id, token=client.settings.token)
    assert shown.returncode == 0, shown.stderr
    assert "stopped (budget exceeded" in shown.stdout
    # A raised budget and a resume: trials are handed out again, the reason is gone.
    client.update_study(study_id, max_wall_clock_seconds=0)
    resumed = client.resume_study(study_id)
    assert resumed.state == study_pb2.STUDY_ACTIVE and resumed.state_reason == ""
    assert client.suggest(study_id, "w2")


def _run_until_stopped(client: LadderClient, study_id: str) -> tuple[str, str]:
    """Start a trial of the study and keep it running (heartbeats) until the study is
    STOPPED; (trial id, attempt id)."""
    trial_id, attempt = _started(client, study_id)

    def beat() -> bool:
        client.heartbeat(trial_id, attempt, 1.0)  # keep the lease while it runs
        return client.get_study(study_id).state == study_pb2.STUDY_STOPPED

    wait_for(beat, 15, f"the breaker to stop {study_id} while its trial runs", every=0.2)
    return trial_id, attempt


def test_trial_hours_budget_stops_the_study_while_its_trial_runs(stack: Stack) -> None:
    _, client = stack.tenant()
    # 2 s of trial time: one running trial spends it.
    study_id = client.create_study(_config(max_trial_hours=2 / 3600)).study_id
    trial_id, attempt = _run_until_stopped(client, study_id)
    study = _stopped_by_breaker(client, study_id, "max_trial_hours is 0.000555")
    assert study.trial_hours_used >= 2 / 3600
    # STOPPED, not final: the running trial finishes and reports.
    client.complete(trial_id, attempt, 0.1, 1.0)
    assert client.get_trial(trial_id).state == trial_pb2.COMPLETED


def test_gpu_hours_budget_stops_a_two_gpu_study_until_it_is_raised(stack: Stack) -> None:
    _, client = stack.tenant()
    # A GPU budget on trials that use no GPU could never be spent: refused, both ways
    # (the SDK's study_config refuses it too: set past it, for the service to check).
    no_gpus = _config()
    no_gpus.max_gpu_hours = 1
    code, details = _refusal(lambda: client.create_study(no_gpus))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_gpu_hours 1" in details
    cpu_only = client.create_study(_config()).study_id
    code, details = _refusal(lambda: client.update_study(cpu_only, max_gpu_hours=1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "trial_resources.gpus is 0" in details
    # 4 GPU-seconds: one running trial of 2 GPUs spends them in 2 s. A GPU type of its
    # own: node agents of other modules sharing the session's Redis never get its trials.
    gpus = {"gpus": 2, "gpu_type": f"budget-{uuid.uuid4().hex[:6]}"}
    study_id = client.create_study(
        _config(max_gpu_hours=4 / 3600, trial_resources=gpus)).study_id
    trial_id, attempt = _run_until_stopped(client, study_id)
    study = _stopped_by_breaker(client, study_id, "max_gpu_hours is 0.00111")
    assert "trial-hours x 2 GPUs)" in study.state_reason
    # One clock: the GPU-hours are the trial-hours times the trials' GPUs.
    assert study.gpu_hours_used == pytest.approx(2 * study.trial_hours_used)
    assert study.gpu_hours_used >= 4 / 3600
    with pytest.raises(BudgetExhausted, match="max_gpu_hours") as refused:
        client.suggest(study_id, "w2")
    cause = refused.value.__cause__
    assert isinstance(cause, grpc.RpcError)
    assert cause.code() == grpc.StatusCode.FAILED_PRECONDITION
    client.complete(trial_id, attempt, 0.1, 1.0)
    # Raised from the CLI (--gpu-hours), resumed: trials are handed out again.
    raised = _cli(stack, "study", "update", study_id, "--gpu-hours", "1",
                  token=client.settings.token)
    assert raised.returncode == 0, raised.stderr
    assert client.get_study(study_id).config.max_gpu_hours == 1
    resumed = client.resume_study(study_id)
    assert resumed.state == study_pb2.STUDY_ACTIVE and resumed.state_reason == ""
    assert client.suggest(study_id, "w3")
    client.cancel_study(study_id)
