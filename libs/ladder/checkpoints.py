"""Where trial checkpoints live: one small store interface, two backends.

| URL                     | backend                                                    |
|-------------------------|------------------------------------------------------------|
| ``file:///ABS/PATH``    | a folder (local disk, or a filesystem every worker mounts) |
| ``s3://BUCKET/PREFIX``  | any S3 endpoint through boto3 (``ladder.objectstore``)     |

The default (:func:`default_url`): LADDER_CHECKPOINT_URL, else the ``checkpoint_url``
the embedded stack records (its SeaweedFS), else ``file://<state>/checkpoints``.

Layout: ``<root>/<study>/<trial>/<attempt>-step<N>.ckpt`` (``-step<N>-interrupted``
for a save in the middle of step N+1); a pinned checkpoint has a ``<name>.pin``
marker beside it. The workload writes a checkpoint to a local path the store gives
(:meth:`CheckpointStore.staging_path`), :meth:`~CheckpointStore.save` moves or uploads
it and returns its URI; :meth:`~CheckpointStore.fetched` gives a local path to load
from. Retention (:meth:`~CheckpointStore.retain`): the newest ``keep`` of a trial plus
every pinned one (a PAUSE or the final result refers to it); the rest are deleted.

::

    store = open_store()                        # default_url()
    path = store.staging_path(key)
    workload.save_checkpoint(state, path)
    uri = store.save(path, key)                 # s3://ladder-checkpoints/s1/t1/a1-step3.ckpt
    with store.fetched(uri) as local:
        state = workload.load_checkpoint(local, params, seed)
"""

from __future__ import annotations

import abc
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from ladder import config, objectstore

CHECKPOINT_URL_ENV = "LADDER_CHECKPOINT_URL"
SUFFIX = ".ckpt"
PIN_SUFFIX = ".pin"
_NAME = re.compile(r"^(?P<attempt>.+)-step(?P<step>\d+)(?P<interrupted>-interrupted)?\.ckpt$")
# Characters kept as they are in a path segment; ids with others are percent-encoded.
_SAFE = "-_.=+@"


class CheckpointStoreError(ValueError):
    """A checkpoint URL or URI the stores cannot use (the message says why)."""


class CheckpointMissing(FileNotFoundError):
    """The checkpoint a URI names does not exist (deleted, or never written)."""


@dataclass(frozen=True)
class CheckpointKey:
    """What names one checkpoint: its trial, the attempt that saved it and the last
    whole step in it (``interrupted``: saved in the middle of the next step)."""

    study_id: str
    trial_id: str
    attempt_id: str
    step: int
    interrupted: bool = False

    @property
    def name(self) -> str:
        tag = "-interrupted" if self.interrupted else ""
        return f"{_segment(self.attempt_id)}-step{self.step}{tag}{SUFFIX}"

    def parts(self) -> tuple[str, str, str]:
        """The path segments under a store's root."""
        return _segment(self.study_id), _segment(self.trial_id), self.name


@dataclass(frozen=True)
class Checkpoint:
    """One stored checkpoint of a trial (what :meth:`CheckpointStore.list` returns)."""

    uri: str
    attempt_id: str
    step: int
    interrupted: bool
    saved_at: float  # unix seconds (the store's clock: file mtime, S3 LastModified)
    size: int
    pinned: bool = False


def _segment(value: str) -> str:
    if not value or value in (".", ".."):
        raise CheckpointStoreError(f"an id in a checkpoint path cannot be {value!r}")
    return quote(value, safe=_SAFE)


def _parse_name(name: str) -> tuple[str, int, bool] | None:
    """(attempt id, step, interrupted) of a checkpoint file name; None for other files."""
    match = _NAME.match(name)
    if match is None:
        return None
    return unquote(match["attempt"]), int(match["step"]), bool(match["interrupted"])


def expired(
    checkpoints: Sequence[Checkpoint], keep: int, pinned: Collection[str] = (),
    current: str = "",
) -> list[Checkpoint]:
    """Which checkpoints retention deletes: every unpinned one but the ``keep`` (at least
    one) most recently saved. ``pinned`` adds URIs to those marked pinned in the store.
    ``current`` (the checkpoint the trial's record names, which the next attempt is
    handed) is always one of the ``keep``, however many were saved after it (an attempt
    that lost its lease may have saved more, never reported)."""
    unpinned = [c for c in checkpoints if not c.pinned and c.uri not in pinned]
    # Newest first by save time; equal times (S3 has 1 s resolution) by step.
    unpinned.sort(key=lambda c: (c.uri == current, c.saved_at, c.step, c.interrupted),
                  reverse=True)
    return unpinned[max(1, keep):]


