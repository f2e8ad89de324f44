"""What the ``ladder`` CLI prints: plain JSON for scripts, tables, CSV and the views of a
study, its trials, a trial's lineage and a study's progress for people.

``plain(message)`` is a protobuf message as plain JSON data: numbers as numbers (int64
too, unlike protobuf's JSON mapping), every field kept even when zero, enums by name,
parameter maps as ``{"lr": 0.01}``, a message field never set as null (unset members
of a oneof left out), and NaN or infinite values as null (JSON has none). The views
turn messages into text; nothing here does I/O, so every format is unit-tested
(tests/unit/test_cli_format.py).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ladder.lifecycle import state_name
from ladder.params import PlainValue, to_plain
from ladder.schedulers.spec import ASHA_FORMS, SCHEDULER_KINDS, SMOOTHINGS, SchedulerKind
from ladder.study import ALGORITHMS, DIRECTIONS, trial_demand
from ladder.v1 import events_pb2, lineage_pb2, space_pb2, study_pb2, trial_pb2

MISSING = "-"  # a table cell with no value

# --- plain JSON ------------------------------------------------------------------------

_INTEGERS = frozenset({
    FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64,
    FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64,
})


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _scalar(fd: FieldDescriptor, value: Any) -> Any:
    if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        if fd.message_type.full_name == space_pb2.ParamValue.DESCRIPTOR.full_name:
            return to_plain(value) if value.WhichOneof("value") else None
        return plain(value)
    if fd.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        number = int(value)
        named = fd.enum_type.values_by_number.get(number)
        return named.name if named is not None else number
    if fd.cpp_type in _INTEGERS:
        return int(value)
    if fd.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return _finite(float(value))
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return value.hex()
    return value


def plain(message: Message) -> dict[str, Any]:
    """``message`` as plain JSON data (see the module docstring)."""
    out: dict[str, Any] = {}
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {str(k): _scalar(value_fd, value[k]) for k in sorted(value)}
        elif fd.is_repeated:
            out[fd.name] = [_scalar(fd, item) for item in value]
        elif fd.message_type is not None and not message.HasField(fd.name):
            if fd.containing_oneof is None:  # a oneof's other members are left out
                out[fd.name] = None
        else:
            out[fd.name] = _scalar(fd, value)
    return out


def dumps(data: Any) -> str:
    """JSON text of plain data: indented, keys in field order, strictly valid."""
    return json.dumps(data, indent=2, allow_nan=False)


# --- cells, tables, CSV ----------------------------------------------------------------


def number(value: float | int | None) -> str:
    """A number as people read it: 6 significant digits, integers without ``.0``."""
    if value is None:
        return MISSING
    if isinstance(value, int) or (math.isfinite(value) and float(value).is_integer()
                                  and abs(value) < 1e15):
        return str(int(value))
    return f"{value:.6g}"


def cell(value: PlainValue | None) -> str:
    if value is None:
        return MISSING
    if isinstance(value, int | float) and not isinstance(value, bool):
        return number(value)
    return str(value)


def when(ms: int) -> str:
    """A timestamp in ms as local time, to the second."""
    if ms <= 0:
        return MISSING
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def duration(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``2h07m``."""
    if seconds < 0:
        return MISSING
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


