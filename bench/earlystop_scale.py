"""Early-stop at scale: simulated workers against a fresh embedded stack.

::

    .venv/bin/python bench/earlystop_scale.py [--duration 60] [--scenarios 1es,2es]
        [--ramp 10] [--merge] [--storage s3|memory]

Scenarios, in this order (each a fresh ASHA study; the loadsim ones are run by
``python -m workers.loadsim``):

0. ``1000w-1es-burst`` (only when asked for): as 1., but every worker starts within the
   first second, so the first rung crossings of all 1,000 trials fall in the same second;
1. ``1000w-1es``: 1,000 workers at 1 report/s, one early-stop process (the stack's); the
   workers start over ``--ramp`` seconds (default 10: a fleet's pods do not all start in
   the same second, and trials that start together cross their rungs together);
2. ``capacity-1es``: what one process sustains: ``--capacity`` trials x steps reports
   produced at once, timed until every implied crossing has its decision;
3. ``1000w-2es``: 1,000 workers with a second early-stop process (same Faust app id,
   so it joins the group and takes half of the 4 partitions);
4. ``capacity-2es``: the capacity backlog with the two processes (ratio to 2.);
   ``capacity-1es-limited`` / ``capacity-2es-limited`` (scenario ``capq``, after 2. and
   4.): the same with each early-stop process held to ``--cpu-limit`` cores by a cgroup
   quota, as where each process has a CPU of its own: on 2 cores shared with the whole
   stack, a second process can only take CPU the others need;
   ``1000w-2es-churn`` (scenario ``churn``, after 4.): as 3., while a third process
   joins the group and leaves it again (SIGTERM) every ``--churn-period`` seconds:
   every join and leave moves partitions and their table state mid-run, and the
   counts must still be exact;
5. ``5000w-2es``: 5,000 workers, two early-stop processes: measured as is, even if
   something saturates (the simulator at the stack's priority, to offer what it can);
   ``5000w-1es`` (scenario ``big1``, after 2.): the same with one process. ``make
   bench-scale`` runs it before ``big`` on the same stack: the second process then joins
   a group holding a 5,000-trial state, the path that once left the next study
   unregistered in both (bench/README.md);
6. ``200w-kill``: the second process SIGKILLed half way through the run (at a load
   below saturation, ``--kill-workers``); the survivor takes its partitions over and
   recovers the decision state from the changelogs. Decisions lost must be 0; the
   recovery gap is how long the reports of the killed partitions waited.

The broker keeps its log where ``--storage`` says (``s3``: in the embedded object store,
the stack's default; ``memory``); ``bench/durability_cost.py`` runs one scenario on both.
Each scenario first waits (bounded) until the early-stop group has no metrics backlog.
The simulator runs ``LOADSIM_NICE`` steps nicer than the stack, in its own session
whose autogroup gets the same nice value (the load generator should not take the CPU
of the system it measures); the early-stop settings come from
the environment (e.g. ``LADDER_EARLYSTOP_STANDBY_REPLICAS=1`` to compare takeovers).

For each loadsim one: metric events/s committed by the early-stop group, report-to-decision
latency percentiles, the counts check, and the CPU used per process (where it
saturates). Writes bench/results/earlystop-scale.json and .png.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ladder.stack import Stack
from ladder.stack.ports import free_port
from ladder.stack.probes import serving, wait_until

RESULTS = Path(__file__).resolve().parent / "results"
FAILURES = Path(tempfile.gettempdir()) / "ladder-scale-failures"
PACKAGES = ("faust-streaming", "aiokafka", "kafka-python", "grpcio", "protobuf")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOADSIM_NICE = 5
WARMUP_S = 30.0  # reports before this are left out of the steady-state latency


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a running process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class ExtraEarlyStop:
    """A second ``python -m services.earlystop`` against the same stack."""

    def __init__(self, env: dict[str, str], state: Path) -> None:
        port = free_port()
        self.addr = f"127.0.0.1:{port}"
        child_env = {
            **env,
            "LADDER_EARLYSTOP_HEALTH_PORT": str(port),
            "LADDER_EARLYSTOP_WEB_PORT": "0",
            "LADDER_EARLYSTOP_DATA_DIR": str(state / f"earlystop-extra-{port}"),
        }
        self.log_path = state / "logs" / f"earlystop-extra-{port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.earlystop"],
                env=child_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: serving(self.addr),
            time.monotonic() + 120,
            "the second early-stop process",
            alive=lambda: self.proc.poll() is None,
            interval=0.25,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class MemberChurn:
    """A third early-stop process joining the group and leaving it again (SIGTERM),
    over and over, on a thread: every join and every leave is a rebalance that moves
    partitions, with their table state, while the workers report."""

    def __init__(self, env: dict[str, str], state: Path, period: float) -> None:
        self.env, self.state, self.period = env, state, period
        self.rebalances: list[dict[str, Any]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="member-churn", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.period / 2):
            try:
                member = ExtraEarlyStop(self.env, self.state)
            except Exception as exc:  # noqa: BLE001 - recorded in the report, churn ends
                self.rebalances.append({"member": "failed to join", "error": str(exc)})
                return
            self.rebalances.append({"member": "joined", "at_unix": round(time.time(), 1)})
            self._done.wait(self.period / 2)
            member.stop()
            self.rebalances.append({"member": "left", "at_unix": round(time.time(), 1)})

    def stop(self) -> list[dict[str, Any]]:
        self._done.set()
        self._thread.join(timeout=60)
        return self.rebalances


class CpuLimit:
    """Processes held to a CPU quota each, each in a cgroup of its own (v1 ``cpu``
    controller, or v2 where the root delegates ``cpu``).

    On 2 cores shared with the broker, Redis and the producer, two early-stop
    processes cannot show what a second process adds where each has a CPU of its own
    (a pod with a CPU limit); held to the same quota each, they can.
    """

    V1 = Path("/sys/fs/cgroup/cpu")
    V2 = Path("/sys/fs/cgroup")
    PERIOD_US = 100_000

    def __init__(self, cores: float) -> None:
        self.cores = cores
        self._groups: dict[int, Path] = {}

    @classmethod
    def unavailable(cls) -> str | None:
        """Why limits cannot be set here (None: they can)."""
        if (cls.V1 / "cpu.cfs_quota_us").exists():
            return None if os.access(cls.V1, os.W_OK) else f"{cls.V1} is not writable"
        controllers = cls.V2 / "cgroup.subtree_control"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            return None if os.access(cls.V2, os.W_OK) else f"{cls.V2} is not writable"
        return "no cgroup cpu controller (v1 cpu or delegated v2 cpu)"

    def limit(self, pid: int) -> None:
        quota = int(self.cores * self.PERIOD_US)
        if (self.V1 / "cpu.cfs_quota_us").exists():
            group = self.V1 / f"ladder-bench-{pid}"
            group.mkdir(exist_ok=True)
            (group / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            group = self.V2 / f"ladder-bench-{pid}"
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        (group / "cgroup.procs").write_text(str(pid))  # every thread of the process
        self._groups[pid] = group

    def release_all(self) -> None:
        for pid, group in self._groups.items():
            try:
                (group.parent / "cgroup.procs").write_text(str(pid))
            except OSError:  # the process is gone
                pass
            try:
                group.rmdir()
            except OSError as exc:
                log(f"cgroup {group} left behind: {exc}")
        self._groups = {}


def metrics_backlog(env: dict[str, str]) -> int:
    """Metric records the early-stop group has not committed yet."""
    from kafka import KafkaConsumer, TopicPartition
    from ladder.config import Topics

    prefix = env.get("LADDER_TOPIC_PREFIX", "ladder.")
    topic = Topics(prefix).metrics
    consumer = KafkaConsumer(
        bootstrap_servers=env["LADDER_KAFKA_BOOTSTRAP"].split(","),
        group_id=Topics(prefix).earlystop_group,
        enable_auto_commit=False,
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        ends = consumer.end_offsets(parts)
        # max(0, ...): tansu may report an end offset one short (services/earlystop/app.py).
        return sum(max(0, ends[tp] - (consumer.committed(tp) or 0)) for tp in parts)
    finally:
        consumer.close()


def wait_drained(env: dict[str, str], timeout: float) -> int:
    """Let the previous scenario's backlog drain (bounded); returns what is left."""
    deadline = time.monotonic() + timeout
    while (left := metrics_backlog(env)) > 5 and time.monotonic() < deadline:
        time.sleep(2.0)  # polling the group's lag until the deadline
    return left


