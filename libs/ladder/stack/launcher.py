"""Bring the embedded stack up and down: SeaweedFS, tansu, Redis, the four services and
the dashboard.

Layout of a state folder::

    <state>/stack.json           addresses + pids of the running stack (read by ladder.config)
    <state>/logs/<name>.log      stdout+stderr of every process
    <state>/pids/<name>.pid      "<pid> <start time>" written the moment a process starts
    <state>/objectstore/         SeaweedFS data: the broker's log, the checkpoints bucket
    <state>/objectstore-s3.json  its one S3 identity (random secret, mode 0600)
    <state>/redis/               Redis data (AOF)
    <state>/redis-users/<user>   each Redis user's password (mode 0600, ladder.redisacl)
    <state>/redis-auth.conf      the Redis users (password hashes), written at each start
    <state>/broker-log-id        the broker log lineage's and early-stop's state refers to
    <state>/.lock                serializes up/down on one state folder

The pid files, not ``stack.json``, are the record of what runs: they are written before
anything is waited for, so ``down`` can clean up after an ``up`` that failed half way.

The broker keeps its log in the object store (``LADDER_BROKER_STORAGE=s3``, the
default): topics, records and committed offsets outlive the broker, so ``ladder down``
then ``ladder up``, or a broker restarted alone, finds them again and every service
resumes from its committed offsets, with lineage's SQLite and early-stop's tables kept.
With ``LADDER_BROKER_STORAGE=memory`` no object store runs and each broker starts with
an empty log: the state that refers to the previous log (lineage's SQLite, early-stop's
folder) is archived under ``<state>/archive/`` and every service starts again with a
new broker.

``LADDER_REPLICAS=N`` (``ladder up`` reads it) runs N processes each of suggest (with
owned partitions) and evaluate: the first on the address the stack records for the
service as usual, the others beside it (``<name>-2`` ...); ``stack.json`` then records
the service's address as the list of all of them ("h:p1,h:p2"), which clients balance
over (``ladder.addresses``). A repair starts the first of each again; the others are
not watched.

``up`` on a stack of which some components died starts only those again, on the
addresses ``stack.json`` records and with the same state folder, so clients keep their
addresses and Redis its data; the object store first, then the broker, which depends on
it (a restarted object store restarts the broker too). ``up(supervise=True)`` leaves a
supervisor process (``ladder.stack.supervisor``) that does the same whenever a
component dies; ``down`` stops it first, the object store last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ladder import addresses, config, objectstore, redisacl, signing, tenancy
from ladder.objectstore import S3Settings
from ladder.stack import components, ports, probes, procs
from ladder.stack.components import (
    INFRA,
    KAFKA,
    MEMORY_STORAGE,
    OBJECTSTORE,
    REDIS,
    S3_STORAGE,
    SERVICES,
    SUPERVISOR,
    ObjectStorePorts,
)
from ladder.stack.procs import ProcRecord
from ladder.state.keys import Keys

DEFAULT_TIMEOUT = 120.0  # seconds for the whole `up`; services import torch, Faust, ...
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
TOPIC_PARTITIONS = 4
_START_ATTEMPTS = 3  # a port chosen free can be taken before the child binds it
# A running component that is not healthy yet (one just restarted, say) gets this long
# to become healthy before `up` counts it as dead and restarts it.
UNHEALTHY_GRACE = 20.0

Log = Callable[[str], None]
_Port = TypeVar("_Port")  # one port, or the several one component listens on


class StackError(RuntimeError):
    """``up`` failed; everything it had started has been stopped again."""


def ensure_stack_topics(
    bootstrap: str,
    topics: config.Topics,
    deadline: float,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Every topic of ``topics``' prefix on the broker at ``bootstrap``, as the embedded
    stack makes them (TOPIC_PARTITIONS each, the changelogs compacted)."""
    probes.ensure_topics(
        bootstrap,
        topics.all(),
        partitions=TOPIC_PARTITIONS,
        compacted=topics.compacted,
        deadline=deadline,
        alive=alive,
    )


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def of(cls, state_dir: Path | str | None) -> Layout:
        return cls(Path(state_dir).resolve() if state_dir else config.state_dir())

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def redis_data(self) -> Path:
        return self.root / "redis"

    @property
    def redis_config(self) -> Path:
        """Its ACL users (``ladder.redisacl``; owner-only), written at each start."""
        return self.root / "redis-auth.conf"

    def redis_passwords(self) -> dict[str, str]:
        """The embedded Redis's users' passwords, each made the first time."""
        return redisacl.ensure_passwords(self.root / "redis-users")

    @property
    def objectstore_data(self) -> Path:
        return self.root / "objectstore"

    @property
    def s3_identity(self) -> Path:
        return self.root / "objectstore-s3.json"

    @property
    def broker_log_id(self) -> Path:
        return self.root / "broker-log-id"

    @property
    def stack_json(self) -> Path:
        return config.stack_file(self.root)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    # State whose Kafka offsets refer to one broker's log (lineage's stored offsets,
    # Faust's table data): reused with the same log, archived when the log is another
    # one (a broker in memory always starts a new log).
    def broker_bound_state(self) -> list[Path]:
        names = ("lineage.sqlite3", "lineage.sqlite3-wal", "lineage.sqlite3-shm", "earlystop")
        return [self.root / name for name in names if (self.root / name).exists()]

    def archive_broker_bound_state(self) -> Path | None:
        found = self.broker_bound_state()
        if not found:
            return None
        target = self.root / "archive" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target.mkdir(parents=True, exist_ok=True)
        for path in found:
            path.rename(target / path.name)
        return target

    def adopt_broker_log(self, log_id: str) -> Path | None:
        """Record that the broker-bound state now refers to the log ``log_id``; when
        the state on disk refers to another log (or to an unrecorded one), archive it
        first and return where."""
        recorded = self.broker_log_id.read_text().strip() if self.broker_log_id.exists() else ""
        archived = self.archive_broker_bound_state() if recorded != log_id else None
        self.broker_log_id.write_text(log_id + "\n")
        return archived


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    # Two `ladder up` in the same folder would otherwise both decide to start a stack.
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_stack(state_dir: Path | str | None = None) -> dict[str, Any] | None:
    """The ``stack.json`` of a state folder, or None when there is none (or it is torn)."""
    path = Layout.of(state_dir).stack_json
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_stack(layout: Layout, info: dict[str, Any]) -> None:
    # Owner-only: it records the Redis operator's URL, password included.
    redisacl.write_private(layout.stack_json, json.dumps(info, indent=2, sort_keys=True) + "\n")