_NUMERIC = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$|^-?inf$|^nan$")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns two spaces apart; a column whose every cell is a number (or ``-``) is
    right-aligned. No trailing spaces."""
    body = [list(row) for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [
        bool(body) and all(_NUMERIC.match(row[i]) or row[i] == MISSING for row in body)
        for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        # A numeric column's title sits over its right-aligned numbers.
        return "  ".join(
            text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i])
            for i, text in enumerate(cells)
        ).rstrip()

    return "\n".join([line(headers), *(line(row) for row in body)])


def csv_text(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return out.getvalue().rstrip("\n")


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    """``name  value`` lines, the values aligned."""
    width = max(len(name) for name, _ in pairs)
    return "\n".join(f"{name.ljust(width)}  {value}".rstrip() for name, value in pairs)


def bar(part: int, whole: int, width: int = 30, fill: str = "#", empty: str = ".") -> str:
    """``[####......]``: ``part`` of ``whole`` in ``width`` characters."""
    filled = 0 if whole <= 0 else min(width, round(width * part / whole))
    return "[" + fill * filled + empty * (width - filled) + "]"


# --- studies ---------------------------------------------------------------------------


def budget(study: study_pb2.Study) -> str:
    """``3/8`` (suggested of max_trials), ``3/-`` without a budget."""
    limit = study.config.max_trials
    return f"{study.trials_suggested}/{limit if limit else MISSING}"


def scheduler_text(config: study_pb2.SchedulerConfig) -> str:
    kind = SCHEDULER_KINDS.parse(config.kind)
    if kind is SchedulerKind.NONE:
        return "none"
    parts = [f"resource {number(config.min_resource)}..{number(config.max_resource)}"]
    if kind is not SchedulerKind.MEDIAN:
        parts.append(f"eta {number(config.reduction_factor)}")
    parts.append(f"grace {number(config.grace_period)}")
    parts.append(f"min population {config.min_population}")
    smoothing = SMOOTHINGS.parse(config.smoothing)
    if smoothing.value == "ema":
        parts.append(f"ema {number(config.ema_alpha)}")
    elif smoothing.value == "window":
        parts.append(f"window {config.window}")
    name = kind.value
    if kind in (SchedulerKind.ASHA, SchedulerKind.HYPERBAND):
        name += f" {ASHA_FORMS.parse(config.form).value}"
    return f"{name}: {', '.join(parts)}"


STUDY_HEADERS = ("STUDY", "NAME", "STATE", "METRIC", "ALGORITHM", "SCHEDULER", "TRIALS",
                 "CREATED")


def study_row(study: study_pb2.Study) -> list[str]:
    config = study.config
    direction = DIRECTIONS.parse(config.direction).value
    return [
        study.study_id,
        config.name or MISSING,
        state_name(study.state),
        f"{config.metric} ({'max' if direction == 'maximize' else 'min'})",
        ALGORITHMS.parse(config.algorithm).value,
        SCHEDULER_KINDS.parse(config.scheduler.kind).value,
        budget(study),
        when(study.created_unix_ms),
    ]


def studies_table(studies: Sequence[study_pb2.Study]) -> str:
    if not studies:
        return "no studies yet: `ladder study create FILE.yaml` creates one"
    return table(STUDY_HEADERS, [study_row(s) for s in studies])


def parameter_row(param: space_pb2.Parameter) -> list[str]:
    kind = param.WhichOneof("domain")
    if kind == "float_range":
        r = param.float_range
        log = r.scale == space_pb2.SCALE_LOG
        shape = ("float (log)" if log else "float", f"{number(r.low)} .. {number(r.high)}")
    elif kind == "int_range":
        r = param.int_range
        log = r.scale == space_pb2.SCALE_LOG
        shape = ("int (log)" if log else "int", f"{r.low} .. {r.high}")
    elif kind == "categorical":
        shape = ("categorical", ", ".join(param.categorical.choices))
    elif kind == "ordinal":
        shape = ("ordinal", ", ".join(number(v) for v in param.ordinal.values))
    else:
        shape = (MISSING, MISSING)
    condition = param.condition
    active = (
        f"{condition.parent} in {', '.join(condition.parent_values)}"
        if condition.parent else ""
    )
    return [param.name, *shape, active]


def resources_text(config: study_pb2.StudyConfig) -> str:
    """What each trial of the study needs on one node, as ``ladder study show`` says it."""
    demand = trial_demand(config)
    wanted = demand.resources
    gpus = f"{wanted.gpus} GPU" + ("s" if wanted.gpus != 1 else "") + (
        f" ({demand.gpu_type})" if demand.gpu_type and wanted.gpus else "")
    text = f"{gpus}, {wanted.cpu:g} CPU, {wanted.memory_gb:g} GB per trial"
    return text if config.HasField("trial_resources") else text + " (default)"


def study_view(study: study_pb2.Study) -> str:
    config = study.config
    direction = DIRECTIONS.parse(config.direction).value
    limit = config.max_trials
    labels = ", ".join(f"{k}={v}" for k, v in sorted(config.labels.items()))
    pairs = [
        ("study", study.study_id),
        ("name", config.name or MISSING),
        ("state", state_name(study.state)
         + (f" ({study.state_reason})" if study.state_reason else "")),
        ("metric", f"{config.metric} ({direction})"),
        ("algorithm", ALGORITHMS.parse(config.algorithm).value),
        ("scheduler", scheduler_text(config.scheduler)),
        ("budget", f"{study.trials_suggested} of {limit} trials suggested" if limit
         else f"{study.trials_suggested} trials suggested, no max_trials"),
        ("parallel", f"at most {config.max_parallel_trials} trials at once"
         if config.max_parallel_trials else "unbounded"),
        ("wall clock", f"at most {config.max_wall_clock_seconds:g} s"
         if config.max_wall_clock_seconds else "unbounded"),
        ("trial time", f"{study.trial_hours_used:.4g} trial-hours" + (
            f" of {config.max_trial_hours:g}" if config.max_trial_hours else ", unbounded")),
        # Only for trials that declare GPUs (a GPU budget is refused on the others).
        *([("GPU time", f"{study.gpu_hours_used:.4g} GPU-hours" + (
            f" of {config.max_gpu_hours:g}" if config.max_gpu_hours else ", unbounded"))]
          if config.trial_resources.gpus else []),
        ("resources", resources_text(config)),
        ("priority", str(config.priority) + (
            ", promoted trials on stable nodes" if config.stable_for_promoted else "")),
        ("seed", str(config.seed)),
        ("partitions", str(config.partitions)),
        ("dataset", config.dataset_id or MISSING),
        ("code", config.code_commit or MISSING),
        ("labels", labels or MISSING),
        ("created", when(study.created_unix_ms)),
    ]
    params = table(("PARAMETER", "TYPE", "RANGE", "WHEN"),
                   [parameter_row(p) for p in config.space.parameters])
    return f"{fields(pairs)}\n\n{params}"


def summary_view(study: study_pb2.Study, summary: lineage_pb2.StudySummary) -> str:
    best = (
        f"{number(summary.best_value)} ({summary.best_trial_id})"
        if summary.has_best else "no completed trial yet"
    )
    limit = study.config.max_trials
    return fields([
        ("study", f"{study.study_id} ({state_name(study.state)})"),
        ("trials", f"{study.trials_suggested} suggested{f' of {limit}' if limit else ''}: "
                   f"{summary.running} running, {summary.completed} completed, "
                   f"{summary.pruned} pruned, {summary.failed} failed"),
        ("best", best),
        ("recorded", f"{summary.metric_points} metric points, {summary.decisions} decisions"),
    ])


# --- trials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    state: str
    value: float | None
    last_step: float
    params: Mapping[str, PlainValue] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "state": self.state,
            "value": None if self.value is None else _finite(self.value),
            "last_step": self.last_step,
            "params": dict(self.params),
        }


