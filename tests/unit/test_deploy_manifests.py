"""The deployment files cannot leave a service out: every service package (a
``services/<name>/__main__.py``) runs in the compose file and has a Kubernetes manifest
that the kustomization lists, starting that module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def services() -> set[str]:
    return {p.parent.name for p in (ROOT / "services").glob("*/__main__.py")}


def commands(docs: list[Any]) -> set[str]:
    """The ``python -m X`` modules the containers of these documents run."""
    found = set()
    for doc in docs:
        spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            command = container.get("command", [])
            if command[:2] == ["python", "-m"]:
                found.add(command[2])
    return found


def test_every_service_has_a_kubernetes_manifest_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    started: set[str] = set()
    for name in kustomization["resources"]:
        started |= commands(list(yaml.safe_load_all((DEPLOY / "k8s" / name).read_text())))
    missing = {f"services.{s}" for s in services()} - started
    assert not missing, f"no Kubernetes manifest starts {sorted(missing)}"


def test_every_service_runs_in_the_compose_file() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    started = {" ".join(s.get("command", [])) for s in compose["services"].values()}
    missing = {s for s in services() if f"python -m services.{s}" not in started}
    assert not missing, f"the compose file runs no {sorted(missing)}"
