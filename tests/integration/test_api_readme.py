"""README.md's "Tune your own model" example, run as written: its Python block saved as
train.py and run by ``ladder run -n 2 train.py`` against real service processes."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ladder.client import LadderClient
from ladder.config import Settings
from ladder.testing import wait_for_found
from ladder.testing.services import process_env, start_services

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    """The first Python block of the "Tune your own model" section."""
    text = README.read_text()
    section = text.split("## Tune your own model", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the section"
    return match.group(1)


def test_the_example_is_about_25_lines() -> None:
    lines = [line for line in example().splitlines() if line.strip()]
    assert len(lines) <= 30, len(lines)


@pytest.fixture
def system(infra: Settings, start_service: Callable[..., Any], tmp_path: Path) -> Settings:
    return start_services(start_service, infra, tmp_path)


def test_the_example_runs_as_written(system: Settings, tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(example())
    env = process_env(system)
    done = subprocess.run(
        [sys.executable, "-m", "ladder.cli", "run", "-n", "2", "--study", "readme",
         "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Each worker prints the best value and params; ladder run the study's totals.
    assert re.search(r"^0\.\d+ \{'hidden': \d+, 'lr': ", done.stdout, re.M), done.stdout
    totals = re.search(r"study readme: (\d+) completed, (\d+) pruned, 0 failed", done.stdout)
    assert totals and int(totals[1]) + int(totals[2]) == 20, done.stdout
    with LadderClient(system) as client:
        best = wait_for_found(lambda: client.best("readme"), 30, "the best trial")
        # Outside a git work tree the script is recorded by its absolute path.
        recorded = best.attempts[0].run_environment.entry_point
        assert recorded == f"python {tmp_path / 'train.py'}"
