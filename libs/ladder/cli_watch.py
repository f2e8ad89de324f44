"""``ladder watch STUDY``: a study's progress until it is completed.

Every ``--interval`` seconds it reads the study (suggest: state, budget) and its counts
(lineage: running, pruned, completed, failed, best). On a terminal the headline and a
bar per count are redrawn in place; otherwise (a pipe, a log, CI) one line per refresh.
``--json`` prints one JSON object per refresh. It exits 0 once the study is COMPLETED
(or CANCELLED) and lineage, which learns the outcomes through the broker a moment
after suggest, shows every trial ended (at most ``SETTLE_SECONDS`` later: a cancelled
study's never-started trials may stay handed out), or after one refresh with ``--once``.
The rate is finished trials per minute since the watch began (the first refresh, or
``--once``: since the study was created).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from ladder import cli_format as fmt
from ladder import cli_query
from ladder.lifecycle import CANCELLED, COMPLETED, state_name

DEFAULT_INTERVAL = 2.0
MIN_INTERVAL = 0.1  # a smaller --interval would only load the services
BAR_WIDTH = 30
SETTLE_SECONDS = 10.0


class Rate:
    """Finished trials per minute since the first sample; while that window is shorter
    than ``MIN_WINDOW`` seconds, the study's average since it was created."""

    MIN_WINDOW = 10.0

    def __init__(self, created_ms: int, clock: Callable[[], float] = time.time) -> None:
        self.created = created_ms / 1000
        self.clock = clock
        self.first: tuple[float, int] | None = None

    def __call__(self, finished: int) -> float | None:
        now = self.clock()
        if self.first is None:
            self.first = (now, finished)
        since, before = self.first
        if now - since < self.MIN_WINDOW:
            since, before = self.created, 0
        minutes = (now - since) / 60
        return (finished - before) / minutes if minutes > 0 else None


class Screen:
    """Draws frames: redrawn in place on a terminal, appended lines otherwise."""

    def __init__(self, out: IO[str], tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.drawn = 0
        encoding = getattr(out, "encoding", None) or "ascii"
        try:
            "█░".encode(encoding)
            self.fill, self.empty = "█", "░"
        except (UnicodeEncodeError, LookupError):
            self.fill, self.empty = "#", "."

    def show(self, progress: fmt.Progress) -> None:
        if not self.tty:
            self.out.write(fmt.progress_line(progress) + "\n")
        else:
            lines = fmt.progress_block(progress, BAR_WIDTH, self.fill, self.empty)
            # Back to the first line drawn last time; clear each line as it is rewritten.
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.drawn = len(lines)
        self.out.flush()


def watch(args: argparse.Namespace) -> int:
    from ladder.v1 import lineage_pb2

    screen = Screen(sys.stdout)
    with cli_query.connected(args, (cli_query.SUGGEST, cli_query.LINEAGE)) as client:
        study = cli_query.existing_study(client, args.study_id)
        rate = Rate(study.created_unix_ms)
        final_since: float | None = None
        while True:
            counts = cli_query.unless_not_found(
                lambda: client.summary(args.study_id),
                lineage_pb2.StudySummary(study_id=args.study_id),
            )
            finished = counts.completed + counts.pruned + counts.failed
            progress = fmt.progress_of(study, counts, rate(finished))
            if args.json:
                cli_query.emit(json.dumps(progress.as_dict(), allow_nan=False))
            else:
                screen.show(progress)
            if args.once:
                return 0
            if study.state in (COMPLETED, CANCELLED):
                final_since = final_since or time.monotonic()
                settled = finished and not counts.running and not counts.suggested
                if settled or time.monotonic() - final_since >= SETTLE_SECONDS:
                    return 0
            time.sleep(max(MIN_INTERVAL, args.interval))
            study = client.get_study(args.study_id)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_id", help="study id")
    parser.add_argument("--once", action="store_true", help="print one refresh and exit")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL,
                        help=f"seconds between refreshes (default {DEFAULT_INTERVAL:g})")
    cli_query.common_arguments(parser, "one JSON object per refresh")


def register(commands: dict[str, Any], command_type: type) -> None:
    """Add ``watch`` to the CLI's table."""
    commands["watch"] = command_type(
        f"live progress of a study until it is {state_name(COMPLETED)}", _arguments,
        cli_query.runs(watch),
    )
