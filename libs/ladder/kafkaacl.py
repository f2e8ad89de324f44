"""Kafka principals, one per service, and the ACLs a Kafka cluster should hold for them:
the one table of who may write and read which topic (``PRINCIPALS``). ``ladder
kafka-acl`` prints it as ``kafka-acls.sh`` commands; docs/bus-security.md shows it
(``markdown_table``, checked by the unit test). Topic names come from
``ladder.config.Topics`` (its short names, ``TOPIC_NAMES``), consumer groups from the
services' own naming, so a renamed topic or prefix is renamed here too.

Each process authenticates as its principal through ``ladder.kafkasecurity``
(LADDER_KAFKA_<SERVICE>_USER, or LADDER_KAFKA_USER); the names below are the service
names its clients pass there.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ladder.config import STACK_PROBE_TOPIC, TOPIC_NAMES, Topics

SUGGEST = "suggest"
EVALUATE = "evaluate"
EARLYSTOP = "earlystop"
LINEAGE = "lineage"
WORKER = "worker"  # the worker SDK (ladder.client) and the load simulator: metrics
ADMIN = "admin"  # `ladder up` / the topics job (creates topics), probes, tests' readers


@dataclass(frozen=True)
class Principal:
    """A Kafka user: the topics (short names) it writes and reads, whether it reads the
    consumer groups and writes the internal topics named after ``group_prefix`` (Faust's
    changelogs), and whether it creates topics (the operator)."""

    name: str
    who: str
    writes: tuple[str, ...]
    reads: tuple[str, ...]
    creates_topics: bool = False
    owns_internal_topics: bool = False


# Anyone allowed may publish metrics (other teams' services too, as their own
# principals: add them the same Write on metrics); dead letters come from every service.
_SHARED_WRITES = ("metrics", "dead-letter")

PRINCIPALS: tuple[Principal, ...] = (
    Principal(SUGGEST, "the suggest service (and replicas)",
              writes=("studies", "trials", *_SHARED_WRITES),
              reads=("trials", "decisions", "studies")),
    Principal(EVALUATE, "the evaluate service (and replicas)",
              writes=("trials", *_SHARED_WRITES),
              reads=("decisions", "studies")),
    Principal(EARLYSTOP, "the early-stop Faust app",
              writes=("rungs", "decisions", *_SHARED_WRITES),
              reads=("metrics", "rungs", "trials", "studies"),
              owns_internal_topics=True),
    Principal(LINEAGE, "the lineage service",
              writes=_SHARED_WRITES, reads=TOPIC_NAMES),
    Principal(WORKER, "workers (ladder.client), the load simulator",
              writes=("metrics",), reads=()),
    Principal(ADMIN, "ladder up / the topics job, ladder status, probes",
              writes=("metrics", STACK_PROBE_TOPIC), reads=(*TOPIC_NAMES, STACK_PROBE_TOPIC),
              creates_topics=True),
)
PRINCIPAL_NAMES = tuple(p.name for p in PRINCIPALS)


def principal(name: str) -> Principal:
    found = next((p for p in PRINCIPALS if p.name == name), None)
    if found is None:
        raise KeyError(f"no Kafka principal {name!r} (principals: {', '.join(PRINCIPAL_NAMES)})")
    return found


def writers(short: str) -> tuple[str, ...]:
    """The principals that may write topic ``short``."""
    return tuple(p.name for p in PRINCIPALS if short in p.writes)


def group_prefix(service: str, topics: Topics) -> str:
    """The consumer groups of ``service``: early-stop's Faust app id (also the prefix
    of its changelog topics); ``ladder-<service>`` for the others (their librdkafka
    consumers' group ids, ``ladder.bus.ConsumerLoop``)."""
    return topics.earlystop_group if service == EARLYSTOP else f"ladder-{service}"


@dataclass(frozen=True)
class Acl:
    """One allow rule: principal, operations, resource type, name and pattern type."""

    principal: str
    operations: tuple[str, ...]
    resource: str  # topic, group or cluster
    name: str = ""
    prefixed: bool = False


def acls(topics: Topics) -> list[Acl]:
    """Every allow rule of ``PRINCIPALS`` for the topics of ``topics``' prefix."""
    rules: list[Acl] = []
    for p in PRINCIPALS:
        for short in p.writes:
            rules.append(Acl(p.name, ("Write", "Describe"), "topic", topics.name(short)))
        for short in p.reads:
            rules.append(Acl(p.name, ("Read", "Describe"), "topic", topics.name(short)))
        if p.reads:
            rules.append(Acl(p.name, ("Read", "Describe"), "group",
                             group_prefix(p.name, topics), prefixed=True))
        if p.owns_internal_topics:
            rules.append(Acl(p.name, ("Read", "Write", "Create", "Describe",
                                      "DescribeConfigs"),
                             "topic", group_prefix(p.name, topics), prefixed=True))
        if p.creates_topics:
            rules.append(Acl(p.name, ("Create", "Describe", "DescribeConfigs",
                                      "AlterConfigs"), "cluster"))
    return rules


def kafka_acls_commands(topics: Topics, bootstrap: str = "$BOOTSTRAP",
                        command_config: str = "admin.properties") -> list[str]:
    """``kafka-acls.sh --add`` commands for ``acls(topics)``, users as ``User:<name>``."""
    lines = []
    for rule in acls(topics):
        argv = ["kafka-acls.sh", "--bootstrap-server", bootstrap,
                "--command-config", command_config, "--add",
                "--allow-principal", f"User:{rule.principal}"]
        for op in rule.operations:
            argv += ["--operation", op]
        if rule.prefixed:
            argv += ["--resource-pattern-type", "prefixed"]
        argv += ["--cluster"] if rule.resource == "cluster" else [f"--{rule.resource}", rule.name]
        # $BOOTSTRAP stays a shell variable; every other word is quoted as needed.
        lines.append(" ".join(word if word.startswith("$") else shlex.quote(word)
                              for word in argv))
    return lines


def markdown_table() -> str:
    """``PRINCIPALS`` as the Markdown table docs/bus-security.md shows (short names)."""
    def names(shorts: tuple[str, ...]) -> str:
        return ", ".join(f"`{s}`" for s in shorts) or "none"

    rows = ["| principal | who | writes | reads |", "|---|---|---|---|"]
    for p in PRINCIPALS:
        extra = []
        if p.owns_internal_topics:
            extra.append("its changelog topics")
        if p.creates_topics:
            extra.append("creates topics")
        writes = ", ".join([names(p.writes), *extra])
        rows.append(f"| `{p.name}` | {p.who} | {writes} | {names(p.reads)} |")
    return "\n".join(rows)
