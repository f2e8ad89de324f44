"""The checkpoint store: the file:// backend against the shared contract, and the pure
parts (retention order, URL parsing, the default URL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ladder import checkpoints, objectstore
from ladder.checkpoints import (
    Checkpoint,
    CheckpointKey,
    CheckpointStoreError,
    FileCheckpointStore,
    S3CheckpointStore,
    expired,
    open_store,
)
from ladder.testing.checkpoint_contract import CheckpointStoreContract, read, save_bytes


class TestFileStore(CheckpointStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FileCheckpointStore:
        return FileCheckpointStore(tmp_path / "ckpt root")


def test_a_file_save_is_a_rename_within_the_root(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path)
    key = CheckpointKey("s", "t", "a", 1)
    staged = store.staging_path(key)
    assert staged.parent == tmp_path / ".staging"
    staged.write_bytes(b"x")
    uri = store.save(staged, key)
    assert uri == (tmp_path / "s" / "t" / "a-step1.ckpt").as_uri()
    # The staging folder holds nothing afterwards, and is not listed as a study.
    assert list((tmp_path / ".staging").iterdir()) == []


def test_fetched_picks_the_backend_of_the_uri(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path)
    uri = save_bytes(store, CheckpointKey("s", "t", "a", 2), b"two")
    with checkpoints.fetched(uri) as path:  # no store at hand: one for the URI's scheme
        assert path.read_bytes() == b"two"
    legacy = tmp_path / "old" / "a-step3.pt"  # URIs of any name load
    legacy.parent.mkdir()
    legacy.write_bytes(b"three")
    with checkpoints.fetched(legacy.as_uri(), store) as path:
        assert path.read_bytes() == b"three"
    with pytest.raises(CheckpointStoreError, match="expected file:// or s3://"):
        with checkpoints.fetched("gs://bucket/key"):
            pass


def ckpt(step: int, saved_at: float, pinned: bool = False, interrupted: bool = False
         ) -> Checkpoint:
    return Checkpoint(f"file:///c/{step}{'i' if interrupted else ''}", "a", step, interrupted,
                      saved_at, 1, pinned)


def test_retention_order_is_save_time_then_step() -> None:
    older_higher = ckpt(9, saved_at=100.0)  # an earlier attempt got further, then failed
    newest = [ckpt(4, saved_at=200.0), ckpt(5, saved_at=300.0)]
    assert expired([older_higher, *newest], keep=2) == [older_higher]
    # Same second (S3 LastModified): the higher step, and a mid-step save after its step.
    same = [ckpt(1, 50.0), ckpt(2, 50.0), ckpt(2, 50.0, interrupted=True)]
    assert [c.uri for c in expired(same, keep=1)] == ["file:///c/2", "file:///c/1"]


def test_retention_never_deletes_pinned_and_keeps_at_least_one() -> None:
    pinned = ckpt(1, 10.0, pinned=True)
    extra = ckpt(2, 20.0)
    rest = [ckpt(3, 30.0), ckpt(4, 40.0)]
    doomed = expired([pinned, extra, *rest], keep=1, pinned={extra.uri})
    assert doomed == [rest[0]]
    assert expired(rest, keep=0) == [rest[0]]  # keep 0 still keeps the newest


def test_retention_always_keeps_the_current_checkpoint_within_keep() -> None:
    # An attempt that lost its lease saved steps 6 and 7 after the reported step 4.
    reported, orphans = ckpt(4, 40.0), [ckpt(6, 60.0), ckpt(7, 70.0)]
    assert expired([reported, *orphans], keep=1, current=reported.uri) == orphans[::-1]
    assert expired([reported, *orphans], keep=2, current=reported.uri) == [orphans[0]]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("relative/path", "expected file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX"),
        ("http://127.0.0.1:8333/bucket", "expected file:///ABSOLUTE/PATH or s3://"),
        ("s3:///prefix-only", "names no bucket"),
        ("s3://bucket/p?versionId=1", "no query or fragment"),
        ("file://otherhost/ckpt", "not a local file URI"),
    ],
)
def test_a_wrong_url_is_a_clear_error(url: str, message: str) -> None:
    with pytest.raises(CheckpointStoreError, match=message):
        open_store(url)


def test_open_store_picks_the_backend() -> None:
    s3 = open_store("s3://ladder-checkpoints/team-a/", client=object())
    assert isinstance(s3, S3CheckpointStore)
    assert (s3.bucket, s3.prefix, s3.url) == ("ladder-checkpoints", "team-a",
                                             "s3://ladder-checkpoints/team-a")
    assert open_store("s3://b").url == "s3://b/"
    local = open_store("file:///var/ckpt")
    assert isinstance(local, FileCheckpointStore) and local.root == Path("/var/ckpt")


def test_default_url_env_then_stack_then_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LADDER_CHECKPOINT_URL", raising=False)
    assert checkpoints.default_url(tmp_path) == (tmp_path / "checkpoints").as_uri()
    (tmp_path / "stack.json").write_text(json.dumps({"checkpoint_url": "s3://stack-bucket/"}))
    assert checkpoints.default_url(tmp_path) == "s3://stack-bucket/"
    monkeypatch.setenv("LADDER_CHECKPOINT_URL", "file:///mnt/shared/ckpt")
    assert checkpoints.default_url(tmp_path) == "file:///mnt/shared/ckpt"


def test_key_names_parse_back() -> None:
    for key in (CheckpointKey("s", "t", "a-step9", 12), CheckpointKey("s", "t", "x", 3, True)):
        parsed = checkpoints._parse_name(key.name)
        assert parsed == (key.attempt_id, key.step, key.interrupted)
    assert checkpoints._parse_name("notes.txt") is None
    assert checkpoints._parse_name("a-step3.ckpt.pin") is None


def test_read_helper_reads_what_was_saved(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path)
    assert read(store, save_bytes(store, CheckpointKey("s", "t", "a", 1), b"ok")) == b"ok"


class NoBucketClient:
    """What boto3 raises on AWS for an upload into a bucket that does not exist
    (SeaweedFS creates it instead, for an admin identity)."""

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "NoSuchBucket", "Message": "none"}}, "PutObject")


def test_a_missing_bucket_is_a_clear_error(tmp_path: Path) -> None:
    store = S3CheckpointStore("no-such-bucket", client=NoBucketClient(), staging_dir=tmp_path)
    with pytest.raises(CheckpointStoreError, match="bucket 'no-such-bucket' does not exist"):
        save_bytes(store, CheckpointKey("s", "t", "a", 1), b"x")
    assert list(tmp_path.iterdir()) == []  # the staged file is gone either way


def test_the_stack_of_the_given_state_folder_names_the_s3_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's state folder, not LADDER_STATE_DIR, decides (as for its endpoints).
    for name in ("LADDER_CHECKPOINT_URL", "LADDER_S3_ENDPOINT", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    identity = tmp_path / "objectstore-s3.json"
    access, _ = objectstore.ensure_identity(identity)
    (tmp_path / "stack.json").write_text(json.dumps({
        "s3_endpoint": "http://127.0.0.1:9", "s3_credentials_file": str(identity),
        "checkpoint_url": "s3://ladder-checkpoints/",
    }))
    store = open_store(state_dir=tmp_path)
    store.connect()
    assert isinstance(store, S3CheckpointStore) and store.url == "s3://ladder-checkpoints/"
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert store.client._request_signer._credentials.access_key == access
