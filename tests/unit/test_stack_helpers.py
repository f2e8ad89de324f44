"""Pure tests of the embedded-stack helpers: no broker, no Redis, no child processes."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from ladder import cli
from ladder.objectstore import S3Settings
from ladder.stack import components, launcher, ports, procs
from ladder.stack.procs import ProcRecord


def test_free_ports_are_distinct_and_bindable() -> None:
    found = ports.free_ports(8)
    assert len(set(found)) == 8
    for port in found:
        assert 0 < port < 65536
        with socket.socket() as sock:
            sock.bind((ports.LOOPBACK, port))


def test_free_ports_rejects_negative() -> None:
    with pytest.raises(ValueError):
        ports.free_ports(-1)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("127.0.0.1:9092", ("127.0.0.1", 9092)), ("[::1]:50051", ("::1", 50051))],
)
def test_split_host_port(addr: str, expected: tuple[str, int]) -> None:
    assert ports.split_host_port(addr) == expected


@pytest.mark.parametrize("bad", ["localhost", ":9092", "host:", "host:port"])
def test_split_host_port_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        ports.split_host_port(bad)


def test_addresses() -> None:
    assert ports.host_port(1234) == "127.0.0.1:1234"
    assert ports.redis_url(6380) == "redis://127.0.0.1:6380/0"


def _stat_line(comm: str, state: str = "S", start: int = 424242) -> str:
    # Fields 3..22 of /proc/<pid>/stat; starttime is the 20th of them.
    rest = [state] + [str(i) for i in range(4, 22)] + [str(start)] + ["0"] * 30
    return f"1234 ({comm}) " + " ".join(rest)


@pytest.mark.parametrize("comm", ["redis-server", "my prog", "a) b (c", "))"])
def test_parse_stat_survives_odd_command_names(comm: str) -> None:
    assert procs.parse_stat(_stat_line(comm, "R", 99)) == ("R", 99)


def test_own_process_identity() -> None:
    mine = procs.start_time(os.getpid())
    assert mine is not None
    assert procs.is_running(ProcRecord("me", os.getpid(), mine))
    # Same pid, other start time: a recycled pid must never count as ours.
    assert not procs.is_running(ProcRecord("me", os.getpid(), mine + 1))


def test_pid_files_round_trip_and_ignore_torn_files(tmp_path: Path) -> None:
    rec = ProcRecord("kafka", 4321, 987654)
    procs.write_pid_file(tmp_path, rec)
    (tmp_path / "junk.pid").write_text("not a pid\n")
    assert procs.read_pid_files(tmp_path) == {"kafka": rec}
    assert (tmp_path / "kafka.pid").read_text() == "4321 987654\n"
    procs.remove_pid_file(tmp_path, "kafka")
    procs.remove_pid_file(tmp_path, "kafka")  # idempotent
    assert procs.read_pid_files(tmp_path) == {}
    assert procs.read_pid_files(tmp_path / "missing") == {}


def test_record_json_round_trip() -> None:
    rec = ProcRecord("redis", 1, 2)
    assert ProcRecord.from_json("redis", rec.to_json()) == rec


def test_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert procs.tail(log, 2) == "line 98\nline 99"
    assert procs.tail(tmp_path / "missing.log") == ""


def test_service_table_matches_config_keys() -> None:
    # ladder.config reads these stack.json keys; the launcher must write them.
    keys = {s.addr_key for s in components.SERVICES}
    assert {"suggest_addr", "evaluate_addr", "lineage_addr", "earlystop_health_addr",
            "dashboard_addr"} == keys
    assert components.SERVICE_NAMES == ("lineage", "evaluate", "suggest", "earlystop",
                                        "dashboard")
    assert all(s.argv()[1:] == ["-m", s.module] for s in components.SERVICES)


def test_redis_argv_disables_rdb_and_daemonizing(tmp_path: Path) -> None:
    argv = components.redis_argv(6399, tmp_path)
    assert argv[argv.index("--save") + 1] == ""
    assert argv[argv.index("--daemonize") + 1] == "no"
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--dir") + 1] == str(tmp_path)


def test_broker_argv_listens_and_advertises_loopback() -> None:
    argv = components.broker_argv(19092)
    assert argv[1] == "broker"
    assert argv[argv.index("--listener-url") + 1] == "tcp://127.0.0.1:19092"
    assert argv[argv.index("--advertised-listener-url") + 1] == "tcp://127.0.0.1:19092"


def _info(**over: object) -> dict[str, object]:
    info: dict[str, object] = {
        "kafka_bootstrap": "127.0.0.1:1",
        "redis_url": "redis://127.0.0.1:2/0",
        "topic_prefix": "ladder.",
        "services": True,
        "external": {"kafka": False, "redis": False},
    }
    info.update(over)
    return info


@pytest.fixture
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No external endpoint, prefix or broker profile asked for by the environment."""
    for var in ("LADDER_TOPIC_PREFIX", "LADDER_KAFKA_BOOTSTRAP", "LADDER_REDIS_URL",
                "LADDER_BROKER_PROFILE"):
        monkeypatch.delenv(var, raising=False)


