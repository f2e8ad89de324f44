"""The embedded stack for real: tansu, redis-server and service processes.

Fake services (a gRPC health server each, written to a temp dir) stand in for the real
ones here so these tests check the launcher alone; the services have their own tests.
No sleeps for synchronization: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from ladder import config, objectstore
from ladder.stack import launcher, ports, probes, procs
from ladder.stack.components import SERVICES, ServiceSpec
from ladder.stack.procs import ProcRecord
from ladder.testing import wait_for

pytestmark = pytest.mark.integration


def ladder_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ladder.cli", *args],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )


def records(info: dict) -> list[ProcRecord]:
    return [ProcRecord.from_json(n, r) for n, r in info["pids"].items()]


def pid_gone(rec: ProcRecord) -> bool:
    # Gone, or at least no longer the process we started (a zombie counts as gone).
    return not procs.is_running(rec)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """No external endpoints, a unique topic prefix; the env the CLI is run with."""
    monkeypatch.delenv("LADDER_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("LADDER_REDIS_URL", raising=False)
    monkeypatch.setenv("LADDER_TOPIC_PREFIX", f"it{uuid.uuid4().hex[:6]}.")
    yield dict(os.environ)


def test_cli_up_no_services_then_down(tmp_path: Path, clean_env: dict[str, str]) -> None:
    state = tmp_path / "state"
    up = ladder_cli("up", "--no-services", "--state-dir", str(state), env=clean_env)
    assert up.returncode == 0, up.stderr
    info = json.loads((state / "stack.json").read_text())
    try:
        # stack.json holds the Redis operator's password: owner-only, never printed.
        password = urlsplit(info["redis_url"]).password
        assert password and password not in up.stdout + up.stderr and ":***@" in up.stdout
        assert (state / "stack.json").stat().st_mode & 0o777 == 0o600
        # The processes outlive the `ladder up` command that started them.
        recs = records(info)
        assert {r.name for r in recs} == {"kafka", "redis"}
        assert all(procs.is_running(r) for r in recs)
        assert (state / "logs" / "kafka.log").exists()
        assert (state / "pids" / "redis.pid").exists()

        topics = config.Topics(clean_env["LADDER_TOPIC_PREFIX"])
        _check_topics(info["kafka_bootstrap"], topics)
        _check_kafka_group_roundtrip(info["kafka_bootstrap"], topics.metrics)
        r = redis.Redis.from_url(info["redis_url"])
        assert r.set("ladder:it", b"ok") and r.get("ladder:it") == b"ok"
        r.close()

        status = ladder_cli("status", "--state-dir", str(state), env=clean_env)
        assert status.returncode == 0, status.stdout
        # Idempotent: a second `up` reuses the healthy stack.
        again = ladder_cli("up", "--no-services", "--json", "--state-dir", str(state),
                           env=clean_env)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["reused"] is True
        assert json.loads(again.stdout)["pids"] == info["pids"]
        assert password not in again.stdout + status.stdout
    finally:
        down = ladder_cli("down", "--state-dir", str(state), env=clean_env)
    assert down.returncode == 0, down.stderr
    for rec in records(info):
        wait_for(lambda rec=rec: pid_gone(rec), 15, f"{rec.name} pid {rec.pid} to exit")
    assert not (state / "stack.json").exists()
    assert not list((state / "pids").glob("*.pid"))
    again = ladder_cli("down", "--state-dir", str(state), env=clean_env)
    assert again.returncode == 0 and "nothing was running" in again.stdout
    assert ladder_cli("status", "--state-dir", str(state), env=clean_env).returncode == 3


def _check_topics(bootstrap: str, topics: config.Topics) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics(topics.all())}
    finally:
        admin.close()
    assert set(described) == set(topics.all())
    assert all(len(t["partitions"]) == launcher.TOPIC_PARTITIONS for t in described.values())


def _check_kafka_group_roundtrip(bootstrap: str, topic: str) -> None:
    token = uuid.uuid4().hex.encode()
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(topic, key=b"trial-1", value=token).get(timeout=10)
    producer.close()
    # A consumer *group*, with the short timeouts tansu needs: its first join waits
    # about half of session_timeout_ms (kafka-python's default of 45 s means ~23 s).
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"it-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=6000,
    )
    try:
        def received() -> bool:
            batches = consumer.poll(timeout_ms=200).values()
            return any(rec.value == token for batch in batches for rec in batch)

        wait_for(received, 90, "the produced record to be consumed by a group")
    finally:
        consumer.close()


def test_up_restarts_only_what_died_on_its_address(
    tmp_path: Path, clean_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with launcher.Stack(tmp_path, services=False) as first:
        first_recs = {r.name: r for r in records(first)}
        r = redis.Redis.from_url(first["redis_url"])
        r.set("ladder:it", b"kept")
        r.close()
        procs.stop_all([first_recs["redis"]], grace=5)
        assert launcher._unhealthy(first) == ["redis"]
        second = launcher.up(tmp_path, services=False)
        assert second["reused"] is False and second["restarted"] == ["redis"]
        # Same address, same data folder; the surviving broker was kept, not replaced.
        assert second["redis_url"] == first["redis_url"]
        assert second["kafka_bootstrap"] == first["kafka_bootstrap"]
        assert procs.is_running(first_recs["kafka"])
        assert redis.Redis.from_url(second["redis_url"]).get("ladder:it") == b"kept"
        assert launcher.read_stack(tmp_path)["pids"]["redis"] == second["pids"]["redis"]
        assert "restarted" not in launcher.read_stack(tmp_path)
        # A stack that does not match what is asked (another topic prefix) is replaced.
        monkeypatch.setenv("LADDER_TOPIC_PREFIX", "other.")
        third = launcher.up(tmp_path, services=False)
        assert "restarted" not in third
        assert pid_gone(first_recs["kafka"])
        assert all(procs.is_running(r) for r in records(third))
    assert all(pid_gone(r) for r in records(third))


# --- fake services -------------------------------------------------------------------

FAKE_SERVICE = textwrap.dedent(
    """
    import os, signal, sys, threading
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    name = os.environ["LADDER_SERVICE"]
    port = os.environ[{port_envs!r}[name]]
    behaviour = os.environ.get("FAKE_" + name.upper(), "")
    if behaviour == "crash":
        print(f"{{name}}: cannot start: simulated failure", flush=True)
        sys.exit(3)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port("127.0.0.1:" + port)
    server.start()
    stop = threading.Event()
    if behaviour == "needs-redis":
        # Like a real service whose consumer waits on Redis: NOT_SERVING while it is down.
        import redis, time

        def watch_redis():
            client = redis.Redis.from_url(os.environ["LADDER_REDIS_URL"], socket_timeout=0.5)
            while True:
                try:
                    client.ping()
                    status = health_pb2.HealthCheckResponse.SERVING
                except redis.RedisError:
                    status = health_pb2.HealthCheckResponse.NOT_SERVING
                servicer.set("", status)
                time.sleep(0.1)

        threading.Thread(target=watch_redis, daemon=True).start()
    if behaviour == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"{{name}} serving on {{port}}", flush=True)
    stop.wait()
    server.stop(1).wait()
    """
)


@pytest.fixture
def fake_services(
    tmp_path: Path, clean_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code_dir = tmp_path / "fake_code"
    code_dir.mkdir()
    port_envs = {s.name: s.port_env for s in SERVICES}
    (code_dir / "ladder_fake_service.py").write_text(FAKE_SERVICE.format(port_envs=port_envs))
    monkeypatch.setenv("PYTHONPATH", f"{code_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    fakes = tuple(
        ServiceSpec(s.name, "ladder_fake_service", s.port_env, s.addr_key, s.addr_env)
        for s in SERVICES
    )
    monkeypatch.setattr(launcher, "SERVICES", fakes)


@pytest.mark.usefixtures("fake_services")
def test_services_are_health_checked_and_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EVALUATE", "ignore-term")  # must be SIGKILLed by `down`
    state = tmp_path / "state"
    info = launcher.up(state, services=True, timeout=60)
    try:
        assert {r.name for r in records(info)} == {
            "kafka", "redis", "lineage", "evaluate", "suggest", "earlystop", "dashboard",
        }
        rows = {row.name: row for row in launcher.status(state)}
        assert all(row.running and row.healthy for row in rows.values()), rows
        assert rows["suggest"].detail == "SERVING"
        # ladder.config finds the stack through stack.json alone.
        monkeypatch.setenv("LADDER_STATE_DIR", str(state))
        for var in ("LADDER_KAFKA_BOOTSTRAP", "LADDER_REDIS_URL", "LADDER_SUGGEST_ADDR"):
            monkeypatch.delenv(var, raising=False)
        settings = config.Settings.from_env()
        assert settings.suggest_addr == info["suggest_addr"]
        assert settings.kafka_bootstrap == info["kafka_bootstrap"]
        assert "suggest serving on" in (state / "logs" / "suggest.log").read_text()
    finally:
        stopped = launcher.down(state, grace=1.0)
    assert set(stopped) == {r.name for r in records(info)}
    assert all(pid_gone(r) for r in records(info))


@pytest.mark.usefixtures("fake_services")
def test_failing_service_is_reported_and_everything_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SUGGEST", "crash")
    with pytest.raises(launcher.StackError) as failure:
        launcher.up(tmp_path, services=True, timeout=60)
    message = str(failure.value)
    assert "suggest failed to start" in message
    assert "simulated failure" in message  # the tail of suggest.log
    assert procs.read_pid_files(tmp_path / "pids") == {}
    assert not (tmp_path / "stack.json").exists()


def test_start_retries_when_its_port_was_taken(
    tmp_path: Path, clean_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another program grabs the port between our choosing it and the child binding it.
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    real_free_port = ports.free_port
    handed_out = iter([squatter.getsockname()[1]])
    monkeypatch.setattr(ports, "free_port", lambda *a: next(handed_out, None) or real_free_port())
    try:
        with launcher.Stack(tmp_path, services=False) as info:
            assert info["redis_url"] != ports.redis_url(squatter.getsockname()[1])
            assert "Address already in use" in (tmp_path / "logs" / "redis.log").read_text()
    finally:
        squatter.close()



def test_the_supervisor_restarts_a_killed_component_and_down_stops_it(
    tmp_path: Path, clean_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LADDER_SUPERVISE_INTERVAL_S", "0.2")
    info = launcher.up(tmp_path, services=False, supervise=True)
    try:
        recs = {r.name: r for r in records(info)}
        assert procs.is_running(recs["supervisor"])
        os.killpg(recs["redis"].pid, signal.SIGKILL)

        def restarted() -> dict | None:
            now = launcher.read_stack(tmp_path) or {}
            rec = ProcRecord.from_json("redis", now["pids"]["redis"])
            return now if rec != recs["redis"] and procs.is_running(rec) else None

        after = wait_for(restarted, 60, "the supervisor restarting redis")
        assert after["redis_url"] == info["redis_url"]
        assert after["pids"]["kafka"] == info["pids"]["kafka"]  # only the dead one
        wait_for(lambda: probes.redis_ping(info["redis_url"]), 30, "redis answering")
        assert "restarted redis" in (tmp_path / "logs" / "supervisor.log").read_text()
        # A second `up --supervise` finds the supervisor running and starts no other.
        again = launcher.up(tmp_path, services=False, supervise=True)
        assert again["reused"] and again["pids"]["supervisor"] == info["pids"]["supervisor"]
    finally:
        stopped = launcher.down(tmp_path, grace=2.0)
    assert stopped[0] == "supervisor"
    assert pid_gone(recs["supervisor"])


@pytest.mark.usefixtures("fake_services")
def test_a_service_waiting_on_a_dead_redis_is_not_restarted_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EVALUATE", "needs-redis")
    with launcher.Stack(tmp_path, services=True) as first:
        recs = {r.name: r for r in records(first)}
        procs.stop_all([recs["redis"]], grace=5)
        wait_for(
            lambda: not probes.serving(first["evaluate_addr"]), 10, "evaluate NOT_SERVING"
        )
        started = time.monotonic()
        second = launcher.up(tmp_path, services=True)
        # Redis first; evaluate, serving again once Redis is back, is kept.
        assert second["restarted"] == ["redis"]
        assert time.monotonic() - started < launcher.UNHEALTHY_GRACE
        assert procs.is_running(recs["evaluate"])
        assert probes.serving(second["evaluate_addr"])


def test_cli_up_on_s3_records_a_private_object_store_and_down_stops_it(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    state = tmp_path / "state"
    env = {**clean_env, "LADDER_BROKER_STORAGE": "memory"}  # the flag must win
    up = ladder_cli("up", "--no-services", "--broker-storage", "s3", "--state-dir", str(state),
                    env=env)
    assert up.returncode == 0, up.stderr
    info = json.loads((state / "stack.json").read_text())
    try:
        assert {r.name for r in records(info)} == {"objectstore", "kafka", "redis"}
        assert info["broker_storage"] == "s3"
        assert info["checkpoint_url"] == "s3://ladder-checkpoints/"
        identity = Path(info["s3_credentials_file"])
        assert identity.stat().st_mode & 0o777 == 0o600
        secret = json.loads(identity.read_text())["identities"][0]["credentials"][0]
        assert secret["secretKey"] not in (state / "stack.json").read_text()
        # Every port weed opens is one `up` chose; none of its fixed defaults.
        chosen = set(info["objectstore_ports"].values())
        assert len(chosen) == 8
        listening = _listening_ports(ProcRecord.from_json("objectstore",
                                                          info["pids"]["objectstore"]).pid)
        assert listening <= chosen, listening - chosen
        s3 = objectstore.client(objectstore.stack_settings(info))
        names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
        assert {"ladder-broker", "ladder-checkpoints"} <= names
        status = ladder_cli("status", "--state-dir", str(state), env=env)
        assert status.returncode == 0 and "objectstore" in status.stdout, status.stdout
    finally:
        down = ladder_cli("down", "--state-dir", str(state), env=env)
    assert down.returncode == 0, down.stderr
    assert "objectstore" in down.stdout
    for rec in records(info):
        assert pid_gone(rec), rec.name


def _listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on (its sockets' inodes matched in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    found.add(int(fields[1].rsplit(":", 1)[1], 16))
    return found
