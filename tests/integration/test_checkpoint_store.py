"""The s3:// checkpoint store against a real SeaweedFS (the embedded stack's ``weed``):
the same contract the file:// store passes in tests/unit, plus what only S3 has."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ladder import checkpoints, objectstore
from ladder.checkpoints import CheckpointKey, S3CheckpointStore
from ladder.objectstore import S3Settings
from ladder.testing.checkpoint_contract import CheckpointStoreContract, read, save_bytes
from ladder.testing.objectstore import seaweedfs

pytestmark = pytest.mark.integration

BUCKET = "ladder-checkpoints"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Settings]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as settings:
        yield settings


@pytest.fixture(scope="module")
def s3_client(s3: S3Settings) -> Any:
    return objectstore.client(s3)


class TestS3Store(CheckpointStoreContract):
    @pytest.fixture
    def store(self, s3_client: Any, tmp_path: Path) -> S3CheckpointStore:
        # A prefix of its own per test: the bucket is shared by the module.
        return S3CheckpointStore(BUCKET, f"it-{uuid.uuid4().hex[:8]}", client=s3_client,
                                 staging_dir=tmp_path / "staging")


def test_open_store_reaches_the_stack_object_store_from_the_environment(
    s3: S3Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What a worker beside the stack sees: LADDER_S3_ENDPOINT / AWS_* (or stack.json).
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LADDER_CHECKPOINT_URL", f"s3://{BUCKET}/env-prefix")
    store = checkpoints.open_store(state_dir=tmp_path)
    assert store.url == f"s3://{BUCKET}/env-prefix"
    uri = save_bytes(store, CheckpointKey("s", "t", "a", 1), b"via env")
    assert uri == f"s3://{BUCKET}/env-prefix/s/t/a-step1.ckpt"
    with checkpoints.fetched(uri) as path:  # a fresh store for the URI, same settings
        assert path.read_bytes() == b"via env"
    store.delete(uri)


def test_a_fetched_download_is_removed_after_loading(s3_client: Any, tmp_path: Path) -> None:
    store = S3CheckpointStore(BUCKET, "dl", client=s3_client, staging_dir=tmp_path)
    uri = save_bytes(store, CheckpointKey("s", "t", "a", 1), b"temporary")
    with store.fetched(uri) as path:
        assert read(store, uri) == b"temporary"
        held = path
    assert not held.exists() and not held.parent.exists()
