"""Time from `git clone` to the first completed trial of one's own script.

    .venv/bin/python bench/first_trial.py [--modes excluded,included] [--keep]

The script is the README's "Tune your own model" example, saved as ``train.py`` in the
clone and run as a user would: ``python train.py`` (one worker; it starts the embedded
stack of the clone's ``./.ladder``, on free ports). The clock stops when lineage reports
the study's first COMPLETED trial; then the script is interrupted and the stack stopped.

- ``excluded``: setup already done: the clone links this checkout's ``.venv`` and only
  generates its protobuf code (``make proto``); the clone's ``libs`` come first on
  ``PYTHONPATH`` so its own code runs, not this checkout's.
- ``included``: a fresh clone running ``make setup`` into its own venv (pip resolves from
  the machine's wheel cache and local indexes, torch from disk; redis-server and
  postgresql are already installed), then the same run.

The clone is made from this checkout (a local clone: no network time is in the figure).
Writes bench/results/first-trial.json with the phases, the machine and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ladder.client import LadderClient, wait_until
from ladder.config import Settings

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "bench" / "results" / "first-trial.json"
TRIAL_TIMEOUT_S = 900.0


def readme_example() -> str:
    """The first Python block of README's "Tune your own model" section."""
    section = (REPO / "README.md").read_text().split("## Tune your own model", 1)[1]
    match = re.search(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    if not match:
        raise SystemExit("README.md: no Python block under 'Tune your own model'")
    return match.group(1)


def _timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def _clean_env(clone: Path) -> dict[str, str]:
    """The user's environment: nothing of this checkout's stack, the clone's state dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LADDER_", "VIRTUAL_ENV"))}
    env["LADDER_STATE_DIR"] = str(clone / ".ladder")
    env["PYTHONPATH"] = str(clone / "libs")
    return env


def _first_completed(state_dir: Path, deadline_s: float) -> bool:
    """Wait for the stack the script starts, then for its study's first COMPLETED trial."""
    if not wait_until(lambda: (state_dir / "stack.json").exists(), deadline_s, 0.2):
        return False
    os.environ["LADDER_STATE_DIR"] = str(state_dir)
    with LadderClient(Settings.from_env()) as client:
        def completed() -> bool:
            try:
                return any(
                    t.state == "COMPLETED"
                    for study in client.list_studies()
                    for t in client.list_trials(study.study_id)
                )
            except Exception:  # noqa: BLE001 - a service still starting: not yet
                return False

        return bool(wait_until(completed, deadline_s, 0.2))


def first_trial_seconds(clone: Path, python: Path) -> float:
    """Seconds from `python train.py` to the first completed trial (stack start included)."""
    (clone / "train.py").write_text(readme_example())
    env = _clean_env(clone)
    start = time.monotonic()
    script = subprocess.Popen([str(python), "train.py"], cwd=clone, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not _first_completed(clone / ".ladder", TRIAL_TIMEOUT_S):
            raise SystemExit(f"no completed trial within {TRIAL_TIMEOUT_S} s in {clone}")
        return time.monotonic() - start
    finally:
        script.send_signal(signal.SIGINT)  # hands the running trial back
        try:
            script.wait(60)
        except subprocess.TimeoutExpired:
            script.kill()
        subprocess.run([str(clone / ".venv" / "bin" / "ladder"), "down"], cwd=clone, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def run(mode: str, workdir: Path) -> dict[str, float | str]:
    clone = workdir / f"clone-{mode}"
    phases = {"clone_s": _timed(["git", "clone", "-q", str(REPO), str(clone)], workdir)}
    if mode == "excluded":
        (clone / ".venv").symlink_to(REPO / ".venv")
        # -o: the setup stamp counts as done, so make does not reinstall into the shared venv.
        phases["proto_s"] = _timed(["make", "-o", ".venv/.ladder-setup", "proto"], clone)
    else:
        phases["setup_s"] = _timed(["make", "setup"], clone)
    phases["first_trial_s"] = first_trial_seconds(clone, clone / ".venv" / "bin" / "python")
    phases["total_s"] = sum(phases.values())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout.strip()
    return {**{k: round(v, 1) for k, v in phases.items()}, "commit": commit}


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.strip()
    return {"python": platform.python_version(), "torch": version("torch"),
            "ladder_commit": commit, "git": subprocess.run(
                ["git", "--version"], capture_output=True, text=True).stdout.strip()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="excluded,included")
    parser.add_argument("--keep", action="store_true", help="keep the clones")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ladder-first-trial-"))
    results = {}
    try:
        for mode in args.modes.split(","):
            results[mode] = run(mode, workdir)
            print(mode, results[mode], file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    # A mode not run this time keeps its earlier figure (each is minutes on 2 cores).
    earlier = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    RESULT.write_text(json.dumps({
        "what": "git clone to the first COMPLETED trial of README's train.py (python train.py)",
        "setup_excluded": results.get("excluded", earlier.get("setup_excluded")),
        "setup_included": results.get("included", earlier.get("setup_included")),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "versions": _versions(),
        "date": time.strftime("%Y-%m-%d"),
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
