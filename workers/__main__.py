"""Run Ladder workers: ``python -m workers --study ID [--count 8]``.

With ``--worker-id`` one worker runs in this process. Otherwise ``--count`` worker
processes are spawned (ids ``<prefix>0`` .. ``<prefix>N-1``), each a separate Python
process (one training job per process, as on a GPU host); this process forwards
SIGTERM / SIGINT to them and exits when all have stopped, with status 1 if any of them
failed. Workers stop by themselves once the study's trial budget is exhausted.

A worker rides through a restart of any component: its calls are retried for
``--retry-timeout`` seconds, and the addresses are read again (env, else stack.json)
while they fail, so a stack started again on other ports is found too.

| flag / env                | default              | meaning                                 |
|---------------------------|----------------------|-----------------------------------------|
| --study                   | (required)           | study id                                |
| --count                   | 1                    | worker processes to spawn               |
| --worker-prefix           | w                    | worker ids are prefix + index           |
| --worker-id               | (none)               | run a single worker in-process          |
| --workload                | digits               | digits, synthetic or ``module:Class``   |
| --checkpoint-every        | the study's policy   | checkpoint every N steps instead of the |
|                           |                      | study's trial_policy (by time, default  |
|                           |                      | 300 s, or steps); 0 = only at a PAUSE   |
|                           |                      | or a hand-back                          |
| --checkpoint-url /        | stack.json's         | where checkpoints go:                   |
| LADDER_CHECKPOINT_URL     | checkpoint_url, else | ``s3://BUCKET/PREFIX`` or               |
|                           | file://<state>/checkpoints | ``file:///ABS/PATH``              |
| --decision-wait           | 3.0                  | seconds a trial waits at a rung where   |
|                           |                      | evaluate holds it for its verdict       |
|                           |                      | (promotion form; the stopping form      |
|                           |                      | never waits)                            |
| --max-steps               | study's max_resource | cap on steps per trial                  |
| --log-dir                 | (inherit)            | each spawned worker logs to DIR/<id>.log |
| --retry-timeout /         | 600                  | seconds a call to a service that is     |
| LADDER_WORKER_RETRY_S     |                      | down (being restarted) is retried       |
| LADDER_STATE_DIR etc.     | see ladder.config    | endpoints; the object store's: see      |
|                           |                      | ladder.objectstore                      |

Checkpoints: the embedded stack (``ladder up``) records its SeaweedFS bucket as the
default, so workers on any host of the stack share them; elsewhere give an S3 URL (the
endpoint and keys from LADDER_S3_ENDPOINT / AWS_*, see ``ladder.objectstore``) or a
folder every worker mounts. A resumed trial is fetched from whatever URI its checkpoint
has. Retention keeps the study's ``checkpoints_kept`` newest per trial plus the ones a
PAUSE or the final result refers to.

SIGTERM / SIGINT is a preemption notice: the worker checkpoints and hands its trial
back within the study's ``preemption_notice_seconds`` (default 25 s; mid-step for the
digits and synthetic workloads), then exits 0. A second signal quits at once (the trial's
lease then expires).
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ladder.api.pool import ProcessPool, forwarding_signals, notice_on_signals
from ladder.api.study import worker_retry_seconds

WORKLOADS = {
    "digits": "workers.digits:DigitsWorkload",
    "synthetic": "workers.synthetic:SyntheticWorkload",
}


def load_workload(spec: str) -> object:
    target = WORKLOADS.get(spec, spec)
    module_name, _, class_name = target.partition(":")
    if not class_name:
        raise SystemExit(f"--workload must be one of {sorted(WORKLOADS)} or module:Class")
    return getattr(importlib.import_module(module_name), class_name)()


class WorkerPool(ProcessPool):
    """``count`` worker processes for one study; stops exactly the processes it started
    (``ladder.api.pool``: own process groups, SIGTERM then SIGKILL)."""

    def __init__(
        self,
        study_id: str,
        count: int,
        prefix: str = "w",
        worker_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.study_id = study_id
        self.count = count
        self.prefix = prefix
        self.worker_args = list(worker_args)
        self.env = env
        self.log_dir = log_dir

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        return self.children  # type: ignore[return-value] - commands only

    def start(self) -> WorkerPool:
        for index in range(self.count):
            worker_id = f"{self.prefix}{index}"
            argv = [sys.executable, "-m", "workers", "--study", self.study_id,
                    "--worker-id", worker_id, *self.worker_args]
            log_path = self.log_dir / f"{worker_id}.log" if self.log_dir else None
            self.spawn_command(worker_id, argv, env=self.env, log_path=log_path)
        return self


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True, help="study id")
    parser.add_argument("--count", type=int, default=1, help="worker processes to spawn")
    parser.add_argument("--worker-prefix", default="w", help="worker ids: prefix + index")
    parser.add_argument("--worker-id", default=None, help="run one worker in this process")
    parser.add_argument("--workload", default="digits", help="digits or module:Class")
    parser.add_argument(
        "--checkpoint-every", type=int, default=None,
        help="checkpoint every N steps (default: the study's trial policy; 0: never)",
    )
    parser.add_argument(
        "--checkpoint-url", default=os.environ.get("LADDER_CHECKPOINT_URL") or None,
        help="s3://BUCKET/PREFIX or file:///ABS/PATH (default: the stack's object store, "
        "else file://<state>/checkpoints)",
    )
    parser.add_argument("--decision-wait", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument(
        "--retry-timeout", type=float,
        default=worker_retry_seconds(),
        help="seconds to retry a call while a service is down (default %(default)s)",
    )
    return parser


def _worker_args(args: argparse.Namespace) -> list[str]:
    out = ["--workload", args.workload, "--decision-wait", str(args.decision_wait),
           "--retry-timeout", str(args.retry_timeout)]
    if args.checkpoint_every is not None:
        out += ["--checkpoint-every", str(args.checkpoint_every)]
    if args.checkpoint_url:
        out += ["--checkpoint-url", args.checkpoint_url]
    if args.max_steps:
        out += ["--max-steps", str(args.max_steps)]
    return out


def run_single(args: argparse.Namespace) -> int:
    from ladder import telemetry
    from ladder.checkpoints import CheckpointStoreError
    from ladder.client import LadderClient
    from ladder.config import Settings
    from ladder.objectstore import NoObjectStore

    from workers.runtime import Worker, WorkerConfig, WorkerReport

    telemetry.setup("ladder-worker")
    settings = Settings.from_env()
    workload = load_workload(args.workload)
    client = LadderClient(settings, retry_timeout=args.retry_timeout, readdress=True)
    try:
        worker = Worker(client, workload, WorkerConfig(  # type: ignore[arg-type]
            study_id=args.study,
            worker_id=args.worker_id,
            state_dir=settings.state_dir,
            checkpoint_every=args.checkpoint_every,
            checkpoint_url=args.checkpoint_url,
            decision_wait=args.decision_wait,
            max_steps=args.max_steps,
        ))
    except (CheckpointStoreError, NoObjectStore) as exc:
        client.close()
        raise SystemExit(f"checkpoint store: {exc}") from None
    notice_on_signals(worker.request_stop)
    # The worker trains in a thread of its own so that this one can leave when the
    # trial was handed back while a step that cannot be interrupted still runs.
    reports: list[WorkerReport] = []
    training = threading.Thread(target=lambda: reports.append(worker.run()), daemon=True,
                                name="worker")
    training.start()
    try:
        while training.is_alive() and not worker.handed_back_early.is_set():
            training.join(0.2)
    finally:
        client.close()
        telemetry.shutdown()
    return 1 if reports and reports[0].fatal_error else 0


def run_pool(args: argparse.Namespace) -> int:
    pool = WorkerPool(args.study, args.count, args.worker_prefix, _worker_args(args),
                      env=dict(os.environ), log_dir=args.log_dir)
    with forwarding_signals(pool):
        pool.start()
        try:
            pool.wait()
        except KeyboardInterrupt:  # a second signal: no more waiting for hand-backs
            pool.stop()
    failed = {wid: code for wid, code in pool.exit_codes().items() if code != 0}
    if failed:
        print(f"workers failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker_id:
        return run_single(args)
    if args.count < 1:
        raise SystemExit("--count must be at least 1")
    return run_pool(args)


if __name__ == "__main__":
    sys.exit(main())
