"""The HTML of the pages. The server writes what a page says at load (names, counts,
tables of a trial) and the element every plot and table is drawn into; the page's
script (static/dashboard.js) draws the figures with plotly.js and keeps the study
page live.

Elements tests and people rely on have stable ids and ``data-testid`` attributes:
``progress-<count>``, ``plot-<figure>``, ``trial-table``, ``csv-link``,
``stop-reason`` (see docs/dashboard.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from ladder.cli_format import number, when
from ladder.dashboard import jsonout
from ladder.dashboard.listing import SEGMENTS
from ladder.dashboard.study import FIGURES

STOPPED = {"STOP": "stopped", "PAUSE": "paused"}
PROGRESS_COUNTS = ("suggested", "running", "pruned", "completed", "failed")
FIGURE_TITLES = {
    "history": "Optimisation history", "curves": "Learning curves", "rungs": "Rungs",
    "compute": "Compute spent", "parallel": "Parallel coordinates",
    "importance": "Parameter importances", "slices": "Slice plots",
}


def h(value: Any) -> str:
    """Text as HTML."""
    return escape("" if value is None else str(value))


def script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element."""
    return jsonout.dumps(data).replace("</", "<\\/")


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return number(value)
    return str(value)


def study_url(study_id: str) -> str:
    return f"/studies/{quote(study_id, safe='')}"


def trial_url(trial_id: str) -> str:
    return f"/trials/{quote(trial_id, safe='')}"


