"""Kafka principals and ACLs (ladder.kafkaacl, ``ladder kafka-acl``): who may write what,
with topic names from ladder.config.Topics, and the docs showing the same table."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from ladder import cli, kafkaacl, signing
from ladder.config import STACK_PROBE_TOPIC, TOPIC_NAMES, Topics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bus-security.md"


def test_only_the_owning_services_write_the_signed_topics() -> None:
    assert kafkaacl.writers("decisions") == ("earlystop",)
    assert kafkaacl.writers("rungs") == ("earlystop",)
    assert kafkaacl.writers("studies") == ("suggest",)
    assert kafkaacl.writers("trials") == ("suggest", "evaluate")
    # Every topic signed on the bus (ladder.signing) has owners here: the two agree.
    assert all(kafkaacl.writers(short) for short in signing.SIGNED_TOPICS)
    assert set(kafkaacl.writers("metrics")) == set(kafkaacl.PRINCIPAL_NAMES)


def test_every_named_topic_is_one_of_the_codes_topics() -> None:
    known = {*TOPIC_NAMES, STACK_PROBE_TOPIC}
    for p in kafkaacl.PRINCIPALS:
        assert set(p.writes) <= known and set(p.reads) <= known, p.name


def test_the_rules_use_the_prefix_of_the_deployment() -> None:
    rules = kafkaacl.acls(Topics("prod."))
    decisions = [r for r in rules if r.resource == "topic" and r.name == "prod.decisions"
                 and "Write" in r.operations]
    assert [r.principal for r in decisions] == ["earlystop"]
    group = [r for r in rules if r.resource == "group" and r.principal == "earlystop"]
    assert [(g.name, g.prefixed) for g in group] == [("ladder-earlystop-prod", True)]
    changelogs = [r for r in rules if r.resource == "topic" and r.prefixed]
    assert [(r.principal, r.name) for r in changelogs] == [("earlystop", "ladder-earlystop-prod")]
    assert [r.principal for r in rules if r.resource == "cluster"] == ["admin"]
    # A worker reads nothing and writes metrics only.
    assert {(r.name, r.operations[0]) for r in rules if r.principal == "worker"} == {
        ("prod.metrics", "Write")}


def test_kafka_acl_prints_runnable_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["kafka-acl", "--topic-prefix", "t.", "--bootstrap", "k:9093"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(kafkaacl.acls(Topics("t.")))
    first = shlex.split(lines[0])
    assert first[:7] == ["kafka-acls.sh", "--bootstrap-server", "k:9093", "--command-config",
                         "admin.properties", "--add", "--allow-principal"]
    assert ("kafka-acls.sh --bootstrap-server k:9093 --command-config admin.properties --add "
            "--allow-principal User:earlystop --operation Write --operation Describe "
            "--topic t.decisions") in lines


def test_docs_show_the_principals_table() -> None:
    assert kafkaacl.markdown_table() in DOCS.read_text()
