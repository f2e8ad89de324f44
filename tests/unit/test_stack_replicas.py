"""LADDER_REPLICAS: how many processes of suggest and evaluate the embedded stack runs."""

from __future__ import annotations

import pytest
from ladder.stack import components


def test_replicas_default_to_one_and_read_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LADDER_REPLICAS", raising=False)
    assert components.replica_count() == 1
    monkeypatch.setenv("LADDER_REPLICAS", " 3 ")
    assert components.replica_count() == 3


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_a_bad_replica_count_names_the_setting(bad: str) -> None:
    with pytest.raises(ValueError, match="LADDER_REPLICAS"):
        components.replica_count(bad)


def test_only_replicated_suggest_owns_partitions_through_leases() -> None:
    assert components.replica_env("suggest", 2) == {"LADDER_SUGGEST_LEASES": "1"}
    assert components.replica_env("suggest", 1) == {}
    assert components.replica_env("evaluate", 3) == {}
    assert set(components.REPLICATED) == {"suggest", "evaluate"}
