"""The S3 object store of a Ladder deployment: where it is and a client for it.

``ladder up`` runs SeaweedFS as the embedded object store (the broker's log and the
trial checkpoints live there) and records it in ``<state>/stack.json``; in production
any S3 endpoint is named with environment variables. Every process finds it the same
way, with no configuration beside the embedded stack:

| env var                 | default                                                |
|-------------------------|--------------------------------------------------------|
| LADDER_S3_ENDPOINT      | stack.json ``s3_endpoint``; neither: no object store   |
| AWS_ACCESS_KEY_ID       | (with LADDER_S3_ENDPOINT) none: boto3's own lookup      |
| AWS_SECRET_ACCESS_KEY   | (with LADDER_S3_ENDPOINT) none: boto3's own lookup      |
| AWS_DEFAULT_REGION      | (with LADDER_S3_ENDPOINT) AWS_REGION, else us-east-1    |
| LADDER_CHECKPOINT_URL   | stack.json ``checkpoint_url`` (``s3://ladder-checkpoints/``) |

Without LADDER_S3_ENDPOINT the whole of stack.json's store is used: its endpoint,
region and the keys in its credentials file (``s3_credentials_file``, mode 0600), so
AWS_* variables meant for another S3 never mix with the embedded store's endpoint.

::

    from ladder import objectstore

    s3 = objectstore.client()              # raises NoObjectStore when none is configured
    url = objectstore.default_checkpoint_url()   # "s3://ladder-checkpoints/" or None

boto3 is imported only when a client is made: reading the settings stays cheap.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ladder import config

DEFAULT_REGION = "us-east-1"
# The embedded store's one identity (SeaweedFS ``-s3.config`` format).
EMBEDDED_ACCESS_KEY = "ladder"
_IDENTITY_ACTIONS = ["Admin", "Read", "Write", "List", "Tagging"]


class NoObjectStore(RuntimeError):
    """No S3 endpoint is configured (neither LADDER_S3_ENDPOINT nor a stack.json)."""


@dataclass(frozen=True)
class S3Settings:
    """How to reach one S3 endpoint. ``repr`` hides the secret (settings get logged)."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = DEFAULT_REGION

    def __repr__(self) -> str:
        return (
            f"S3Settings(endpoint_url={self.endpoint_url!r}, access_key={self.access_key!r},"
            f" secret_key='***', region={self.region!r})"
        )

    def env(self) -> dict[str, str]:
        """The same settings as the environment of a child process (this module's
        variables plus the ones the AWS SDKs and tansu's ``object_store`` read)."""
        return {
            "LADDER_S3_ENDPOINT": self.endpoint_url,
            "AWS_ENDPOINT": self.endpoint_url,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ALLOW_HTTP": "true" if self.endpoint_url.startswith("http://") else "false",
        }


def settings(state_dir: Path | None = None) -> S3Settings | None:
    """The object store this process should use (see the module table); None when no
    endpoint is configured. ``state_dir`` defaults to LADDER_STATE_DIR."""
    return _configured(state_dir)


def _configured(state_dir: Path | None) -> S3Settings | None:
    stack = config.stack_values(state_dir)
    endpoint = os.environ.get("LADDER_S3_ENDPOINT")
    if not endpoint:
        return stack_settings(stack)
    access = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    return S3Settings(endpoint, access, secret, region or DEFAULT_REGION)


def stack_settings(stack: Mapping[str, Any]) -> S3Settings | None:
    """The object store a stack.json records (None: that stack runs none), ignoring the
    environment: what the stack itself and its broker use."""
    endpoint = stack.get("s3_endpoint")
    credentials_file = stack.get("s3_credentials_file")
    if not endpoint or not credentials_file:
        return None
    access, secret = read_identity(Path(credentials_file))
    return S3Settings(endpoint, access, secret, stack.get("s3_region") or DEFAULT_REGION)


def client(
    settings: S3Settings | None = None, *, timeout: float = 10.0, attempts: int = 3
) -> Any:
    """A boto3 S3 client for ``settings`` (default: :func:`settings`); path-style
    addressing, which SeaweedFS and MinIO need; ``timeout`` seconds to connect and per
    read, ``attempts`` tries per call. Raises :class:`NoObjectStore` when nothing is
    configured."""
    chosen = settings if settings is not None else _configured(None)
    if chosen is None:
        raise NoObjectStore(
            "no object store: run `ladder up` or set LADDER_S3_ENDPOINT (and AWS_* keys)"
        )
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=chosen.endpoint_url,
        aws_access_key_id=chosen.access_key or None,
        aws_secret_access_key=chosen.secret_key or None,
        region_name=chosen.region,
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": attempts, "mode": "standard"},
        ),
    )


def default_checkpoint_url(state_dir: Path | None = None) -> str | None:
    """Where trial checkpoints go by default: LADDER_CHECKPOINT_URL, else the
    ``checkpoint_url`` stack.json records, else None."""
    explicit = os.environ.get("LADDER_CHECKPOINT_URL")
    if explicit:
        return explicit
    return config.stack_values(state_dir).get("checkpoint_url") or None


# --- the embedded store's credentials file ---------------------------------------------


def ensure_identity(path: Path) -> tuple[str, str]:
    """The access and secret key in ``path`` (SeaweedFS's ``-s3.config`` JSON), written
    first with a random secret (mode 0600) when the file does not exist: one secret per
    state folder, kept across restarts."""
    if not path.exists():
        secret = secrets.token_urlsafe(32)
        document = {
            "identities": [
                {
                    "name": EMBEDDED_ACCESS_KEY,
                    "credentials": [{"accessKey": EMBEDDED_ACCESS_KEY, "secretKey": secret}],
                    "actions": _IDENTITY_ACTIONS,
                }
            ]
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(document, out, indent=2)
        tmp.replace(path)
    return read_identity(path)


def read_identity(path: Path) -> tuple[str, str]:
    """The first access/secret key pair of a SeaweedFS ``-s3.config`` file."""
    document = json.loads(path.read_text())
    credential = document["identities"][0]["credentials"][0]
    return credential["accessKey"], credential["secretKey"]