class CheckpointStore(abc.ABC):
    """The operations the worker runtime needs; see the module docstring."""

    #: The URL this store was opened with (``file:///...`` or ``s3://bucket/prefix``).
    url: str

    def connect(self) -> None:  # noqa: B027 - optional: most stores need nothing
        """Set up the client now (no request is sent), so that the first save's time is
        the save's alone and a store that cannot be used fails before any training."""

    @abc.abstractmethod
    def staging_path(self, key: CheckpointKey) -> Path:
        """A fresh local path for the workload to write ``key``'s checkpoint to (its
        folder exists); :meth:`save` takes the file from there."""

    @abc.abstractmethod
    def save(self, local: Path, key: CheckpointKey) -> str:
        """Store the file at ``local`` (it is moved or uploaded, then gone) as ``key``;
        its URI. Readers never see a partly written checkpoint."""

    @abc.abstractmethod
    @contextmanager
    def fetched(self, uri: str) -> Iterator[Path]:
        """A local path holding the checkpoint ``uri`` for the ``with`` block (a download
        is removed afterwards). Raises :class:`CheckpointMissing`."""

    @abc.abstractmethod
    def delete(self, uri: str) -> None:
        """Remove a checkpoint and its pin marker (nothing if already gone)."""

    @abc.abstractmethod
    def pin(self, uri: str) -> None:
        """Mark a checkpoint as kept by retention (a PAUSE or a result refers to it)."""

    @abc.abstractmethod
    def list(self, study_id: str, trial_id: str) -> list[Checkpoint]:
        """Every checkpoint of a trial, in no particular order."""

    def retain(self, study_id: str, trial_id: str, keep: int, pinned: Collection[str] = (),
               current: str = "") -> list[str]:
        """Delete what :func:`expired` says for this trial; the URIs deleted."""
        doomed = expired(self.list(study_id, trial_id), keep, pinned, current)
        for checkpoint in doomed:
            self.delete(checkpoint.uri)
        return [c.uri for c in doomed]


# --- file:// -------------------------------------------------------------------------------


def _file_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise CheckpointStoreError(f"not a local file URI: {uri!r} (expected file:///ABS/PATH)")
    path = Path(unquote(parsed.path))
    if not path.is_absolute():
        raise CheckpointStoreError(f"a file URI needs an absolute path: {uri!r}")
    return path


class FileCheckpointStore(CheckpointStore):
    """Checkpoints as files under one folder; staging inside it, so a save is a rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def staging_path(self, key: CheckpointKey) -> Path:
        staging = self.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        return staging / f"{uuid.uuid4().hex}-{key.name}"

    def _path(self, key: CheckpointKey) -> Path:
        return self.root.joinpath(*key.parts())

    def save(self, local: Path, key: CheckpointKey) -> str:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{uuid.uuid4().hex}.tmp")
        shutil.move(local, tmp)  # a rename when staged under this root
        # Rename last: a URI never names a half-written file.
        tmp.replace(target)
        return target.as_uri()

    @contextmanager
    def fetched(self, uri: str) -> Iterator[Path]:
        path = _file_path(uri)
        if not path.is_file():
            raise CheckpointMissing(f"checkpoint {uri} does not exist")
        yield path

    def delete(self, uri: str) -> None:
        path = _file_path(uri)
        for victim in (path, path.with_name(path.name + PIN_SUFFIX)):
            victim.unlink(missing_ok=True)

    def pin(self, uri: str) -> None:
        path = _file_path(uri)
        if not path.is_file():
            raise CheckpointMissing(f"checkpoint {uri} does not exist")
        path.with_name(path.name + PIN_SUFFIX).touch()

    def list(self, study_id: str, trial_id: str) -> list[Checkpoint]:
        folder = self.root / _segment(study_id) / _segment(trial_id)
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return []
        names = {entry.name for entry in entries}
        found = []
        for entry in entries:
            parsed = _parse_name(entry.name)
            if parsed is None:
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:  # deleted meanwhile (retention elsewhere)
                continue
            attempt, step, interrupted = parsed
            found.append(Checkpoint(
                uri=Path(entry.path).as_uri(), attempt_id=attempt, step=step,
                interrupted=interrupted, saved_at=stat.st_mtime, size=stat.st_size,
                pinned=entry.name + PIN_SUFFIX in names,
            ))
        return found


# --- s3:// ---------------------------------------------------------------------------------


def _bucket_key(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise CheckpointStoreError(f"not an S3 URI: {uri!r} (expected s3://BUCKET/KEY)")
    return parsed.netloc, parsed.path.lstrip("/")


def _missing(exc: Exception) -> bool:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code")) in ("404", "NoSuchKey", "NotFound")


class S3CheckpointStore(CheckpointStore):
    """Checkpoints as objects under ``s3://bucket/prefix``; a save is one upload (S3
    objects appear whole), staged in a local temporary folder."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: Any = None,
        staging_dir: Path | None = None,
        settings: objectstore.S3Settings | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}/"
        self._client = client
        self._settings = settings  # for the client made on first use (None: the default)
        self._staging = staging_dir

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = objectstore.client(self._settings)
        return self._client

    def connect(self) -> None:
        _ = self.client

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _uri(self, key: str, bucket: str | None = None) -> str:
        return f"s3://{bucket or self.bucket}/{key}"

    def staging_path(self, key: CheckpointKey) -> Path:
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="ladder-checkpoints-"))
        self._staging.mkdir(parents=True, exist_ok=True)
        return self._staging / f"{uuid.uuid4().hex}-{key.name}"

    def save(self, local: Path, key: CheckpointKey) -> str:
        object_key = self._key(*key.parts())
        try:
            self.client.upload_file(str(local), self.bucket, object_key)
        except Exception as exc:
            if "NoSuchBucket" in str(exc):
                raise CheckpointStoreError(
                    f"bucket {self.bucket!r} does not exist at {self._endpoint()} "
                    f"(checkpoint URL {self.url})"
                ) from exc
            raise
        finally:
            local.unlink(missing_ok=True)
        return self._uri(object_key)

    def _endpoint(self) -> str:
        return str(getattr(getattr(self.client, "meta", None), "endpoint_url", "the endpoint"))

    @contextmanager
    def fetched(self, uri: str) -> Iterator[Path]:
        bucket, key = _bucket_key(uri)
        folder = Path(tempfile.mkdtemp(prefix="ladder-checkpoint-"))
        local = folder / Path(key).name
        try:
            try:
                self.client.download_file(bucket, key, str(local))
            except Exception as exc:
                if _missing(exc):
                    raise CheckpointMissing(f"checkpoint {uri} does not exist") from exc
                raise
            yield local
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def delete(self, uri: str) -> None:
        bucket, key = _bucket_key(uri)
        # DeleteObject of a missing key succeeds: nothing to guard.
        self.client.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": key}, {"Key": key + PIN_SUFFIX}], "Quiet": True},
        )

    def pin(self, uri: str) -> None:
        bucket, key = _bucket_key(uri)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _missing(exc):
                raise CheckpointMissing(f"checkpoint {uri} does not exist") from exc
            raise
        self.client.put_object(Bucket=bucket, Key=key + PIN_SUFFIX, Body=b"")

    def list(self, study_id: str, trial_id: str) -> list[Checkpoint]:
        prefix = self._key(_segment(study_id), _segment(trial_id)) + "/"
        objects: dict[str, dict[str, Any]] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            for item in page.get("Contents", []):
                objects[item["Key"]] = item
        found = []
        for key, item in objects.items():
            parsed = _parse_name(key.rsplit("/", 1)[-1])
            if parsed is None:
                continue
            attempt, step, interrupted = parsed
            found.append(Checkpoint(
                uri=self._uri(key), attempt_id=attempt, step=step, interrupted=interrupted,
                saved_at=item["LastModified"].timestamp(), size=int(item.get("Size", 0)),
                pinned=key + PIN_SUFFIX in objects,
            ))
        return found


