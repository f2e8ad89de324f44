"""Starting an attempt: the one rule behind evaluate's StartTrial and Suggest's ``start``
(a suggestion started in the same call, one round trip instead of two).

Both go through ``TrialStore.start`` (the START script: lease, attempt record, fencing
token, TRIAL_STARTED into the outbox, atomically) with the study's max_trial_seconds,
then publish the transition with a ``TransitionPublisher`` (the outbox relay re-sends
what fails), and answer the same ``StartTrialResponse``.
"""

from __future__ import annotations

from dataclasses import replace

from ladder.errors import require
from ladder.state import Transition, TrialStore
from ladder.state.studies import StudyStore
from ladder.transitions import TransitionPublisher
from ladder.v1 import evaluate_pb2


def require_attempt(trial_id: str, attempt_id: str) -> None:
    """Every lifecycle call names the trial and the attempt acting on it
    (INVALID_ARGUMENT otherwise)."""
    require(trial_id, "trial_id")
    require(attempt_id, "attempt_id")


def start_attempt(
    trials: TrialStore,
    studies: StudyStore,
    publisher: TransitionPublisher,
    request: evaluate_pb2.StartTrialRequest,
    lease_seconds: float,
) -> evaluate_pb2.StartTrialResponse:
    """Lease the trial to ``request``'s attempt, publish its TRIAL_STARTED (a repeat
    with the same attempt id changes and publishes nothing) and answer as StartTrial.
    Raises the domain errors of ``TrialStore.start`` (a trial that ended, or that another
    live attempt holds)."""
    require_attempt(request.trial_id, request.attempt_id)
    policy = studies.spec(trials.study_of(request.trial_id)).trial_policy
    transition: Transition = replace(
        trials.start(
            request.trial_id,
            request.attempt_id,
            request.worker_id,
            lease_seconds,
            hostname=request.hostname,
            environment=request.environment,
            max_trial_seconds=policy.max_trial_seconds,
        ),
        # Carried by the TRIAL_STARTED event, for lineage.
        run_environment=request.run_environment if request.HasField("run_environment") else None,
    )
    publisher.publish(transition)
    trial = transition.trial
    return evaluate_pb2.StartTrialResponse(
        trial=trial,
        lease_seconds=lease_seconds,
        checkpoint_uri=trial.checkpoint_uri,
        checkpoint_step=trial.checkpoint_step,
    )