def trial_row(summary: lineage_pb2.TrialSummary, params: Mapping[str, PlainValue]) -> TrialRow:
    return TrialRow(
        trial_id=summary.trial_id,
        state=summary.state.lower(),
        value=summary.final_value if summary.has_final_value else None,
        last_step=summary.last_step,
        params=params,
    )


def _sequence(trial_id: str) -> tuple[str, int, str]:
    """Sort key: ``st-t2`` before ``st-t10``."""
    head, _, tail = trial_id.rpartition("-t")
    return (head, int(tail), "") if tail.isdigit() else (trial_id, 0, trial_id)


def sorted_rows(rows: Iterable[TrialRow]) -> list[TrialRow]:
    return sorted(rows, key=lambda row: _sequence(row.trial_id))


def _param_names(rows: Sequence[TrialRow], order: Sequence[str]) -> list[str]:
    seen = {name for row in rows for name in row.params}
    return [n for n in order if n in seen] + sorted(seen - set(order))


TRIAL_HEADERS = ("TRIAL", "STATE", "VALUE", "STEP")


def trials_table(rows: Sequence[TrialRow], order: Sequence[str] = ()) -> str:
    if not rows:
        return "no trials yet"
    names = _param_names(rows, order)
    return table(
        [*TRIAL_HEADERS, *names],
        [
            [r.trial_id, r.state, cell(r.value), number(r.last_step),
             *(cell(r.params.get(n)) for n in names)]
            for r in rows
        ],
    )