def read_topic(bootstrap: str, topic: str, quiet_s: float = 3.0) -> list[Any]:
    """Every record of ``topic`` from its beginning, read until nothing came for
    ``quiet_s`` (tansu's end offsets can be one batch short, so they are not used)."""
    import confluent_kafka

    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "ladder-scale-diagnosis",  # never joined: partitions assigned
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign(
            [
                confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                for p in metadata.partitions
            ]
        )
        records, last = [], time.monotonic()
        while time.monotonic() - last < quiet_s:
            batch = consumer.consume(10_000, timeout=0.5)
            records.extend(r for r in batch if r.error() is None)
            if batch:
                last = time.monotonic()
        return records
    finally:
        consumer.close()


def trace_missing(env: dict[str, str], missing: list[list[Any]]) -> dict[str, Any]:
    """Where each missing (trial, rung) decision stopped, read back from the broker
    while the stack is still up: the trial's reports, its rung crossings, its
    decisions and any dead letter of it."""
    from ladder.config import Topics
    from ladder.v1 import events_pb2

    topics = Topics(env.get("LADDER_TOPIC_PREFIX", "ladder."))
    bootstrap = env["LADDER_KAFKA_BOOTSTRAP"]
    trials = {str(trial) for trial, _ in missing}
    found: dict[str, dict[str, list[Any]]] = {
        t: {"reports": [], "crossings": [], "decisions": [], "dead_letters": []} for t in trials
    }

    def where(record: Any) -> str:
        return f"{record.partition()}:{record.offset()}"

    for record in read_topic(bootstrap, topics.metrics):
        report = events_pb2.MetricReport.FromString(record.value())
        if report.trial_id in trials:
            found[report.trial_id]["reports"].append([report.step, report.ts_ms, where(record)])
    for record in read_topic(bootstrap, topics.rungs):
        crossing = events_pb2.RungCrossing.FromString(record.value())
        if crossing.trial_id in trials:
            found[crossing.trial_id]["crossings"].append(
                [crossing.rung, crossing.ts_ms, where(record)]
            )
    for record in read_topic(bootstrap, topics.decisions):
        decision = events_pb2.Decision.FromString(record.value())
        if decision.trial_id in trials:
            found[decision.trial_id]["decisions"].append(
                [decision.rung, decision.action, decision.ts_ms, where(record)]
            )
    for record in read_topic(bootstrap, topics.dead_letter):
        dead = events_pb2.DeadLetter.FromString(record.value())
        for trial in trials:
            if trial.encode() in dead.payload:
                found[trial]["dead_letters"].append([dead.source_topic, dead.reason])
    return found


