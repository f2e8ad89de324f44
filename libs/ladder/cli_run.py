"""``ladder run`` and ``ladder reproduce``: commands that run training scripts written
with the Python API (``ladder.api``).

``ladder run -n 8 train.py [ARGS]`` starts the embedded stack when none runs (unless
LADDER_SUGGEST_ADDR names one), then 8 processes of ``python train.py ARGS``, each one
worker (LADDER_WORKER_ID ``<study>-w<i>``) of one study: LADDER_STUDY_ID (``--study``,
default ``<script>-<time>-<random>``) makes every ``ladder.create_study`` of the
script answer with the same study. Ctrl-C (or SIGTERM) is forwarded once to each
worker, which checkpoints and hands its trial back (PREEMPTED: the next worker resumes
it); a second Ctrl-C kills them after the notice. At the end it prints the study's
counts and best value. Exit status: 0 when every worker exited 0, 130 after Ctrl-C, 1
otherwise.

``ladder reproduce TRIAL_ID`` re-runs a trial from its lineage: the command its last
attempt recorded (``RunEnvironment.entry_point``, run from the top of the current git
work tree) in the local mode (``ladder.api.local``), where the script's study yields
exactly that trial (its params and seed, no lease, nothing sent), stopped where the
original was stopped. It refuses (exit 2) when HEAD is not the commit the trial ran
(``--force`` runs it anyway), warns when either tree was dirty, then compares the
curves step by step: ``|reproduced - recorded| <= atol + rtol * |recorded|``. Exit
status: 0 the curve matches, 1 it does not (the differing steps are listed).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ladder.cli_query import LINEAGE, SUGGEST, CommandFailed, connected, emit, emit_json, runs

if TYPE_CHECKING:
    from ladder.v1 import lineage_pb2, trial_pb2

EXIT_INTERRUPTED = 130
EXIT_REFUSED = 2
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-8
DEFAULT_REPRODUCE_TIMEOUT_S = 3600.0
_STOPPED_STATES = ("pruned", "paused")


# --- ladder run ------------------------------------------------------------------------


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--workers", type=int, default=1,
                        help="worker processes of the script (default 1)")
    parser.add_argument("--study", default=None,
                        help="study id the script's create_study uses (default: "
                        "<script>-<time>-<random>)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="state folder of the embedded stack (default: "
                        "$LADDER_STATE_DIR, else ./.ladder)")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="each worker's output to DIR/<worker>.log (default: this "
                        "terminal)")
    parser.add_argument("script", type=Path, help="a training script using ladder's API")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")


def new_study_id(script: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in script.stem)
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def _run(args: argparse.Namespace) -> int:
    from ladder.api.pool import DEFAULT_GRACE_S, ProcessPool, forwarding_signals
    from ladder.api.study import STUDY_ID_ENV, WORKER_ID_ENV, ensure_stack

    if args.workers < 1:
        raise CommandFailed("-n must be at least 1")
    if not args.script.is_file():
        raise CommandFailed(f"no script {args.script}")
    if args.state_dir:
        os.environ["LADDER_STATE_DIR"] = str(args.state_dir.resolve())
    env = {**os.environ, **ensure_stack(args.state_dir)}
    study_id = args.study or new_study_id(args.script)
    env[STUDY_ID_ENV] = study_id
    pool = ProcessPool()
    emit(f"study {study_id}: {args.workers} worker(s) of {args.script}")
    with forwarding_signals(pool) as signals:
        for index in range(args.workers):
            worker_id = f"{study_id}-w{index}"
            log = args.log_dir / f"{worker_id}.log" if args.log_dir else None
            pool.spawn_command(worker_id, [sys.executable, str(args.script), *args.args],
                               env={**env, WORKER_ID_ENV: worker_id}, log_path=log)
        try:
            pool.wait()
        except KeyboardInterrupt:  # a second signal: no more waiting for hand-backs
            pool.stop(DEFAULT_GRACE_S)
    _print_outcome(args, study_id)
    if signals:
        return EXIT_INTERRUPTED
    failed = {name: code for name, code in pool.exit_codes().items() if code}
    if failed:
        raise CommandFailed(f"workers failed: {failed}")
    return 0


def _print_outcome(args: argparse.Namespace, study_id: str) -> None:
    from ladder.api.study import Study

    with connected(args, (SUGGEST, LINEAGE)) as client:
        try:
            study = Study(client, client.get_study(study_id))
        except Exception:  # noqa: BLE001 - the script may never have created it
            emit(f"study {study_id} was not created by the script")
            return
        summary = study.settled(timeout=10)
    best = (f"best {study.metric} {summary.best_value:.6g} (trial {summary.best_trial_id})"
            if summary.has_best else "no completed trial")
    emit(f"study {study_id}: {summary.completed} completed, {summary.pruned} pruned, "
         f"{summary.failed} failed; {best}")


# --- ladder reproduce --------------------------------------------------------------------


def _reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trial_id", help="the trial to run again")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help=f"relative tolerance per step (default {DEFAULT_RTOL:g})")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"absolute tolerance per step (default {DEFAULT_ATOL:g})")
    parser.add_argument("--force", action="store_true",
                        help="run even when HEAD is not the trial's commit")
    parser.add_argument("--timeout", type=float, default=DEFAULT_REPRODUCE_TIMEOUT_S,
                        help="seconds the re-run may take")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="state folder of the stack (default: $LADDER_STATE_DIR)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def recorded_environment(lineage: lineage_pb2.TrialLineage) -> trial_pb2.RunEnvironment | None:
    """The run environment of the trial's last attempt that recorded one."""
    for attempt in reversed(lineage.attempts):
        if attempt.HasField("run_environment") and attempt.run_environment.entry_point:
            return attempt.run_environment
    return None


