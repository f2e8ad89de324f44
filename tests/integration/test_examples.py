"""The twins under examples/: the same digits study with Ladder and with Optuna (4
workers, a log-float, an int, a categorical with a conditional child, ASHA), both run
here with a small budget (Ladder's against real service processes), and Ladder's no
longer than Optuna's in lines of user code."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ladder.config import Settings
from ladder.testing.services import process_env, start_services

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def code_lines(path: Path) -> int:
    """Lines of user code: non-blank, not a comment, not part of a docstring."""
    source = path.read_text()
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return sum(
        1 for number, line in enumerate(source.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#") and number not in docstrings
    )


def test_ladder_needs_no_more_lines_than_optuna() -> None:
    ladder_lines = code_lines(EXAMPLES / "ladder_digits.py")
    optuna_lines = code_lines(EXAMPLES / "optuna_digits.py")
    print(f"lines of user code: ladder {ladder_lines}, optuna {optuna_lines}")
    assert ladder_lines <= optuna_lines


def run_main(example: str, env: dict[str, str], trials: int, epochs: int
             ) -> subprocess.CompletedProcess[str]:
    """``main(trials, epochs)`` of an example, as a script of its own would run it."""
    code = (f"import sys; sys.path.insert(0, {str(EXAMPLES)!r}); import {example}; "
            f"{example}.main({trials}, {epochs})")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def system(infra: Settings, start_module_service: Callable[..., Any],
           tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return start_services(start_module_service, infra, tmp_path_factory.mktemp("examples"))


def test_the_ladder_twin_runs_its_study(system: Settings, tmp_path: Path) -> None:
    env = process_env(system, LADDER_CHECKPOINT_URL=(tmp_path / "checkpoints").as_uri())
    done = run_main("ladder_digits", env, trials=8, epochs=3)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "best val_loss" in done.stdout


def test_the_optuna_twin_runs_its_study() -> None:
    done = run_main("optuna_digits", dict(os.environ), trials=8, epochs=3)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "best val_loss" in done.stdout