def keep_for_diagnosis(workdir: Path, timeline: Path, name: str) -> str:
    """The services' logs and the timeline of a run whose counts failed, copied out of
    the temporary state folder (which is deleted with the stack)."""
    keep = FAILURES / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.copytree(workdir / "logs", keep / "logs")
    shutil.copy(timeline, keep / timeline.name)
    log(f"{name}: counts failed; logs and timeline kept in {keep}")
    return str(keep)


def start_loadsim(argv: list[str], env: dict[str, str], nice: int) -> subprocess.Popen[str]:
    """The load generator, LOADSIM_NICE steps nicer than the system under test: on 2
    shared cores it would otherwise take the CPU the services need (real workers run on
    their own machines).

    Its own session, with the nice value also on the session's autogroup: the kernel
    (``sched_autogroup_enabled``) shares the CPU between sessions first, and the stack's
    services each run in their own session, so a plain ``nice`` changes nothing: the
    simulator would get as much CPU as early-stop.
    """
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.nice(nice),
        start_new_session=True,
    )
    autogroup = Path(f"/proc/{proc.pid}/autogroup")
    try:
        autogroup.write_text(str(nice))
    except OSError as exc:  # kernels without autogroup: the plain nice still applies
        log(f"loadsim autogroup nice not set: {exc}")
    return proc


