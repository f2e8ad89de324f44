"""Readiness and health probes: S3, Kafka, Redis, the standard gRPC health service and
an HTTP service's ``/healthz``.

Every wait is a poll against a monotonic deadline, never a fixed sleep: the stack is
ready as soon as it answers, and a dead process fails the wait at once (``alive``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError

from ladder import channels, kafkasecurity, objectstore
from ladder.kafkaacl import ADMIN
from ladder.objectstore import S3Settings

# Kafka error code for "topic already exists": creating topics is idempotent.
_TOPIC_ALREADY_EXISTS = 36


class ProbeFailed(RuntimeError):
    """A component did not become ready before its deadline, or died meanwhile."""


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def wait_until(
    check: Callable[[], bool],
    deadline: float,
    what: str,
    *,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``check`` until it returns True; raise ProbeFailed at the deadline.

    ``check`` may raise: an exception counts as "not yet" and its text is kept for the
    error message. ``alive`` is consulted first so a crashed process fails fast.
    """
    last_error = ""
    while True:
        if alive is not None and not alive():
            raise ProbeFailed(f"{what}: process exited before becoming ready")
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = f" (last error: {type(exc).__name__}: {exc})"
        if time.monotonic() >= deadline:
            raise ProbeFailed(f"{what}: not ready before the deadline{last_error}")
        time.sleep(interval)


# --- Kafka ---------------------------------------------------------------------------


def _operator() -> dict[str, object]:
    """How the operator's clients (``ladder up``, the topics job) authenticate: the
    ``admin`` principal of this process's environment (``ladder.kafkasecurity``)."""
    return kafkasecurity.from_env(os.environ, ADMIN).kafka_python()


def _admin(bootstrap: str, deadline: float) -> KafkaAdminClient:
    ms = max(500, int(min(_remaining(deadline), 5.0) * 1000))
    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="ladder-stack",
        request_timeout_ms=max(ms, 5000),
        bootstrap_timeout_ms=ms,
        **_operator(),
    )


