// The pages' script: draws the server's Plotly figures, the trial table (sorted,
// filtered and paged here: the server sends it as columns + rows) and keeps the study
// page live (server-sent events, else polling). When the plots of the first screen are
// drawn, <body> gets data-shown="true"; when everything is, data-ready="true" (browser
// tests and the render benchmark wait for them).
"use strict";

const PLOT_CONFIG = { responsive: true, displaylogo: false };
const PAGE_SIZE = 50;
const FIGURE_REFRESH_MS = 5000;
const POLL_MS = 2000;
// A page with nothing drawn later is shown when it is ready.
function ready() { shown(); document.body.dataset.ready = "true"; }
function shown() { document.body.dataset.shown = "true"; }

// A turn of the event loop: what was drawn is painted and input is handled before the
// next plot (each takes 0.1-0.5 s on a big study).
function nextTask() { return new Promise(resolve => setTimeout(resolve, 0)); }

function onFirstScreen(id) {
  const el = document.getElementById(id);
  if (!el) return false;
  const box = el.getBoundingClientRect();
  return box.top < window.innerHeight && box.bottom > 0;
}

function fmt(value) {
  if (value === null || value === undefined || value === "") return "-";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    return Number(value.toPrecision(6)).toString();
  }
  return String(value);
}

// How long each plot took to draw, in ms (window.LADDER.timings): for the benchmark.
function draw(id, figure) {
  const el = document.getElementById(id);
  if (!el || !figure) return Promise.resolve();
  el.textContent = "";
  const start = performance.now();
  return Plotly.react(el, figure.data, figure.layout, PLOT_CONFIG).then(() => {
    window.LADDER.timings[id] = performance.now() - start;
  });
}

// --- the trial table -------------------------------------------------------------------

function unpack(column) {
  if (Array.isArray(column)) return column;
  if (column.codes) return column.codes.map(i => (i === null ? null : column.values[i]));
  return column.rest.map(rest => column.prefix + rest);
}

class TrialTable {
  constructor(studyId) {
    this.table = document.getElementById("trial-table");
    this.filterInput = document.getElementById("trial-filter");
    this.count = document.getElementById("trial-count");
    this.pageInfo = document.getElementById("page-info");
    this.sortColumn = null;
    this.sortDir = 1;
    this.page = 0;
    this.rows = [];
    this.view = [];
    this.filterInput.addEventListener("input", () => { this.page = 0; this.apply(); });
    document.getElementById("page-prev").addEventListener("click", () => this.turn(-1));
    document.getElementById("page-next").addEventListener("click", () => this.turn(1));
  }

  // data: {columns: [names], data: [one column each], count: rows}; a column is its
  // values, or packed by the server (ladder.dashboard.table.packed).
  load(data) {
    const columns = data.columns;
    const values = data.data.map(unpack);
    this.shown = columns;
    this.index = Object.fromEntries(columns.map((c, i) => [c, i]));
    this.numeric = new Set(columns.filter((c, i) => values[i].some(v => typeof v === "number")));
    this.rows = new Array(data.count);
    for (let r = 0; r < data.count; r++) {
      this.rows[r] = values.map(column => column[r]);
    }
    this.text = this.rows.map(r => r.map(fmt).join(" ").toLowerCase());
    this.head();
    this.apply();
  }

  head() {
    const tr = document.createElement("tr");
    for (const c of this.shown) {
      const th = document.createElement("th");
      th.textContent = c.startsWith("params.") ? c.slice(7) : c;
      th.dataset.column = c;
      th.className = "sortable" + (this.numeric.has(c) ? " num" : "");
      if (c === this.sortColumn) th.classList.add(this.sortDir > 0 ? "sorted-asc" : "sorted-desc");
      th.addEventListener("click", () => this.sortBy(c));
      tr.appendChild(th);
    }
    const thead = this.table.tHead;
    thead.replaceChildren(tr);
  }

  // "lr>0.01", "state=pruned", or plain text matched anywhere in the row.
  matcher(query) {
    const terms = query.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const tests = terms.map(term => {
      const m = term.match(/^([\w.]+)(<=|>=|=|<|>)(.+)$/);
      if (m) {
        const name = this.index[m[1]] !== undefined ? m[1] : "params." + m[1];
        const col = this.index[name];
        if (col !== undefined) {
          const want = m[3];
          const num = Number(want);
          return (row) => {
            const v = row[col];
            if (v === null || v === undefined) return false;
            if (m[2] === "=") return String(v).toLowerCase() === want;
            if (Number.isNaN(num) || typeof v !== "number") return false;
            return { "<": v < num, ">": v > num, "<=": v <= num, ">=": v >= num }[m[2]];
          };
        }
      }
      return (row, text) => text.includes(term);
    });
    return (row, text) => tests.every(t => t(row, text));
  }