def run_loadsim(
    env: dict[str, str],
    workdir: Path,
    name: str,
    workers: int,
    duration: float,
    pids: dict[str, int],
    kill: tuple[float, ExtraEarlyStop] | None = None,
    churn: MemberChurn | None = None,
    ramp: float = 0.0,
    sim_nice: int = LOADSIM_NICE,
) -> dict[str, Any]:
    backlog = wait_drained(env, 240)
    timeline = workdir / f"{name}.timeline.jsonl"
    argv = [
        sys.executable,
        "-m",
        "workers.loadsim",
        "--workers",
        str(workers),
        "--processes",
        "2",
        "--rate",
        "1.0",
        "--duration",
        str(duration),
        "--ramp",
        str(ramp),
        "--drain",
        "60",
        "--timeline",
        str(timeline),
    ]
    log(f"{name}: {workers} workers for {duration:g}s, ramp {ramp:g}s (load {load_average()})")
    cpu_before = {n: cpu_seconds(p) for n, p in pids.items()}
    started = time.monotonic()
    proc = start_loadsim(argv, env, sim_nice)
    killed_at = None
    if churn is not None:
        churn.start()
    if kill is not None:
        # Loadsim starts its clock ~3 s after launch (imports, connections).
        time.sleep(kill[0] + 3.0)  # the kill is scheduled at a point of the run
        killed_at = time.time()
        kill[1].kill()
        log(f"{name}: SIGKILLed the second early-stop process")
    out, _ = proc.communicate(timeout=duration + 600)
    rebalances = churn.stop() if churn is not None else None
    elapsed = time.monotonic() - started
    summary = json.loads(out)
    summary["load_average_after"] = load_average()
    summary["metrics_backlog_at_start"] = backlog
    summary["ramp_s"] = ramp
    summary["simulator_nice"] = sim_nice
    summary["cpu_percent_during_run"] = {
        n: round(100 * (cpu_seconds(p) - cpu_before[n]) / elapsed, 1)
        for n, p in pids.items()
        if cpu_seconds(p) > 0
    }
    # The simulator's own figure: this process's reaped children also include the
    # early-stop processes a kill or churn scenario ended.
    summary["cpu_percent_during_run"]["loadsim (all processes)"] = round(
        100 * summary["cpu_seconds_self_and_children"] / elapsed, 1
    )
    summary["earlystop"].pop("samples", None)
    summary["latency_over_run"] = latency_over_run(timeline)
    if not summary["counts"]["ok"]:
        if summary["counts"]["missing"]:
            summary["missing_traced"] = trace_missing(env, summary["counts"]["missing_sample"])
        summary["kept_for_diagnosis"] = keep_for_diagnosis(workdir, timeline, name)
    if rebalances is not None:
        summary["member_churn"] = rebalances
    if killed_at is not None:
        summary["kill"] = kill_effect(timeline, killed_at - summary["run_start_unix"])
        summary["kill"]["counts"] = counts_after_kill(summary["counts"])
    log(f"{name}: {json.dumps(headline(summary))}")
    return summary