def kafka_reachable(bootstrap: str, timeout: float = 3.0) -> bool:
    """True if the cluster answers a metadata request within ``timeout`` seconds."""
    try:
        admin = _admin(bootstrap, time.monotonic() + timeout)
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int,
    compacted: Iterable[str] = (),
    deadline: float,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Create the topics, tolerating ones that already exist.

    Replication factor -1 asks the broker for its default (1 on tansu, the cluster's
    ``default.replication.factor`` on Apache Kafka >= 2.4).
    """
    compacted = set(compacted)
    wanted = [
        NewTopic(
            name,
            partitions,
            -1,
            topic_configs={"cleanup.policy": "compact"} if name in compacted else {},
        )
        for name in names
    ]

    def create() -> bool:
        admin = _admin(bootstrap, deadline)
        try:
            response = admin.create_topics(wanted, raise_errors=False)
        finally:
            admin.close()
        failed = [
            f"{t['name']}: {t.get('error_message') or t['error_code']}"
            for t in response["topics"]
            if t["error_code"] not in (0, _TOPIC_ALREADY_EXISTS)
        ]
        if failed:
            raise ProbeFailed("cannot create topics: " + "; ".join(failed))
        return True

    wait_until(create, deadline, f"kafka {bootstrap} topic creation", alive=alive, interval=0.2)


def kafka_roundtrip(
    bootstrap: str, topic: str, *, deadline: float, alive: Callable[[], bool] | None = None
) -> None:
    """Produce one record to partition 0 of ``topic`` and read it back.

    Manual assignment, no consumer group: a group join costs seconds on tansu (see
    deploy/local/README.md), and accepting connections is not the same as serving.
    """

    def attempt() -> bool:
        token = uuid.uuid4().hex.encode()
        wait_ms = max(500, int(min(_remaining(deadline), 10.0) * 1000))
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="ladder-stack-probe",
            max_block_ms=wait_ms,
            request_timeout_ms=wait_ms,
            bootstrap_timeout_ms=wait_ms,
            **_operator(),
        )
        try:
            meta = producer.send(topic, value=token, partition=0).get(timeout=wait_ms / 1000)
        finally:
            producer.close(timeout=1)
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="ladder-stack-probe",
            group_id=None,
            enable_auto_commit=False,
            bootstrap_timeout_ms=wait_ms,
            **_operator(),
        )
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, meta.offset)
            read_deadline = min(deadline, time.monotonic() + 10.0)
            while time.monotonic() < read_deadline:
                for records in consumer.poll(timeout_ms=200).values():
                    if any(r.value == token for r in records):
                        return True
            return False
        finally:
            consumer.close()

    wait_until(attempt, deadline, f"kafka {bootstrap} produce/consume", alive=alive, interval=0.2)


# --- S3 ------------------------------------------------------------------------------


def s3_ready(settings: S3Settings, timeout: float = 2.0) -> bool:
    """True if the endpoint answers an authenticated ListBuckets within ``timeout``."""
    try:
        objectstore.client(settings, timeout=timeout, attempts=1).list_buckets()
        return True
    except Exception:  # noqa: BLE001 - refused, timed out, 5xx while starting: not ready
        return False


def ensure_buckets(
    settings: S3Settings,
    names: Iterable[str],
    *,
    deadline: float,
    alive: Callable[[], bool] | None = None,
) -> list[str]:
    """Create the buckets, tolerating ones that exist; the ones this call created. A
    store that just started answers 5xx for a moment: retried until the deadline."""
    created: list[str] = []

    def create() -> bool:
        s3 = objectstore.client(settings, timeout=2.0, attempts=1)
        have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for name in names:
            if name not in have:
                s3.create_bucket(Bucket=name)
                created.append(name)
        return True

    wait_until(create, deadline, f"s3 {settings.endpoint_url} buckets", alive=alive,
               interval=0.2)
    return created


def wait_s3(
    settings: S3Settings, *, deadline: float, alive: Callable[[], bool] | None = None
) -> None:
    wait_until(lambda: s3_ready(settings), deadline, f"s3 {settings.endpoint_url}",
               alive=alive, interval=0.1)


def s3_roundtrip(
    settings: S3Settings,
    bucket: str,
    *,
    deadline: float,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Write one object to ``bucket`` and read it back. SeaweedFS answers bucket
    listings from its filer before its volume server has reported in: until then reads
    of stored objects fail, so answering is not the same as serving."""
    key = "ladder-stack-probe"

    def attempt() -> bool:
        s3 = objectstore.client(settings, timeout=2.0, attempts=1)
        token = uuid.uuid4().hex.encode()
        s3.put_object(Bucket=bucket, Key=key, Body=token)
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read() == token

    wait_until(attempt, deadline, f"s3 {settings.endpoint_url} write/read", alive=alive,
               interval=0.2)


# --- Redis ---------------------------------------------------------------------------


def redis_ping(url: str, timeout: float = 1.0) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def wait_redis(url: str, *, deadline: float, alive: Callable[[], bool] | None = None) -> None:
    wait_until(lambda: redis_ping(url), deadline, f"redis {url}", alive=alive, interval=0.05)


# --- gRPC health ---------------------------------------------------------------------


def grpc_health(addr: str, timeout: float = 1.0, service: str = "") -> str:
    """Status name from ``grpc.health.v1.Health/Check`` (e.g. "SERVING"), or "UNREACHABLE"."""
    with channels.probe_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def serving(addr: str, timeout: float = 1.0) -> bool:
    return grpc_health(addr, timeout) == "SERVING"


# --- HTTP health ---------------------------------------------------------------------


def http_health(addr: str, timeout: float = 1.0) -> str:
    """``HTTP 200`` (or the status an HTTP server at ``addr`` answers ``GET /healthz``
    with), "UNREACHABLE" when none answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{addr}/healthz", timeout=timeout) as reply:
            return f"HTTP {reply.status}"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except (OSError, ValueError):
        return "UNREACHABLE"


def http_ok(addr: str, timeout: float = 1.0) -> bool:
    return http_health(addr, timeout) == "HTTP 200"
