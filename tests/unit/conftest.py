"""Unit tests test pure logic: none may depend on what the integration tests' session
fixtures put in the environment (``make test`` runs tests/integration first, and its
session-wide ``infra_env`` keeps the bus signing keys set until the session ends)."""

from __future__ import annotations

import pytest

# Variables a session fixture of the integration tests sets for its whole run.
_SESSION_ENV = ("LADDER_BUS_SIGNING_KEYS", "LADDER_BUS_SIGNING_KEY")


@pytest.fixture(autouse=True)
def _no_integration_session_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _SESSION_ENV:
        monkeypatch.delenv(name, raising=False)
