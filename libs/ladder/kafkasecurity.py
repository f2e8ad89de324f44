"""How every Kafka client of Ladder authenticates: one set of settings (security
protocol, SASL mechanism, user and password, TLS files) mapped into each client
library's own options, so that no client is built with its own idea of them.

The variables (LADDER_KAFKA_SECURITY_PROTOCOL, _SASL_MECHANISM, _USER, _PASSWORD,
_PASSWORD_FILE, _CA, _CERT, _KEY) are documented in the settings table
(``ladder.config.Settings``, docs/configuration.md).

Per process: ``LADDER_KAFKA_<SERVICE>_USER``, ``..._PASSWORD`` and
``..._PASSWORD_FILE`` (``<SERVICE>`` the client's service name upper-cased, ``-`` as
``_``: ``LADDER_KAFKA_EARLYSTOP_USER``) override the shared three for that service's
clients only, so one environment (a ConfigMap) can hold every service's principal.
The principals and what each may do are ``ladder.kafkaacl``.

Mappings: ``confluent`` (librdkafka's ``security.protocol``, ``sasl.*``, ``ssl.*``),
``aiokafka`` (``security_protocol``, ``sasl_mechanism``, ``sasl_plain_*``,
``ssl_context``), ``kafka_python`` (the same names, TLS as files) and
``faust_credentials`` (``faust.SASLCredentials`` / ``faust.SSLCredentials``).
The default, PLAINTEXT with no credentials, maps to nothing at all: a client is built
exactly as it was before these settings existed.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLAINTEXT = "PLAINTEXT"
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
ENV_PREFIX = "LADDER_KAFKA_"
# The variables a service may override for its own clients.
PER_SERVICE = ("USER", "PASSWORD", "PASSWORD_FILE")


class KafkaSecurityError(ValueError):
    """Settings that cannot make a working client; the message names the variable."""


@dataclass(frozen=True)
class KafkaSecurity:
    """One client's security settings (``from_env``); PLAINTEXT by default."""

    protocol: str = PLAINTEXT
    mechanism: str = MECHANISMS[0]
    user: str = ""
    password: str = field(default="", repr=False)
    ca: str = ""
    cert: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise KafkaSecurityError(
                f"LADDER_KAFKA_SECURITY_PROTOCOL={self.protocol!r}: expected one of "
                f"{', '.join(PROTOCOLS)}")
        if self.mechanism not in MECHANISMS:
            raise KafkaSecurityError(
                f"LADDER_KAFKA_SASL_MECHANISM={self.mechanism!r}: expected one of "
                f"{', '.join(MECHANISMS)}")
        if self.sasl and not (self.user and self.password):
            raise KafkaSecurityError(
                f"{self.protocol} needs LADDER_KAFKA_USER and LADDER_KAFKA_PASSWORD "
                "(or LADDER_KAFKA_PASSWORD_FILE)")
        if bool(self.cert) != bool(self.key):
            raise KafkaSecurityError(
                "LADDER_KAFKA_CERT and LADDER_KAFKA_KEY go together (mutual TLS)")
        if (self.ca or self.cert) and not self.tls:
            raise KafkaSecurityError(
                f"LADDER_KAFKA_CA/CERT are set but LADDER_KAFKA_SECURITY_PROTOCOL is "
                f"{self.protocol}: use SSL or SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")

    @property
    def plain(self) -> bool:
        """No security at all (the default): every mapping is empty."""
        return self.protocol == PLAINTEXT

    def confluent(self) -> dict[str, str]:
        """librdkafka's options (confluent_kafka Producer, Consumer, AdminClient)."""
        if self.plain:
            return {}
        options = {"security.protocol": self.protocol.lower()}
        if self.sasl:
            options.update({"sasl.mechanism": self.mechanism, "sasl.username": self.user,
                            "sasl.password": self.password})
        if self.ca:
            options["ssl.ca.location"] = self.ca
        if self.cert:
            options.update({"ssl.certificate.location": self.cert,
                            "ssl.key.location": self.key})
        return options

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the asyncio clients (aiokafka, Faust); None without TLS."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ca or None)
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context

    def _python_client(self) -> dict[str, Any]:
        """What aiokafka and kafka-python name alike: protocol and SASL login."""
        if self.plain:
            return {}
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            options.update({"sasl_mechanism": self.mechanism,
                            "sasl_plain_username": self.user,
                            "sasl_plain_password": self.password})
        return options

    def aiokafka(self) -> dict[str, Any]:
        """aiokafka's keyword arguments (AIOKafkaProducer, AIOKafkaConsumer)."""
        options = self._python_client()
        if self.tls:
            options["ssl_context"] = self.ssl_context()
        return options

    def kafka_python(self) -> dict[str, Any]:
        """kafka-python's keyword arguments (KafkaProducer, KafkaConsumer,
        KafkaAdminClient)."""
        options = self._python_client()
        if self.tls:
            options["ssl_check_hostname"] = True
            if self.ca:
                options["ssl_cafile"] = self.ca
            if self.cert:
                options.update({"ssl_certfile": self.cert, "ssl_keyfile": self.key})
        return options

    def faust_credentials(self) -> Any:
        """``faust.App(broker_credentials=...)``: SASLCredentials (with the TLS context
        under SASL_SSL), SSLCredentials for SSL, None for PLAINTEXT."""
        if self.plain:
            return None
        import faust

        if self.sasl:
            return faust.SASLCredentials(username=self.user, password=self.password,
                                         mechanism=self.mechanism,
                                         ssl_context=self.ssl_context())
        return faust.SSLCredentials(self.ssl_context())


