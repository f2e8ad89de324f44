"""The local mode ``ladder reproduce`` runs a training script in: ``create_study``,
``load_study`` and ``optimize`` give a study whose ``trials()`` yields exactly one
trial, the recorded one (its params and seed), with no server behind it: no lease, no
checkpoint store, nothing sent. The same attempt engine drives it, through
:class:`LocalClient`, which writes what the loop reports to a file that ``ladder
reproduce`` compares with the recorded curve.

A trial that was pruned or paused at step N is told to stop after step N, so the
script runs the steps the original ran. The plan is a JSON file named by
``LADDER_REPRODUCE`` (see :class:`Plan`).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ladder.errors import BudgetExhausted
from ladder.params import PlainValue, fill_params
from ladder.v1 import evaluate_pb2, events_pb2, study_pb2, suggest_pb2, trial_pb2

PLAN_ENV = "LADDER_REPRODUCE"
LOCAL_LEASE_S = 3600.0


@dataclass
class Plan:
    """What to re-run and where to write what it reports (JSON lines:
    ``{"step", "value"}`` per report, then ``{"outcome", "value"}``)."""

    trial_id: str
    study_id: str
    params: dict[str, PlainValue]
    seed: int
    metric: str
    output: str
    stop_after: float = 0.0  # the original's last step when it was stopped (0: none)
    max_steps: int = 0  # the study's max_resource
    config: dict[str, Any] = field(default_factory=dict)  # the study's config, as JSON

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls(**json.loads(path.read_text()))


def active_plan() -> Plan | None:
    """The plan this process runs, when ``ladder reproduce`` started it."""
    path = os.environ.get(PLAN_ENV)
    return Plan.load(Path(path)) if path else None


class LocalClient:
    """The ``TrialClient`` of the local mode: the plan's trial once, then "budget
    exhausted"; reports go to the plan's output file."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._handed_out = False
        self._lock = threading.Lock()
        self._output = Path(plan.output)
        self._output.parent.mkdir(parents=True, exist_ok=True)
        self._output.write_text("")

    def _write(self, record: dict[str, Any]) -> None:
        with self._lock, self._output.open("a") as out:
            out.write(json.dumps(record) + "\n")

    def get_study(self, study_id: str) -> study_pb2.Study:
        from google.protobuf.json_format import ParseDict

        config = study_pb2.StudyConfig()
        if self.plan.config:
            ParseDict(self.plan.config, config, ignore_unknown_fields=True)
        config.metric = self.plan.metric
        # Nothing decides here: the plan says where the original was stopped.
        config.scheduler.Clear()
        config.scheduler.kind = study_pb2.NONE
        config.scheduler.max_resource = float(self.plan.max_steps)
        return study_pb2.Study(study_id=self.plan.study_id, config=config)

    def suggest(self, study_id: str, worker_id: str, count: int = 1,
                start: evaluate_pb2.StartTrialRequest | None = None,
                ) -> list[suggest_pb2.Suggestion]:
        if self._handed_out:
            raise BudgetExhausted(None, "reproduce runs one trial")
        self._handed_out = True
        trial = trial_pb2.Trial(trial_id=self.plan.trial_id, study_id=self.plan.study_id,
                                seed=self.plan.seed)
        fill_params(trial.params, self.plan.params)
        return [suggest_pb2.Suggestion(trial=trial)]

    def start_trial(self, trial_id: str, worker_id: str, attempt_id: str, hostname: str = "",
                    environment: str = "",
                    run_environment: trial_pb2.RunEnvironment | None = None,
                    ) -> evaluate_pb2.StartTrialResponse:
        return evaluate_pb2.StartTrialResponse(lease_seconds=LOCAL_LEASE_S)

    def heartbeat(self, trial_id: str, attempt_id: str, step: float
                  ) -> evaluate_pb2.HeartbeatResponse:
        stop = self.plan.stop_after
        if stop and step >= stop:
            return evaluate_pb2.HeartbeatResponse(
                action=events_pb2.STOP,
                decision=events_pb2.Decision(trial_id=trial_id, action=events_pb2.STOP,
                                             resource=stop, reason="the original stopped here"),
            )
        return evaluate_pb2.HeartbeatResponse(action=events_pb2.CONTINUE)

    def report_metric(self, study_id: str, trial_id: str, attempt_id: str, step: float,
                      value: float, metric: str = "", worker_id: str = "", wait: bool = False,
                      ) -> events_pb2.MetricReport:
        self._write({"step": step, "value": value})
        return events_pb2.MetricReport(trial_id=trial_id, step=step, value=value)

    def checkpoint(self, trial_id: str, attempt_id: str, uri: str, step: float,
                   save_seconds: float = 0.0, train_seconds: float = 0.0) -> trial_pb2.Trial:
        return trial_pb2.Trial(trial_id=trial_id)

    def _end(self, outcome: str, value: float | None = None, reason: str = ""
             ) -> trial_pb2.Trial:
        self._write({"outcome": outcome, "value": value, "reason": reason})
        return trial_pb2.Trial(trial_id=self.plan.trial_id)

    def complete(self, trial_id: str, attempt_id: str, value: float, step: float
                 ) -> trial_pb2.Trial:
        return self._end("completed", value)

    def prune(self, trial_id: str, attempt_id: str, step: float, last_value: float
              ) -> trial_pb2.Trial:
        return self._end("pruned", last_value)

    def pause(self, trial_id: str, attempt_id: str, step: float, rung: int
              ) -> trial_pb2.Trial:
        return self._end("paused")

    def fail(self, trial_id: str, attempt_id: str, reason: str,
             retryable: bool | None = None, kind: int = 0) -> trial_pb2.Trial:
        return self._end("failed", reason=reason)

    def flush(self, timeout: float = 10.0) -> None:
        pass

    def close(self) -> None:
        pass


def read_curve(path: Path) -> tuple[dict[float, float], dict[str, Any]]:
    """What a local run reported: its value per step and how it ended."""
    curve: dict[float, float] = {}
    end: dict[str, Any] = {}
    if not path.exists():
        return curve, end
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "step" in record:
            curve[float(record["step"])] = float(record["value"])
        else:
            end = record
    return curve, end