def run_capacity(
    env: dict[str, str], name: str, trials: int, steps: int, pids: dict[str, int]
) -> dict[str, Any]:
    """Capacity: ``trials x steps`` reports produced at once (step by step, as workers
    would), then the time until every implied rung crossing has its decision.

    The backlog keeps the early-stop app busy for the whole measurement, so
    reports/s here is what the app sustains, not what a simulator offered. Also
    reports the early-stop CPU seconds spent per report.
    """
    from kafka import KafkaProducer
    from ladder.client import LadderClient, study_config
    from ladder.config import Settings
    from ladder.v1 import events_pb2

    from workers.loadsim_observe import DecisionLog, counts_check, expected_crossings
    from workers.loadsim_sim import curve_value

    wait_drained(env, 240)
    settings = Settings.from_env()  # main() put the stack's endpoints in os.environ
    config = study_config(
        {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        name=name,
        metric="loss",
        algorithm="random",
        seed=7,
        scheduler={
            "kind": "asha",
            "min_resource": 4,
            "max_resource": 108,
            "reduction_factor": 3,
            "min_population": 3,
        },
    )
    with LadderClient(settings) as client:
        study_id = client.create_study(config).study_id
    decisions = DecisionLog(settings, study_id)
    trial_ids = [f"{study_id}-cap{i}" for i in range(trials)]
    expected = expected_crossings(dict.fromkeys(trial_ids, steps), [4.0, 12.0, 36.0])
    log(f"{name}: {trials} trials x {steps} steps at once (load {load_average()})")
    cpu_before = {n: cpu_seconds(p) for n, p in pids.items()}
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap.split(","), acks="all", linger_ms=5
    )
    started = time.time()
    for step in range(1, steps + 1):
        for trial_id in trial_ids:
            report = events_pb2.MetricReport(
                study_id=study_id,
                trial_id=trial_id,
                metric="loss",
                step=step,
                value=curve_value(7, trial_id, step),
                ts_ms=int(time.time() * 1000),
            )
            producer.send(
                settings.topics.metrics, key=trial_id.encode(), value=report.SerializeToString()
            )
    producer.flush()
    produced_s = time.time() - started
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if expected <= {(d.trial_id, d.rung) for d in decisions.snapshot()}:
            break
        time.sleep(0.2)  # polling the observer until the deadline
    elapsed = time.time() - started
    time.sleep(1.0)  # a duplicate would arrive right behind the first copy
    seen = decisions.snapshot()
    decisions.close()
    producer.close()
    cpu = {n: round(cpu_seconds(p) - cpu_before[n], 1) for n, p in pids.items()}
    reports = trials * steps
    earlystop_cpu = sum(v for n, v in cpu.items() if n.startswith("earlystop"))
    summary = {
        "study_id": study_id,
        "trials": trials,
        "steps": steps,
        "reports": reports,
        "produced_in_s": round(produced_s, 1),
        "all_decided_in_s": round(elapsed, 1),
        "reports_per_s": round(reports / elapsed, 1),
        "earlystop_cpu_ms_per_report": round(1000 * earlystop_cpu / reports, 3),
        "cpu_seconds": cpu,
        "load_average_after": load_average(),
        "counts": counts_check(expected, seen),
    }
    log(f"{name}: {json.dumps(summary)}")
    return summary


def run_capacity_limited(
    env: dict[str, str],
    name: str,
    trials: int,
    steps: int,
    pids: dict[str, int],
    cores: float,
) -> dict[str, Any]:
    """``run_capacity`` with every early-stop process held to ``cores`` CPUs."""
    why = CpuLimit.unavailable()
    if why is not None:
        log(f"{name}: skipped, {why}")
        return {"skipped": why}
    limit = CpuLimit(cores)
    try:
        for process, pid in pids.items():
            if process.startswith("earlystop"):
                limit.limit(pid)
        summary = run_capacity(env, name, trials, steps, pids)
    finally:
        limit.release_all()
    summary["cpu_limit_per_earlystop_process"] = cores
    return summary


