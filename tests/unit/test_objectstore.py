"""ladder.objectstore: where the object store is and its credentials file; no server."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from ladder import objectstore
from ladder.objectstore import S3Settings

_AWS = ("LADDER_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION", "AWS_REGION", "LADDER_CHECKPOINT_URL")


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in _AWS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LADDER_STATE_DIR", str(tmp_path))
    return tmp_path


def _write_stack(state: Path, **values: object) -> None:
    (state / "stack.json").write_text(json.dumps(values))


def test_the_identity_is_made_once_private_and_reused(state: Path) -> None:
    path = state / "objectstore-s3.json"
    access, secret = objectstore.ensure_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert access == "ladder" and len(secret) >= 32
    assert objectstore.ensure_identity(path) == (access, secret)
    identity = json.loads(path.read_text())["identities"][0]
    assert "Admin" in identity["actions"] and "Write" in identity["actions"]


def test_no_object_store_without_an_endpoint(state: Path) -> None:
    assert objectstore.settings() is None
    assert objectstore.default_checkpoint_url() is None
    with pytest.raises(objectstore.NoObjectStore):
        objectstore.client()


def test_the_stack_json_store_is_used_whole(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secret = objectstore.ensure_identity(state / "objectstore-s3.json")
    _write_stack(state, s3_endpoint="http://127.0.0.1:9000", s3_region="us-east-1",
                 s3_credentials_file=str(state / "objectstore-s3.json"),
                 checkpoint_url="s3://ladder-checkpoints/")
    # AWS keys meant for another S3 do not mix with the stack's endpoint.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone-else")
    assert objectstore.settings() == S3Settings("http://127.0.0.1:9000", "ladder", secret)
    assert objectstore.default_checkpoint_url() == "s3://ladder-checkpoints/"
    monkeypatch.setenv("LADDER_CHECKPOINT_URL", "s3://elsewhere/")
    assert objectstore.default_checkpoint_url() == "s3://elsewhere/"


def test_an_endpoint_in_the_environment_wins(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_stack(state, s3_endpoint="http://127.0.0.1:9000")
    monkeypatch.setenv("LADDER_S3_ENDPOINT", "https://s3.example")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hidden")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    found = objectstore.settings()
    assert found == S3Settings("https://s3.example", "key", "hidden", "eu-west-1")
    assert "hidden" not in repr(found)
    assert found.env()["AWS_ALLOW_HTTP"] == "false"


def test_client_is_path_style_on_the_endpoint(state: Path) -> None:
    s3 = objectstore.client(S3Settings("http://127.0.0.1:9", "a", "b"), timeout=1.0)
    assert s3.meta.endpoint_url == "http://127.0.0.1:9"
    assert s3.meta.config.s3["addressing_style"] == "path"
