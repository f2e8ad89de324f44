"""Early-stop's Faust app runs the tansu workarounds on the tansu profile only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ladder.config import KAFKA_PROFILE, Settings, Topics

from services.earlystop.app import (
    EarlyStopOptions,
    create_app,
    end_offsets_reader,
    fetched_end_offsets,
    listed_end_offsets,
)


def app_on(settings: Settings, tmp_path: Path):  # noqa: ANN201 - a faust.App
    return create_app(settings, EarlyStopOptions(data_dir=tmp_path / "earlystop"))


def test_on_tansu_every_workaround_is_on(tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://x", topics=Topics("p."))
    app = app_on(settings, tmp_path)
    assert app.conf.id == "ladder-earlystop-p"
    assert app.contiguous_topics == settings.topics.contiguous
    assert app.bootstrap_servers == "127.0.0.1:1"  # end offsets confirmed by a fetch
    assert app.conf.broker_session_timeout == 6.0
    assert app.conf.broker_rebalance_timeout == 5.0
    assert app.conf.broker_heartbeat_interval == 1.0
    assert end_offsets_reader(settings.broker) is fetched_end_offsets


def test_on_kafka_none_of_them_runs(tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://x")
    app = app_on(replace(settings, broker=KAFKA_PROFILE), tmp_path)
    assert app.contiguous_topics == frozenset()  # no gap guard
    assert app.bootstrap_servers == ""  # no end-offset probe
    assert app.conf.broker_session_timeout == 45.0
    assert app.conf.broker_rebalance_timeout == 60.0
    assert end_offsets_reader(KAFKA_PROFILE) is listed_end_offsets
