"""Kafka client security against a real broker that requires SASL/SCRAM: tansu 0.6.0
started with ``--authentication`` (its own process, memory storage, a free port).

Every client library Ladder uses is configured through ``ladder.kafkasecurity`` and must
fail fast, never hang, when its login is refused: librdkafka (confluent-kafka: the
services' producers and consumers), aiokafka (early-stop's study feed, the load
simulator), Faust (early-stop's app, through ``broker_credentials``) and kafka-python
(the stack's probes, test readers).

tansu 0.6.0 cannot log anyone in: ``tansu user create`` is answered with success but
no credential is kept (memory and S3 storage alike), so every SCRAM login is refused
with ``unknown-user``. The right-credentials round trip is therefore an expected
failure (strict: it reports when a tansu that keeps users arrives).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiokafka
import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaProducer
from kafka.errors import KafkaError
from ladder.bus import EventProducer
from ladder.config import Settings
from ladder.kafkasecurity import KafkaSecurity, kafka_env, login_refused
from ladder.stack import components, ports
from ladder.testing import wait_for

from services.earlystop.app import topic_partitions

USER, PASSWORD = "earlystop", "right-password"
REFUSED_WITHIN_S = 8.0


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a tansu broker requiring SASL, with ``USER`` created on it."""
    port = ports.free_port()
    log = tmp_path_factory.mktemp("tansu-sasl") / "broker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*components.broker_argv(port), "--authentication"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "ready in" in Path(log).read_text(errors="replace"), 20,
                 "tansu --authentication ready")
        subprocess.run([str(components.tansu_binary()), "user", "create", "--broker",
                        f"tcp://127.0.0.1:{port}", USER, PASSWORD],
                       capture_output=True, timeout=10)  # refused: not yet logged in
        yield ports.host_port(port)
    finally:
        proc.kill()
        proc.wait(10)


def scram(password: str = PASSWORD) -> KafkaSecurity:
    return KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-512", USER, password)


def confluent_login(bootstrap: str, security: KafkaSecurity) -> None:
    """List the topics; RuntimeError with the refusal's reason when it fails."""
    errors: list[Any] = []
    admin = AdminClient({"bootstrap.servers": bootstrap, **security.confluent(),
                         "error_cb": errors.append,
                         "logger": logging.getLogger("test.kafka")})
    try:
        admin.list_topics(timeout=2)
    except confluent_kafka.KafkaException as exc:
        admin.poll(0)  # serves error_cb: the reason of the refusal
        raise RuntimeError(login_refused(errors, security, bootstrap) or str(exc)) from exc


async def _aiokafka_start(bootstrap: str, options: dict[str, Any]) -> None:
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=4000,
                                         **options)
    try:
        await asyncio.wait_for(producer.start(), REFUSED_WITHIN_S)
        await producer.send_and_wait("ladder.sasl-check", b"x")
    finally:
        await producer.stop()


def aiokafka_login(bootstrap: str, security: KafkaSecurity) -> None:
    asyncio.run(_aiokafka_start(bootstrap, security.aiokafka()))


def faust_login(bootstrap: str, security: KafkaSecurity) -> None:
    # What Faust's transport passes aiokafka for the app's broker_credentials.
    options = dict(credentials_to_aiokafka_auth(security.faust_credentials()))
    asyncio.run(_aiokafka_start(bootstrap, options))


def kafka_python_login(bootstrap: str, security: KafkaSecurity) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, bootstrap_timeout_ms=2000,
                             max_block_ms=2000, **security.kafka_python())
    try:
        producer.send("ladder.sasl-check", b"x").get(timeout=2)
    finally:
        producer.close(timeout=1)


LOGINS: dict[str, Callable[[str, KafkaSecurity], Any]] = {
    "confluent-kafka": confluent_login,
    "aiokafka": aiokafka_login,
    "faust": faust_login,
    "kafka-python": kafka_python_login,
}


@pytest.mark.parametrize("library", list(LOGINS))
def test_a_wrong_password_is_refused_quickly(sasl_broker: str, library: str) -> None:
    started = time.monotonic()
    with pytest.raises((RuntimeError, KafkaError, KeyError, aiokafka.errors.KafkaError,
                        asyncio.TimeoutError)) as refused:
        LOGINS[library](sasl_broker, scram("wrong-password"))
    assert time.monotonic() - started < REFUSED_WITHIN_S + 2, "the refusal hung"
    if library == "confluent-kafka":
        # librdkafka says why: the SCRAM exchange was answered with an error.
        assert str(refused.value).startswith(
            f"Kafka at {sasl_broker} refused the SCRAM-SHA-512 login of user 'earlystop': "
            "sasl_plaintext://")
        assert "SASL SCRAM authentication failed" in str(refused.value)


def test_earlystop_stops_at_start_saying_its_login_was_refused(sasl_broker: str) -> None:
    env = {"LADDER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "LADDER_KAFKA_EARLYSTOP_USER": USER, "LADDER_KAFKA_EARLYSTOP_PASSWORD": "wrong"}
    settings = Settings(kafka_bootstrap=sasl_broker, redis_url="redis://127.0.0.1:1/0",
                        kafka_env=kafka_env(env))
    started = time.monotonic()
    with pytest.raises(SystemExit, match=f"earlystop: Kafka at {sasl_broker} refused the "
                       "SCRAM-SHA-512 login of user 'earlystop'"):
        topic_partitions(settings, [settings.topics.metrics], timeout=2)
    assert time.monotonic() - started < REFUSED_WITHIN_S


def test_the_services_producer_logs_in_with_sasl(
        sasl_broker: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # ladder.bus's librdkafka producer takes the service's settings: its SCRAM exchange
    # reaches the broker (and is refused, logged where the service's logs go).
    env = {"LADDER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "LADDER_KAFKA_EVALUATE_USER": "evaluate", "LADDER_KAFKA_PASSWORD": "wrong"}
    settings = Settings(kafka_bootstrap=sasl_broker, redis_url="redis://127.0.0.1:1/0",
                        state_dir=tmp_path, kafka_env=kafka_env(env))
    caplog.set_level(logging.INFO, logger="ladder.kafka.producer")
    producer = EventProducer(settings, "evaluate", delivery_timeout_s=2.0)
    try:
        wait_for(lambda: any("SASL SCRAM authentication failed" in r.getMessage()
                             for r in caplog.records if r.name == "ladder.kafka.producer"),
                 REFUSED_WITHIN_S, "the producer's refused SCRAM login logged")
    finally:
        producer.close()


def test_a_client_without_credentials_is_refused(sasl_broker: str) -> None:
    with pytest.raises(RuntimeError, match="Failed to get metadata"):
        confluent_login(sasl_broker, KafkaSecurity())


@pytest.mark.xfail(strict=True, raises=(RuntimeError, KafkaError, KeyError,
                                        aiokafka.errors.KafkaError, asyncio.TimeoutError),
                   reason="tansu 0.6.0 keeps no SCRAM user (tansu user create is a no-op)")
@pytest.mark.parametrize("library", list(LOGINS))
def test_the_right_password_produces(sasl_broker: str, library: str) -> None:
    LOGINS[library](sasl_broker, scram())
