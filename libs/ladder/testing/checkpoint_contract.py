"""The contract every checkpoint store backend keeps (``ladder.checkpoints``).

A backend's test module subclasses :class:`CheckpointStoreContract` and provides a
``store`` fixture (a fresh, empty store); the file backend runs it in tests/unit, the
S3 one against a real SeaweedFS in tests/integration.
"""

from __future__ import annotations

import os
import uuid

import pytest

from ladder.checkpoints import CheckpointKey, CheckpointMissing, CheckpointStore


def save_bytes(store: CheckpointStore, key: CheckpointKey, data: bytes) -> str:
    """What the runtime does: the workload writes to the staging path, the store saves."""
    path = store.staging_path(key)
    path.write_bytes(data)
    uri = store.save(path, key)
    assert not path.exists(), "save takes the staged file"
    return uri


def read(store: CheckpointStore, uri: str) -> bytes:
    with store.fetched(uri) as path:
        return path.read_bytes()


class CheckpointStoreContract:
    """Tests a backend inherits; ``store`` is the backend's fixture."""

    def ids(self) -> tuple[str, str]:
        return f"s-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"

    def test_save_then_fetch_round_trips(self, store: CheckpointStore) -> None:
        study, trial = self.ids()
        key = CheckpointKey(study, trial, "a1", 3)
        uri = save_bytes(store, key, b"weights-3")
        assert uri.startswith(store.url.rstrip("/") + "/")
        assert uri.endswith(f"/{study}/{trial}/a1-step3.ckpt")
        assert read(store, uri) == b"weights-3"

    def test_list_names_attempt_step_and_only_this_trial(self, store: CheckpointStore) -> None:
        study, trial = self.ids()
        save_bytes(store, CheckpointKey(study, trial, "a1", 1), b"1")
        save_bytes(store, CheckpointKey(study, trial, "a2", 4, interrupted=True), b"4+")
        save_bytes(store, CheckpointKey(study, trial + "x", "a1", 1), b"other trial")
        listed = sorted(store.list(study, trial), key=lambda c: c.step)
        assert [(c.attempt_id, c.step, c.interrupted) for c in listed] == [
            ("a1", 1, False), ("a2", 4, True)
        ]
        assert [c.size for c in listed] == [1, 2]
        assert all(c.saved_at > 0 and not c.pinned for c in listed)
        assert store.list(study, "never-saved") == []

    def test_ids_with_any_characters_round_trip(self, store: CheckpointStore) -> None:
        study, trial = "team/a b:1", "trial?#%1"
        key = CheckpointKey(study, trial, "att/1", 2)
        uri = save_bytes(store, key, b"odd")
        assert read(store, uri) == b"odd"
        (listed,) = store.list(study, trial)
        assert (listed.uri, listed.attempt_id, listed.step) == (uri, "att/1", 2)
        store.delete(uri)

    def test_saving_a_key_again_replaces_it(self, store: CheckpointStore) -> None:
        study, trial = self.ids()
        key = CheckpointKey(study, trial, "a1", 2)
        first = save_bytes(store, key, b"old")
        second = save_bytes(store, key, b"new")
        assert first == second and read(store, second) == b"new"
        assert len(store.list(study, trial)) == 1

    def test_delete_and_a_missing_checkpoint(self, store: CheckpointStore) -> None:
        study, trial = self.ids()
        uri = save_bytes(store, CheckpointKey(study, trial, "a1", 1), b"x")
        store.delete(uri)
        store.delete(uri)  # deleting twice is fine (concurrent retention)
        assert store.list(study, trial) == []
        with pytest.raises(CheckpointMissing), store.fetched(uri):
            pass
        with pytest.raises(CheckpointMissing):
            store.pin(uri)

    def test_retention_keeps_the_newest_and_the_pinned(self, store: CheckpointStore) -> None:
        study, trial = self.ids()
        uris = [save_bytes(store, CheckpointKey(study, trial, "a1", s), b"%d" % s)
                for s in range(1, 6)]
        store.pin(uris[1])  # e.g. the checkpoint a PAUSE refers to
        deleted = store.retain(study, trial, keep=2, pinned={uris[0]})
        assert sorted(deleted) == sorted([uris[2]])
        remaining = {c.uri: c.pinned for c in store.list(study, trial)}
        assert remaining == {uris[0]: False, uris[1]: True, uris[3]: False, uris[4]: False}
        # A marker pin survives later rounds (a pinned= URI only the round it is given),
        # and deleting a pinned checkpoint takes its marker.
        assert sorted(store.retain(study, trial, keep=1)) == sorted([uris[0], uris[3]])
        assert store.retain(study, trial, keep=1) == []
        store.delete(uris[1])
        assert {c.uri for c in store.list(study, trial)} == {uris[4]}

    def test_a_checkpoint_larger_than_one_upload_part(self, store: CheckpointStore) -> None:
        study, trial = self.ids()
        data = os.urandom(9 * 1024 * 1024)  # above boto3's 8 MB multipart threshold
        uri = save_bytes(store, CheckpointKey(study, trial, "a1", 1), data)
        assert read(store, uri) == data
