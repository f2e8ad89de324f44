"""Start, identify and stop the stack's processes by pid, never by name.

A pid alone is not an identity: after a process dies the kernel may give its pid to an
unrelated program. Every process the stack starts is therefore recorded as (pid, start
time), the start time being field 22 of ``/proc/<pid>/stat`` (clock ticks since boot).
A recorded process is considered ours only while both still match.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcRecord:
    """Identity of a process the stack started."""

    name: str
    pid: int
    start_time: int

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, int]) -> ProcRecord:
        return cls(name, int(data["pid"]), int(data["start_time"]))


def parse_stat(text: str) -> tuple[str, int]:
    """(state, start time) from the contents of ``/proc/<pid>/stat``.

    Field 2 (the command name) is in parentheses and may itself contain spaces or
    parentheses, so the fields are counted from the *last* closing parenthesis.
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field 22 (starttime) is therefore rest[19].
    return rest[0], int(rest[19])


def _read_stat(pid: int) -> tuple[str, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """Start time of a live (non-zombie) process, or None."""
    stat = _read_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return None
    return stat[1]


# Children started by this Python process. Kept so their Popen objects are not garbage
# collected while running (which warns) and so they can be reaped through Popen.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    # When the caller is the parent (the Python API in tests), a dead child stays a
    # zombie, keeping /proc/<pid> around, until it is waited for.
    # Only our own registered children are waited for: a bare waitpid could steal the
    # exit status of some other child of this process that happens to reuse the pid.
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def is_running(rec: ProcRecord) -> bool:
    """True while the recorded process is alive and is still the one we started."""
    _reap(rec.pid)
    return start_time(rec.pid) == rec.start_time


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_dir: Path,
    pid_dir: Path,
    cwd: Path | None = None,
) -> ProcRecord:
    """Start ``argv`` detached, logging to ``<log_dir>/<name>.log``, and record its pid.

    ``start_new_session`` makes the child a session and process-group leader: it
    survives the terminal and the ``ladder up`` command, and :func:`stop` can signal
    its whole group (helpers it forks included) through the verified leader pid.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    pid_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    started = start_time(proc.pid)
    # The child cannot be reaped before we read its stat (we have not waited for it),
    # so /proc/<pid>/stat exists even if it already exited; None means a bug.
    if started is None:
        stat = _read_stat(proc.pid)
        started = stat[1] if stat else 0
    rec = ProcRecord(name, proc.pid, started)
    write_pid_file(pid_dir, rec)
    return rec


def write_pid_file(pid_dir: Path, rec: ProcRecord) -> None:
    """``<pid_dir>/<name>.pid`` holds ``"<pid> <start_time>"``."""
    path = pid_dir / f"{rec.name}.pid"
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(f"{rec.pid} {rec.start_time}\n")
    tmp.replace(path)


def read_pid_files(pid_dir: Path) -> dict[str, ProcRecord]:
    records: dict[str, ProcRecord] = {}
    if not pid_dir.is_dir():
        return records
    for path in sorted(pid_dir.glob("*.pid")):
        try:
            pid_s, start_s = path.read_text().split()[:2]
            records[path.stem] = ProcRecord(path.stem, int(pid_s), int(start_s))
        except (OSError, ValueError):
            continue  # A torn or foreign file identifies nothing; ignore it.
    return records


def remove_pid_file(pid_dir: Path, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (pid_dir / f"{name}.pid").unlink()


def _signal(rec: ProcRecord, sig: int) -> None:
    # Checked right before signalling so a recycled pid is never hit. The group id of a
    # verified session leader is its own pid, so killpg reaches only our processes.
    if not is_running(rec):
        return
    try:
        os.killpg(rec.pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, sig)


def stop_all(
    records: Iterable[ProcRecord], *, grace: float = 10.0, poll: float = 0.05
) -> list[ProcRecord]:
    """SIGTERM every running record, wait up to ``grace`` seconds, then SIGKILL.

    Returns the records that were running when called. The processes are stopped
    together so the grace period is paid once, not once per process.
    """
    running = [r for r in records if is_running(r)]
    for rec in running:
        _signal(rec, signal.SIGTERM)
    deadline = time.monotonic() + grace
    pending = list(running)
    while pending and time.monotonic() < deadline:
        pending = [r for r in pending if is_running(r)]
        if pending:
            time.sleep(poll)
    for rec in pending:
        _signal(rec, signal.SIGKILL)
    # SIGKILL cannot be ignored; the short wait only lets the kernel finish the exit.
    deadline = time.monotonic() + 5.0
    while pending and time.monotonic() < deadline:
        pending = [r for r in pending if is_running(r)]
        if pending:
            time.sleep(poll)
    return running


def tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a log file ('' if missing), for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