# --- choosing a store ----------------------------------------------------------------------


def default_url(state_dir: Path | None = None) -> str:
    """LADDER_CHECKPOINT_URL, else the embedded stack's ``checkpoint_url``, else
    ``file://<state>/checkpoints`` (``state_dir`` defaults to LADDER_STATE_DIR)."""
    chosen = objectstore.default_checkpoint_url(state_dir)
    if chosen:
        return chosen
    return ((state_dir or config.state_dir()).resolve() / "checkpoints").as_uri()


def open_store(
    url: str | None = None, *, state_dir: Path | None = None, client: Any = None
) -> CheckpointStore:
    """The store for ``url`` (default :func:`default_url`). ``client`` is the boto3
    client of an ``s3://`` store (default: one for ``ladder.objectstore.settings`` of
    ``state_dir``, made when first needed). Raises :class:`CheckpointStoreError` for a
    URL no backend serves."""
    url = url or default_url(state_dir)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileCheckpointStore(_file_path(url))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise CheckpointStoreError(f"checkpoint URL {url!r} names no bucket (s3://BUCKET/)")
        if parsed.query or parsed.fragment:
            raise CheckpointStoreError(f"checkpoint URL {url!r}: no query or fragment allowed")
        return S3CheckpointStore(
            parsed.netloc, parsed.path, client=client,
            settings=None if client is not None else objectstore.settings(state_dir),
        )
    raise CheckpointStoreError(
        f"checkpoint URL {url!r}: expected file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX"
    )


def scheme(uri: str) -> str:
    return urlparse(uri).scheme


def store_for(uri: str, store: CheckpointStore | None = None) -> CheckpointStore:
    """A store that reads, pins and deletes checkpoint ``uri``: ``store`` when it is of
    the URI's kind (an S3 client is reused), else one for the URI's scheme (a trial
    may resume from a checkpoint another worker saved elsewhere)."""
    kind = scheme(uri)
    if store is not None and scheme(store.url) == kind:
        return store
    if kind == "file":
        return FileCheckpointStore(_file_path(uri).parent)
    if kind == "s3":
        return S3CheckpointStore(_bucket_key(uri)[0])
    raise CheckpointStoreError(f"checkpoint URI {uri!r}: expected file:// or s3://")


@contextmanager
def fetched(uri: str, store: CheckpointStore | None = None) -> Iterator[Path]:
    """A local path holding checkpoint ``uri`` for the ``with`` block, from whichever
    backend its scheme names (see :func:`store_for`)."""
    with store_for(uri, store).fetched(uri) as path:
        yield path