def recorded_curve(lineage: lineage_pb2.TrialLineage) -> dict[float, float]:
    """Value per step; a step trained again by a later attempt has that attempt's."""
    points = sorted(lineage.metrics, key=lambda p: (p.ts_ms, p.step))
    return {p.step: p.value for p in points}


@dataclass(frozen=True)
class CurveCheck:
    steps: int  # recorded steps compared
    missing: list[float]  # recorded steps the re-run did not report
    differing: list[tuple[float, float, float]]  # (step, recorded, reproduced)
    max_deviation: float

    @property
    def matches(self) -> bool:
        return not self.missing and not self.differing


def compare_curves(recorded: dict[float, float], reproduced: dict[float, float],
                   rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> CurveCheck:
    """Every recorded step against the re-run's value at that step."""
    missing, differing, worst = [], [], 0.0
    for step in sorted(recorded):
        want = recorded[step]
        if step not in reproduced:
            missing.append(step)
            continue
        got = reproduced[step]
        if math.isnan(want) and math.isnan(got):
            continue
        deviation = abs(got - want)
        worst = max(worst, deviation) if math.isfinite(deviation) else math.inf
        if not deviation <= atol + rtol * abs(want):
            differing.append((step, want, got))
    return CurveCheck(len(recorded), missing, differing, worst)


def work_tree_root(folder: Path) -> Path:
    from ladder import runenv

    return runenv.code_state(folder).root or folder


def _reproduce(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from ladder import runenv
    from ladder.api import local
    from ladder.params import params_to_dict

    with connected(args, (SUGGEST, LINEAGE)) as client:
        lineage = client.lineage(args.trial_id)
        study = client.get_study(lineage.study_id)
    environment = recorded_environment(lineage)
    if environment is None:
        raise CommandFailed(
            f"trial {args.trial_id} has no recorded entry point: it did not run through "
            "ladder's Python API (or lineage has not seen its start yet)"
        )
    root = work_tree_root(Path.cwd())
    argv = shlex.split(environment.entry_point)
    script = next((root / a for a in argv[1:] if a.endswith(".py")), None)
    code = runenv.code_state(script.parent if script is not None else root)
    warnings = []
    if environment.code_commit and code.commit != environment.code_commit:
        message = (f"HEAD is {code.commit[:12] or 'not a git commit'}, the trial ran "
                   f"{environment.code_commit[:12]}")
        if not args.force:
            print(f"ladder: {message}: check it out, or --force", file=sys.stderr)
            return EXIT_REFUSED
        warnings.append(message)
    if code.dirty or environment.code_dirty:
        warnings.append("uncommitted changes " + ("now" if code.dirty else "when it ran")
                        + ": the code may differ")
    recorded = recorded_curve(lineage)
    stopped = lineage.state.lower() in _STOPPED_STATES
    with tempfile.TemporaryDirectory(prefix="ladder-reproduce-") as tmp:
        plan = local.Plan(
            trial_id=lineage.trial_id, study_id=lineage.study_id,
            params=params_to_dict(lineage.params), seed=int(lineage.seed),
            metric=lineage.metric or study.config.metric,
            output=str(Path(tmp) / "curve.jsonl"),
            stop_after=max(recorded) if stopped and recorded else 0.0,
            max_steps=int(study.config.scheduler.max_resource),
            config=MessageToDict(study.config, preserving_proto_field_name=True),
        )
        plan_path = Path(tmp) / "plan.json"
        plan.save(plan_path)
        command = [sys.executable if argv[0].startswith("python") else argv[0], *argv[1:]]
        env = {k: v for k, v in os.environ.items() if k not in ("LADDER_STUDY_ID",
                                                                "LADDER_WORKER_ID")}
        env[local.PLAN_ENV] = str(plan_path)
        started = time.monotonic()
        done = subprocess.run(command, cwd=root, env=env, timeout=args.timeout,
                              stdout=sys.stderr, check=False)
        seconds = time.monotonic() - started
        reproduced, end = local.read_curve(Path(plan.output))
    check = compare_curves(recorded, reproduced, args.rtol, args.atol)
    _report(args, lineage, environment, command, done.returncode, seconds, check, end,
            warnings)
    return 0 if check.matches and done.returncode == 0 else 1


def _report(args: argparse.Namespace, lineage: lineage_pb2.TrialLineage,
            environment: trial_pb2.RunEnvironment, command: list[str], returncode: int,
            seconds: float, check: CurveCheck, end: dict[str, Any],
            warnings: list[str]) -> None:
    if args.json:
        emit_json({
            "trial_id": lineage.trial_id, "matches": check.matches and returncode == 0,
            "command": command, "exit_code": returncode, "seconds": round(seconds, 2),
            "steps": check.steps, "missing_steps": check.missing,
            "differing_steps": [list(d) for d in check.differing],
            "max_deviation": check.max_deviation, "outcome": end.get("outcome"),
            "recorded_state": lineage.state, "warnings": warnings,
            "code_commit": environment.code_commit,
        })
        return
    for warning in warnings:
        emit(f"warning: {warning}")
    emit(f"trial {lineage.trial_id} ({lineage.state}) re-ran as `{environment.entry_point}` "
         f"in {seconds:.1f} s (exit {returncode}, {end.get('outcome', 'no outcome')})")
    tolerance = f"rtol {args.rtol:g}, atol {args.atol:g}"
    if check.matches and returncode == 0:
        emit(f"curve matches: {check.steps} of {check.steps} steps within {tolerance} "
             f"(max deviation {check.max_deviation:.3g})")
        return
    emit(f"curve differs: {len(check.differing)} of {check.steps} steps outside {tolerance}, "
         f"{len(check.missing)} not reported")
    for step, want, got in check.differing[:10]:
        emit(f"  step {step:g}: recorded {want:.8g}, reproduced {got:.8g}")
    if check.missing:
        emit(f"  missing steps: {', '.join(f'{s:g}' for s in check.missing[:20])}")


def register(commands: dict[str, Any], command_type: type) -> None:
    """Add this module's commands to the CLI's table."""
    commands["run"] = command_type(
        "run N worker processes of a training script written with ladder's API",
        _run_arguments, runs(_run),
    )
    commands["reproduce"] = command_type(
        "re-run a trial from its lineage and compare its curve",
        _reproduce_arguments, runs(_reproduce),
    )
