"""One progress line of a study, from its lineage summary: updated in place on a
terminal, a line every few seconds otherwise (``ladder.optimize(progress=True)``)."""

from __future__ import annotations

import sys
import time
from typing import Any

from ladder.cli_format import finished, seen
from ladder.v1 import lineage_pb2

__all__ = ["Progress", "finished", "progress_line", "seen"]


def progress_line(summary: lineage_pb2.StudySummary, elapsed: float, max_trials: int,
                  workers: int, metric: str = "value") -> str:
    best = f"{summary.best_value:.4f} ({summary.best_trial_id})" if summary.has_best else "-"
    budget = f"/{max_trials}" if max_trials else ""
    return (
        f"[{elapsed:6.1f}s] trials {seen(summary):>3}{budget}  "
        f"running {summary.running:>2}  completed {summary.completed:>3}  "
        f"pruned {summary.pruned:>3}  failed {summary.failed:>2}  "
        f"workers {workers}  best {metric} {best}"
    )


class Progress:
    """One updating line on a terminal; a line every ``every`` seconds otherwise."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every = 1.0 if self.tty else 2.0
        self._last = 0.0
        self._width = 0

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every

    def show(self, line: str, force: bool = False) -> None:
        if not force and not self.due():
            return
        self._last = time.monotonic()
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
