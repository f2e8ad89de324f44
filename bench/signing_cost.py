"""What signing and checking the owned events costs per record (ladder.signing), next
to what the services already spend on a record (protobuf encode / decode).

::

    nice -n 19 .venv/bin/python bench/signing_cost.py [--records 200000]

Records of the sizes the signed topics carry: a Decision (~150 bytes), a RungCrossing
(~100 bytes) and a TrialEvent (~1 KB, params and a run environment). For each: the
microseconds per record of ``Keyring.sign`` (producer side), ``Keyring.problem`` on a
good signature (every consumer), ``problem`` on a forged one (rejected), and of the
protobuf ``SerializeToString`` / ``ParseFromString`` of the same record for scale.
Also what early-stop's trial check (``ladder.trialcheck``) adds to a metric report whose
trial it read recently (the common case: one Redis read per trial per 2 s, by batch).
Writes ``results/signing-cost.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from google.protobuf.message import Message
from ladder import runenv
from ladder.signing import KID_HEADER, SIG_HEADER, Keyring
from ladder.trialcheck import Known, TrialCheck
from ladder.v1 import events_pb2, trial_pb2

RESULTS = Path(__file__).parent / "results"


def samples() -> dict[str, tuple[str, Message]]:
    decision = events_pb2.Decision(
        study_id="study-0123456789", trial_id="trial-0123456789abcdef", action=events_pb2.STOP,
        rung=2, resource=27, smoothed_value=0.4321, cutoff=0.4, rank=7, population=9,
        reason="rung 2 (27 steps): rank 7/9, val_loss 0.4321 > cutoff 0.4 (top 3 of 9 kept)",
        scheduler="asha", ts_ms=1_700_000_000_000, report_ts_ms=1_700_000_000_000,
    )
    crossing = events_pb2.RungCrossing(
        study_id="study-0123456789", trial_id="trial-0123456789abcdef", rung=2, resource=27,
        smoothed_value=0.4321, raw_value=0.43, ts_ms=1_700_000_000_000,
    )
    trial = trial_pb2.Trial(
        trial_id="trial-0123456789abcdef", study_id="study-0123456789",
        state=trial_pb2.RUNNING, attempt_id="attempt-0123456789", worker_id="worker-0042",
        checkpoint_uri="s3://ladder-checkpoints/study-0123456789/trial-0123456789abcdef/27",
    )
    for i in range(12):
        trial.params[f"param_{i}"].float_value = 0.1 * i
    event = events_pb2.TrialEvent(trial=trial, ts_ms=1_700_000_000_000, reason="x" * 600)
    return {
        "decision": ("ladder.decisions", decision),
        "rung_crossing": ("ladder.rungs", crossing),
        "trial_event": ("ladder.trials", event),
    }


def per_record_us(fn: Callable[[], object], records: int) -> float:
    best = float("inf")
    for _ in range(3):  # best of three: other processes share the host
        started = time.perf_counter()
        for _ in range(records):
            fn()
        best = min(best, time.perf_counter() - started)
    return best / records * 1e6


def measure(ring: Keyring, topic: str, message: Message, records: int) -> dict[str, float]:
    """Microseconds per record of signing, checking and protobuf for ``message``."""
    key = getattr(message, "trial_id", "").encode() or b"study-0123456789"
    value = message.SerializeToString()
    headers = [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
               *ring.sign(topic, key, value)]
    forged = [(KID_HEADER, b"k1"), (SIG_HEADER, b"\0" * 32)]
    assert ring.problem(topic, key, value, headers) is None
    assert ring.problem(topic, key, value, forged) is not None
    parsed = type(message)()
    row = {
        "bytes": len(value),
        "sign_us": per_record_us(partial(ring.sign, topic, key, value), records),
        "verify_us": per_record_us(partial(ring.problem, topic, key, value, headers), records),
        "reject_us": per_record_us(partial(ring.problem, topic, key, value, forged), records),
        "serialize_us": per_record_us(message.SerializeToString, records),
        "parse_us": per_record_us(partial(parsed.ParseFromString, value), records),
    }
    return {k: round(v, 3) for k, v in row.items()}


def trial_check_us(records: int) -> float:
    """Microseconds per report of the trial check on a trial read before."""

    async def lookup(trial_ids: Sequence[str]) -> list[Known | None]:
        return [Known("study-0123456789", trial_pb2.RUNNING) for _ in trial_ids]

    check = TrialCheck(lookup)

    async def run() -> float:
        await check.prefetch(["trial-0123456789abcdef"])
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(records):
                await check("study-0123456789", "trial-0123456789abcdef")
            best = min(best, time.perf_counter() - started)
        return best / records * 1e6

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    ring = Keyring({"k1": bytes(range(32))}, "k1")
    code = runenv.code_state(Path(__file__).parent)
    out: dict[str, object] = {
        "machine": {"cpu": runenv.cpu_model(), "python": platform.python_version(),
                    "os": platform.platform()},
        "code": {"commit": code.commit, "dirty": code.dirty},
        "records": args.records,
    }
    for name, (topic, message) in samples().items():
        out[name] = measure(ring, topic, message, args.records)
        print(name, json.dumps(out[name]))
    out["metric_report"] = {"trial_check_cached_us": round(trial_check_us(args.records), 3)}
    print("metric_report", json.dumps(out["metric_report"]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "signing-cost.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
