"""Where early-stop's consumer seeks after a rebalance (app.committed_seeks)."""

from __future__ import annotations

from faust.types import TP

from services.earlystop.app import committed_seeks

CHANGELOGS = {"ladder-earlystop-x-rung_entries-changelog"}


def test_stream_partitions_go_to_their_commit_or_back_to_their_start() -> None:
    studies_new, studies_old = TP("ladder.studies", 2), TP("ladder.studies", 1)
    metrics_zero = TP("ladder.metrics", 0)
    changelog = TP("ladder-earlystop-x-rung_entries-changelog", 0)
    revoked = TP("ladder.metrics", 3)
    committed = {
        studies_new: None,  # nothing ever committed: its first record may have been dropped
        studies_old: 5,
        metrics_zero: 0,
        changelog: None,  # Faust's recovery positions changelogs itself
        revoked: 40,  # revoked while the commits were asked for
    }
    assigned = {studies_new, studies_old, metrics_zero, changelog}

    to_offset, to_start = committed_seeks(committed, assigned, CHANGELOGS, from_earliest=True)

    assert to_offset == {studies_old: 5}
    assert sorted(to_start) == sorted([studies_new, metrics_zero])


def test_a_latest_reset_policy_leaves_uncommitted_partitions_where_they_are() -> None:
    fresh = TP("ladder.metrics", 1)
    to_offset, to_start = committed_seeks({fresh: None}, {fresh}, CHANGELOGS, from_earliest=False)
    assert (to_offset, to_start) == ({}, [])
