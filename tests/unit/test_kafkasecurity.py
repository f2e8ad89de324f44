"""Kafka client security (ladder.kafkasecurity): the settings read from the environment,
their checks, and their mapping into each client library's options."""

from __future__ import annotations

import dataclasses
import ssl
import subprocess
from pathlib import Path

import confluent_kafka
import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from ladder import kafkasecurity
from ladder.config import Settings
from ladder.kafkasecurity import KafkaSecurity, KafkaSecurityError

SCRAM = KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-256", "suggest", "s3cret")


def test_the_default_maps_to_nothing_in_every_library() -> None:
    plain = kafkasecurity.from_env({})
    assert plain == KafkaSecurity() and plain.plain
    assert plain.confluent() == {} and plain.aiokafka() == {} and plain.kafka_python() == {}
    assert plain.faust_credentials() is None and plain.ssl_context() is None


def test_sasl_scram_in_each_library() -> None:
    assert SCRAM.confluent() == {
        "security.protocol": "sasl_plaintext", "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "suggest", "sasl.password": "s3cret"}
    expected = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_plain_username": "suggest", "sasl_plain_password": "s3cret"}
    assert SCRAM.aiokafka() == expected
    assert SCRAM.kafka_python() == expected
    credentials = SCRAM.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    # What Faust hands aiokafka from them: the same options as ours.
    assert {k: v for k, v in credentials_to_aiokafka_auth(credentials).items()
            if v is not None} == expected


def _certificates(folder: Path) -> tuple[str, str, str]:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subprocess.run(["openssl", "req", "-x509", *ec, "-keyout", "key.pem", "-out", "cert.pem",
                    "-days", "1", "-subj", "/CN=ladder-test"], cwd=folder, check=True,
                   capture_output=True, timeout=60)
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    return cert, cert, key  # the self-signed certificate is its own CA


def test_sasl_ssl_with_mutual_tls_in_each_library(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    secure = dataclasses.replace(SCRAM, protocol="SASL_SSL", ca=ca, cert=cert, key=key)
    assert secure.confluent() == {
        "security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "suggest", "sasl.password": "s3cret", "ssl.ca.location": ca,
        "ssl.certificate.location": cert, "ssl.key.location": key}
    aio = secure.aiokafka()
    assert aio["security_protocol"] == "SASL_SSL" and aio["sasl_plain_username"] == "suggest"
    context = aio["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.get_ca_certs()[0]["subject"] == ((("commonName", "ladder-test"),),)
    assert secure.kafka_python() == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "suggest", "sasl_plain_password": "s3cret",
        "ssl_check_hostname": True, "ssl_cafile": ca, "ssl_certfile": cert,
        "ssl_keyfile": key}
    credentials = secure.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.ssl_context is not None


def test_ssl_alone_in_each_library(tmp_path: Path) -> None:
    ca, _, _ = _certificates(tmp_path)
    tls = KafkaSecurity("SSL", ca=ca)
    assert tls.confluent() == {"security.protocol": "ssl", "ssl.ca.location": ca}
    assert set(tls.aiokafka()) == {"security_protocol", "ssl_context"}
    assert tls.kafka_python() == {"security_protocol": "SSL", "ssl_check_hostname": True,
                                  "ssl_cafile": ca}
    credentials = tls.faust_credentials()
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"


@pytest.mark.parametrize(("fields", "names"), [
    ({"protocol": "SASL"}, "LADDER_KAFKA_SECURITY_PROTOCOL"),
    ({"protocol": "SASL_SSL", "mechanism": "GSSAPI", "user": "u", "password": "p"},
     "LADDER_KAFKA_SASL_MECHANISM"),
    ({"protocol": "SASL_PLAINTEXT", "user": "u"}, "LADDER_KAFKA_PASSWORD"),
    ({"protocol": "SASL_PLAINTEXT", "password": "p"}, "LADDER_KAFKA_USER"),
    ({"protocol": "SSL", "cert": "c.pem"}, "LADDER_KAFKA_KEY"),
    ({"ca": "ca.pem"}, "LADDER_KAFKA_SECURITY_PROTOCOL"),
])
def test_unusable_settings_are_refused_naming_the_variable(
        fields: dict[str, str], names: str) -> None:
    with pytest.raises(KafkaSecurityError, match=names):
        KafkaSecurity(**fields)


def test_from_env_reads_every_variable_and_a_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    env = {"LADDER_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
           "LADDER_KAFKA_SASL_MECHANISM": "scram-sha-256", "LADDER_KAFKA_USER": "ladder",
           "LADDER_KAFKA_PASSWORD_FILE": str(tmp_path / "pw"), "LADDER_KAFKA_CA": "ca.pem",
           "LADDER_KAFKA_CERT": "c.pem", "LADDER_KAFKA_KEY": "k.pem"}
    assert kafkasecurity.from_env(env) == KafkaSecurity(
        "SASL_SSL", "SCRAM-SHA-256", "ladder", "from-file", "ca.pem", "c.pem", "k.pem")
    # A password given directly wins over the file.
    assert kafkasecurity.from_env({**env, "LADDER_KAFKA_PASSWORD": "direct"}).password == "direct"
    with pytest.raises(KafkaSecurityError, match="LADDER_KAFKA_PASSWORD_FILE="):
        kafkasecurity.from_env({**env, "LADDER_KAFKA_PASSWORD_FILE": str(tmp_path / "none")})


def test_a_service_principal_overrides_the_shared_one(tmp_path: Path) -> None:
    (tmp_path / "earlystop").write_text("es-secret")
    env = {"LADDER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "LADDER_KAFKA_USER": "ladder", "LADDER_KAFKA_PASSWORD": "shared",
           "LADDER_KAFKA_EARLYSTOP_USER": "earlystop",
           "LADDER_KAFKA_EARLYSTOP_PASSWORD_FILE": str(tmp_path / "earlystop"),
           "LADDER_KAFKA_BENCH_SUGGEST_USER": "bench"}
    own = kafkasecurity.from_env(env, "earlystop")
    assert (own.user, own.password) == ("earlystop", "es-secret")
    shared = kafkasecurity.from_env(env, "evaluate")
    assert (shared.user, shared.password) == ("ladder", "shared")
    assert kafkasecurity.from_env(env).user == "ladder"
    # A user of its own but no password of its own: the shared password.
    assert kafkasecurity.from_env(env, "bench-suggest").user == "bench"
    assert kafkasecurity.service_prefix("bench-suggest") == "LADDER_KAFKA_BENCH_SUGGEST_"


def test_settings_carry_the_environment_and_check_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LADDER_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("LADDER_KAFKA_USER", "ladder")
    monkeypatch.setenv("LADDER_KAFKA_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("LADDER_KAFKA_LINEAGE_USER", "lineage")
    settings = Settings.from_env()
    assert settings.kafka_security("lineage").user == "lineage"
    assert settings.kafka_security("suggest").user == "ladder"
    assert "hunter2" not in repr(settings.kafka_security())  # the password is not logged
    monkeypatch.delenv("LADDER_KAFKA_PASSWORD")
    with pytest.raises(KafkaSecurityError, match="LADDER_KAFKA_PASSWORD"):
        Settings.from_env()


def test_a_refused_login_is_told_apart_from_an_unreachable_broker() -> None:
    refused = confluent_kafka.KafkaError(confluent_kafka.KafkaError._AUTHENTICATION,
                                         "SASL SCRAM authentication failed: unknown-user")
    down = confluent_kafka.KafkaError(confluent_kafka.KafkaError._TRANSPORT, "down")
    assert kafkasecurity.login_refused([down], SCRAM, "k:9092") is None
    assert kafkasecurity.login_refused([down, refused], SCRAM, "k:9092") == (
        "Kafka at k:9092 refused the SCRAM-SHA-256 login of user 'suggest': "
        "SASL SCRAM authentication failed: unknown-user")
    assert kafkasecurity.login_refused([refused], KafkaSecurity("SSL"), "k:9092").startswith(
        "Kafka at k:9092 refused the SSL connection: ")
