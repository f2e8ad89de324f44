"""The trial table: one row per ``ListTrials`` summary, in its order.

The CSV download (``table_csv``) has every column of ``COLUMNS`` with every digit, so
it equals what ListTrials answers. The page gets a compact JSON of the columns it
shows (``table_json``: column by column, numbers to 6 significant digits; far smaller
than HTML rows for 20,000 trials) and sorts, filters and pages it in JavaScript.
Parameter columns are named ``params.<name>`` so no parameter shadows a column.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import Any

from ladder.dashboard.sampling import rounded
from ladder.dashboard.trials import Trial

PARAM_PREFIX = "params."
# (column, what it holds), in table order; the parameters follow.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("trial_id", "the trial"),
    ("state", "its state"),
    ("value", "final value of the objective (completed trials)"),
    ("last_step", "the last step it reported"),
    ("attempts", "attempts it took"),
    ("train_seconds", "seconds spent training over all attempts"),
    ("stop_reason", "why the early-stop service stopped or paused it"),
    ("stop_rung", "the rung of that decision"),
    ("stop_step", "the step of that decision"),
    ("failure_kind", "why it failed"),
    ("algorithm", "the sampler that suggested it"),
    ("predicted_mean", "the surrogate's prediction when it was suggested"),
    ("predicted_std", "its uncertainty"),
    ("first_ts_ms", "its first event (ms since the epoch)"),
    ("terminal_ts_ms", "when it ended (0 while not ended)"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
# What the page's table shows (the rung and step are in the reason's text).
SHOWN = ("trial_id", "state", "value", "last_step", "attempts", "train_seconds",
         "stop_reason", "failure_kind", "algorithm", "predicted_mean", "predicted_std")
# Columns of fewer rows are sent as they are.
PACK_ROWS = 64
_DECIMAL = frozenset({"value", "last_step", "train_seconds", "predicted_mean",
                      "predicted_std"})


def param_columns(trials: Sequence[Trial], order: Sequence[str] = ()) -> list[str]:
    """Parameter names: ``order`` (the search space's) first, then any other, sorted."""
    seen = {name for t in trials for name in t.params}
    return [n for n in order if n in seen] + sorted(seen - set(order))


def _column(trials: Sequence[Trial], name: str) -> list[Any]:
    values = [getattr(t, name) for t in trials]
    return rounded(values) if name in _DECIMAL else values


def _param_column(trials: Sequence[Trial], name: str) -> list[Any]:
    values = [t.params.get(name) for t in trials]
    if any(isinstance(v, float) for v in values):
        numbers = [v if isinstance(v, float) else None for v in values]
        return [r if isinstance(v, float) else v for v, r in zip(values, rounded(numbers),
                                                                strict=True)]
    return values


def packed(values: list[Any]) -> list[Any] | dict[str, Any]:
    """A column as the page receives it: its values, or, when that is much shorter, a
    column of few distinct strings as ``{"values": [distinct], "codes": [index per row,
    null where missing]}`` (states, samplers, choices) and ids sharing a prefix as
    ``{"prefix": p, "rest": [...]}`` (every trial id starts with its study's)."""
    if len(values) < PACK_ROWS or not all(v is None or isinstance(v, str) for v in values):
        return values
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    if len(distinct) * 4 <= len(values):
        index: dict[str | None, int | None] = {v: i for i, v in enumerate(distinct)}
        index[None] = None
        return {"values": distinct, "codes": [index[v] for v in values]}
    prefix = os.path.commonprefix(values) if None not in values else ""
    if len(prefix) >= 8:
        return {"prefix": prefix, "rest": [v[len(prefix):] for v in values]}
    return values


def table_json(trials: Sequence[Trial], order: Sequence[str] = ()) -> dict[str, Any]:
    """``{"columns": [names], "data": [one column each], "count": rows}``: a column is
    a list of values (null where missing), or packed (``packed``)."""
    params = param_columns(trials, order)
    columns = [_column(trials, c) for c in SHOWN] + [_param_column(trials, p) for p in params]
    return {
        "columns": [*SHOWN, *(PARAM_PREFIX + p for p in params)],
        "data": [packed(c) for c in columns],
        "count": len(trials),
    }


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # every digit: the download must equal the API's numbers
    return str(value)


def table_csv(trials: Sequence[Trial], order: Sequence[str] = ()) -> str:
    """Every column of every trial as CSV (a header line first; an empty cell for a
    missing value)."""
    params = param_columns(trials, order)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*COLUMN_NAMES, *(PARAM_PREFIX + p for p in params)])
    for t in trials:
        values = [getattr(t, name) for name in COLUMN_NAMES]
        writer.writerow([_csv_cell(v) for v in values]
                        + [_csv_cell(t.params.get(p)) for p in params])
    return out.getvalue()