def _records(info: dict[str, Any]) -> dict[str, ProcRecord]:
    return {
        name: ProcRecord.from_json(name, rec) for name, rec in (info.get("pids") or {}).items()
    }


@dataclass(frozen=True)
class Asked:
    """What the environment asks of ``up``, read once: the external Kafka and Redis
    ("" for the embedded ones), the topic prefix, the broker profile (given, else
    tansu for the embedded broker and kafka for one the user gave) and where the
    embedded broker keeps its log (``broker_storage``: s3 runs the object store; ""
    when not asked: a recorded stack keeps its own, a new one gets the default)."""

    kafka: str
    redis: str
    prefix: str
    broker_profile: str
    broker_storage: str = ""
    # Processes of each replicated service (LADDER_REPLICAS); 0 when not asked: a
    # recorded stack keeps its own, a new one runs 1.
    replicas: int = 0

    @classmethod
    def from_env(cls, broker_storage: str | None = None, replicas: int | None = None
                 ) -> Asked:
        kafka = os.environ.get("LADDER_KAFKA_BOOTSTRAP", "")
        storage = broker_storage or os.environ.get("LADDER_BROKER_STORAGE")
        return cls(
            kafka=kafka,
            redis=os.environ.get("LADDER_REDIS_URL", ""),
            prefix=os.environ.get("LADDER_TOPIC_PREFIX", config.Topics.prefix),
            # No stack.json yet: this stack is the one that will write it.
            broker_profile=config.chosen_broker_profile(kafka, stack={}).name,
            broker_storage=components.broker_storage(storage) if storage else "",
            replicas=(
                components.replica_count(str(replicas)) if replicas is not None
                else components.replica_count() if os.environ.get(components.REPLICAS_ENV)
                else 0
            ),
        )

    @property
    def new_stack_storage(self) -> str:
        return self.broker_storage or components.DEFAULT_BROKER_STORAGE


def _storage(info: Mapping[str, Any]) -> str:
    # A stack.json written before the object store existed ran the broker in memory.
    return info.get("broker_storage") or MEMORY_STORAGE


def _matches(info: dict[str, Any], services: bool, asked: Asked) -> bool:
    """Is the recorded stack what this `up` asks for (endpoints, prefix, services)?"""
    if services and not info.get("services"):
        return False
    if services and asked.replicas and _replica_count(info) != asked.replicas:
        return False
    if info.get("topic_prefix") != asked.prefix:
        return False
    if asked.kafka and asked.kafka != info.get("kafka_bootstrap"):
        return False
    if asked.redis and asked.redis != info.get("redis_url"):
        return False
    if config.recorded_broker_profile(info).name != asked.broker_profile:
        return False
    if asked.broker_storage and _storage(info) != asked.broker_storage:
        return False
    # An embedded component must not silently stand in for a requested external one,
    # nor the reverse.
    external = info.get("external") or {}
    return bool(asked.kafka) == bool(external.get(KAFKA)) and bool(asked.redis) == bool(
        external.get(REDIS)
    )


def _replica_count(info: Mapping[str, Any]) -> int:
    return int(info.get("replicas") or 1)


def _healthy(info: dict[str, Any]) -> bool:
    return _unhealthy(info) == []


def _components(info: Mapping[str, Any]) -> list[str]:
    """The components a stack.json describes, in start order: infra (the object store
    only when it runs one), then its services."""
    names = [n for n in INFRA if n != OBJECTSTORE or "objectstore_ports" in info]
    return names + [s.name for s in SERVICES if s.addr_key in info]


