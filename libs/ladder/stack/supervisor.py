"""The stack's supervisor: ``python -m ladder.stack.supervisor --state-dir DIR``.

Started by ``ladder up --supervise`` as a detached process recorded in ``stack.json``
(``pids.supervisor``); ``ladder down`` stops it before anything else. Every
``--interval`` seconds it looks at the stack and, when a component has died, runs the
same repair as ``ladder up``: only the dead components start again, on their recorded
addresses, with the same state folder. A repair that fails is tried again after a
capped exponential back-off (``ladder.retry.backoff_delay``: 0.4 s doubling to 5 s),
so a component that cannot start does not make the supervisor spin.

| flag / env                        | default | meaning                                |
|-----------------------------------|---------|----------------------------------------|
| ``--state-dir`` / LADDER_STATE_DIR | ./.ladder | the stack to watch                   |
| ``--interval`` / LADDER_SUPERVISE_INTERVAL_S | 2 | seconds between two looks     |

It exits by itself when the stack is gone (no ``stack.json``: a ``down`` it missed).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ladder.retry import backoff_delay
from ladder.stack import launcher

DEFAULT_INTERVAL_S = 2.0


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} supervisor: {message}", flush=True)


def needs_repair(info: dict[str, Any]) -> bool:
    """True when a component of the stack ``info`` describes has died (cheap: no
    network probe).

    A component alive but unhealthy is left to its own recovery; ``launcher.up`` gives
    such a component a grace period anyway when it repairs the others."""
    return bool(launcher.dead_components(info))


def supervise(
    state_dir: Path,
    interval: float,
    stop: threading.Event,
    log: Callable[[str], None] = _say,
) -> None:
    """Repair the stack in ``state_dir`` whenever a component died, until ``stop`` or
    until the stack is gone."""
    failures = 0
    while not stop.wait(interval if failures == 0 else backoff_delay(failures)):
        info = launcher.read_stack(state_dir)
        if info is None:
            log(f"no stack in {state_dir} any more; exiting")
            return
        if not needs_repair(info):
            failures = 0
            continue
        try:
            result = launcher.up(state_dir, services=bool(info.get("services")), log=log)
        except Exception as exc:  # noqa: BLE001 - a failed repair is retried, never fatal
            failures += 1
            log(f"repair failed (attempt {failures}), retrying after back-off: {exc}")
            continue
        failures = 0
        log(f"restarted {', '.join(result.get('restarted') or []) or 'nothing'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ladder.stack.supervisor",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument(
        "--interval", type=float,
        default=float(os.environ.get("LADDER_SUPERVISE_INTERVAL_S", DEFAULT_INTERVAL_S)),
    )
    args = parser.parse_args(argv)
    state_dir = launcher.Layout.of(args.state_dir).root
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        # Raised, not only flagged: a repair waiting for the state folder's lock (held
        # by the `ladder down` that sent this) must end now, and one under way stops
        # what it started on the way out.
        stop.set()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _say(f"watching {state_dir} every {args.interval:g}s")
    supervise(state_dir, args.interval, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