def page(title: str, kind: str, body: str, plotly_url: str | None, head: str = "") -> str:
    """A whole page; ``plotly_url``: the plotly.js to load (None: the page draws no
    plot, and skips parsing 4.8 MB of script)."""
    plotly = f'<script src="{h(plotly_url)}" defer></script>\n' if plotly_url else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{h(title)} · Ladder</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/dashboard.css">
{head}
{plotly}<script src="/static/dashboard.js" defer></script>
</head>
<body data-page="{h(kind)}">
<header class="top"><a class="brand" href="/studies">Ladder</a>
<a href="/studies" data-testid="nav-studies">studies</a></header>
<main>
{body}
</main>
</body>
</html>
"""


def error_page(status: int, message: str) -> str:
    body = (f'<h1>{status}</h1><p class="error" data-testid="error-message">{h(message)}</p>'
            '<p><a href="/studies">All studies</a></p>')
    return page(f"{status}", "error", body, None)


def progress_bar(progress: Mapping[str, Any], ids: bool = False) -> str:
    """The budget as a bar of completed, pruned, failed and running trials; ``ids``
    names each segment ``bar-<count>`` (one bar per page: the study page's)."""
    percent = progress.get("percent", {})
    parts = "".join(
        f'<span class="seg seg-{k}"{f" id=bar-{k}" if ids else ""} '
        f'style="width:{percent.get(k, 0):.2f}%" title="{k}"></span>'
        for k in SEGMENTS
    )
    return f'<div class="bar" data-testid="progress-bar">{parts}</div>'


# --- studies ---------------------------------------------------------------------------


def _budget(progress: Mapping[str, Any]) -> str:
    limit = progress["max_trials"]
    return f"of {limit}" if limit else f"of {progress['suggested']} (no max_trials)"


def study_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    out = []
    for r in rows:
        p = r["progress"]
        counts = " · ".join(
            f'<span class="count-{k}" data-testid="count-{k}">{p[k]}</span> {k}'
            for k in ("running", "pruned", "completed", "failed")
        )
        labels = " ".join(f'<span class="label">{h(k)}={h(v)}</span>'
                          for k, v in r["labels"].items())
        out.append(f"""<tr data-study-id="{h(r['study_id'])}" data-testid="study-row">
<td><a href="{study_url(r['study_id'])}">{h(r['study_id'])}</a>
<div class="sub">{h(r['name'])} {labels}</div></td>
<td><span class="state state-{h(r['state'])}" data-testid="study-state">{h(r['state'])}</span></td>
<td>{h(r['algorithm'])}</td>
<td title="{h(r['scheduler_detail'])}">{h(r['scheduler'])}</td>
<td class="progress-cell">{progress_bar(p)}<div class="sub">{counts} {h(_budget(p))}</div></td>
<td class="num" data-testid="study-best">{h(cell(r['best_value']))}
<div class="sub">{h(r['metric'])} ({h(r['direction'])})</div></td>
<td class="num">{h(r['age'])}</td>
</tr>""")
    return "\n".join(out)


def studies_page(rows: Sequence[Mapping[str, Any]]) -> str:
    if rows:
        table = f"""<table class="grid" id="studies-table" data-testid="studies-table">
<thead><tr><th>study</th><th>state</th><th>algorithm</th><th>scheduler</th>
<th>progress (of the budget)</th><th>best</th><th>age</th></tr></thead>
<tbody>{study_rows(rows)}</tbody></table>"""
    else:
        table = ('<p data-testid="no-studies">No studies yet: <code>ladder study create '
                 'FILE.yaml</code> creates one.</p>')
    filters = ('<input id="study-filter" data-testid="study-filter" type="search" '
               'placeholder="filter by id, name, state, label">')
    body = f"<h1>Studies</h1>{filters}\n{table}"
    return page("Studies", "studies", body, None)


# --- a study ---------------------------------------------------------------------------


def progress_section(progress: Mapping[str, Any]) -> str:
    counts = "".join(
        f'<div class="count"><dt>{k}</dt><dd id="progress-{k}" data-testid="progress-{k}">'
        f"{progress[k]}</dd></div>"
        for k in PROGRESS_COUNTS
    )
    limit = progress["max_trials"] or "no max_trials"
    best = cell(progress.get("best_value"))
    return f"""<section id="progress" data-testid="progress">
{progress_bar(progress, ids=True)}
<dl class="counts">{counts}
<div class="count"><dt>budget</dt><dd id="progress-max_trials"
 data-testid="progress-max-trials">{h(limit)}</dd></div>
<div class="count"><dt>best</dt><dd id="progress-best" data-testid="progress-best">{h(best)}</dd>
</div>
<div class="count" title="the best GP posterior mean at a completed trial: on a noisy metric
it does not reward a lucky draw (ladder best --noisy)"><dt>recommended</dt>
<dd id="progress-recommended" data-testid="progress-recommended">…</dd></div></dl>
<p class="sub"><span id="progress-points" data-testid="progress-points">{
progress.get('metric_points', 0)}</span> metric points,
<span id="progress-decisions">{progress.get('decisions', 0)}</span> decisions ·
<span id="live-status" data-testid="live-status">connecting…</span></p>
</section>"""


def study_page(row: Mapping[str, Any], plotly_url: str) -> str:
    """``row``: the study as the studies page lists it (``listing.study_row``)."""
    study_id = row["study_id"]
    progress = row["progress"]
    base = study_url(study_id)
    plots = "\n".join(
        f'<div class="plot plot-{name}" id="plot-{name}" data-testid="plot-{name}" '
        f'data-figure="{name}"><div class="loading">{h(FIGURE_TITLES[name])}…</div></div>'
        for name in FIGURES
    )
    boot = {"page": "study", "studyId": study_id, "figures": list(FIGURES),
            "urls": {"figures": f"/api{base}/figures", "trials": f"/api{base}/trials",
                     "progress": f"/api{base}/progress", "events": f"/api{base}/events",
                     "recommended": f"/api{base}/recommended"}}
    # Start both reads before plotly.js (4.8 MB) is parsed.
    head = f"""<script>window.LADDER = {script_json(boot)};
LADDER.fetched = {{figures: fetch(LADDER.urls.figures).then(r => r.json()),
                   trials: fetch(LADDER.urls.trials).then(r => r.json())}};</script>"""
    body = f"""<h1>Study <span data-testid="study-id">{h(study_id)}</span>
<span class="state state-{h(progress['state'])}" id="progress-state"
 data-testid="progress-state">{h(progress['state'])}</span></h1>
<p class="sub">{h(row['name'])} · metric <b>{h(row['metric'])}</b> ({h(row['direction'])})
· algorithm {h(row['algorithm'])} · scheduler {h(row['scheduler_detail'])}
· created {h(when(row['created_ms']))} ({h(row['age'])} ago)</p>
{progress_section(progress)}
<section class="plots">
{plots}
</section>
<section id="trials">
<h2>Trials</h2>
<div class="toolbar">
<input id="trial-filter" data-testid="trial-filter" type="search"
 placeholder="filter: text, or column=value / column>number">
<span id="trial-count" data-testid="trial-count"></span>
<a id="csv-link" data-testid="csv-link" href="{base}/trials.csv" download>Download CSV</a>
</div>
<div class="table-wrap"><table class="grid" id="trial-table" data-testid="trial-table">
<thead></thead><tbody></tbody></table></div>
<div class="pager"><button id="page-prev" type="button">‹ prev</button>
<span id="page-info"></span><button id="page-next" type="button">next ›</button></div>
</section>"""
    return page(f"Study {study_id}", "study", body, plotly_url, head)


# --- a trial ---------------------------------------------------------------------------


def pairs_table(pairs: Iterable[tuple[str, Any]], testid: str) -> str:
    rows = "".join(f"<tr><th>{h(k)}</th><td>{h(cell(v))}</td></tr>" for k, v in pairs)
    return f'<table class="pairs" data-testid="{testid}">{rows}</table>'


def _attempts(attempts: Sequence[Mapping[str, Any]]) -> str:
    if not attempts:
        return '<p data-testid="attempts">no attempt yet</p>'
    rows = []
    for a in attempts:
        env = a.get("run_environment") or {}
        where = ", ".join(x for x in (a["hostname"], env.get("python") and
                                      f"python {env['python']}", env.get("gpu_model")) if x)
        rows.append(
            f"<tr><td>{a['number']}</td><td>{h(a['attempt_id'])}</td><td>{h(a['worker_id'])}"
            f"</td><td>{h(where or '-')}</td><td>{h(when(a['started_ms']))}</td>"
            f"<td>{h(when(a['ended_ms']))}</td><td>{h(a['outcome'])}</td>"
            f"<td>{h(cell(a['end_reason']))}</td><td>{h(cell(a['failure_kind']))}</td>"
            f"<td class=\"uri\">{h(cell(a['checkpoint_uri']))}</td></tr>"
        )
    return f"""<table class="grid" data-testid="attempts"><thead><tr><th>#</th><th>attempt</th>
<th>worker</th><th>where</th><th>started</th><th>ended</th><th>outcome</th><th>end reason</th>
<th>failure</th><th>checkpoint</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"""


def _decisions(decisions: Sequence[Mapping[str, Any]]) -> str:
    if not decisions:
        return '<p data-testid="decisions">no early-stopping decision</p>'
    rows = "".join(
        f"<tr><td>{h(d['action'])}</td><td>{d['rung']}</td><td>{h(cell(d['step']))}</td>"
        f"<td>{h(cell(d['smoothed_value']))}</td><td>{h(cell(d['cutoff']))}</td>"
        f"<td>{d['rank']} of {d['population']}</td><td>{h(d['reason'])}</td></tr>"
        for d in decisions
    )
    return f"""<table class="grid" data-testid="decisions"><thead><tr><th>action</th>
<th>rung</th><th>step</th><th>smoothed</th><th>cutoff</th><th>rank</th><th>reason</th></tr>
</thead><tbody>{rows}</tbody></table>"""


def _environments(attempts: Sequence[Mapping[str, Any]]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for a in attempts:
        env = a.get("run_environment")
        if env:
            described = ", ".join(f"{k} {v}" for k, v in env.items() if v not in ("", 0, None,
                                                                                    False))
            out.append((f"environment (attempt {a['number']})", described))
        elif a.get("environment"):
            out.append((f"environment (attempt {a['number']})", a["environment"]))
    return out


def trial_page(view: Mapping[str, Any], plotly_url: str) -> str:
    trial_id = view["trial_id"]
    stop = view.get("stop")
    stop_html = ""
    if stop:
        done = STOPPED.get(stop["action"], stop["action"].lower())
        stop_html = (f'<p class="stop" data-testid="stop">{h(done)} at '
                     f'rung {stop["rung"]} (step {h(cell(stop["step"]))}): '
                     f'<span id="stop-reason" data-testid="stop-reason">{h(stop["reason"])}'
                     "</span></p>")
    predicted = view.get("predicted")
    summary = [("state", view["state"]), (f"value ({view['metric']})", view["value"]),
               ("algorithm", view["algorithm"]),
               ("predicted mean", predicted["mean"] if predicted else None),
               ("predicted std", predicted["std"] if predicted else None),
               ("failure", view["failure_kind"]), ("metric points", view["metric_points"])]
    lineage = view["lineage"]
    lineage_pairs = [("seed", lineage["seed"]), ("dataset", lineage["dataset_id"]),
                     ("code commit", lineage["code_commit"]),
                     ("checkpoint", lineage["checkpoint_uri"]),
                     ("train seconds", lineage["train_seconds"]),
                     ("checkpoint seconds", lineage["checkpoint_seconds"]),
                     *_environments(view["attempts"])]
    trace = view["trace"]
    boot = {"page": "trial", "trialId": trial_id, "curve": view["curve"]}
    head = f"<script>window.LADDER = {script_json(boot)};</script>"
    body = f"""<h1>Trial <span data-testid="trial-id">{h(trial_id)}</span>
<span class="state" data-testid="trial-state">{h(view['state'])}</span></h1>
<p class="sub">study <a href="{study_url(view['study_id'])}"
 data-testid="study-link">{h(view['study_id'])}</a></p>
{stop_html}
<div class="columns">
<section><h2>Summary</h2>{pairs_table(summary, 'trial-summary')}</section>
<section><h2>Parameters</h2>{pairs_table(view['params'].items(), 'trial-params')}</section>
</div>
<div class="plot" id="plot-trial-curve" data-testid="plot-trial-curve"></div>
<section><h2>Decisions</h2>{_decisions(view['decisions'])}</section>
<section><h2>Attempts</h2>{_attempts(view['attempts'])}</section>
<section><h2>Lineage</h2>{pairs_table(lineage_pairs, 'trial-lineage')}</section>
<section><h2>Trace</h2><p data-testid="trace">{h(trace['note'])}:
<code>{h(trace['attribute'])}={h(trace['value'])}</code></p></section>"""
    return page(f"Trial {trial_id}", "trial", body, plotly_url, head)