def login_refused(errors: Iterable[Any], security: KafkaSecurity, bootstrap: str) -> str | None:
    """Why the broker at ``bootstrap`` refused ``security``'s login, from the errors a
    librdkafka client reported (its ``error_cb``), or None when none says so. Without
    it a refused login looks like a broker that cannot be reached (``Broker transport
    failure``)."""
    import confluent_kafka

    for error in errors:
        if error.code() == confluent_kafka.KafkaError._AUTHENTICATION:
            who = f"the {security.mechanism} login of user {security.user!r}" if security.sasl \
                else f"the {security.protocol} connection"
            return f"Kafka at {bootstrap} refused {who}: {error.str()}"
    return None


def service_prefix(service: str) -> str:
    """``LADDER_KAFKA_<SERVICE>_``: where ``service``'s own user and password are read."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", service).strip("_").upper()
    return f"{ENV_PREFIX}{cleaned}_"


def kafka_env(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The LADDER_KAFKA_* variables of ``environ`` (what ``from_env`` reads), sorted."""
    return tuple(sorted((k, v) for k, v in environ.items() if k.startswith(ENV_PREFIX)))


def _password(env: Mapping[str, str], prefix: str) -> str | None:
    """``<prefix>PASSWORD``, else the text of ``<prefix>PASSWORD_FILE``, else None."""
    if env.get(f"{prefix}PASSWORD"):
        return env[f"{prefix}PASSWORD"]
    path = env.get(f"{prefix}PASSWORD_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise KafkaSecurityError(f"{prefix}PASSWORD_FILE={path!r}: {exc.strerror}") from None


def from_env(env: Mapping[str, str], service: str = "") -> KafkaSecurity:
    """The settings of ``service``'s clients (the shared ones when ``service`` has no
    user of its own, or is ""). KafkaSecurityError names what is wrong."""
    own = service_prefix(service) if service else None
    user = (own and env.get(f"{own}USER")) or env.get(f"{ENV_PREFIX}USER", "")
    password = (own and _password(env, own)) or _password(env, ENV_PREFIX) or ""
    return KafkaSecurity(
        protocol=env.get(f"{ENV_PREFIX}SECURITY_PROTOCOL", "").strip().upper() or PLAINTEXT,
        mechanism=env.get(f"{ENV_PREFIX}SASL_MECHANISM", "").strip().upper() or MECHANISMS[0],
        user=user.strip(),
        password=password,
        ca=env.get(f"{ENV_PREFIX}CA", ""),
        cert=env.get(f"{ENV_PREFIX}CERT", ""),
        key=env.get(f"{ENV_PREFIX}KEY", ""),
    )
