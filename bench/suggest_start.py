"""Suggest + StartTrial in two round trips against one Suggest that starts the trial
(SuggestRequest.start, issue 17 item 4), same stack, same run, alternating.

::

    nice -n 19 .venv/bin/python bench/suggest_start.py [--pairs 400] [--threads 1,8]

Setup: the embedded broker and Redis (``ladder.stack``, no services) plus a real
suggest and a real evaluate process started here; loopback gRPC clients. One
quasi-random study (a sampler that answers in microseconds, so what is measured is
the protocol, not a model).

Per client thread count, ``--pairs`` trials per mode in blocks of ``--block``,
the two modes alternating block by block: ``two_calls`` = Suggest, then StartTrial on
evaluate (what workers did); ``one_call`` = Suggest with ``start`` (what the worker
runtime does now). Timed: from the Suggest call to the started attempt, client side.
Each trial is then completed (not timed), so no lease expires and every Suggest hands
out a new trial. Writes bench/results/suggest-start-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from ladder.stack import Stack
from ladder.v1 import (
    evaluate_pb2,
    evaluate_pb2_grpc,
    study_pb2,
    suggest_pb2,
    suggest_pb2_grpc,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suggest_latency import RESULTS, Service, machine, percentiles, search_space  # noqa: E402


def study_config() -> study_pb2.StudyConfig:
    return study_pb2.StudyConfig(
        name="suggest-start",
        metric="loss",
        space=search_space(),
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
        seed=7,
    )


class Client:
    def __init__(self, suggest_addr: str, evaluate_addr: str, study_id: str, name: str) -> None:
        self._channels = [grpc.insecure_channel(suggest_addr), grpc.insecure_channel(evaluate_addr)]
        self.suggest = suggest_pb2_grpc.SuggestServiceStub(self._channels[0])
        self.evaluate = evaluate_pb2_grpc.EvaluateServiceStub(self._channels[1])
        self.study_id = study_id
        self.worker = name

    def two_calls(self) -> tuple[str, str]:
        reply = self.suggest.Suggest(
            suggest_pb2.SuggestRequest(study_id=self.study_id, worker_id=self.worker), timeout=30
        )
        trial_id, attempt = reply.suggestions[0].trial.trial_id, uuid.uuid4().hex
        self.evaluate.StartTrial(
            evaluate_pb2.StartTrialRequest(
                trial_id=trial_id, worker_id=self.worker, attempt_id=attempt, hostname="bench"
            ),
            timeout=30,
        )
        return trial_id, attempt

    def one_call(self) -> tuple[str, str]:
        attempt = uuid.uuid4().hex
        reply = self.suggest.Suggest(
            suggest_pb2.SuggestRequest(
                study_id=self.study_id,
                worker_id=self.worker,
                start=evaluate_pb2.StartTrialRequest(attempt_id=attempt, hostname="bench"),
            ),
            timeout=30,
        )
        suggestion = reply.suggestions[0]
        if not suggestion.HasField("started"):
            raise SystemExit("Suggest answered without started: is this suggest current?")
        return suggestion.trial.trial_id, attempt

    def complete(self, trial_id: str, attempt: str) -> None:
        self.evaluate.CompleteTrial(
            evaluate_pb2.CompleteTrialRequest(
                trial_id=trial_id, attempt_id=attempt, value=0.5, step=1
            ),
            timeout=30,
        )

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def run_block(clients: list[Client], mode: str, per_thread: int) -> list[float]:
    """``per_thread`` timed starts per client, all clients at once; milliseconds."""
    times: list[float] = []
    lock = threading.Lock()

    def work(client: Client) -> None:
        start: Callable[[], tuple[str, str]] = getattr(client, mode)
        for _ in range(per_thread):
            began = time.perf_counter()
            trial_id, attempt = start()
            elapsed = (time.perf_counter() - began) * 1000
            client.complete(trial_id, attempt)
            with lock:
                times.append(elapsed)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def measure(
    suggest_addr: str, evaluate_addr: str, study_id: str, threads: int, pairs: int, block: int
) -> dict[str, Any]:
    clients = [Client(suggest_addr, evaluate_addr, study_id, f"bench-{threads}-{i}")
               for i in range(threads)]
    try:
        for mode in ("two_calls", "one_call"):  # warm-up: channels, caches
            run_block(clients, mode, 5)
        times: dict[str, list[float]] = {"two_calls": [], "one_call": []}
        per_thread = max(1, block // threads)
        while min(len(v) for v in times.values()) < pairs:
            for mode in times:
                times[mode].extend(run_block(clients, mode, per_thread))
    finally:
        for client in clients:
            client.close()
    out: dict[str, Any] = {mode: percentiles(values) for mode, values in times.items()}
    out["saving_ms"] = {
        key: round(out["two_calls"][key] - out["one_call"][key], 3)
        for key in ("p50", "p90", "p99", "mean")
    }
    return out


def new_report(args: argparse.Namespace, **more: Any) -> dict[str, Any]:
    """What every report of these benches starts with: the machine, its load, the
    settings."""
    return {
        "machine": machine(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "settings": {k: str(v) for k, v in vars(args).items()},
        **more,
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=400, help="timed starts per mode")
    parser.add_argument("--block", type=int, default=40, help="starts per mode per block")
    parser.add_argument("--threads", default="1,8", help="client thread counts")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / f"suggest-start-{time.strftime('%Y%m%d')}.json"
    )
    args = parser.parse_args()
    report = new_report(args, runs={})
    with tempfile.TemporaryDirectory(prefix="ladder-bench-start-") as tmp:
        state = Path(tmp)
        stack = Stack(state, services=False)
        stack.up()
        env = {**os.environ, **stack.env()}
        services: list[Service] = []
        try:
            services.append(Service("services.suggest", "LADDER_SUGGEST_PORT", env, state))
            services.append(Service("services.evaluate", "LADDER_EVALUATE_PORT", env, state))
            suggest_svc, evaluate_svc = services
            with grpc.insecure_channel(suggest_svc.addr) as channel:
                study = suggest_pb2_grpc.SuggestServiceStub(channel).CreateStudy(
                    suggest_pb2.CreateStudyRequest(config=study_config()), timeout=60
                )
            for threads in (int(t) for t in args.threads.split(",")):
                print(f"{threads} client threads ...", flush=True)
                run = measure(
                    suggest_svc.addr, evaluate_svc.addr, study.study_id, threads,
                    args.pairs, args.block,
                )
                report["runs"][str(threads)] = run
                print(json.dumps({k: run[k] for k in ("two_calls", "one_call", "saving_ms")}),
                      flush=True)
        finally:
            for service in reversed(services):
                service.stop()
            stack.down()
    write_report(report, args.out)


if __name__ == "__main__":
    main()
