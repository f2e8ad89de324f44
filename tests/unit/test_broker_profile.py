"""The broker profile is chosen as README.md documents (LADDER_BROKER_PROFILE)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ladder.bus import group_timeouts
from ladder.config import KAFKA_PROFILE, TANSU_PROFILE, Settings, broker_profile

ENV = ("LADDER_BROKER_PROFILE", "LADDER_KAFKA_BOOTSTRAP", "LADDER_KAFKA_LINGER_MS")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LADDER_STATE_DIR", str(tmp_path))
    return tmp_path


def write_stack(state: Path, bootstrap: str, **extra: object) -> None:
    (state / "stack.json").write_text(json.dumps({"kafka_bootstrap": bootstrap, **extra}))


def test_nothing_given_is_the_embedded_broker(clean_env: Path) -> None:
    settings = Settings.from_env()
    assert settings.broker == TANSU_PROFILE and settings.kafka_linger_ms == 20


def test_a_bootstrap_given_by_the_user_is_kafka(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LADDER_KAFKA_BOOTSTRAP", "kafka-0:9092")
    settings = Settings.from_env()
    assert settings.broker == KAFKA_PROFILE and settings.kafka_linger_ms == 5
    assert settings.gap_guarded_topics == frozenset()


def test_the_broker_ladder_up_started_is_tansu(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_stack(clean_env, "127.0.0.1:4001", broker_profile="tansu")
    assert Settings.from_env().broker == TANSU_PROFILE
    # The same broker named in the environment (how child processes are pointed at it).
    monkeypatch.setenv("LADDER_KAFKA_BOOTSTRAP", "127.0.0.1:4001")
    assert Settings.from_env().broker == TANSU_PROFILE
    # Another broker: the user's.
    monkeypatch.setenv("LADDER_KAFKA_BOOTSTRAP", "127.0.0.1:4002")
    assert Settings.from_env().broker == KAFKA_PROFILE


def test_a_stack_on_an_external_kafka_is_kafka(clean_env: Path) -> None:
    write_stack(clean_env, "kafka-0:9092", external={"kafka": True, "redis": False})
    assert Settings.from_env().broker == KAFKA_PROFILE


def test_the_variable_wins(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LADDER_KAFKA_BOOTSTRAP", "kafka-0:9092")
    monkeypatch.setenv("LADDER_BROKER_PROFILE", "Tansu")
    assert Settings.from_env().broker == TANSU_PROFILE
    monkeypatch.setenv("LADDER_KAFKA_LINGER_MS", "7")
    assert Settings.from_env().kafka_linger_ms == 7
    monkeypatch.setenv("LADDER_BROKER_PROFILE", "redpanda")
    with pytest.raises(ValueError, match="kafka, tansu"):
        Settings.from_env()


def test_profiles_differ_only_where_tansu_needs_it() -> None:
    assert broker_profile("kafka") == KAFKA_PROFILE
    tansu, kafka = TANSU_PROFILE, KAFKA_PROFILE
    assert tansu.gap_guard and tansu.pace_consumers and tansu.end_offset_probe
    assert not (kafka.gap_guard or kafka.pace_consumers or kafka.end_offset_probe)
    assert group_timeouts(tansu) == {
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 6000,
    }
    assert tansu.rebalance_timeout_ms == 5000 and tansu.fetch_max_wait_ms == 100


def test_settings_built_in_code_keep_the_embedded_profile() -> None:
    settings = Settings(kafka_bootstrap="unused:0", redis_url="redis://unused")
    assert settings.broker == TANSU_PROFILE
    assert settings.gap_guarded_topics == settings.topics.contiguous
    assert settings.topics.earlystop_group == "ladder-earlystop-ladder"
