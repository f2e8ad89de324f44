"""The pages of docs/ cannot drift from the code.

The generated pages (CLI, configuration) must equal what ``python -m ladder.docs`` writes
now; the hand-written ones must name only proto fields and enum values that exist (a
renamed field breaks this test) and their Python blocks must at least parse.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor
from ladder import docs
from ladder.v1 import (
    evaluate_pb2,
    events_pb2,
    lineage_pb2,
    space_pb2,
    study_pb2,
    suggest_pb2,
    trial_pb2,
)

PROSE_PAGES = ("search-spaces.md", "schedulers.md", "workers-and-checkpoints.md", "lineage.md")
_MODULES = (evaluate_pb2, events_pb2, lineage_pb2, space_pb2, study_pb2, suggest_pb2, trial_pb2)


def _messages() -> list[Descriptor]:
    found: list[Descriptor] = []
    pending = [m for module in _MODULES for m in module.DESCRIPTOR.message_types_by_name.values()]
    while pending:
        message = pending.pop()
        found.append(message)
        pending.extend(message.nested_types)
    return found


def _enum_values() -> set[str]:
    enums = [e for module in _MODULES for e in module.DESCRIPTOR.enum_types_by_name.values()]
    enums += [e for message in _messages() for e in message.enum_types]
    return {value.name for enum in enums for value in enum.values}


def _code_spans(text: str) -> set[str]:
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return set(re.findall(r"`([^`\n]+)`", prose))


@pytest.mark.parametrize("name", sorted(docs.GENERATED_PAGES))
def test_generated_page_is_up_to_date(name: str) -> None:
    committed = (docs.DOCS_DIR / name).read_text()
    assert committed == docs.GENERATED_PAGES[name](), (
        f"docs/{name} is out of date: run `make docs` and commit it"
    )


def test_configuration_page_covers_every_documented_setting() -> None:
    page = docs.configuration_reference()
    for variable in ("LADDER_STATE_DIR", "LADDER_LEASE_SECONDS", "LADDER_LINEAGE_DB",
                     "LADDER_CHECKPOINT_URL", "checkpoint_interval_steps"):
        assert variable in page


def test_cli_page_has_every_command() -> None:
    page = docs.cli_reference()
    for command in docs.cli.COMMANDS:
        assert f"## `ladder {command}`" in page


@pytest.mark.parametrize("name", PROSE_PAGES)
def test_enum_names_in_prose_exist_in_the_protos(name: str) -> None:
    """Every ALL_CAPS code span is a value of some ladder.v1 enum."""
    spans = _code_spans((docs.DOCS_DIR / name).read_text())
    capitals = {s for s in spans if re.fullmatch(r"[A-Z][A-Z0-9_]+", s)}
    env_vars = {s for s in capitals if s.startswith("LADDER_")}
    assert capitals - env_vars - _enum_values() == set()


@pytest.mark.parametrize("name", PROSE_PAGES)
def test_field_names_in_prose_exist(name: str) -> None:
    """Every snake_case code span of the prose is a field of some ladder.v1 message."""
    spans = _code_spans((docs.DOCS_DIR / name).read_text())
    snake = {s for s in spans if re.fullmatch(r"[a-z]+(_[a-z0-9]+)+", s)}
    fields = {field.name for message in _messages() for field in message.fields}
    assert snake - fields == set(), "renamed proto fields? fix the page"


def test_trial_policy_page_lists_every_field() -> None:
    page = (docs.DOCS_DIR / "workers-and-checkpoints.md").read_text()
    for field in study_pb2.TrialPolicy.DESCRIPTOR.fields:
        assert f"`{field.name}`" in page


def test_scheduler_page_lists_every_kind() -> None:
    page = (docs.DOCS_DIR / "schedulers.md").read_text()
    for value in study_pb2.SchedulerKind.DESCRIPTOR.values:
        if value.number:
            assert f"`{value.name}`" in page


@pytest.mark.parametrize("name", PROSE_PAGES)
def test_python_blocks_parse(name: str) -> None:
    text = (docs.DOCS_DIR / name).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    for block in blocks:
        ast.parse(block)


def test_readme_links_every_page() -> None:
    readme = (docs.REPO_ROOT / "README.md").read_text()
    for page in sorted(Path(docs.DOCS_DIR).glob("*.md")):
        assert f"(docs/{page.name})" in readme