def trials_csv(rows: Sequence[TrialRow], order: Sequence[str] = ()) -> str:
    names = _param_names(rows, order)
    return csv_text(
        ["trial_id", "state", "value", "last_step", *names],
        [
            [r.trial_id, r.state, "" if r.value is None else repr(r.value), repr(r.last_step),
             *("" if r.params.get(n) is None else r.params[n] for n in names)]
            for r in rows
        ],
    )


# --- a trial's lineage -----------------------------------------------------------------


def curve_text(points: Sequence[lineage_pb2.MetricPoint], maximize: bool = False) -> str:
    if not points:
        return "no metric points"
    first, last = points[0], points[-1]
    pick = max if maximize else min
    best = pick(points, key=lambda p: p.value if math.isfinite(p.value) else (
        -math.inf if maximize else math.inf))
    text = f"{len(points)} points, step {number(first.step)} .. {number(last.step)}: "
    text += f"{number(first.value)} -> {number(last.value)}"
    return text + f" (best {number(best.value)} at step {number(best.step)})"


def lineage_view(lineage: lineage_pb2.TrialLineage) -> str:
    params = "  ".join(f"{k}={cell(v)}" for k, v in
                       ((k, to_plain(v)) for k, v in sorted(lineage.params.items())))
    value = (f"{number(lineage.final_value)}" if lineage.has_final_value else MISSING)
    pairs = [
        ("trial", lineage.trial_id),
        ("study", lineage.study_id),
        ("state", lineage.state.lower() or MISSING),
        ("value", f"{value} ({lineage.metric})" if lineage.metric else value),
        ("params", params or MISSING),
        ("seed", str(lineage.seed)),
        ("algorithm", lineage.algorithm or MISSING),
        ("dataset", lineage.dataset_id or MISSING),
        ("code", lineage.code_commit or MISSING),
        ("checkpoint", lineage.checkpoint_uri or MISSING),
        ("curve", curve_text(lineage.metrics)),
    ]
    out = [fields(pairs)]
    if lineage.attempts:
        out.append(table(
            ("ATTEMPT", "WORKER", "HOST", "OUTCOME", "STARTED", "DURATION"),
            [
                [str(a.attempt_number), a.worker_id or MISSING, a.hostname or MISSING,
                 a.outcome or MISSING, when(a.started_ms),
                 duration((a.ended_ms - a.started_ms) / 1000) if a.ended_ms else "running"]
                for a in lineage.attempts
            ],
        ))
    if lineage.decisions:
        out.append(table(
            ("RUNG", "RESOURCE", "ACTION", "VALUE", "CUTOFF", "RANK", "REASON"),
            [
                [str(d.rung), number(d.resource), events_pb2.Action.Name(d.action).lower(),
                 number(d.smoothed_value), number(d.cutoff), f"{d.rank}/{d.population}",
                 d.reason]
                for d in lineage.decisions
            ],
        ))
    return "\n\n".join(out)


def trial_state_name(state: int) -> str:
    if state in trial_pb2.TrialState.values():
        return trial_pb2.TrialState.Name(state).lower()
    return str(state)


def trial_view(trial: trial_pb2.Trial) -> str:
    """A trial as the evaluate service holds it now (``ladder trial show``)."""
    pairs = [
        ("trial", trial.trial_id),
        ("study", trial.study_id),
        ("state", trial_state_name(trial.state)),
        ("value", number(trial.final_value) if trial.has_final_value else MISSING),
        ("attempts", str(trial.attempt_number)),
        ("worker", trial.worker_id or MISSING),
        ("last step", number(trial.last_step)),
        ("checkpoint", trial.checkpoint_uri or MISSING),
        ("stop reason", trial.stop_reason or MISSING),
    ]
    return fields(pairs)


