"""What an attempt ran with, captured by the worker (never typed by hand): a
``RunEnvironment`` (trial.proto) sent with StartTrial, kept by lineage per attempt and
checked by ``ladder reproduce``.

| field                 | from                                                          |
|-----------------------|---------------------------------------------------------------|
| python, os, hostname  | ``platform``, ``socket``                                      |
| cpu_model, cpu_count  | ``/proc/cpuinfo`` (else ``platform.processor()``), os.cpu_count |
| gpu_model, gpu_count  | torch.cuda when torch is imported or importable, else          |
|                       | ``nvidia-smi`` when on PATH, else none                        |
| code_commit, dirty    | ``git`` in the training script's folder ("" outside a repo)   |
| packages, hash        | ``importlib.metadata``: sorted ``name==version``, sha256       |
| dataset_id            | given, else ``sha256:<hex>`` of the named files (folders walked) |
| entry_point           | the command line: ``python train.py --lr 3`` / ``python -m pkg`` |

The slow parts (packages, git, GPU) are read once per process (:func:`capture` caches
what does not change between attempts). Every text is cut to its field's limit
(``ladder.limits``), so a captured environment is never refused.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ladder import limits
from ladder.v1 import trial_pb2

_GIT_TIMEOUT_S = 10.0
_NVIDIA_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CodeState:
    commit: str  # "" outside a git work tree
    dirty: bool  # tracked files differ from HEAD
    root: Path | None  # the work tree's top folder


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_state(folder: Path) -> CodeState:
    """The git HEAD of the work tree holding ``folder`` and whether tracked files were
    changed (untracked files do not make it dirty: outputs and caches are untracked)."""
    commit = _git(folder, "rev-parse", "HEAD")
    if not commit:
        return CodeState("", False, None)
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    root = _git(folder, "rev-parse", "--show-toplevel")
    return CodeState(commit, bool(status), Path(root) if root else None)


def package_list(distributions: Iterable[importlib.metadata.Distribution] | None = None
                 ) -> list[str]:
    """Installed distributions as sorted, unique ``name==version`` (names normalised as
    pip does: lower case, runs of ``-_.`` as ``-``)."""
    found: set[str] = set()
    for dist in distributions if distributions is not None else importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if not name:
            continue
        found.add(f"{re.sub(r'[-_.]+', '-', name).lower()}=={dist.version}")
    return sorted(found)


def packages_hash(packages: Sequence[str]) -> str:
    """sha256 of the sorted list, one entry a line: equal for equal installs."""
    return hashlib.sha256("\n".join(sorted(packages)).encode()).hexdigest()


def _files_under(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def dataset_hash(paths: Sequence[str | os.PathLike[str]]) -> str:
    """``sha256:<hex>`` over the named files (every file under a named folder), each
    entered as its path relative to what was named, then its bytes: the same data under
    the same names has the same id wherever it lives. Raises FileNotFoundError for a
    name that does not exist."""
    digest = hashlib.sha256()
    for named in paths:
        base = Path(named)
        if not base.exists():
            raise FileNotFoundError(f"dataset file {base} does not exist")
        for file in _files_under(base):
            relative = file.relative_to(base).as_posix() if base.is_dir() else base.name
            digest.update(relative.encode() + b"\0")
            with file.open("rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
    return f"sha256:{digest.hexdigest()}"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_nvidia_smi(output: str) -> tuple[str, int]:
    """(model, count) from ``nvidia-smi --query-gpu=name --format=csv,noheader``; several
    models are joined with " + " (first seen first)."""
    names = [line.strip() for line in output.splitlines() if line.strip()]
    models = list(dict.fromkeys(names))
    return " + ".join(models), len(names)


def _torch_gpus() -> tuple[str, int]:
    import torch

    if not torch.cuda.is_available():
        return "", 0
    count = torch.cuda.device_count()
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    return " + ".join(dict.fromkeys(names)), count


def _nvidia_smi_gpus(smi: str) -> tuple[str, int] | None:
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=_NVIDIA_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else None


def gpu_info() -> tuple[str, int]:
    """(model, count) of the GPUs this process can use; ("", 0) without any. torch
    answers when the training code imported it; else ``nvidia-smi`` when on PATH; else
    torch when installed (imported only then: it takes a second or two)."""
    if "torch" in sys.modules:
        return _torch_gpus()
    smi = shutil.which("nvidia-smi")
    found = _nvidia_smi_gpus(smi) if smi else None
    if found is not None:
        return found
    if importlib.util.find_spec("torch") is not None:
        return _torch_gpus()
    return "", 0


def entry_point(argv: Sequence[str] | None = None, main_module: str | None = None,
                root: Path | None = None) -> str:
    """The command that ran the training: ``python -m MODULE ARGS`` when run as a module,
    else ``python SCRIPT ARGS`` with the script relative to the work tree ``root`` when
    it lies inside it (so it names the same file in another checkout)."""
    argv = list(sys.argv if argv is None else argv)
    if main_module is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        main_module = spec.name if spec is not None else ""
    args = [shlex.quote(a) for a in argv[1:]]
    # A script's __main__ (also as multiprocessing's "__mp_main__" in a spawned worker)
    # has no module name to run it by.
    if main_module and main_module not in ("__main__", "__mp_main__"):
        return " ".join(["python", "-m", main_module.removesuffix(".__main__"), *args])
    if not argv or not argv[0] or argv[0] == "-c":
        return " ".join(["python", *([argv[0]] if argv and argv[0] else []), *args])
    script = Path(argv[0]).resolve()
    if root is not None:
        try:
            script = script.relative_to(root.resolve())
        except ValueError:
            pass
    return " ".join(["python", shlex.quote(str(script)), *args])


def script_folder() -> Path:
    """The folder of the script being run (the current folder for ``-c`` or a REPL)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return Path(main_file).resolve().parent if main_file else Path.cwd()


