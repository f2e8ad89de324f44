"""gRPC stubs of the services for a test, and the error a call must raise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from ladder.v1 import (
    evaluate_pb2,
    evaluate_pb2_grpc,
    study_pb2,
    suggest_pb2,
    suggest_pb2_grpc,
    trial_pb2,
)


def code_and_message(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and details of the gRPC error ``call()`` must raise."""
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), err.details()
    raise AssertionError("expected a gRPC error, the call succeeded")


class Clients:
    """The raw stubs of suggest (and evaluate), for tests that check the wire answers
    (status codes, defaults filled in) rather than the SDK's view of them."""

    def __init__(self, suggest_addr: str, evaluate_addr: str | None = None) -> None:
        self._channels = [grpc.insecure_channel(suggest_addr)]
        self.suggest = suggest_pb2_grpc.SuggestServiceStub(self._channels[0])
        if evaluate_addr:
            self._channels.append(grpc.insecure_channel(evaluate_addr))
            self.evaluate = evaluate_pb2_grpc.EvaluateServiceStub(self._channels[1])

    def create(self, cfg: study_pb2.StudyConfig, study_id: str = "") -> study_pb2.Study:
        return self.suggest.CreateStudy(
            suggest_pb2.CreateStudyRequest(config=cfg, study_id=study_id), timeout=30
        )

    def one(self, study_id: str, worker: str = "w-1") -> suggest_pb2.Suggestion:
        reply = self.suggest.Suggest(
            suggest_pb2.SuggestRequest(study_id=study_id, worker_id=worker), timeout=30
        )
        assert len(reply.suggestions) == 1
        return reply.suggestions[0]

    def start(self, trial_id: str, attempt: str, worker: str = "w-1") -> Any:
        return self.evaluate.StartTrial(
            evaluate_pb2.StartTrialRequest(
                trial_id=trial_id, attempt_id=attempt, worker_id=worker, hostname="it-host"
            ),
            timeout=30,
        )

    def heartbeat(self, trial_id: str, attempt: str, step: float = 1) -> Any:
        return self.evaluate.Heartbeat(
            evaluate_pb2.HeartbeatRequest(trial_id=trial_id, attempt_id=attempt, step=step),
            timeout=30,
        )

    def complete(self, trial_id: str, attempt: str, value: float) -> trial_pb2.Trial:
        return self.evaluate.CompleteTrial(
            evaluate_pb2.CompleteTrialRequest(
                trial_id=trial_id, attempt_id=attempt, value=value, step=9
            ),
            timeout=30,
        )

    def get(self, trial_id: str) -> trial_pb2.Trial:
        return self.evaluate.GetTrial(evaluate_pb2.GetTrialRequest(trial_id=trial_id), timeout=30)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
