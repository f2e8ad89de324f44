"""The SDK rides through restarts: a retry hook, a configurable budget, and addresses
read again (env, else stack.json) while calls keep failing."""

import json
from pathlib import Path

import grpc
import pytest
from ladder.client import (
    DEFAULT_RETRY_TIMEOUT,
    LadderClient,
    call_with_retry,
    default_retry_timeout,
)
from ladder.config import Settings
from ladder.testing import RpcStatus


def test_on_retry_is_told_how_long_the_call_has_been_failing() -> None:
    outcomes = [RpcStatus(grpc.StatusCode.UNAVAILABLE)] * 3 + ["ok"]
    ticks = iter(range(0, 100, 5))  # every look at the clock: 5 s later
    seen: list[float] = []

    def call() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert call_with_retry(call, "X", retry_timeout=1000, sleep=lambda _: None,
                           clock=lambda: next(ticks), on_retry=seen.append) == "ok"
    assert len(seen) == 3 and seen[0] > 0
    assert seen == sorted(set(seen))  # grows: the time since the first attempt


def test_the_retry_budget_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LADDER_CLIENT_RETRY_S", raising=False)
    assert default_retry_timeout() == DEFAULT_RETRY_TIMEOUT
    monkeypatch.setenv("LADDER_CLIENT_RETRY_S", "420")
    assert default_retry_timeout() == 420.0


def _write_stack(state: Path, **addrs: str) -> None:
    (state / "stack.json").write_text(json.dumps({
        "kafka_bootstrap": "127.0.0.1:1", "redis_url": "redis://127.0.0.1:2/0", **addrs,
    }))


def test_a_client_from_the_environment_follows_moved_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("LADDER_SUGGEST_ADDR", "LADDER_EVALUATE_ADDR", "LADDER_LINEAGE_ADDR",
                "LADDER_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LADDER_STATE_DIR", str(tmp_path))
    _write_stack(tmp_path, suggest_addr="127.0.0.1:11", evaluate_addr="127.0.0.1:12",
                 lineage_addr="127.0.0.1:13")
    client = LadderClient()
    try:
        assert client.readdress
        before = client._evaluate.stub
        assert client.refresh_addresses() == []
        assert client._evaluate.stub is before  # nothing moved: the channel is kept
        _write_stack(tmp_path, suggest_addr="127.0.0.1:11", evaluate_addr="127.0.0.1:22",
                     lineage_addr="127.0.0.1:13", kafka_bootstrap="127.0.0.1:3")
        assert client.refresh_addresses() == ["evaluate_addr", "kafka_bootstrap"]
        assert client._evaluate.addr == "127.0.0.1:22"
        assert client._evaluate.stub is not before
        assert client.settings.kafka_bootstrap == "127.0.0.1:3"
        # The environment wins over stack.json, as in Settings.from_env.
        monkeypatch.setenv("LADDER_SUGGEST_ADDR", "127.0.0.1:31")
        assert client.refresh_addresses() == ["suggest_addr"]
    finally:
        client.close()


def test_a_client_given_settings_keeps_them(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LADDER_STATE_DIR", str(tmp_path))
    client = LadderClient(Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://x:2/0"))
    try:
        assert not client.readdress
        client._maybe_readdress(failing_for=60.0)
        assert client._suggest.addr == "127.0.0.1:50051"
    finally:
        client.close()