def stop_outcome(trial: trial_pb2.Trial) -> str:
    """What StopTrial did: pruned now, or the running trial's next heartbeat stops it."""
    if trial.state == trial_pb2.RUNNING:
        return "its next heartbeat answers STOP"
    return f"it is {trial_state_name(trial.state)}"


def best_view(lineage: lineage_pb2.TrialLineage) -> str:
    return f"best trial of {lineage.study_id}: {lineage.trial_id}\n\n{lineage_view(lineage)}"


# --- progress (``ladder watch``) -------------------------------------------------------


def finished(summary: lineage_pb2.StudySummary) -> int:
    return summary.completed + summary.pruned + summary.failed


def seen(summary: lineage_pb2.StudySummary) -> int:
    """Trials the lineage store knows of (``suggested`` counts those not started yet;
    paused ones are not counted)."""
    return summary.suggested + summary.running + finished(summary)


@dataclass(frozen=True)
class Progress:
    study_id: str
    state: str
    max_trials: int
    suggested: int  # handed out (not the trials waiting for a worker: see progress_of)
    running: int
    pruned: int
    completed: int
    failed: int
    best_value: float | None
    best_trial_id: str
    trials_per_minute: float | None

    @property
    def whole(self) -> int:
        """What the bars count against: the budget, else what was handed out."""
        return self.max_trials or self.suggested

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_id": self.study_id, "state": self.state, "max_trials": self.max_trials,
            "suggested": self.suggested, "running": self.running, "pruned": self.pruned,
            "completed": self.completed, "failed": self.failed,
            "best_value": None if self.best_value is None else _finite(self.best_value),
            "best_trial_id": self.best_trial_id,
            "trials_per_minute": self.trials_per_minute,
        }


def progress_of(
    study: study_pb2.Study, summary: lineage_pb2.StudySummary, trials_per_minute: float | None
) -> Progress:
    return Progress(
        study_id=study.study_id,
        state=state_name(study.state),
        max_trials=study.config.max_trials,
        # A study read from lineage says what was handed out as of its last StudyEvent
        # (created, updated, completed), not since: the trials lineage has seen are the
        # live lower bound (paused ones aside), so a running study does not show 0.
        suggested=max(study.trials_suggested, seen(summary)),
        running=summary.running,
        pruned=summary.pruned,
        completed=summary.completed,
        failed=summary.failed,
        best_value=summary.best_value if summary.has_best else None,
        best_trial_id=summary.best_trial_id if summary.has_best else "",
        trials_per_minute=trials_per_minute,
    )


_COUNTS = ("running", "pruned", "completed", "failed")


def _headline(p: Progress) -> str:
    best = f"best {number(p.best_value)} ({p.best_trial_id})" if p.best_value is not None \
        else "no completed trial yet"
    rate = MISSING if p.trials_per_minute is None else f"{p.trials_per_minute:.1f}"
    of = f"of {p.max_trials}" if p.max_trials else f"of {p.suggested} (no max_trials)"
    return f"{best}, {rate} trials/min, {p.suggested} suggested {of}"


def progress_line(p: Progress) -> str:
    """One line per refresh (output that is not a terminal)."""
    counts = ", ".join(f"{name} {getattr(p, name)}" for name in _COUNTS)
    return f"{p.study_id} {p.state}: {counts}; {_headline(p)}"


def progress_block(p: Progress, width: int = 30, fill: str = "#", empty: str = ".") -> list[str]:
    """The lines redrawn in place on a terminal: a headline and a bar per count."""
    whole = p.whole
    lines = [f"{p.study_id} {p.state}: {_headline(p)}"]
    for name in _COUNTS:
        count = getattr(p, name)
        lines.append(f"  {name:<9} {bar(count, whole, width, fill, empty)} {count}/{whole}")
    return lines
