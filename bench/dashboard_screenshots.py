"""Screenshots of the dashboard's pages for the README and docs/dashboard.md, taken
from a real stack running real studies (``make screenshots``, a few minutes).

::

    .venv/bin/python bench/dashboard_screenshots.py [--trials 80] [--workers 8]
        [--out docs/images]

A fresh embedded stack (broker, Redis, the four services as processes) and a dashboard
process; worker threads run two studies through the Python API (``ladder.load_study``
and ``Study.trials``): the main one, ``--trials`` trials of TPE on four parameters
(log-scaled learning rate, depth, optimizer, dropout) under ASHA (rungs at 1, 3 and 9
of 27 steps), and a smaller random-search one beside it on the studies page. A trial
trains a made-up learning curve: its loss falls towards a floor set by its parameters
(best near lr 3e-3, depth 5, adam, dropout 0.15) at a pace set by its learning rate,
with noise from the trial's seed, one step every ``STEP_SECONDS`` and a checkpoint
every ``CHECKPOINT_EVERY`` steps; the early-stop service decides from its reports, as
for any workload.

Once both studies have ended, headless Chromium (``ladder.testing.browser``) takes
``dashboard-studies.png``, ``dashboard-study.png`` (the whole page) and
``dashboard-trial.png`` (a trial that ASHA stopped, with its reason).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ladder
from ladder.client import LadderClient
from ladder.config import Settings, Topics
from ladder.testing import ServiceGroup, embedded_infra, wait_for
from ladder.testing.browser import PageErrors, chromium_profile, start_dashboard, wait_drawn
from ladder.testing.services import start_services
from ladder.testing.workers import WorkerThreads

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
SPACE = {
    "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "depth": {"type": "int", "low": 1, "high": 8},
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd", "rmsprop"]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
}
MAX_STEPS = 27
STEP_SECONDS = 0.5  # a STOP takes a second or more to come back on a busy machine
# Taller than any page: the whole page is laid out once, in the window (a full-page
# screenshot resizes the window, and plotly's responsive redraw of that overlaps plots).
VIEWPORT = {"width": 1280, "height": 4200}
SEED = 16
CHECKPOINT_EVERY = 3  # steps: each checkpoint also reports the training seconds since


def floor(params: dict[str, Any]) -> float:
    """The loss a configuration converges to."""
    return (0.08 + 0.06 * (math.log10(params["lr"]) + 2.5) ** 2
            + {"adam": 0.0, "rmsprop": 0.04, "sgd": 0.1}[params["optimizer"]]
            + 0.015 * abs(params["depth"] - 5) + 0.4 * (params["dropout"] - 0.15) ** 2)


def loss(trial: Any, step: int) -> float:
    """The trial's loss after ``step``: towards its floor at a pace its learning rate
    sets, with noise of its own."""
    params = trial.params
    pace = 2 + 6 * min(1.0, abs(math.log10(params["lr"]) + 1.5) / 3.5)
    noise = random.Random(f"{trial.trial_id}/{step}").gauss(0, 0.006)
    return floor(params) + 1.2 * math.exp(-step / pace) + noise


def ended(client: LadderClient, study_id: str, budget: int, timeout: float = 600) -> None:
    """Wait until lineage has every trial of the budget ended (it may lag the workers)."""
    seen: list[str] = []

    def done() -> bool:
        s = client.summary(study_id)
        line = (f"lineage: {study_id} {s.completed} completed, {s.pruned} pruned, "
                f"{s.failed} failed, {s.running} running, {s.metric_points} points")
        if not seen or seen[-1] != line:
            seen.append(line)
            print(line, flush=True)
        return s.running == 0 and s.completed + s.pruned + s.failed == budget

    wait_for(done, timeout, f"lineage to record every trial of {study_id} ended", every=1)


def run_studies(settings: Settings, trials: int, workers: int, folder: Path) -> str:
    """Both studies, worked to the end; the main study's id."""
    with LadderClient(settings) as client:
        baseline = ladder.create_study(
            SPACE, metric="val_loss", scheduler="asha", max_steps=MAX_STEPS,
            max_trials=max(8, trials // 4), algorithm="random", seed=SEED,
            name="mlp-random-baseline", dataset_id="digits@1", client=client)
        main = ladder.create_study(
            SPACE, metric="val_loss", scheduler="asha", max_steps=MAX_STEPS,
            max_trials=trials, algorithm="tpe", seed=SEED, name="mlp-tpe-asha",
            dataset_id="digits@1", client=client, labels={"team": "vision"})
        checkpoints = (folder / "checkpoints").as_uri()
        started = time.monotonic()
        groups = [WorkerThreads(count, settings, study.study_id, loss, STEP_SECONDS,
                                checkpoints, prefix=f"gpu-{k}-",
                                checkpoint_every=CHECKPOINT_EVERY).start()
                  for k, (study, count) in enumerate(((baseline, 2), (main, workers)))]
        for group in groups:
            group.join()
        for study in (baseline, main):
            ended(client, study.study_id, study.config.max_trials)
        summary = client.summary(main.study_id)
        print(f"studies done in {time.monotonic() - started:.0f} s: {main.study_id} "
              f"{summary.completed} completed, {summary.pruned} pruned, "
              f"{summary.failed} failed", flush=True)
        if summary.pruned < trials / 2:
            # ASHA stops about 2/3 of them: fewer means its STOPs reached the workers after
            # the trials had ended (a machine too busy for STEP_SECONDS).
            print(f"warning: only {summary.pruned} of {trials} trials pruned; the pictures "
                  "will not show ASHA at work (rerun on a quieter machine)", flush=True)
        return main.study_id


def stopped_trial(settings: Settings, study_id: str) -> str:
    """A trial ASHA pruned, at the latest rung (its curve has the most to show)."""
    with LadderClient(settings) as client:
        pruned = [t for t in client.list_trials(study_id)
                  if t.state == "PRUNED" and t.stop_reason]
    if not pruned:
        raise RuntimeError(f"no trial of {study_id} was stopped")
    return max(pruned, key=lambda t: (t.stop_rung, t.last_step)).trial_id


def screenshots(base: str, study_id: str, trial_id: str, out: Path, folder: Path) -> None:
    errors = PageErrors()
    shots = (("dashboard-studies.png", "/studies"),
             ("dashboard-study.png", f"/studies/{study_id}"),
             ("dashboard-trial.png", f"/trials/{trial_id}"))
    with chromium_profile(folder / "profile", viewport=VIEWPORT) as browser:
        page = errors.watch(browser.new_page())
        for name, path in shots:
            page.goto(base + path)
            wait_drawn(page, 120)
            # The study page may open on a read a moment old; it redraws once its live
            # progress says there is more: wait for the table to count every trial.
            if path.startswith("/studies/"):
                page.wait_for_function(
                    "() => { const t = document.getElementById('trial-count').textContent;"
                    " const m = t.match(/^(\\d+) of (\\d+)/);"
                    " return m && m[1] === m[2] && m[2] === document.getElementById("
                    "'progress-suggested').textContent; }", timeout=60_000)
                # The recommended trial is a GP fit on the server, answered after the page.
                page.locator('[data-testid="progress-recommended"] a').wait_for(timeout=60_000)
            page.mouse.move(0, 0)  # no hover label in the picture
            height = page.evaluate("Math.ceil(document.querySelector('main')"
                                   ".getBoundingClientRect().bottom)")
            page.screenshot(path=str(out / name), clip={
                "x": 0, "y": 0, "width": VIEWPORT["width"], "height": height + 24})
            print(f"wrote {out / name}", flush=True)
    if errors.found:
        raise RuntimeError("the pages logged errors:\n" + "\n".join(errors.found))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=80)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=IMAGES)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ladder-screenshots-") as tmp:
        folder = Path(tmp)
        with embedded_infra(folder / "infra") as env:
            infra = Settings(kafka_bootstrap=env["LADDER_KAFKA_BOOTSTRAP"],
                             redis_url=env["LADDER_REDIS_URL"],
                             topics=Topics(env["LADDER_TOPIC_PREFIX"]))
            group = ServiceGroup(env, folder)
            try:
                settings = start_services(group.start, infra, folder / "state")
                dashboard = start_dashboard(settings.lineage_addr, folder)
                group.started.append(dashboard)  # stopped with the services
                study_id = run_studies(settings, args.trials, args.workers, folder)
                screenshots(dashboard.url, study_id, stopped_trial(settings, study_id),
                            args.out, folder)
            finally:
                group.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