  apply() {
    const match = this.matcher(this.filterInput.value);
    this.view = [];
    for (let i = 0; i < this.rows.length; i++) {
      if (match(this.rows[i], this.text[i])) this.view.push(i);
    }
    if (this.sortColumn !== null) {
      const col = this.index[this.sortColumn];
      const dir = this.sortDir;
      this.view.sort((a, b) => {
        const x = this.rows[a][col], y = this.rows[b][col];
        if (x === y) return a - b;
        if (x === null || x === undefined) return 1;  // missing values last either way
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * dir;
      });
    }
    this.render();
  }

  sortBy(column) {
    this.sortDir = this.sortColumn === column ? -this.sortDir : 1;
    this.sortColumn = column;
    this.head();
    this.apply();
  }

  turn(step) {
    const pages = Math.max(1, Math.ceil(this.view.length / PAGE_SIZE));
    this.page = Math.min(pages - 1, Math.max(0, this.page + step));
    this.render();
  }

  render() {
    const start = this.page * PAGE_SIZE;
    const body = document.createDocumentFragment();
    for (const i of this.view.slice(start, start + PAGE_SIZE)) {
      const row = this.rows[i];
      const tr = document.createElement("tr");
      tr.dataset.trialId = row[this.index.trial_id];
      tr.dataset.testid = "trial-row";
      for (const c of this.shown) {
        const td = document.createElement("td");
        const v = row[this.index[c]];
        if (c === "trial_id") {
          const a = document.createElement("a");
          a.href = "/trials/" + encodeURIComponent(v);
          a.textContent = v;
          td.appendChild(a);
        } else {
          td.textContent = fmt(v);
        }
        if (typeof v === "number") td.className = "num";
        if (c === "stop_reason") td.dataset.testid = "stop-reason";
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    this.table.tBodies[0].replaceChildren(body);
    const pages = Math.max(1, Math.ceil(this.view.length / PAGE_SIZE));
    this.count.textContent = `${this.view.length} of ${this.rows.length} trials`;
    this.pageInfo.textContent = `page ${this.page + 1} of ${pages}`;
  }
}

// --- the study page --------------------------------------------------------------------

function showProgress(p) {
  for (const k of ["suggested", "running", "pruned", "completed", "failed"]) {
    const el = document.getElementById("progress-" + k);
    if (el) el.textContent = p[k];
  }
  const best = document.getElementById("progress-best");
  if (best) best.textContent = fmt(p.best_value);
  const state = document.getElementById("progress-state");
  if (state) { state.textContent = p.state; state.className = "state state-" + p.state; }
  for (const k of Object.keys(p.percent || {})) {
    const seg = document.getElementById("bar-" + k);
    if (seg) seg.style.width = p.percent[k].toFixed(2) + "%";
  }
  const points = document.getElementById("progress-points");
  if (points) points.textContent = p.metric_points;
  const decisions = document.getElementById("progress-decisions");
  if (decisions) decisions.textContent = p.decisions;
}

async function studyPage() {
  const L = window.LADDER;
  const table = new TrialTable(L.studyId);
  const status = document.getElementById("live-status");
  let lastRefresh = Date.now();

  // The progress the drawn plots show: the live stream's differs when they are from
  // an earlier read (or the study moved on), and the plots are drawn again.
  let drawn = null;
  async function drawAll(figuresJson, tableJson) {
    const figs = figuresJson.figures;
    // The plots on the first screen first (a person sees the page when they are drawn),
    // then the rest, one per task so the page answers scrolling and typing meanwhile.
    // Each shows as soon as it is drawn, and its timing is its own.
    const first = L.figures.filter(name => onFirstScreen("plot-" + name));
    for (const name of first) await draw("plot-" + name, figs[name]);
    shown();
    for (const name of L.figures.filter(name => !first.includes(name))) {
      await nextTask();
      await draw("plot-" + name, figs[name]);
    }
    await nextTask();
    const start = performance.now();
    table.load(tableJson);
    L.timings["trial-table"] = performance.now() - start;
    drawn = JSON.stringify(figuresJson.progress);
    if (latest !== null && latest !== drawn) refresh();
    showRecommended();
  }

  // The noise-aware pick of the read just drawn (a GP fit on the server: after the plots).
  async function showRecommended() {
    const el = document.getElementById("progress-recommended");
    const r = await fetch(L.urls.recommended).then(r => r.json()).catch(() => null);
    if (!el || !r || r.error) return;
    el.textContent = "";
    if (!r.recommended) { el.textContent = "–"; return; }
    const a = document.createElement("a");
    a.href = "/trials/" + encodeURIComponent(r.recommended.trial_id);
    a.textContent = fmt(r.recommended.value);
    a.title = r.recommended.trial_id === r.best_trial_id ? "the best trial too"
      : "trial " + r.recommended.trial_id + " (not the best observed)";
    el.appendChild(a);
  }

  // Redraw at most every FIGURE_REFRESH_MS (or five times as long as the last redraw
  // took: a big study is not redrawn back to back); a change sooner is drawn when that
  // time has passed, one pending redraw at a time, so the last change is always drawn.
  let pending = null;
  let lastCost = 0;
  function refresh() {
    if (pending !== null) return;
    const every = Math.max(FIGURE_REFRESH_MS, 5 * lastCost);
    const wait = Math.max(0, lastRefresh + every - Date.now());
    pending = setTimeout(async () => {
      lastRefresh = Date.now();
      try {
        // fresh=1: not the read the page opened with, a new one.
        const [f, t] = await Promise.all([fetch(L.urls.figures + "?fresh=1").then(r => r.json()),
                                          fetch(L.urls.trials + "?fresh=1").then(r => r.json())]);
        if (!f.error && !t.error) await drawAll(f, t);
      } finally {
        lastCost = Date.now() - lastRefresh;
        pending = null;
      }
    }, wait);
  }

  let latest = null;
  function onProgress(p) {
    showProgress(p);
    latest = JSON.stringify(p);
    if (drawn !== null && latest !== drawn) refresh();
  }

  function poll() {
    status.textContent = "live (polling)";
    setInterval(() => fetch(L.urls.progress).then(r => r.json()).then(p => {
      if (!p.error) onProgress(p);
    }).catch(() => { status.textContent = "disconnected, retrying"; }), POLL_MS);
  }

  if (window.EventSource) {
    const source = new EventSource(L.urls.events);
    source.addEventListener("progress", (e) => {
      status.textContent = "live";
      onProgress(JSON.parse(e.data));
    });
    source.addEventListener("failure", (e) => {
      status.textContent = "lineage: " + JSON.parse(e.data).error;
    });
    source.onerror = () => { status.textContent = "reconnecting…"; };
  } else {
    poll();
  }

  const [figuresJson, tableJson] = await Promise.all([L.fetched.figures, L.fetched.trials]);
  if (figuresJson.error || tableJson.error) {
    for (const name of L.figures) {
      document.getElementById("plot-" + name).textContent = figuresJson.error || tableJson.error;
    }
  } else {
    await drawAll(figuresJson, tableJson);
  }
  ready();
}

// --- the studies page ------------------------------------------------------------------

function studiesPage() {
  const filter = document.getElementById("study-filter");
  const rows = Array.from(document.querySelectorAll("tr[data-study-id]"));
  filter.addEventListener("input", () => {
    const terms = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    for (const tr of rows) {
      const text = tr.textContent.toLowerCase();
      tr.hidden = !terms.every(t => text.includes(t));
    }
  });
  // Counts, state and best value change in place; a new or vanished study reloads
  // the (server-rendered) page.
  const ids = rows.map(tr => tr.dataset.studyId).join(" ");
  setInterval(() => fetch("/api/studies").then(r => r.json()).then(data => {
    const studies = data.studies || [];
    if (studies.map(s => s.study_id).join(" ") !== ids) {
      if (!filter.value) location.reload();
      return;
    }
    studies.forEach((s, i) => updateStudyRow(rows[i], s));
  }).catch(() => {}), 5000);
  ready();
}

function updateStudyRow(tr, s) {
  const p = s.progress;
  for (const k of ["running", "pruned", "completed", "failed"]) {
    const el = tr.querySelector(`[data-testid="count-${k}"]`);
    if (el) el.textContent = p[k];
    const seg = tr.querySelector(".seg-" + k);
    if (seg) seg.style.width = p.percent[k].toFixed(2) + "%";
  }
  const state = tr.querySelector('[data-testid="study-state"]');
  if (state) { state.textContent = s.state; state.className = "state state-" + s.state; }
  const best = tr.querySelector('[data-testid="study-best"]');
  if (best && best.firstChild) best.firstChild.textContent = fmt(s.best_value);
}

// --- the trial page --------------------------------------------------------------------

async function trialPage() {
  await draw("plot-trial-curve", window.LADDER.curve);
  ready();
}

window.addEventListener("DOMContentLoaded", () => {
  window.LADDER = window.LADDER || {};
  window.LADDER.timings = {};
  const page = document.body.dataset.page;
  const run = { study: studyPage, studies: studiesPage, trial: trialPage }[page];
  if (!run) { ready(); return; }
  Promise.resolve().then(run).catch(err => { console.error(err); ready(); });
});
