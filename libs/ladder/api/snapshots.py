"""What ``trial.checkpoint(...)`` writes and ``trial.restore(...)`` reads back: the
objects a training loop hands over, in one file.

| given                                  | saved                       | restored by          |
|----------------------------------------|-----------------------------|----------------------|
| a path (``str`` / ``os.PathLike``)     | the file or folder there    | writing it back there |
| an object with ``state_dict()``        | its state dict (torch       | ``load_state_dict``  |
| (torch modules, optimizers, schedulers) | modules, optimizers, ...)   |                      |
| an object with ``get_state()`` (a      | its state                   | ``set_state``        |
| ``torch.Generator``, a NumPy generator) |                             |                      |
| a ``dict`` / a ``list``                | a copy                      | replacing its items  |
| anything else                          | ``__getstate__()``          | ``__setstate__`` or  |
|                                        |                             | ``__dict__.update``  |

The random streams travel with them: Python's ``random``, and NumPy's and torch's global
generators when those modules are loaded, so a resumed trial draws what the
uninterrupted one would have. The file is written with ``torch.save`` when torch is
loaded (tensors stay compact), else with ``pickle``; it is a private format read back
only by :func:`read` (trusted: it is the trial's own checkpoint).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FORMAT = 1
_ZIP_MAGIC = b"PK"  # torch.save's container


def _is_path(objects: Sequence[Any]) -> bool:
    return len(objects) == 1 and isinstance(objects[0], str | os.PathLike)


def _state_of(obj: Any) -> tuple[str, Any]:
    if callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None)
    ):
        return "state_dict", obj.state_dict()
    if callable(getattr(obj, "get_state", None)) and callable(getattr(obj, "set_state", None)):
        return "get_state", obj.get_state()  # random generators (torch, NumPy)
    if isinstance(obj, dict):
        return "dict", dict(obj)
    if isinstance(obj, list):
        return "list", list(obj)
    return "state", obj.__getstate__()


def _restore(obj: Any, kind: str, state: Any) -> None:
    if kind == "state_dict":
        obj.load_state_dict(state)
    elif kind == "get_state":
        obj.set_state(state)
    elif kind == "dict":
        obj.clear()
        obj.update(state)
    elif kind == "list":
        obj[:] = state
    elif hasattr(obj, "__setstate__"):
        obj.__setstate__(state)
    else:
        obj.__dict__.update(state)


def random_states() -> dict[str, Any]:
    states: dict[str, Any] = {"random": random.getstate()}
    if "numpy" in sys.modules:
        states["numpy"] = sys.modules["numpy"].random.get_state()
    if "torch" in sys.modules:
        states["torch"] = sys.modules["torch"].get_rng_state()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    if "random" in states:
        random.setstate(states["random"])
    if "numpy" in states and "numpy" in sys.modules:
        sys.modules["numpy"].random.set_state(states["numpy"])
    if "torch" in states and "torch" in sys.modules:
        sys.modules["torch"].set_rng_state(states["torch"])


def seed_everything(seed: int) -> None:
    """Seed ``random`` and, when loaded, NumPy's and torch's global generators."""
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def _tar(path: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(path, arcname=path.name)
    return buffer.getvalue()


def _untar(data: bytes, path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        for member in archive.getmembers():
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts or name.parts[0] != path.name:
                raise ValueError(f"checkpoint archive entry outside {path.name}: {member.name}")
            member.name = str(Path(path.name, *name.parts[1:]))
        archive.extractall(path.parent, filter="data")


def write(objects: Sequence[Any], path: Path) -> None:
    """Save ``objects`` (see the module docstring) and the random streams to ``path``."""
    if not objects:
        raise ValueError("nothing to checkpoint: pass the model (and optimizer, ...) or a path")
    if _is_path(objects):
        source = Path(objects[0])
        if not source.exists():
            raise FileNotFoundError(f"checkpoint path {source} does not exist")
        payload: dict[str, Any] = {"format": FORMAT, "path": _tar(source)}
    else:
        payload = {"format": FORMAT, "objects": [_state_of(o) for o in objects]}
    payload["random"] = random_states()
    path.parent.mkdir(parents=True, exist_ok=True)
    if "torch" in sys.modules:
        sys.modules["torch"].save(payload, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)


def _load(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        magic = handle.read(2)
    if magic == _ZIP_MAGIC:
        import torch

        return torch.load(path, weights_only=False)
    with path.open("rb") as handle:
        return pickle.load(handle)  # noqa: S301 - the trial's own checkpoint


def read(path: Path, objects: Sequence[Any]) -> None:
    """Load what :func:`write` saved into ``objects`` (the same kinds, in the same
    order) and set the random streams as they were."""
    payload = _load(path)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint of ladder's Python API")
    if "path" in payload:
        if not _is_path(objects):
            raise ValueError("the checkpoint holds a path: restore(path) to write it back")
        _untar(payload["path"], Path(objects[0]))
    else:
        saved = payload["objects"]
        if len(saved) != len(objects):
            raise ValueError(
                f"the checkpoint holds {len(saved)} objects, restore was given {len(objects)}"
            )
        for obj, (kind, state) in zip(objects, saved, strict=True):
            _restore(obj, kind, state)
    set_random_states(payload.get("random", {}))