def restart_order(info: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """What a repair of ``names`` starts again, in start order: a restarted object store
    takes its broker along (the broker's log lives there), and a new broker in memory
    takes every service along (their offsets and tables refer to the lost log)."""
    restart = set(names)
    embedded_broker = not (info.get("external") or {}).get(KAFKA)
    if OBJECTSTORE in restart and embedded_broker:
        restart.add(KAFKA)
    if KAFKA in restart and embedded_broker and _storage(info) == MEMORY_STORAGE:
        restart |= {s.name for s in SERVICES if s.addr_key in info}
    return [n for n in _components(info) if n in restart]


def _objectstore_ok(info: Mapping[str, Any]) -> bool:
    try:
        found = objectstore.stack_settings(info)
    except (OSError, ValueError, KeyError, IndexError):
        return False  # its credentials file is gone or torn: nothing can authenticate
    return found is not None and probes.s3_ready(found)


def _component_ok(info: dict[str, Any], records: dict[str, ProcRecord], name: str) -> bool:
    rec = records.get(name)
    if rec is not None and not procs.is_running(rec):
        return False
    if name == OBJECTSTORE:
        return _objectstore_ok(info)
    if name == REDIS:
        return probes.redis_ping(info["redis_url"])
    if name == KAFKA:
        return probes.kafka_reachable(info["kafka_bootstrap"])
    spec = next(s for s in SERVICES if s.name == name)
    return _serving(spec, addresses.first(info[spec.addr_key]))


def _serving(spec: components.ServiceSpec, addr: str, timeout: float | None = None) -> bool:
    """Whether the service answers its health check (within ``timeout``, else the
    probe's default)."""
    if spec.health == components.HTTP_HEALTH:
        return probes.http_ok(addr) if timeout is None else probes.http_ok(addr, timeout)
    return probes.serving(addr) if timeout is None else probes.serving(addr, timeout=timeout)


def _unhealthy(info: dict[str, Any]) -> list[str] | None:
    """The components that are dead or not healthy; None when stack.json is unreadable."""
    try:
        records = _records(info)
        info["redis_url"], info["kafka_bootstrap"]  # noqa: B018 - both must be recorded
        return [n for n in _components(info) if not _component_ok(info, records, n)]
    except (KeyError, TypeError, ValueError):
        return None  # A stack.json we cannot read describes nothing we can trust.


def dead_components(info: dict[str, Any]) -> list[str] | None:
    """The stack's components whose recorded process has died, infra first (no network
    probe, so cheap enough to poll); None when stack.json is unreadable."""
    try:
        records = _records(info)
        return [
            n for n in _components(info) if n in records and not procs.is_running(records[n])
        ]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _to_restart(info: dict[str, Any], deadline: float) -> list[str] | None:
    """What a repair must start again: the dead components, and the running ones still
    unhealthy after a grace period (a component just restarted may be starting up)."""
    bad = _unhealthy(info)
    if not bad:
        return bad
    records = _records(info)
    dead = dead_components(info) or []
    starting = [n for n in bad if n not in dead]
    grace = min(deadline, time.monotonic() + UNHEALTHY_GRACE)
    while starting and time.monotonic() < grace:
        time.sleep(0.2)
        starting = [n for n in starting if not _component_ok(info, records, n)]
    return [n for n in _components(info) if n in dead or n in starting]


# --- up ------------------------------------------------------------------------------


def up(
    state_dir: Path | str | None = None,
    *,
    services: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    log: Log | None = None,
    supervise: bool = False,
    broker_storage: str | None = None,
    replicas: int | None = None,
) -> dict[str, Any]:
    """Start the stack in ``state_dir``, or what is dead of the one there; return
    stack.json.

    ``replicas`` (default LADDER_REPLICAS) is how many processes of suggest and
    evaluate it runs (module docstring); when neither says, a recorded stack keeps its
    count and a new one runs 1.

    ``broker_storage`` ("s3" or "memory"; default LADDER_BROKER_STORAGE) is where the
    embedded broker keeps its log; when neither names one, a recorded stack keeps its
    own and a new one gets s3.

    The returned dict has ``reused: True`` when nothing had to be started and
    ``restarted`` naming what a repair started again (neither is stored in
    ``stack.json``). A recorded stack that matches this call keeps its addresses: only
    its dead (or still unhealthy) components are started, on their recorded ports. One
    that does not match (other endpoints, prefix, services) is stopped and replaced.
    ``supervise`` also starts the supervisor if none runs. On failure raises
    :class:`StackError` after stopping whatever this call started; the message includes
    the failing process's log tail.
    """
    layout = Layout.of(state_dir)
    say = log or _quiet
    asked = Asked.from_env(broker_storage, replicas)
    deadline = time.monotonic() + timeout
    with _locked(layout):
        info = _repair_or_start(layout, services, asked, deadline, say)
        if supervise:
            info = _ensure_supervisor(layout, info, say)
        _write_stack(layout, {k: v for k, v in info.items() if k not in _TRANSIENT_KEYS})
        return info


# Keys of up's answer that describe the call, not the stack.
_TRANSIENT_KEYS = ("reused", "restarted")


def _repair_or_start(
    layout: Layout, services: bool, asked: Asked, deadline: float, say: Log
) -> dict[str, Any]:
    existing = read_stack(layout.root)
    if existing and _matches(existing, services, asked):
        starter = _Starter(layout, services, asked, deadline, say)
        info = existing
        # A service whose consumer waits on a dead Redis or broker is NOT_SERVING only
        # because of it: start those first, then judge the services, or each such
        # service waits out the grace period and is restarted for nothing.
        infra = [n for n in dead_components(existing) or [] if n in INFRA]
        if infra:
            info = starter.repair(existing, infra)
        restart = _to_restart(info, deadline)
        if restart == [] and not starter.started:
            say(f"stack in {layout.root} is already up")
            return {**existing, "reused": True}
        if restart is not None:
            if restart:
                info = starter.repair(info, restart)
            return {**info, "reused": False, "restarted": sorted(starter.started)}
    if existing or procs.read_pid_files(layout.pids):
        say("stopping the leftovers of a previous stack")
        _down_locked(layout, STOP_GRACE, say)
    info = _Starter(layout, services, asked, deadline, say).run()
    return {**info, "reused": False}


def _ensure_supervisor(layout: Layout, info: dict[str, Any], say: Log) -> dict[str, Any]:
    recorded = _records(info).get(SUPERVISOR)
    if recorded is not None and procs.is_running(recorded):
        return info
    # Its repairs must ask for the stack it watches.
    env = {**os.environ, "LADDER_BROKER_STORAGE": _storage(info),
           components.REPLICAS_ENV: str(_replica_count(info))}
    rec = procs.spawn(
        SUPERVISOR, components.supervisor_argv(layout.root), env=env,
        log_dir=layout.logs, pid_dir=layout.pids, cwd=layout.root,
    )
    say(f"supervisor started (pid {rec.pid}); `ladder down` stops it")
    return {**info, "pids": {**info.get("pids", {}), SUPERVISOR: rec.to_json()}}


class _Starter:
    """One attempt at starting the stack; stops what it started if anything fails."""

    def __init__(
        self, layout: Layout, services: bool, asked: Asked, deadline: float, say: Log
    ) -> None:
        self.layout = layout
        self.services = services
        self.asked = asked
        self.deadline = deadline
        self.say = say
        self.started: dict[str, ProcRecord] = {}
        self.topics = config.Topics(asked.prefix)

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        except BaseException:
            # Includes KeyboardInterrupt: a half-started stack must not be left behind.
            self.say("start failed; stopping what was started")
            _stop(self.layout, list(self.started.values()), STOP_GRACE)
            raise

    def repair(self, info: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """Start ``names`` again on the ports ``info`` records; keep everything else.

        A failure stops what this repair started and leaves the survivors running (they
        are not this call's to stop); the stack stays recorded for the next attempt.
        """
        try:
            return self._repair(info, names)
        except BaseException:
            self.say("restart failed; stopping what was started")
            _stop(self.layout, list(self.started.values()), STOP_GRACE)
            raise

    def _repair(self, info: dict[str, Any], names: list[str]) -> dict[str, Any]:
        external = info.get("external") or {}
        if KAFKA in names and external.get(KAFKA):
            raise StackError(f"kafka {info['kafka_bootstrap']} (external) is not reachable")
        if REDIS in names and external.get(REDIS):
            raise StackError(f"redis {info['redis_url']} (external) is not reachable")
        # A new broker in memory has an empty log: suggest republishes the studies it
        # stores when it starts again with the other services.
        restart = restart_order(info, names)
        records = _records(info)
        _stop(self.layout, [records[n] for n in restart if n in records], STOP_GRACE)
        self.say(f"restarting {', '.join(restart)}")
        for d in (self.layout.logs, self.layout.pids, self.layout.redis_data):
            d.mkdir(parents=True, exist_ok=True)
        if OBJECTSTORE in restart:
            self._objectstore(ObjectStorePorts.from_json(info["objectstore_ports"]))
        if REDIS in restart:
            # Same port and data folder: Redis reloads its AOF, clients reconnect.
            self._redis(int(urlsplit(info["redis_url"]).port or 0))
        if KAFKA in restart:
            self._kafka(objectstore.stack_settings(info),
                        ports.split_host_port(info["kafka_bootstrap"])[1])
        wanted = [s for s in SERVICES if s.name in restart]
        if wanted:
            recorded = {
                s.name: ports.split_host_port(addresses.first(info[s.addr_key]))[1]
                for s in SERVICES
            }
            web_port = info.get("earlystop_web_port") or ports.free_port()
            self._services(info, wanted, recorded, web_port)
        pids = dict(info.get("pids") or {})
        pids.update({name: rec.to_json() for name, rec in self.started.items()})
        return {**info, "pids": pids}

    def _run(self) -> dict[str, Any]:
        for d in (self.layout.logs, self.layout.pids, self.layout.redis_data):
            d.mkdir(parents=True, exist_ok=True)
        info: dict[str, Any] = {
            "broker_storage": self.asked.new_stack_storage,
            "broker_profile": self.asked.broker_profile,
            "topic_prefix": self.topics.prefix,
            "state_dir": str(self.layout.root),
            "services": self.services,
            "external": {
                KAFKA: bool(self.asked.kafka),
                REDIS: bool(self.asked.redis),
            },
        }
        if self.asked.new_stack_storage == S3_STORAGE:
            info.update(self._objectstore())
        info["redis_url"] = self._redis()
        info["kafka_bootstrap"] = self._kafka(objectstore.stack_settings(info))
        if self.services:
            *grpc_ports, web_port = ports.free_ports(len(SERVICES) + 1)
            recorded = {s.name: port for s, port in zip(SERVICES, grpc_ports, strict=True)}
            info.update(self._services(info, SERVICES, recorded, web_port, replicas=True))
        info["pids"] = {name: rec.to_json() for name, rec in self.started.items()}
        info["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return info

    def _spawn_ready(
        self,
        name: str,
        argv_for: Callable[[_Port], list[str]],
        ready: Callable[[_Port, Callable[[], bool]], None],
        port: _Port | None = None,
        *,
        fresh: Callable[[], _Port] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> _Port:
        """Start ``name`` on ``port`` (default: ``fresh()`` free ports, else one free
        port, chosen again if the child dies at start) and wait for ``ready``."""
        fixed = port
        choose = fresh or ports.free_port
        attempts = _START_ATTEMPTS if fixed is None else 1
        for attempt in range(1, attempts + 1):
            port = fixed if fixed is not None else choose()
            rec = procs.spawn(
                name, argv_for(port), env={**os.environ, **(env or {})},
                log_dir=self.layout.logs, pid_dir=self.layout.pids, cwd=self.layout.root,
            )
            self.started[name] = rec
            try:
                ready(port, lambda rec=rec: procs.is_running(rec))
                return port
            except probes.ProbeFailed as exc:
                died = not procs.is_running(rec)
                _stop(self.layout, [rec], STOP_GRACE)
                del self.started[name]
                if not died or attempt == attempts:
                    raise self._failure(name, exc) from exc
                self.say(f"{name} exited at start (port {port} taken?); retrying")
        raise AssertionError("unreachable")

    def _failure(self, name: str, exc: Exception) -> StackError:
        log_tail = procs.tail(self.layout.log(name))
        return StackError(
            f"{name} failed to start: {exc}\n"
            f"--- last lines of {self.layout.log(name)} ---\n{log_tail}"
        )

    def _redis(self, port: int | None = None) -> str:
        """Start Redis (on ``port``, default a free one); its url. An external Redis
        is only waited for."""
        external = self.asked.redis
        if external:
            self.say(f"using external redis {external}")
            probes.wait_redis(external, deadline=self.deadline)
            return external
        self.say("starting redis" + (f" on port {port}" if port else ""))

        # Users per service (ladder.redisacl); stack.json records the operator's URL.
        passwords = self.layout.redis_passwords()
        redisacl.write_server_config(
            self.layout.redis_config, Keys.for_prefix(self.topics.prefix), passwords
        )

        def url(port: int) -> str:
            return redisacl.user_url(ports.redis_url(port), redisacl.ADMIN,
                                     passwords[redisacl.ADMIN])

        def ready(port: int, alive: Callable[[], bool]) -> None:
            probes.wait_redis(url(port), deadline=self.deadline, alive=alive)

        return url(self._spawn_ready(
            REDIS,
            lambda p: components.redis_argv(
                p, self.layout.redis_data, config_file=self.layout.redis_config
            ),
            ready,
            port,
        ))

    def _objectstore(self, recorded: ObjectStorePorts | None = None) -> dict[str, Any]:
        """Start SeaweedFS (on the ``recorded`` ports, default free ones) with the
        broker's and the checkpoints' buckets; what stack.json records of it."""
        self.layout.objectstore_data.mkdir(parents=True, exist_ok=True)
        access, secret = objectstore.ensure_identity(self.layout.s3_identity)
        self.say("starting the object store (SeaweedFS)"
                 + (f" on port {recorded.s3}" if recorded else ""))

        def settings(found: ObjectStorePorts) -> S3Settings:
            return S3Settings(f"http://{ports.LOOPBACK}:{found.s3}", access, secret)

        def ready(found: ObjectStorePorts, alive: Callable[[], bool]) -> None:
            probes.wait_s3(settings(found), deadline=self.deadline, alive=alive)
            probes.ensure_buckets(
                settings(found),
                [components.BROKER_BUCKET, components.CHECKPOINT_BUCKET],
                deadline=self.deadline, alive=alive,
            )
            probes.s3_roundtrip(settings(found), components.CHECKPOINT_BUCKET,
                                deadline=self.deadline, alive=alive)

        found = self._spawn_ready(
            OBJECTSTORE,
            lambda found: components.objectstore_argv(
                found, self.layout.objectstore_data, self.layout.s3_identity
            ),
            ready,
            recorded,
            fresh=lambda: ObjectStorePorts.of(ports.free_ports(ObjectStorePorts.count())),
        )
        chosen = settings(found)
        return {
            "s3_endpoint": chosen.endpoint_url,
            "s3_region": chosen.region,
            "s3_credentials_file": str(self.layout.s3_identity),
            "objectstore_ports": found.to_json(),
            "checkpoint_url": f"s3://{components.CHECKPOINT_BUCKET}/",
        }

    def _kafka(self, s3: S3Settings | None, port: int | None = None) -> str:
        """Start the embedded broker (on ``port``, default a free one) with the topics,
        its log in the object store ``s3`` (None: in memory); its bootstrap address.
        An external one only gets the topics."""
        external = self.asked.kafka
        if external:
            self.say(f"using external kafka {external}")
            self._prepare_kafka(external, None)
            return external
        storage_url = components.broker_storage_url(S3_STORAGE if s3 else MEMORY_STORAGE)
        archived = self.layout.adopt_broker_log(_broker_log_id(s3))
        if archived:
            self.say(f"new broker log: archived the previous log's lineage to {archived}")
        self.say(f"starting the tansu broker on {storage_url}"
                 + (f", port {port}" if port else ""))
        return ports.host_port(self._spawn_ready(
            KAFKA,
            lambda p: components.broker_argv(p, storage_url),
            lambda p, alive: self._prepare_kafka(ports.host_port(p), alive),
            port,
            env=components.broker_env(s3),
        ))

    def _prepare_kafka(self, bootstrap: str, alive: Callable[[], bool] | None) -> None:
        probe_topic = self.topics.name(config.STACK_PROBE_TOPIC)
        ensure_stack_topics(bootstrap, self.topics, self.deadline, alive)
        probes.ensure_topics(
            bootstrap, [probe_topic], partitions=1, deadline=self.deadline, alive=alive
        )
        probes.kafka_roundtrip(bootstrap, probe_topic, deadline=self.deadline, alive=alive)

    def _services(
        self,
        info: Mapping[str, Any],
        wanted: Iterable[components.ServiceSpec],
        service_ports: dict[str, int],
        web_port: int,
        replicas: bool = False,
    ) -> dict[str, Any]:
        """Start the ``wanted`` services of the stack ``info`` (its infra's addresses) on
        ``service_ports`` (every service's port: each is told the others' addresses) and
        wait until they serve; the addresses to record. ``web_port`` is earlystop's
        Faust web server's (one the others do not use: the caller chose them in one
        ``free_ports`` call or recorded them)."""
        wanted = list(wanted)
        addrs = {s.addr_key: ports.host_port(service_ports[s.name]) for s in SERVICES}
        # Named outright: stack.json, which records them, is written after they start.
        env = {**os.environ, **components.objectstore_env(
            objectstore.stack_settings(info), info.get("checkpoint_url"), os.environ
        )}
        env.update(
            LADDER_KAFKA_BOOTSTRAP=info["kafka_bootstrap"],
            LADDER_BROKER_PROFILE=self.asked.broker_profile,
            LADDER_REDIS_URL=self._redis_url_of(info, "dashboard"),
            LADDER_STATE_DIR=str(self.layout.root),
            LADDER_TOPIC_PREFIX=self.topics.prefix,
            LADDER_BUS_SIGNING_KEYS=signing.ensure_keyring(self.layout.root),
            PYTHONUNBUFFERED="1",
        )
        # Authentication on unless LADDER_AUTH says otherwise; the default tenant's token
        # in <state>/token lets clients beside the stack call it with no setup.
        env.setdefault("LADDER_AUTH", "on")
        if config.env_flag("LADDER_AUTH", True):
            self._provision_tenant(info)
        for spec in SERVICES:
            env[spec.port_env] = str(service_ports[spec.name])
            if spec.addr_env:
                env[spec.addr_env] = addrs[spec.addr_key]
        for spec in wanted:
            self.say(f"starting {spec.name} on {addrs[spec.addr_key]}")
            # LADDER_SERVICE names the process (logs, telemetry service.name).
            spec_env = {**env, "LADDER_SERVICE": spec.name,
                        "LADDER_REDIS_URL": self._redis_url_of(info, spec.name),
                        **components.replica_env(spec.name, self._replicas_of(info))}
            if spec.name == "earlystop":
                # Faust starts a web server (default port 6066, shared by every app on the
                # host); give it a free loopback port of its own.
                spec_env.update(
                    LADDER_EARLYSTOP_WEB_PORT=str(web_port),
                    WEB_PORT=str(web_port),
                    WEB_BIND=ports.LOOPBACK,
                )
            self.started[spec.name] = procs.spawn(
                spec.name, spec.argv(), env=spec_env,
                log_dir=self.layout.logs, pid_dir=self.layout.pids, cwd=self.layout.root,
            )
        self._wait_services({s: addrs[s.addr_key] for s in wanted})
        started = {**addrs, "earlystop_web_port": web_port}
        if replicas and self._replicas_of(info) > 1:
            started.update(self._replicas(info, env, addrs, self._replicas_of(info)))
        return started

    def _replicas_of(self, info: Mapping[str, Any]) -> int:
        """The replica count asked, else the recorded stack's (a repair)."""
        return self.asked.replicas or _replica_count(info)

    def _replicas(
        self, info: Mapping[str, Any], env: Mapping[str, str], addrs: dict[str, str], count: int
    ) -> dict[str, Any]:
        """Processes 2..``count`` of each replicated service (module docstring): what to
        record (their addresses by process name; each service's address, the list)."""
        extra: dict[components.ServiceSpec, str] = {}
        lists: dict[str, str] = {}
        for spec in SERVICES:
            if spec.name not in components.REPLICATED:
                continue
            found = [addrs[spec.addr_key]]
            for n in range(2, count + 1):
                replica = dataclasses.replace(spec, name=f"{spec.name}-{n}")
                addr = ports.host_port(ports.free_port())
                self.say(f"starting {replica.name} on {addr}")
                self.started[replica.name] = procs.spawn(
                    replica.name, spec.argv(),
                    env={**env, "LADDER_SERVICE": replica.name,
                         "LADDER_REDIS_URL": self._redis_url_of(info, spec.name),
                         spec.port_env: str(ports.split_host_port(addr)[1]),
                         **components.replica_env(spec.name, count)},
                    log_dir=self.layout.logs, pid_dir=self.layout.pids, cwd=self.layout.root,
                )
                extra[replica] = addr
                found.append(addr)
            lists[spec.addr_key] = ",".join(found)
        self._wait_services(extra)
        return {**lists, "replicas": count,
                "replica_addrs": {spec.name: addr for spec, addr in extra.items()}}

    def _redis_url_of(self, info: Mapping[str, Any], service: str) -> str:
        """The Redis URL service ``service`` is given (``redisacl.service_url``): an
        external Redis's users are the operator's (docs/bus-security.md)."""
        external = (info.get("external") or {}).get(REDIS)
        return redisacl.service_url(
            info["redis_url"], service, None if external else self.layout.redis_passwords()
        )

    def _provision_tenant(self, info: Mapping[str, Any]) -> None:
        """The default tenant and a valid token of it in ``<state>/token``."""
        import redis

        client = redis.Redis.from_url(info["redis_url"], socket_connect_timeout=5)
        try:
            store = tenancy.TenantStore(client, Keys.for_prefix(self.topics.prefix).root)
            if tenancy.provision(store, config.token_file(self.layout.root)):
                self.say(f"token of tenant {tenancy.DEFAULT_TENANT!r} written to "
                         f"{config.token_file(self.layout.root)}")
        finally:
            client.close()

    def _wait_services(self, addrs: dict[components.ServiceSpec, str]) -> None:
        """Poll every service's health (gRPC, or HTTP /healthz) until all serve, one
        dies, or time's up."""
        pending = dict(addrs)
        while pending:
            for spec, addr in list(pending.items()):
                if not procs.is_running(self.started[spec.name]):
                    raise self._failure(spec.name, probes.ProbeFailed("process exited"))
                if _serving(spec, addr, timeout=0.5):
                    self.say(f"{spec.name} is serving")
                    del pending[spec]
            if pending and time.monotonic() >= self.deadline:
                names = [spec.name for spec in pending]
                raise self._failure(
                    names[0],
                    probes.ProbeFailed(
                        f"health of {', '.join(names)} not SERVING before the deadline"
                    ),
                )
            if pending:
                time.sleep(0.1)


def _broker_log_id(s3: S3Settings | None) -> str:
    """The identity of the log a new broker will serve: the one its bucket records
    (written when the bucket is new), or a new one for a broker in memory."""
    if s3 is None:
        return f"memory-{uuid.uuid4().hex}"
    client = objectstore.client(s3)
    try:
        body = client.get_object(Bucket=components.BROKER_BUCKET, Key=_LOG_ID_KEY)["Body"]
        return body.read().decode().strip()
    except client.exceptions.NoSuchKey:
        log_id = f"s3-{uuid.uuid4().hex}"
        client.put_object(Bucket=components.BROKER_BUCKET, Key=_LOG_ID_KEY,
                          Body=log_id.encode())
        return log_id


# An object beside tansu's own keys (they all sit under clusters/).
_LOG_ID_KEY = "ladder-log-id"


# --- down ----------------------------------------------------------------------------


def _stop(layout: Layout, records: list[ProcRecord], grace: float) -> list[str]:
    # The supervisor first (it would start again what is being stopped), then the
    # services (they may still flush to Kafka/Redis on SIGTERM), then the broker and
    # Redis, the object store last (the broker writes its log there until it exits).
    stopped: list[str] = []
    tiers = (
        ([r for r in records if r.name == SUPERVISOR], grace),
        ([r for r in records if r.name not in (*INFRA, SUPERVISOR)], grace),
        ([r for r in records if r.name in (KAFKA, REDIS)], grace),
        ([r for r in records if r.name == OBJECTSTORE],
         max(grace, components.OBJECTSTORE_STOP_GRACE)),
    )
    for tier, tier_grace in tiers:
        stopped += [r.name for r in procs.stop_all(tier, grace=tier_grace)]
        for rec in tier:
            procs.remove_pid_file(layout.pids, rec.name)
    return stopped


def _down_locked(layout: Layout, grace: float, say: Log) -> list[str]:
    records = procs.read_pid_files(layout.pids)
    info = read_stack(layout.root) or {}
    for name, rec in _records(info).items():
        records.setdefault(name, rec)
    stopped = _stop(layout, list(records.values()), grace)
    for name in stopped:
        say(f"stopped {name}")
    with contextlib.suppress(FileNotFoundError):
        layout.stack_json.unlink()
    return stopped


def down(
    state_dir: Path | str | None = None, *, grace: float = STOP_GRACE, log: Log | None = None
) -> list[str]:
    """Stop what ``up`` started in ``state_dir``; return the names that were running.

    Processes are identified by pid *and* start time, so a recycled pid is never
    signalled. Idempotent: with nothing running it just removes stale files.
    """
    layout = Layout.of(state_dir)
    if not layout.root.exists():
        return []
    with _locked(layout):
        return _down_locked(layout, grace, log or _quiet)


# --- status --------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    address: str
    pid: int | None  # None: external, not started by us
    running: bool
    healthy: bool
    detail: str = ""


def status(state_dir: Path | str | None = None) -> list[ComponentStatus]:
    """One entry per component recorded in the state folder (empty: no stack)."""
    layout = Layout.of(state_dir)
    info = read_stack(layout.root) or {}
    records = procs.read_pid_files(layout.pids)
    for name, rec in _records(info).items():
        records.setdefault(name, rec)
    result: list[ComponentStatus] = []

    def add(name: str, address: str, check: Callable[[], tuple[bool, str]]) -> None:
        rec = records.pop(name, None)
        running = procs.is_running(rec) if rec else True
        checked = running and (address or name == SUPERVISOR)
        healthy, detail = check() if checked else (False, "")
        result.append(
            ComponentStatus(name, address, rec.pid if rec else None, running, healthy, detail)
        )

    if SUPERVISOR in records:
        add(SUPERVISOR, "", lambda: (True, ""))
    if info.get("objectstore_ports"):
        add(OBJECTSTORE, info.get("s3_endpoint", ""), lambda: (_objectstore_ok(info), ""))
    if info:
        add(KAFKA, info.get("kafka_bootstrap", ""),
            lambda: (probes.kafka_reachable(info["kafka_bootstrap"]), ""))
        add(REDIS, ports.redacted_url(info.get("redis_url", "")),
            lambda: (probes.redis_ping(info["redis_url"]), ""))
        for spec in SERVICES:
            if spec.addr_key in info:
                addr = info[spec.addr_key]
                add(spec.name, spec.shown_address(addr),
                    _health_check(spec, addresses.first(addr)))
        for name, addr in (info.get("replica_addrs") or {}).items():
            spec = next(s for s in SERVICES if name.startswith(f"{s.name}-"))
            add(name, spec.shown_address(addr), _health_check(spec, addr))
    # Processes with a pid file but no stack.json entry: a failed or interrupted `up`.
    for name, rec in records.items():
        result.append(ComponentStatus(name, "", rec.pid, procs.is_running(rec), False,
                                      "not in stack.json"))
    return result


def _health_check(spec: components.ServiceSpec, addr: str) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        if spec.health == components.HTTP_HEALTH:
            state = probes.http_health(addr)
            return state == "HTTP 200", state
        state = probes.grpc_health(addr)
        return state == "SERVING", state

    return check


# --- object API ----------------------------------------------------------------------


class Stack:
    """The stack of one state folder, usable as a context manager::

        with Stack(tmp_path, services=False) as info:
            KafkaProducer(bootstrap_servers=info["kafka_bootstrap"])

    Leaving the block stops the stack, unless ``up`` found it already running (then it
    belongs to whoever started it).
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        services: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        log: Log | None = None,
        broker_storage: str | None = None,
    ) -> None:
        self.layout = Layout.of(state_dir)
        self.services = services
        self.timeout = timeout
        self.log = log
        self.broker_storage = broker_storage
        self.info: dict[str, Any] | None = None

    @property
    def state_dir(self) -> Path:
        return self.layout.root

    def up(self) -> dict[str, Any]:
        self.info = up(self.layout.root, services=self.services, timeout=self.timeout,
                       log=self.log, broker_storage=self.broker_storage)
        return self.info

    def down(self) -> list[str]:
        self.info = None
        return down(self.layout.root, log=self.log)

    def status(self) -> list[ComponentStatus]:
        return status(self.layout.root)

    def env(self) -> dict[str, str]:
        """Environment that points a child process at this stack."""
        info = self.info or read_stack(self.layout.root) or {}
        env = {
            "LADDER_STATE_DIR": str(self.layout.root),
            "LADDER_KAFKA_BOOTSTRAP": info.get("kafka_bootstrap", ""),
            "LADDER_BROKER_PROFILE": info.get("broker_profile", ""),
            "LADDER_REDIS_URL": info.get("redis_url", ""),
            "LADDER_TOPIC_PREFIX": info.get("topic_prefix", Asked.from_env().prefix),
            "LADDER_BUS_SIGNING_KEYS": signing.ensure_keyring(self.layout.root),
        }
        for spec in SERVICES:
            if spec.addr_env and spec.addr_key in info:
                env[spec.addr_env] = info[spec.addr_key]
        return {k: v for k, v in env.items() if v}

    def __enter__(self) -> dict[str, Any]:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        if self.info is not None and not self.info.get("reused"):
            self.down()
