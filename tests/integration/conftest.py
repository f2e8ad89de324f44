"""Fixtures for integration tests: a real tansu broker and redis-server (started
by the project's own ``ladder up --no-services``) once per session, and real service
processes, per test (``start_service``) or shared by a module's tests
(``start_module_service``; a test that stops or kills a service keeps its own).
A PostgreSQL server (``postgres``) is started once per session by the first test that
asks for it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ladder.config import Settings, Topics
from ladder.testing import ServiceGroup, ServiceProcess, embedded_infra
from ladder.testing.postgres import (
    PostgresMissing,
    PostgresServer,
    check_available,
    postgres_server,
)


@pytest.fixture(scope="session")
def infra_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    state = tmp_path_factory.mktemp("ladder-state")
    with embedded_infra(state) as env, pytest.MonkeyPatch.context() as mp:
        # The test's own producers of decisions, study and trial events sign them as
        # the services do (ladder.signing), whatever state folder their Settings name.
        mp.setenv("LADDER_BUS_SIGNING_KEYS", env["LADDER_BUS_SIGNING_KEYS"])
        yield env


@pytest.fixture(scope="session")
def infra(infra_env: dict[str, str]) -> Settings:
    return Settings(
        kafka_bootstrap=infra_env["LADDER_KAFKA_BOOTSTRAP"],
        redis_url=infra_env["LADDER_REDIS_URL"],
        topics=Topics(infra_env["LADDER_TOPIC_PREFIX"]),
        state_dir=Path(infra_env["LADDER_STATE_DIR"]),
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server on loopback for the whole session. Without PostgreSQL the
    tests that need it fail (CI installs it: .ci/run); a developer may set
    LADDER_ALLOW_SKIP_PG=1 to skip them instead, never in CI."""
    try:
        check_available()
    except PostgresMissing as missing:
        if os.environ.get("LADDER_ALLOW_SKIP_PG") == "1" and not os.environ.get("CI"):
            pytest.skip(f"PostgreSQL tests skipped (LADDER_ALLOW_SKIP_PG=1): {missing}")
        pytest.fail(f"PostgreSQL is needed by this test: {missing}", pytrace=False)
    with postgres_server() as server:
        yield server


@pytest.fixture
def start_service(
    infra_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    group = ServiceGroup(infra_env, tmp_path)
    yield group.start
    group.stop_all()


@pytest.fixture(scope="module")
def start_module_service(
    infra_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ServiceProcess]]:
    group = ServiceGroup(infra_env, tmp_path_factory.mktemp("services"))
    yield group.start
    group.stop_all()