def latency_over_run(timeline: Path, window_s: float = 10.0) -> dict[str, Any]:
    """Report-to-decision latency by ``window_s`` windows of report time, and for the
    reports made after the warm-up (the first ``WARMUP_S`` seconds: 1,000 workers ask
    for their first trials at once, and the backlog of that burst takes a while to
    drain when the pipeline runs near its capacity)."""
    rows = [json.loads(line) for line in timeline.read_text().splitlines() if line]
    windows: dict[int, list[float]] = {}
    for r in rows:
        windows.setdefault(int(r["t"] // window_s), []).append(r["lat_ms"])
    from workers.loadsim_observe import percentiles

    return {
        "warmup_s": WARMUP_S,
        "after_warmup": percentiles(r["lat_ms"] for r in rows if r["t"] >= WARMUP_S),
        f"by_{window_s:g}s_window": {
            f"{int(k * window_s)}s": percentiles(v) for k, v in sorted(windows.items())
        },
    }


def counts_after_kill(counts: dict[str, Any]) -> dict[str, Any]:
    """The counts check of a run with a SIGKILL: nothing may be lost or decided
    differently; a decision whose leaderboard entry had not reached the changelog when
    its process died is decided again on the same board by the survivor, with the same
    verdict (at-least-once; consumers apply decisions idempotently by trial and rung)."""
    return {
        "lost": counts["missing"],
        "conflicting_duplicates": counts["conflicting_duplicates"],
        "unexpected": counts["unexpected"],
        "identical_redeliveries": counts.get("identical_redeliveries", 0),
        "ok": not counts["missing"]
        and not counts["conflicting_duplicates"]
        and not counts["unexpected"],
    }


def kill_effect(timeline: Path, killed_t: float) -> dict[str, Any]:
    """Report-to-decision latency around the kill, in 2 s windows of report time.

    The baseline is the p99 of reports made 10 s to 2 s before the kill (later ones
    may still be waiting for their decision at the kill); the recovery gap is how long
    after the kill reports still waited more than max(1 s, 3 x baseline) for their
    decision (they were on the killed process's partitions until the survivor took
    them over and restored the tables from the changelogs).
    """
    rows = [json.loads(line) for line in timeline.read_text().splitlines() if line]
    before = sorted(r["lat_ms"] for r in rows if killed_t - 10 <= r["t"] < killed_t - 2)
    after = [r for r in rows if r["t"] >= killed_t]
    baseline = before[int(0.99 * (len(before) - 1))] if before else 0.0
    slow = [r for r in after if r["lat_ms"] > max(1000.0, 3 * baseline)]
    windows: dict[int, list[float]] = {}
    for r in rows:
        windows.setdefault(int((r["t"] - killed_t) // 2) * 2, []).append(r["lat_ms"])
    return {
        "killed_at_s": round(killed_t, 1),
        "p99_before_ms": baseline,
        "max_latency_after_kill_ms": max((r["lat_ms"] for r in after), default=None),
        "slow_decisions_after_kill": len(slow),
        "recovery_gap_s": round(max(r["t"] for r in slow) - killed_t, 1) if slow else 0.0,
        "latency_by_2s_window_from_kill": {
            str(start): {"n": len(v), "p50_ms": sorted(v)[len(v) // 2], "max_ms": max(v)}
            for start, v in sorted(windows.items())
        },
    }


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    lat = summary["latency_ms"]["report_to_decision_on_topic"]
    return {
        "acked_per_s": summary["reports"]["acked_per_s"],
        "processed_per_s": summary["earlystop"]["processed_per_s_steady"],
        "lag_at_end": summary["earlystop"]["lag_at_run_end"],
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "steady_p99_ms": summary.get("latency_over_run", {}).get("after_warmup", {}).get("p99"),
        "counts_ok": summary["counts"]["ok"],
        "missing": summary["counts"]["missing"],
        "duplicates": summary["counts"]["duplicates"],
        "cpu": summary["cpu_percent_during_run"],
    }


def repeat_summary(scenarios: dict[str, Any]) -> dict[str, Any]:
    """Per loadsim scenario run more than once: each run's p99s and their median."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, result in scenarios.items():
        if "latency_ms" in result:
            runs.setdefault(name.split("@")[0], []).append(result)
    out: dict[str, Any] = {}
    for base, results in runs.items():
        if len(results) < 2:
            continue
        on_topic = [r["latency_ms"]["report_to_decision_on_topic"]["p99"] for r in results]
        obeyed = [r["latency_ms"]["report_to_stop_obeyed"]["p99"] for r in results]
        out[base] = {
            "runs": len(results),
            "p99_report_to_decision_on_topic_ms": on_topic,
            "p99_report_to_stop_obeyed_ms": obeyed,
            "median_p99_on_topic_ms": statistics.median(on_topic),
            "median_p99_obeyed_ms": statistics.median(obeyed),
        }
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    """Latency of the loadsim scenarios (log scale) and, beside it, the capacity runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results if "latency_ms" in results[n]]  # the loadsim scenarios
    capacity = [n for n in results if results[n].get("reports_per_s")]
    fig, (ax, cap_ax) = plt.subplots(
        1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 1] if capacity else [3, 0.01]}
    )
    width = 0.25
    for i, q in enumerate(("p50", "p90", "p99")):
        values = [results[n]["latency_ms"]["report_to_decision_on_topic"].get(q, 0) for n in names]
        ax.bar([x + (i - 1) * width for x in range(len(names))], values, width, label=q)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.axhline(1000, color="grey", linestyle="--", linewidth=1, label="1 s")
    ax.set_yscale("log")
    ax.set_ylabel("report -> decision on topic (ms, log)")
    ax.set_title(f"Early-stop at scale ({os.cpu_count()} shared cores for the stack and simulator)")
    ax.legend()
    if capacity:
        cap_ax.bar(range(len(capacity)), [results[n]["reports_per_s"] for n in capacity])
        cap_ax.set_xticks(range(len(capacity)), capacity, rotation=30, ha="right")
        cap_ax.set_ylabel("reports/s until every decision (backlog)")
        cap_ax.set_title("Capacity")
    else:
        cap_ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine() -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average_start": load_average(),
        "earlystop_env": {k: v for k, v in os.environ.items() if k.startswith("LADDER_EARLYSTOP_")},
    }


def run_on_fresh_stack(args: argparse.Namespace, wanted: set[str], tag: str) -> dict[str, Any]:
    """The wanted scenarios, in order, on a new embedded stack; names end with ``tag``."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ladder-scale-") as tmp:
        state = Path(tmp)
        stack = Stack(state, services=True)
        info = stack.up()
        os.environ.update(stack.env())
        env = dict(os.environ)
        pids = {
            name: info["pids"][name]["pid"]
            for name in ("kafka", "redis", "suggest", "evaluate", "lineage", "earlystop")
        }
        extra: ExtraEarlyStop | None = None

        def capacity(processes: str) -> None:
            """The capacity backlog with the early-stop processes running now: as they
            are (cap) and each held to --cpu-limit cores (capq)."""
            trials, steps = args.capacity
            if "cap" in wanted:
                name = f"capacity-{processes}"
                out[name + tag] = run_capacity(env, name, trials, steps, pids)
            if "capq" in wanted:
                name = f"capacity-{processes}-limited"
                out[name + tag] = run_capacity_limited(
                    env, name, trials, steps, pids, args.cpu_limit
                )

        def big(processes: str) -> None:
            """--big workers with the early-stop processes running now: saturation,
            measured as is, the simulator at the stack's priority offering what it
            can (niced, 5,000 workers lagged it by 37 s)."""
            name = f"{args.big}w-{processes}"
            out[name + tag] = run_loadsim(
                env, state, name, args.big, args.duration, pids, ramp=args.ramp, sim_nice=0
            )

        try:
            if "burst" in wanted:
                out[f"1000w-1es-burst{tag}"] = run_loadsim(
                    env, state, "1000w-1es-burst", 1000, args.duration, pids, ramp=0.0
                )
            if "1es" in wanted:
                out[f"1000w-1es{tag}"] = run_loadsim(
                    env, state, "1000w-1es", 1000, args.duration, pids, ramp=args.ramp
                )
            capacity("1es")
            if "big1" in wanted:
                big("1es")
            extra = ExtraEarlyStop(env, state)
            pids["earlystop-2"] = extra.proc.pid
            if "2es" in wanted:
                out[f"1000w-2es{tag}"] = run_loadsim(
                    env, state, "1000w-2es", 1000, args.duration, pids, ramp=args.ramp
                )
            capacity("2es")
            if "churn" in wanted:
                out[f"1000w-2es-churn{tag}"] = run_loadsim(
                    env,
                    state,
                    "1000w-2es-churn",
                    1000,
                    args.duration,
                    pids,
                    ramp=args.ramp,
                    churn=MemberChurn(env, state, args.churn_period),
                )
            if "big" in wanted:
                big("2es")
            if "kill" in wanted:
                # Below saturation, so the gap measured is the takeover, not a queue.
                name = f"{args.kill_workers}w-kill{tag}"
                out[name] = run_loadsim(
                    env,
                    state,
                    name,
                    args.kill_workers,
                    args.duration,
                    pids,
                    kill=(args.duration / 2, extra),
                    ramp=args.ramp,
                )
        finally:
            if extra is not None:
                extra.stop()
            stack.down()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--big", type=int, default=5000, help="workers of the big scenario")
    parser.add_argument(
        "--kill-workers",
        type=int,
        default=200,
        help="workers of the kill scenario (below saturation)",
    )
    parser.add_argument(
        "--scenarios",
        default="1es,cap,2es,big,kill",
        help="comma-separated subset of burst, 1es, cap, capq, big1, 2es, churn, big, kill",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=10.0,
        help="seconds over which the simulated workers start (the burst scenario: 0)",
    )
    parser.add_argument(
        "--capacity",
        type=int,
        nargs=2,
        default=(1000, 40),
        metavar=("TRIALS", "STEPS"),
        help="backlog of the capacity scenarios",
    )
    parser.add_argument(
        "--churn-period",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="the churn scenario: a third process joins and leaves once per period",
    )
    parser.add_argument(
        "--cpu-limit",
        type=float,
        default=0.5,
        metavar="CORES",
        help="CPU quota of each early-stop process in the capq scenarios",
    )
    parser.add_argument(
        "--merge", action="store_true", help="add the scenarios to an existing --out file"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the scenarios this many times, each time on a fresh stack (name@2, ...)",
    )
    parser.add_argument(
        "--storage",
        choices=("s3", "memory"),
        default=os.environ.get("LADDER_BROKER_STORAGE") or "s3",
        help="where the embedded broker keeps its log (LADDER_BROKER_STORAGE; default s3)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "earlystop-scale.json")
    args = parser.parse_args()
    os.environ["LADDER_BROKER_STORAGE"] = args.storage  # every fresh stack of this run
    wanted = set(args.scenarios.split(","))
    if wanted & {"cap", "capq"}:
        # The capacity backlog reports for trial ids no worker started: early-stop's
        # trial check (docs/bus-security.md) would dead-letter them all. Recorded in
        # the run's earlystop_env.
        os.environ.setdefault("LADDER_EARLYSTOP_TRIAL_CHECK", "off")
    report: dict[str, Any] = {
        "seed": 7,
        "rate_per_worker": 1.0,
        "topic_partitions": 4,
        "loadsim_nice_relative": LOADSIM_NICE,
        "scenarios": {},
    }
    if args.merge and args.out.exists():
        report = json.loads(args.out.read_text())
    report.setdefault("runs", []).append(
        {
            "machine": machine(),
            "duration_s": args.duration,
            "scenarios": sorted(wanted),
            "broker_storage": args.storage,
        }
    )
    scenarios = report["scenarios"]
    outside_env = dict(os.environ)
    for repeat in range(1, args.repeat + 1):
        # Each repeat on a fresh stack (endpoints of the last one forgotten, or the
        # launcher would take them for an external broker and Redis); the first run
        # keeps the plain names.
        os.environ.clear()
        os.environ.update(outside_env)
        scenarios.update(run_on_fresh_stack(args, wanted, "" if repeat == 1 else f"@{repeat}"))
    one, two = (
        scenarios.get(n, {}).get("earlystop", {}).get("processed_per_s_steady")
        for n in ("1000w-1es", "1000w-2es")
    )
    report["ratio_2es_vs_1es_processed"] = round(two / one, 2) if one and two else None
    one, two = (
        scenarios.get(f"{args.big}w-{n}", {}).get("earlystop", {}).get("processed_per_s_steady")
        for n in ("1es", "2es")
    )
    report[f"ratio_2es_vs_1es_processed_{args.big}w"] = round(two / one, 2) if one and two else None
    one, two = (scenarios.get(n, {}).get("reports_per_s") for n in ("capacity-1es", "capacity-2es"))
    report["ratio_2es_vs_1es_capacity"] = round(two / one, 2) if one and two else None
    one, two = (
        scenarios.get(n, {}).get("reports_per_s")
        for n in ("capacity-1es-limited", "capacity-2es-limited")
    )
    report["ratio_2es_vs_1es_capacity_limited"] = round(two / one, 2) if one and two else None
    report["repeats"] = repeat_summary(scenarios)
    report["load_average_end"] = load_average()
    report["machine"] = report["runs"][-1]["machine"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(scenarios, args.out.with_suffix(".png"))
    log(f"wrote {args.out} and {args.out.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
