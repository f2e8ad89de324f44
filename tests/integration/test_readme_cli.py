"""README's "CLI" section is what the code prints: every ``$ ladder ...`` command shown
there runs, as written, against a real stack (suggest, evaluate and lineage processes
on the real broker and Redis, under a topic prefix of their own so that `ladder study
list` sees only this study), and its output must equal the block that follows it
once the values that vary from run to run are masked (times, durations, rates).

The study comes from the section's YAML block; before the first ``ladder watch`` its
four trials run through the SDK, three metric points each, as any worker would report
them. On a mismatch the assertion shows the command's real output, ready to paste.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ladder.client import LadderClient
from ladder.config import Settings, Topics
from ladder.lifecycle import COMPLETED
from ladder.params import params_to_dict
from ladder.testing import ServiceGroup, own_topics, wait_for, wait_for_found

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
SERVICES = ("services.suggest", "services.evaluate", "services.lineage")
# Run-to-run values, masked on both sides before comparing.
MASKS = (
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"), "<time>"),
    (re.compile(r"\d+(\.\d+)? trials/min"), "<rate> trials/min"),
    (re.compile(r"(?<= )(\d+(\.\d)?s|\d+m\d\ds|\d+h\d\dm)$", re.MULTILINE), "<duration>"),
)
TRIALS_BEFORE = "ladder watch"  # the section's trials have run by this command
WORKER, HOST = "w0", "gpu-node-1"


@dataclass
class Shown:
    command: str
    output: str


def cli_section(text: str) -> str:
    start = text.index("\n## CLI\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)


def commands(section: str) -> list[Shown]:
    shown: list[Shown] = []
    for block in blocks(section, "console"):
        for line in block.splitlines():
            if line.startswith("$ "):
                shown.append(Shown(line[2:], ""))
            elif shown:
                shown[-1].output += line + "\n"
    return shown


def masked(text: str) -> str:
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


@pytest.fixture(scope="module")
def stack(infra_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("readme-cli")
    env = {**own_topics(infra_env, "readme"),
           "LADDER_LINEAGE_DB": str(folder / "lineage.sqlite3")}
    group = ServiceGroup(env, folder)
    for module in SERVICES:
        group.start(module)
    yield group.env
    group.stop_all()


def run_trials(env: dict[str, str], study_id: str) -> None:
    """The study's trials, each reporting three steps of a made-up objective."""
    settings = Settings(
        kafka_bootstrap=env["LADDER_KAFKA_BOOTSTRAP"], redis_url=env["LADDER_REDIS_URL"],
        topics=Topics(env["LADDER_TOPIC_PREFIX"]), suggest_addr=env["LADDER_SUGGEST_ADDR"],
        evaluate_addr=env["LADDER_EVALUATE_ADDR"], lineage_addr=env["LADDER_LINEAGE_ADDR"],
    )
    with LadderClient(settings) as client:
        study = client.get_study(study_id)
        for number in range(1, study.config.max_trials + 1):
            trial = client.suggest(study_id, WORKER)[0].trial
            params = params_to_dict(trial.params)
            floor = 0.1 * (math.log10(params["lr"]) + 2.5) ** 2 + 0.02 * params["layers"]
            attempt = f"a{number}"
            client.start_trial(trial.trial_id, WORKER, attempt, hostname=HOST)
            for step in (1, 2, 3):
                value = round(floor + 0.3 / step, 4)
                client.report_metric(study_id, trial.trial_id, attempt, step, value,
                                     metric=study.config.metric, worker_id=WORKER)
            client.flush()
            client.complete(trial.trial_id, attempt, value, 3)
        wait_for(lambda: client.get_study(study_id).state == COMPLETED, 30, "COMPLETED")
        expected = 3 * study.config.max_trials
        wait_for_found(
            lambda: client.summary(study_id).metric_points == expected, 30,
            "lineage to record every metric point",
        )


def run(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    extra = {}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        extra[name] = value
    assert words[0] == "ladder", f"README shows a command that is not ladder's: {command}"
    return subprocess.run(
        [sys.executable, "-m", "ladder.cli", *words[1:]], env={**env, **extra}, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
    )


def test_every_cli_command_in_the_readme_prints_what_it_shows(
    stack: dict[str, str], tmp_path: Path
) -> None:
    section = cli_section(README.read_text())
    (study_file,) = blocks(section, "yaml")
    (tmp_path / "study.yaml").write_text(study_file)
    study_id = re.search(r"^study_id: (\S+)$", study_file, re.MULTILINE).group(1)
    shown = commands(section)
    assert any(TRIALS_BEFORE in s.command for s in shown)
    # The addresses come from the environment, none from a stack.json.
    env = {**stack, "LADDER_STATE_DIR": str(tmp_path / "no-stack-here")}
    trials_ran = False
    for item in shown:
        if TRIALS_BEFORE in item.command and not trials_ran:
            run_trials(stack, study_id)
            trials_ran = True
        result = run(item.command, env, tmp_path)
        refused = item.output.startswith("ladder: ")  # an error, on stderr
        assert (result.returncode != 0) == refused, (item.command, result.stdout)
        assert masked(result.stdout) == masked(item.output), (
            f"README shows for `{item.command}`:\n{item.output}\nthe code prints:\n"
            f"{result.stdout}"
        )
