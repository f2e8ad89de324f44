"""Worker processes one parent starts, watches and stops: ``ladder.optimize``'s,
``ladder run``'s and ``python -m workers``'s.

Each child runs in a process group of its own, so a Ctrl-C in the terminal reaches
only the parent, which forwards one SIGTERM to each (a second signal would make a
worker quit without handing its trial back). ``stop`` sends that SIGTERM and, after
``grace`` seconds, SIGKILL to what still runs: exactly the processes this pool started.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

# A worker's preemption notice is 25 s by default (the study's trial policy): give it
# that, plus a margin, before SIGKILL.
DEFAULT_GRACE_S = 30.0


class _Child(Protocol):
    pid: int | None

    def poll(self) -> int | None: ...
    def kill(self) -> None: ...


class _ProcessChild:
    """A multiprocessing.Process with Popen's ``poll``."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        self.pid = process.pid

    def poll(self) -> int | None:
        return self.process.exitcode

    def kill(self) -> None:
        self.process.kill()


def _own_group_then(target: Callable[..., Any], *args: Any) -> Any:
    os.setpgid(0, 0)
    return target(*args)


class ProcessPool:
    """Named child processes: commands (:meth:`spawn_command`) or Python functions in
    fresh interpreters (:meth:`spawn_function`, the spawn start method)."""

    def __init__(self) -> None:
        self.children: dict[str, _Child] = {}

    def spawn_command(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
                      log_path: Path | None = None, cwd: Path | None = None) -> None:
        output = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            output = open(log_path, "ab")  # noqa: SIM115 - the child holds its own descriptor
        try:
            self.children[name] = subprocess.Popen(
                list(argv), env=dict(env) if env is not None else None, cwd=cwd,
                stdout=output, stderr=subprocess.STDOUT if output else None, process_group=0,
            )
        finally:
            if output is not None:
                output.close()

    def spawn_function(self, name: str, target: Callable[..., Any], *args: Any) -> None:
        """``target(*args)`` in a new interpreter (``target`` and ``args`` are pickled:
        a module-level function; one defined in a script needs the script's
        ``if __name__ == "__main__":`` guard)."""
        context = multiprocessing.get_context("spawn")
        process = context.Process(target=_own_group_then, args=(target, *args), name=name)
        process.start()
        self.children[name] = _ProcessChild(process)

    def running(self) -> int:
        return sum(1 for child in self.children.values() if child.poll() is None)

    def exit_codes(self) -> dict[str, int | None]:
        return {name: child.poll() for name, child in self.children.items()}

    @property
    def ok(self) -> bool:
        return all(code == 0 for code in self.exit_codes().values())

    def wait(self, timeout: float | None = None, every: float = 0.2,
             tick: Callable[[], None] | None = None) -> bool:
        """True once every child has exited (False if ``timeout`` passed first);
        ``tick()`` runs between checks."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if tick is not None:
                tick()
            time.sleep(every)
        return True

    def signal_all(self, signum: int = signal.SIGTERM) -> None:
        for child in self.children.values():
            if child.poll() is None and child.pid is not None:
                try:
                    os.kill(child.pid, signum)
                except ProcessLookupError:
                    pass

    def stop(self, grace: float = DEFAULT_GRACE_S) -> None:
        """SIGTERM (workers hand their trial back), then SIGKILL after ``grace``."""
        self.signal_all(signal.SIGTERM)
        if not self.wait(grace):
            for child in self.children.values():
                if child.poll() is None:
                    child.kill()
            self.wait(10)


@contextmanager
def forwarding_signals(pool: ProcessPool) -> Iterator[list[int]]:
    """While the block runs, SIGTERM / SIGINT to this process are forwarded to the pool
    as one SIGTERM each (the signals seen are appended to the yielded list); a second
    one raises KeyboardInterrupt here."""
    seen: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        seen.append(signum)
        if len(seen) > 1:
            raise KeyboardInterrupt(f"signal {signum} again")
        pool.signal_all(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield seen
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def notice_on_signals(request_stop: Callable[[], None]) -> None:
    """SIGTERM / SIGINT start the preemption notice (``request_stop``: checkpoint, hand
    the trial back, exit); a second signal quits at once (the lease then expires)."""
    seen = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal seen
        seen += 1
        if seen > 1:
            raise SystemExit(128 + signum)
        request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