def matches(info: dict[str, object], services: bool = True) -> bool:
    return launcher._matches(info, services, launcher.Asked.from_env())


@pytest.mark.usefixtures("plain_env")
def test_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    assert matches(_info(), services=True)
    assert matches(_info(), services=False)
    assert not matches(_info(services=False), services=True)
    monkeypatch.setenv("LADDER_TOPIC_PREFIX", "other.")
    assert not matches(_info(), services=True)
    monkeypatch.delenv("LADDER_TOPIC_PREFIX")
    # An external Kafka asked for now, an embedded one recorded: start afresh.
    monkeypatch.setenv("LADDER_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert not matches(_info(), services=True)
    assert matches(_info(external={"kafka": True, "redis": False}), services=True)


@pytest.mark.usefixtures("plain_env")
def test_the_stack_records_its_broker_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    assert launcher.Asked.from_env().broker_profile == "tansu"
    assert matches(_info(broker_profile="tansu"))
    monkeypatch.setenv("LADDER_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert launcher.Asked.from_env().broker_profile == "kafka"
    monkeypatch.delenv("LADDER_KAFKA_BOOTSTRAP")
    # Another profile asked for now: start afresh.
    monkeypatch.setenv("LADDER_BROKER_PROFILE", "kafka")
    assert launcher.Asked.from_env().broker_profile == "kafka"
    assert not matches(_info(broker_profile="tansu"))
    assert not matches(_info())


def test_status_and_down_of_empty_state_dir(tmp_path: Path) -> None:
    assert launcher.status(tmp_path) == []
    assert launcher.down(tmp_path / "never-created") == []
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 3
    assert cli.main(["down", "--state-dir", str(tmp_path)]) == 0


def test_cli_table_drives_the_parser() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["up", "--no-services", "--state-dir", "/x", "--timeout", "5"])
    assert (args.command, args.no_services, args.state_dir, args.timeout) == (
        "up", True, Path("/x"), 5.0,
    )
    assert set(cli.COMMANDS) >= {"up", "down", "status"}
    with pytest.raises(SystemExit):
        parser.parse_args([])


def test_a_new_embedded_broker_archives_state_bound_to_the_old_log(tmp_path) -> None:
    from ladder.stack.launcher import Layout

    layout = Layout.of(tmp_path)
    assert layout.archive_broker_bound_state() is None
    (tmp_path / "lineage.sqlite3").write_text("db")
    (tmp_path / "earlystop").mkdir()
    (tmp_path / "redis").mkdir()  # Redis' AOF is not bound to Kafka offsets: kept
    archived = layout.archive_broker_bound_state()
    assert archived is not None and (archived / "lineage.sqlite3").read_text() == "db"
    assert (archived / "earlystop").is_dir()
    assert not (tmp_path / "lineage.sqlite3").exists() and (tmp_path / "redis").is_dir()


def _stack_with(names: list[str]) -> dict[str, object]:
    pids = {n: ProcRecord(n, 10 + i, 1).to_json() for i, n in enumerate(names)}
    return _info(evaluate_addr="127.0.0.1:3", pids=pids)


@pytest.mark.usefixtures("plain_env")
def test_a_dead_redis_is_restarted_before_the_services_are_judged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    layout = launcher.Layout.of(tmp_path)
    launcher._write_stack(layout, _stack_with(["kafka", "redis", "evaluate", "supervisor"]))
    alive = {"kafka", "evaluate", "supervisor"}  # Redis was killed
    monkeypatch.setattr(launcher.procs, "is_running", lambda rec: rec.name in alive)
    monkeypatch.setattr(launcher.probes, "kafka_reachable", lambda _addr: True)
    monkeypatch.setattr(launcher.probes, "redis_ping", lambda _url: "redis" in alive)
    # evaluate's consumer waits on Redis: NOT_SERVING until Redis is back.
    monkeypatch.setattr(launcher.probes, "serving", lambda _addr: "redis" in alive)
    monkeypatch.setattr(launcher, "UNHEALTHY_GRACE", 1.0)
    repairs: list[list[str]] = []

    def repair(self: object, info: dict[str, object], names: list[str]) -> dict[str, object]:
        repairs.append(list(names))
        alive.update(names)
        self.started.update({n: ProcRecord(n, 99, 1) for n in names})  # type: ignore[attr-defined]
        return info

    monkeypatch.setattr(launcher._Starter, "repair", repair)
    result = launcher._repair_or_start(
        layout, True, launcher.Asked.from_env(), float("inf"), lambda _m: None
    )
    assert repairs == [["redis"]]
    assert result["restarted"] == ["redis"] and result["reused"] is False


def test_the_supervisor_repairs_only_when_a_component_died(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ladder.stack import supervisor

    info = _stack_with(["kafka", "redis", "evaluate", "supervisor"])
    alive = {"kafka", "redis", "evaluate"}
    monkeypatch.setattr(launcher.procs, "is_running", lambda rec: rec.name in alive)
    assert not supervisor.needs_repair(info)  # its own record is not a component
    alive.discard("evaluate")
    assert supervisor.needs_repair(info)
    assert launcher.dead_components(info) == ["evaluate"]
    assert not supervisor.needs_repair({"pids": "torn"})


# --- the object store and the broker's storage -------------------------------------------


def _objectstore_ports() -> components.ObjectStorePorts:
    return components.ObjectStorePorts.of(range(41001, 41001 + components.ObjectStorePorts.count()))


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_objectstore_argv_names_every_port_and_disables_the_fixed_ones(tmp_path: Path) -> None:
    found = _objectstore_ports()
    argv = components.objectstore_argv(found, tmp_path / "data", tmp_path / "s3.json")
    assert argv[1] == "server" and _flag(argv, "-dir") == str(tmp_path / "data")
    assert _flag(argv, "-ip.bind") == "127.0.0.1" and _flag(argv, "-ip") == "127.0.0.1"
    assert _flag(argv, "-s3.config") == str(tmp_path / "s3.json")
    # Left to itself weed opens port+10000 gRPC ports and fixed Iceberg/Lance ports.
    named = {
        "-master.port": found.master, "-master.port.grpc": found.master_grpc,
        "-volume.port": found.volume, "-volume.port.grpc": found.volume_grpc,
        "-filer.port": found.filer, "-filer.port.grpc": found.filer_grpc,
        "-s3.port": found.s3, "-s3.port.grpc": found.s3_grpc,
    }
    assert {flag: int(_flag(argv, flag)) for flag in named} == named
    assert _flag(argv, "-s3.port.iceberg") == "0" and _flag(argv, "-s3.port.lance") == "0"
    assert "-master.telemetry=false" in argv


def test_objectstore_ports_round_trip_through_stack_json() -> None:
    found = _objectstore_ports()
    assert components.ObjectStorePorts.count() == 8
    assert components.ObjectStorePorts.from_json(found.to_json()) == found
    assert len(set(found.to_json().values())) == 8


def test_the_weed_binary_is_found_beside_the_interpreter_or_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LADDER_WEED_BIN", raising=False)
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        assert components.weed_binary() == beside
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("LADDER_WEED_BIN", str(fake))
    assert components.weed_binary() == fake
    monkeypatch.setenv("LADDER_WEED_BIN", str(tmp_path / "missing"))
    with pytest.raises(components.MissingBinary, match="LADDER_BROKER_STORAGE=memory"):
        components.weed_binary()


def test_broker_storage_defaults_to_s3_and_names_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LADDER_BROKER_STORAGE", raising=False)
    assert components.broker_storage() == "s3"
    monkeypatch.setenv("LADDER_BROKER_STORAGE", "Memory")
    assert components.broker_storage() == "memory"
    assert components.broker_storage("s3") == "s3"  # the flag beats the environment
    with pytest.raises(ValueError, match="s3, memory"):
        components.broker_storage("disk")


def test_broker_argv_and_env_on_s3() -> None:
    s3 = S3Settings("http://127.0.0.1:8333", "ladder", "secret")
    argv = components.broker_argv(19092, components.broker_storage_url("s3"))
    assert _flag(argv, "--storage-engine") == "s3://ladder-broker/"
    assert _flag(components.broker_argv(19092), "--storage-engine") == "memory://tansu/"
    env = components.broker_env(s3)
    assert env["AWS_ENDPOINT"] == "http://127.0.0.1:8333"
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("ladder", "secret")
    assert env["AWS_DEFAULT_REGION"] == "us-east-1" and env["AWS_ALLOW_HTTP"] == "true"
    assert components.broker_env(None) == {}


def test_services_learn_the_stacks_object_store_unless_given_their_own() -> None:
    s3 = S3Settings("http://127.0.0.1:8333", "ladder", "secret")
    env = components.objectstore_env(s3, "s3://ladder-checkpoints/", {})
    assert env["LADDER_S3_ENDPOINT"] == "http://127.0.0.1:8333"
    assert env["LADDER_CHECKPOINT_URL"] == "s3://ladder-checkpoints/"
    kept = {"LADDER_CHECKPOINT_URL": "s3://mine/"}
    assert "LADDER_CHECKPOINT_URL" not in components.objectstore_env(s3, "s3://x/", kept)
    own = {"LADDER_S3_ENDPOINT": "https://s3.example"}
    assert components.objectstore_env(s3, "s3://x/", own) == {}
    assert components.objectstore_env(None, None, {}) == {}


def _durable(**over: object) -> dict[str, object]:
    recorded: dict[str, object] = {
        "broker_storage": "s3",
        "objectstore_ports": _objectstore_ports().to_json(),
        "s3_endpoint": "http://127.0.0.1:41007",
        "evaluate_addr": "127.0.0.1:3",
        "lineage_addr": "127.0.0.1:4",
    }
    return _info(**{**recorded, **over})


def test_the_object_store_is_a_component_only_of_a_stack_that_runs_one() -> None:
    assert launcher._components(_durable()) == ["objectstore", "kafka", "redis", "lineage",
                                                "evaluate"]
    assert launcher._components(_info()) == ["kafka", "redis"]


@pytest.mark.parametrize(
    ("storage", "dead", "expected"),
    [
        # The broker's log is in the object store: a new store process means a new
        # broker, started after it; the services keep their offsets.
        ("s3", ["objectstore"], ["objectstore", "kafka"]),
        ("s3", ["kafka"], ["kafka"]),
        ("s3", ["redis", "objectstore"], ["objectstore", "kafka", "redis"]),
        ("s3", ["evaluate"], ["evaluate"]),
        # A new broker in memory has an empty log: every service starts again with it.
        ("memory", ["kafka"], ["kafka", "lineage", "evaluate"]),
        ("memory", ["redis"], ["redis"]),
    ],
)
def test_restart_order(storage: str, dead: list[str], expected: list[str]) -> None:
    info = _durable(broker_storage=storage)
    if storage == "memory":
        del info["objectstore_ports"]
        dead = [n for n in dead if n != "objectstore"]
    assert launcher.restart_order(info, dead) == expected


def test_restart_order_leaves_an_external_broker_alone() -> None:
    info = _durable(external={"kafka": True, "redis": False})
    assert launcher.restart_order(info, ["objectstore"]) == ["objectstore"]


@pytest.mark.usefixtures("plain_env")
def test_the_recorded_storage_must_match(monkeypatch: pytest.MonkeyPatch) -> None:
    asked_s3 = launcher.Asked.from_env("s3")
    assert launcher._matches(_durable(), True, asked_s3)
    # A stack.json without broker_storage ran its broker in memory.
    assert not launcher._matches(_info(), True, asked_s3)
    assert launcher._matches(_info(), True, launcher.Asked.from_env("memory"))
    # Not asked (no flag, no LADDER_BROKER_STORAGE): a recorded stack keeps its own.
    monkeypatch.delenv("LADDER_BROKER_STORAGE", raising=False)
    implicit = launcher.Asked.from_env()
    assert implicit.new_stack_storage == "s3"
    assert launcher._matches(_info(), True, implicit)
    assert launcher._matches(_durable(), True, implicit)


@pytest.mark.usefixtures("plain_env")
def test_a_dead_object_store_is_restarted_first_with_its_broker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    layout = launcher.Layout.of(tmp_path)
    names = ["objectstore", "kafka", "redis", "evaluate", "lineage"]
    pids = {n: ProcRecord(n, 10 + i, 1).to_json() for i, n in enumerate(names)}
    launcher._write_stack(layout, _durable(pids=pids))
    alive = {"kafka", "redis", "evaluate", "lineage"}  # the object store was killed
    monkeypatch.setattr(launcher.procs, "is_running", lambda rec: rec.name in alive)
    monkeypatch.setattr(launcher.probes, "kafka_reachable", lambda _addr: True)
    monkeypatch.setattr(launcher.probes, "redis_ping", lambda _url: True)
    monkeypatch.setattr(launcher.probes, "s3_ready", lambda _s3: "objectstore" in alive)
    monkeypatch.setattr(launcher.probes, "serving", lambda _addr: True)
    monkeypatch.setattr(launcher.objectstore, "stack_settings",
                        lambda info: S3Settings(info["s3_endpoint"], "a", "b"))
    stopped: list[list[str]] = []
    started: list[str] = []
    monkeypatch.setattr(launcher, "_stop", lambda _layout, recs, _grace: stopped.append(
        [r.name for r in recs]))

    def start(name: str) -> Callable[..., object]:
        def run(self: object, *args: object) -> dict[str, object]:
            started.append(name)
            alive.add(name)
            self.started[name] = ProcRecord(name, 99, 1)  # type: ignore[attr-defined]
            return {}
        return run

    monkeypatch.setattr(launcher._Starter, "_objectstore", start("objectstore"))
    monkeypatch.setattr(launcher._Starter, "_kafka", start("kafka"))
    result = launcher._repair_or_start(
        layout, True, launcher.Asked.from_env("s3"), float("inf"), lambda _m: None
    )
    assert stopped == [["objectstore", "kafka"]]
    assert started == ["objectstore", "kafka"]
    assert result["restarted"] == ["kafka", "objectstore"]


def test_the_object_store_stops_last_and_is_given_its_long_grace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[list[str], float]] = []
    monkeypatch.setattr(launcher.procs, "stop_all", lambda recs, grace: calls.append(
        ([r.name for r in recs], grace)) or list(recs))
    names = ["objectstore", "redis", "kafka", "evaluate", "supervisor"]
    launcher._stop(launcher.Layout.of(tmp_path), [ProcRecord(n, 1, 1) for n in names], 1.0)
    assert calls == [
        (["supervisor"], 1.0), (["evaluate"], 1.0), (["redis", "kafka"], 1.0),
        (["objectstore"], components.OBJECTSTORE_STOP_GRACE),
    ]


def test_broker_bound_state_is_kept_while_the_log_is_the_same(tmp_path: Path) -> None:
    layout = launcher.Layout.of(tmp_path)
    (tmp_path / "lineage.sqlite3").write_text("db")
    # No log recorded yet (a state folder of an in-memory broker): archived.
    assert layout.adopt_broker_log("s3-one") is not None
    (tmp_path / "lineage.sqlite3").write_text("db")
    assert layout.adopt_broker_log("s3-one") is None
    assert (tmp_path / "lineage.sqlite3").exists()
    archived = layout.adopt_broker_log("memory-two")
    assert archived is not None and (archived / "lineage.sqlite3").read_text() == "db"
