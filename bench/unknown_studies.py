"""Reports of unknown studies against a real study's decision latency (issue 13).

::

    .venv/bin/python bench/unknown_studies.py [--workers 100] [--duration 40]
        [--unknown-rate 4] [--seed 7]

On one fresh embedded stack (all four services), the load simulator runs ``--workers``
simulated workers of a real ASHA study (1 report/s each), ``--rounds`` times alone and
as often while a plain Kafka producer publishes ``--unknown-rate`` metric reports per
second for studies nobody created (a new study id each, random keys, so every metrics
partition gets some), the two kinds of run alternating so that neither gets the
stack's warm-up. Early-stop parks those reports and dead-letters
them after ``--unknown-study-wait`` s (the service's default, 10 s); before it waited
up to that long inline, and every real report behind one on its partition waited too.

Figures: p50 / p99 report-to-decision of the real study (as produced,
``Decision.ts_ms - report ts``, from ``workers.loadsim``) of each run, the ratio of the
median p99 with unknown studies to the median p99 alone (1.0: unknown studies cost the
real study nothing), the dead letters of the unknown reports (every one, once its wait
is over), and the counts check of each run. Writes bench/results/unknown-studies.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from earlystop_scale import LOADSIM_NICE, RESULTS, log, machine, start_loadsim, wait_drained
from kafka import KafkaProducer
from ladder.config import Settings
from ladder.stack import Stack
from ladder.testing import decoded, read_topic, wait_for
from ladder.v1 import events_pb2


class UnknownStudies:
    """Publishes ``rate`` JSON metric reports a second, each of a new unknown study."""

    def __init__(self, bootstrap: str, topic: str, rate: float, seed: int) -> None:
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        self.topic = topic
        self.rate = rate
        self.rng = random.Random(seed)
        self.prefix = f"ghost-{seed}-"
        self.sent = 0
        self.stopped = threading.Event()
        self.publishing = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        period = 1.0 / self.rate
        next_at = time.monotonic()
        # Paced by the clock, not a synchronisation: the offered load is the point.
        while not self.stopped.wait(max(0.0, next_at - time.monotonic())):
            if not self.publishing.is_set():
                self.publishing.wait(1.0)  # paused between the runs with unknown studies
                next_at = time.monotonic()
                continue
            study = f"{self.prefix}{self.sent}"
            body = {"study_id": study, "trial_id": f"{study}-t", "step": 1, "value": 0.5,
                    "ts_ms": int(time.time() * 1000)}
            key = self.rng.randbytes(8).hex().encode()
            self.producer.send(self.topic, key=key, value=json.dumps(body).encode())
            self.sent += 1
            next_at += period

    def resume(self) -> None:
        if not self.thread.is_alive():
            self.thread.start()
        self.publishing.set()

    def pause(self) -> None:
        self.publishing.clear()

    def stop(self) -> int:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()
        self.producer.flush(10)
        self.producer.close()
        return self.sent


def unknown_dead_letters(settings: Settings, prefix: str, sent: int) -> dict[str, Any]:
    """The dead letters of the unknown reports, once all ``sent`` are there (each goes
    when its study's wait is over, 10 s by default)."""
    payloads: set[bytes] = set()
    reasons: set[str] = set()

    def all_there() -> bool:
        for letter in decoded(
            events_pb2.DeadLetter, read_topic(settings, settings.topics.dead_letter, 60)
        ):
            if prefix.encode() in letter.payload:
                payloads.add(letter.payload)
                reasons.add(letter.reason.split("'")[0] + "...")
        return len(payloads) >= sent

    with contextlib.suppress(AssertionError):  # counted as they are at the deadline
        wait_for(all_there, 60, "the unknown reports' dead letters", every=1.0)
    return {"sent": sent, "dead_lettered": len(payloads), "reasons": sorted(reasons)}


def run_loadsim(env: dict[str, str], args: argparse.Namespace, name: str) -> dict[str, Any]:
    backlog = wait_drained(env, 120)
    argv = [
        sys.executable, "-m", "workers.loadsim",
        "--workers", str(args.workers), "--processes", "1", "--rate", "1.0",
        "--duration", str(args.duration), "--ramp", "5", "--drain", "30",
        "--seed", str(args.seed),
    ]
    log(f"{name}: {args.workers} workers for {args.duration:g}s")
    proc = start_loadsim(argv, env, LOADSIM_NICE)
    out, _ = proc.communicate(timeout=args.duration + 300)
    summary = json.loads(out)
    latency = summary["latency_ms"]["report_to_decision_produced"]
    return {
        "metrics_backlog_at_start": backlog,
        "report_to_decision_produced_ms": latency,
        "counts_ok": summary["counts"]["ok"],
        "reports_acked": summary["reports"]["acked"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--unknown-rate", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    started = time.time()
    results: dict[str, Any] = {
        "machine": machine(),
        "args": vars(args),
        "seeds": {"loadsim": args.seed, "unknown_keys": args.seed},
    }
    with tempfile.TemporaryDirectory(prefix="ladder-unknown-") as tmp:
        stack = Stack(Path(tmp), services=True)
        stack.up()
        try:
            os.environ.update(stack.env())
            env = dict(os.environ)
            settings = Settings.from_env()
            ghosts = UnknownStudies(
                settings.kafka_bootstrap, settings.topics.metrics, args.unknown_rate, args.seed
            )
            runs: dict[str, list[dict[str, Any]]] = {"alone": [], "with_unknown": []}
            for round_ in range(args.rounds):
                runs["alone"].append(run_loadsim(env, args, f"alone-{round_}"))
                ghosts.resume()
                try:
                    runs["with_unknown"].append(run_loadsim(env, args, f"with-unknown-{round_}"))
                finally:
                    ghosts.pause()
            sent = ghosts.stop()
            results.update(runs)
            results["unknown_reports"] = unknown_dead_letters(settings, ghosts.prefix, sent)
        finally:
            stack.down()
    for q in ("p50", "p99"):
        alone, loaded = (
            statistics.median(r["report_to_decision_produced_ms"][q] for r in results[kind])
            for kind in ("alone", "with_unknown")
        )
        results[f"median_{q}_ms"] = {"alone": alone, "with_unknown": loaded}
        results[f"{q}_ratio_with_over_alone"] = round(loaded / alone, 3)
    results["wall_s"] = round(time.time() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "unknown-studies.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    p99 = results["median_p99_ms"]
    log(f"median p99 alone {p99['alone']} ms, with unknown studies {p99['with_unknown']} ms "
        f"(x{results['p99_ratio_with_over_alone']}); wrote {path}")


if __name__ == "__main__":
    main()
