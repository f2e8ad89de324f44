"""Size limits at the real services' gRPC edge: an oversize field is refused with
INVALID_ARGUMENT and nothing of it is stored or published; a request over the
servers' message size is RESOURCE_EXHAUSTED."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from ladder import limits
from ladder.config import Settings
from ladder.testing import Clients, code_and_message, trial_events, wait_for
from ladder.v1 import (
    evaluate_pb2,
    events_pb2,
    space_pb2,
    study_pb2,
    suggest_pb2,
    trial_pb2,
)

pytestmark = pytest.mark.integration

MB = 1024 * 1024


def _config(**kw: Any) -> study_pb2.StudyConfig:
    return study_pb2.StudyConfig(
        space=space_pb2.SearchSpace(parameters=[space_pb2.Parameter(
            name="lr", float_range=space_pb2.FloatRange(low=1e-4, high=1e-1))]),
        metric="val_loss",
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
        **kw,
    )


@pytest.fixture(scope="module")
def clients(start_module_service: Callable[..., Any]) -> Iterator[Clients]:
    suggest = start_module_service("services.suggest")
    evaluate = start_module_service("services.evaluate")
    both = Clients(suggest.addr, evaluate.addr)
    yield both
    both.close()


def test_a_1mb_study_name_is_refused_and_the_study_not_stored(clients: Clients) -> None:
    study_id = f"lim-{uuid.uuid4().hex[:8]}"
    code, message = code_and_message(
        lambda: clients.create(_config(name="n" * MB), study_id=study_id)
    )
    assert (code, message) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"config.name: {MB} characters, at most {limits.NAME}"
    )
    code, _ = code_and_message(
        lambda: clients.suggest.GetStudy(suggest_pb2.GetStudyRequest(study_id=study_id))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    # The same id with a name inside the limit is a new study, not a conflict.
    assert clients.create(_config(name="n" * limits.NAME), study_id=study_id).study_id == study_id


def test_a_2mb_fail_reason_is_refused_and_the_trial_completes(
    infra: Settings, clients: Clients
) -> None:
    study = clients.create(_config(name="limits"))
    trial_id = clients.one(study.study_id).trial.trial_id
    attempt = f"a-{uuid.uuid4().hex[:8]}"
    clients.start(trial_id, attempt)

    def fail(reason: str) -> Any:
        return clients.evaluate.FailTrial(
            evaluate_pb2.FailTrialRequest(trial_id=trial_id, attempt_id=attempt, reason=reason),
            timeout=30,
        )

    code, message = code_and_message(lambda: fail("r" * 2 * MB))
    assert (code, message) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"reason: {2 * MB} characters, at most {limits.REASON}"
    )
    # Past the servers' message size the transport refuses it before any check.
    code, _ = code_and_message(lambda: fail("r" * (limits.MAX_REQUEST_BYTES + 1)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

    assert clients.get(trial_id).state == trial_pb2.RUNNING
    assert clients.complete(trial_id, attempt, 0.25).state == trial_pb2.COMPLETED

    def published() -> list[str] | None:
        kinds = [events_pb2.TrialEventKind.Name(e.kind)
                 for e in sorted(trial_events(infra, trial_id), key=lambda e: e.ts_ms)]
        return kinds if "TRIAL_COMPLETED" in kinds else None

    kinds = wait_for(published, 20, f"TRIAL_COMPLETED of {trial_id}", every=0.3)
    assert kinds == ["TRIAL_SUGGESTED", "TRIAL_STARTED", "TRIAL_COMPLETED"]
