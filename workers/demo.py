"""The main job (``make demo``): tune a digits MLP with 8 workers on the embedded stack,
through the Python API (``ladder.optimize`` of ``workers.digits.train``).

1. start the embedded stack (broker, Redis, the four services) in the state folder;
2. ``ladder.optimize``: a study of the digits space, quasi-random suggestions, ASHA
   (rungs 1, 3, 9, 27 epochs, eta 3, at least 3 trials at a rung before any stop),
   64 trials, a checkpoint every 3 epochs, run by 8 worker processes, with its
   progress from the lineage service;
3. print the best trial's full lineage and the totals, write ``<state>/demo-summary.json``;
4. stop exactly what step 1 started (also on Ctrl-C or an error).

Exit status 0 when at least ``--min-finished`` trials (default 60) completed or were
pruned and nothing failed; 1 otherwise.

| flag / env            | default                    |
|-----------------------|----------------------------|
| --state-dir / LADDER_STATE_DIR | ./.ladder-demo    |
| --workers             | 8                          |
| --max-trials          | 64                         |
| --min-finished        | 60                         |
| --algorithm           | random                     |
| --partitions          | 1 (suggestion partitions)  |
| --timeout             | 900 s for the study        |
| --keep-stack          | stop the stack at the end  |
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ladder
from google.protobuf.json_format import MessageToDict
from ladder import telemetry
from ladder.api.optimize import WorkerFailed
from ladder.api.progress import finished, seen
from ladder.client import LadderClient, wait_until
from ladder.params import params_to_dict
from ladder.v1 import events_pb2, lineage_pb2, study_pb2

from workers import digits

ASHA = {"kind": "asha", "min_resource": 1, "max_resource": digits.MAX_EPOCHS,
        "reduction_factor": 3, "min_population": 3}
CHECKPOINT_EVERY_EPOCHS = 3


# --- the report ----------------------------------------------------------------------------

_ACTIONS = {events_pb2.CONTINUE: "CONTINUE", events_pb2.STOP: "STOP",
            events_pb2.PROMOTE: "PROMOTE"}


def curve_summary(lineage: lineage_pb2.TrialLineage, milestones: Sequence[float]
                  ) -> dict[str, Any]:
    points = sorted(lineage.metrics, key=lambda p: (p.step, p.ts_ms))
    if not points:
        return {"points": 0}
    by_step = {p.step: p.value for p in points}  # the latest attempt's value per step
    finite = [p for p in points if math.isfinite(p.value)]
    best = min(finite, key=lambda p: p.value) if finite else None
    return {
        "points": len(points),
        "first": {"step": points[0].step, "value": points[0].value},
        "last": {"step": points[-1].step, "value": points[-1].value},
        "min": {"step": best.step, "value": best.value} if best else None,
        "at_rungs": {f"{m:g}": by_step[m] for m in milestones if m in by_step},
    }


def print_lineage(lineage: lineage_pb2.TrialLineage, milestones: Sequence[float]) -> None:
    print(f"Best trial {lineage.trial_id}  (study {lineage.study_id}, state {lineage.state})")
    print(f"  final {lineage.metric or digits.METRIC}: {lineage.final_value:.5f}"
          if lineage.has_final_value else "  final value: none")
    print(f"  params:      {json.dumps(params_to_dict(lineage.params), sort_keys=True)}")
    print(f"  seed:        {lineage.seed}")
    print(f"  algorithm:   {lineage.algorithm or '-'}")
    print(f"  dataset:     {lineage.dataset_id or '-'}")
    print(f"  code commit: {lineage.code_commit or '-'}")
    print(f"  checkpoint:  {lineage.checkpoint_uri or '-'}")
    print(f"  attempts ({len(lineage.attempts)}):")
    for att in lineage.attempts:
        seconds = (att.ended_ms - att.started_ms) / 1000 if att.ended_ms else float("nan")
        print(f"    #{att.attempt_number} {att.attempt_id[:12]} worker={att.worker_id} "
              f"host={att.hostname} outcome={att.outcome} ({seconds:.1f}s) "
              f"env=[{att.environment}]")
    curve = curve_summary(lineage, milestones)
    print(f"  metric curve ({curve['points']} points):")
    if curve["points"]:
        rungs = "  ".join(f"epoch {k}: {v:.4f}" for k, v in curve["at_rungs"].items())
        print(f"    {rungs}")
        if curve["min"]:
            print(f"    minimum {curve['min']['value']:.4f} at epoch {curve['min']['step']:g}")
    print(f"  decisions ({len(lineage.decisions)}):")
    for dec in lineage.decisions:
        print(f"    rung {dec.rung} (epoch {dec.resource:g}): {_ACTIONS.get(dec.action, '?')} "
              f"smoothed={dec.smoothed_value:.4f} cutoff={dec.cutoff:.4f} "
              f"rank {dec.rank}/{dec.population} [{dec.scheduler}] {dec.reason}")


# --- the job -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from ladder.stack import Stack, StackError

    state_dir = Path(args.state_dir or os.environ.get("LADDER_STATE_DIR") or ".ladder-demo")
    state_dir = state_dir.resolve()
    t_start = time.monotonic()
    stack = Stack(state_dir, services=True, log=lambda msg: print(f"stack: {msg}", flush=True))
    started_stack = False
    study: ladder.Study | None = None
    try:
        print(f"Starting the embedded stack in {state_dir} ...", flush=True)
        try:
            info = stack.up()
        except StackError as exc:
            print(f"demo: the stack did not start: {exc}", file=sys.stderr)
            return 1
        started_stack = not info.get("reused")
        print(f"Stack up in {time.monotonic() - t_start:.1f}s", flush=True)
        os.environ.update(stack.env())  # ladder.optimize and its workers use this stack
        study_id = f"digits-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        print(f"Study {study_id}: {args.max_trials} trials, {digits.MAX_EPOCHS} epochs max, "
              f"ASHA eta 3, algorithm {args.algorithm}, {args.workers} workers (their "
              "logs: stderr)", flush=True)
        t_study = time.monotonic()
        exit_codes: dict[str, int | None] = {}
        try:
            study = ladder.optimize(
                digits.train, digits.SEARCH_SPACE, n_trials=args.max_trials,
                n_workers=args.workers, study_id=study_id, name="digits-mlp",
                metric=digits.METRIC, scheduler=ASHA, algorithm=args.algorithm,
                seed=args.seed, dataset_id=digits.DATASET_ID, partitions=args.partitions,
                labels={"job": "demo", "workload": "digits", "resource_unit": "epochs"},
                trial_policy={"checkpoint_interval_steps": CHECKPOINT_EVERY_EPOCHS},
                timeout=args.timeout, progress=True,
            )
        except WorkerFailed as exc:
            print(f"demo: {exc}", file=sys.stderr)
            exit_codes = exc.exit_codes
            study = ladder.load_study(study_id)
        wall = time.monotonic() - t_study
        return report(study, study.settled(), exit_codes, wall, time.monotonic() - t_start,
                      state_dir, args)
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130
    finally:
        if study is not None:
            study.close()
        if started_stack and not args.keep_stack:
            print("Stopping the stack ...", flush=True)
            stack.down()
        elif started_stack:
            print(f"Stack left running (ladder down --state-dir {state_dir})")


def curve_steps(lineage: lineage_pb2.TrialLineage) -> set[float]:
    return {p.step for p in lineage.metrics}


def complete_best(client: LadderClient, study_id: str, steps: int
                  ) -> lineage_pb2.TrialLineage | None:
    """The best trial, once its whole metric curve reached the lineage store (metrics and
    trial outcomes travel on different topics); as it is after a short wait otherwise."""
    best = wait_until(lambda: (b := client.best(study_id)) and len(curve_steps(b)) >= steps
                      and b, timeout=10)
    return best or client.best(study_id)


def demo_problems(summary: lineage_pb2.StudySummary, exit_codes: dict[str, int | None],
                  best: lineage_pb2.TrialLineage | None, config: study_pb2.StudyConfig,
                  min_finished: int) -> list[str]:
    """Why the demo failed (empty when it did not): what `make demo` checks."""
    problems = []
    done = summary.completed + summary.pruned
    if done < min_finished:
        problems.append(f"only {done} trials completed or pruned (need {min_finished})")
    if summary.failed:
        problems.append(f"{summary.failed} trials failed")
    bad_workers = {w: c for w, c in exit_codes.items() if c != 0}
    if bad_workers:
        problems.append(f"workers exited abnormally: {bad_workers}")
    if best is None:
        problems.append("no best trial")
    elif len(curve_steps(best)) < config.scheduler.max_resource:
        problems.append(
            f"the lineage of the best trial has {len(curve_steps(best))} of "
            f"{config.scheduler.max_resource:g} metric points (lineage store missed records)"
        )
    return problems


def report(study: ladder.Study, summary: lineage_pb2.StudySummary,
           exit_codes: dict[str, int | None], wall: float, total: float, state_dir: Path,
           args: argparse.Namespace) -> int:
    from ladder.study import StudySpec

    client, study_id, config = study.client, study.study_id, study.config
    milestones = StudySpec.from_proto(config).scheduler.decision_rungs(
        config.scheduler.max_resource) + [config.scheduler.max_resource]
    trials = finished(summary)
    pruned_fraction = summary.pruned / trials if trials else 0.0
    best = complete_best(client, study_id, int(config.scheduler.max_resource))
    print()
    if best is not None:
        print_lineage(best, milestones)
    else:
        print("No completed trial: no best configuration.")
    print()
    print(f"Study {study_id}")
    print(f"  wall time:        {wall:.1f}s for the study ({total:.1f}s including the stack)")
    print(f"  trials:           {trials} finished of {seen(summary)} "
          f"({summary.completed} completed, {summary.pruned} pruned, {summary.failed} failed)")
    print(f"  pruned fraction:  {pruned_fraction:.2f}")
    print(f"  best val_loss:    {best.final_value:.5f}" if best else "  best val_loss:    -")
    print(f"  metric points:    {summary.metric_points}   decisions: {summary.decisions}")

    problems = demo_problems(summary, exit_codes, best, config, args.min_finished)
    out = {
        "study_id": study_id,
        "ok": not problems,
        "problems": problems,
        "wall_time_s": round(wall, 2),
        "total_time_s": round(total, 2),
        "workers": args.workers,
        "max_trials": args.max_trials,
        "trials": seen(summary),
        "finished": trials,
        "completed": summary.completed,
        "pruned": summary.pruned,
        "failed": summary.failed,
        "pruned_fraction": round(pruned_fraction, 4),
        "metric_points": summary.metric_points,
        "decisions": summary.decisions,
        "best_value": best.final_value if best else None,
        "best_trial_id": best.trial_id if best else None,
        "best_params": params_to_dict(best.params) if best else None,
        "best_curve": curve_summary(best, milestones) if best else None,
        "best_lineage": MessageToDict(best, preserving_proto_field_name=True) if best else None,
        "study_config": MessageToDict(config, preserving_proto_field_name=True),
        "worker_exit_codes": exit_codes,
    }
    path = state_dir / "demo-summary.json"
    path.write_text(json.dumps(out, indent=2, sort_keys=True, default=str) + "\n")
    print(f"  summary:          {path}")
    if problems:
        print("demo FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("demo OK")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workers.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--max-trials", type=int, default=64)
    parser.add_argument("--min-finished", type=int, default=60)
    parser.add_argument("--algorithm", default="random")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--keep-stack", action="store_true")
    return parser


def _interrupt(signum: int, _frame: object) -> None:
    # SIGTERM takes the same path as Ctrl-C, so the `finally` stops workers and stack.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # Library logs would interleave with the report; warnings and errors still show.
    telemetry.setup("ladder-demo", level="WARNING")
    # kafka-python logs every refused connection while the broker starts; the stack
    # launcher reports real failures itself (as `ladder up` does).
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