@functools.cache
def _static(folder: Path) -> tuple[CodeState, tuple[str, ...], tuple[str, int]]:
    return code_state(folder), tuple(package_list()), gpu_info()


def _clip(message: trial_pb2.RunEnvironment) -> trial_pb2.RunEnvironment:
    """Cut every text to its field's limit and the package list to its count."""
    for field in message.DESCRIPTOR.fields:
        rule = limits.rule(field)
        if rule is None:
            continue
        value = getattr(message, field.name)
        if isinstance(value, str) and rule.size is not None and len(value) > rule.size:
            setattr(message, field.name, value[: rule.size])
        elif field.name == "packages":
            kept = [p[: rule.size] if rule.size else p for p in value][: rule.count]
            del value[:]
            value.extend(kept)
    return message


def capture(
    *,
    dataset_id: str = "",
    dataset_files: Sequence[str | os.PathLike[str]] = (),
    folder: Path | None = None,
    argv: Sequence[str] | None = None,
) -> trial_pb2.RunEnvironment:
    """The RunEnvironment of this process. ``folder``: where the training code lives
    (default: the running script's folder); ``dataset_id`` wins over ``dataset_files``
    (hashed with :func:`dataset_hash`)."""
    folder = (folder or script_folder()).resolve()
    code, packages, (gpu_model, gpu_count) = _static(folder)
    env = trial_pb2.RunEnvironment(
        python=platform.python_version(),
        os=f"{platform.system().lower()}-{platform.release()}-{platform.machine()}",
        hostname=socket.gethostname(),
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count() or 0,
        gpu_model=gpu_model,
        gpu_count=gpu_count,
        code_commit=code.commit,
        code_dirty=code.dirty,
        packages_hash=packages_hash(packages),
        packages=packages,
        dataset_id=dataset_id or (dataset_hash(dataset_files) if dataset_files else ""),
        entry_point=entry_point(argv, root=code.root),
    )
    return _clip(env)


def describe(env: trial_pb2.RunEnvironment) -> str:
    """One line for the attempt's ``environment`` text (older readers show it)."""
    parts = [f"python={env.python}", f"os={env.os}", f"cpus={env.cpu_count}"]
    if env.gpu_count:
        parts.append(f"gpus={env.gpu_count}x{env.gpu_model}")
    if env.code_commit:
        parts.append(f"commit={env.code_commit[:12]}{'-dirty' if env.code_dirty else ''}")
    return " ".join(parts)
