"""The study file of ``ladder study create FILE``: YAML (or JSON, which is YAML too).

::

    study_id: cli-demo          # optional: a server-chosen id otherwise
    name: cli demo
    metric: val_loss
    direction: minimize         # or maximize
    algorithm: random           # random, gp, tpe, auto
    max_trials: 4               # without it the study runs until stopped
    max_parallel_trials: 2      # optional: trials out at once (`ladder study update`)
    seed: 7
    space:                      # the SDK's plain-dict form (ladder.client.search_space)
      lr: {type: float, low: 0.0001, high: 0.1, log: true}
      optimizer: {type: categorical, choices: [sgd, adam]}
      momentum: {type: float, low: 0.0, high: 0.99, when: {optimizer: [sgd]}}
    scheduler: {kind: asha, max_resource: 27}   # ladder.client.scheduler_config's arguments
    trial_policy: {checkpoint_interval_seconds: 60, on_out_of_memory: OOM_INFEASIBLE}

Every other key of ``ladder.client.study_config`` is accepted too (dataset_id,
code_commit, partitions, labels, warm_start, warm_start_from, the budgets
max_wall_clock_seconds, max_trial_hours, max_gpu_hours, and for RequestWork's
scheduler trial_resources: {gpus: 8, gpu_type: a100, cpu: 16, memory_gb: 200},
priority, stable_for_promoted; docs/tenancy.md) and ``known_results``
as a list of ``{params: {...}, value: 0.1}``. ``trial_policy`` takes the TrialPolicy
fields of study.proto. Unknown keys, and every mistake ``study_config`` finds, are a
``StudyFileError`` naming the file and the field.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from ladder.client import study_config
from ladder.study import StudySpec
from ladder.v1 import study_pb2

EXTRA_KEYS = ("study_id", "trial_policy", "known_results")


class StudyFileError(ValueError):
    """The study file cannot be read or describes no valid study."""


def _config_keys() -> list[str]:
    return list(inspect.signature(study_config).parameters)


def parse(data: object, source: str = "study file") -> tuple[study_pb2.StudyConfig, str]:
    """(validated StudyConfig, requested study id or "") from the file's data."""
    if not isinstance(data, Mapping):
        raise StudyFileError(f"{source}: expected a mapping of study fields, got "
                             f"{type(data).__name__}")
    known = [*_config_keys(), *EXTRA_KEYS]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise StudyFileError(f"{source}: unknown keys {unknown}; known: {', '.join(known)}")
    if "space" not in data:
        raise StudyFileError(f"{source}: 'space' is required")
    values: dict[str, Any] = dict(data)
    study_id = str(values.pop("study_id", "") or "")
    policy = values.pop("trial_policy", None)
    if "known_results" in values:
        values["known_results"] = _known_results(values["known_results"], source)
    try:
        config = study_config(values.pop("space"), **values)
        if policy is not None:
            json_format.ParseDict(policy, config.trial_policy)
            StudySpec.from_proto(config)
    except (ValueError, TypeError, json_format.ParseError) as exc:
        raise StudyFileError(f"{source}: {exc}") from exc
    return config, study_id


def _known_results(items: object, source: str) -> list[tuple[Mapping[str, Any], float]]:
    if not isinstance(items, list):
        raise StudyFileError(f"{source}: known_results must be a list of "
                             "{params: {...}, value: ...}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or set(item) != {"params", "value"}:
            raise StudyFileError(f"{source}: known_results[{i}] must be "
                                 "{params: {...}, value: ...}")
        out.append((item["params"], item["value"]))
    return out


def load(path: Path) -> tuple[study_pb2.StudyConfig, str]:
    """Read and validate the study file at ``path``."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StudyFileError(f"{path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise StudyFileError(f"{path}: not valid YAML ({exc})") from exc
    return parse(data, str(path))
