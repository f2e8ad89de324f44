"""Every service's command line starts from ``ladder.config.service_parser``."""

from __future__ import annotations

import pytest
from ladder.config import service_parser


def test_defaults_and_the_service_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = service_parser("evaluate", "doc", 50052, read_interval_ms=100)
    assert parser.prog == "python -m services.evaluate"
    assert vars(parser.parse_args([])) == {"port": 50052, "read_interval_ms": 100}
    monkeypatch.setenv("LADDER_EVALUATE_PORT", "6000")
    monkeypatch.setenv("LADDER_EVALUATE_READ_INTERVAL_MS", "0")
    parser = service_parser("evaluate", "doc", 50052, read_interval_ms=100)
    assert vars(parser.parse_args([])) == {"port": 6000, "read_interval_ms": 0}
    assert parser.parse_args(["--port", "7000"]).port == 7000


def test_a_named_port_variable_and_no_read_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LADDER_EARLYSTOP_HEALTH_PORT", "6001")
    parser = service_parser("earlystop", "doc", 50054, port_env="LADDER_EARLYSTOP_HEALTH_PORT")
    assert vars(parser.parse_args([])) == {"port": 6001}
