"""The Redis users (``ladder.redisacl``) in tests: sample keys of each ``Keys`` family,
what a user's rendered rules let it do to a key, whether Redis refused a call, and the
deployment manifests' view of them (deploy/compose.yaml's interpolated environment and
Redis URLs, deploy/k8s's workloads)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from ladder import redisacl
from ladder.redisacl import READ, READ_WRITE
from ladder.state.keys import Keys

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"

# Ids as the code makes them (and a few awkward ones: a ':' in a node id, a tenant
# name with '.' and '-').
SAMPLE_ARGS = ("st-0a1b2c3d4e5f", "st-0a1b2c3d4e5f-t12", "team.a-1", "node:7", "3")


def sample_keys(keys: Keys, builder: str) -> list[str]:
    """Keys of family ``builder`` for several plausible ids."""
    member = getattr(Keys, builder)
    if isinstance(member, property):
        return [getattr(keys, builder)]
    arity = len(inspect.signature(member).parameters) - 1
    return [getattr(keys, builder)(*[arg] * arity) for arg in SAMPLE_ARGS]


def access(acl: redisacl.AclUser, key: str, keys: Keys) -> str:
    """What ``acl``'s rendered key rules let it do to ``key``: '', R or RW (Redis
    glob semantics for the ``*`` the patterns use)."""
    right = ""
    for rule in redisacl.key_rules(acl, keys):
        pattern = rule.removeprefix("%R~").removeprefix("~")
        if fnmatchcase(key, pattern):
            right = READ if rule.startswith("%R~") and right != READ_WRITE else READ_WRITE
    return right


def refused(call: Any, *args: Any, **kwargs: Any) -> bool:
    """Whether Redis answers ``call(*args, **kwargs)`` with NOPERM."""
    try:
        call(*args, **kwargs)
    except redis.exceptions.NoPermissionError:
        return True
    return False


# --- deploy/compose.yaml ----------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[?-])([^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` as Compose interpolates it from ``env``: ``${VAR}``, ``${VAR:?message}``
    (KeyError when VAR is unset or empty), ``${VAR:-default}``, ``$$`` for ``$``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, kind, rest = match.groups()
        value = env.get(name, "")
        if kind in (":?", "?") and not value:
            raise KeyError(f"{name}: {rest}")
        return value or (rest if kind in (":-", "-") else "")

    return _VARIABLE.sub(one, text)


def variables(text: str) -> list[str]:
    """The variables ``text`` names (``${VAR...}``)."""
    return [m.group(1) for m in _VARIABLE.finditer(text) if m.group(1)]


def compose_services() -> dict[str, dict[str, Any]]:
    """deploy/compose.yaml's services, anchors and merge keys resolved, nothing
    interpolated."""
    import yaml

    return yaml.safe_load(COMPOSE.read_text())["services"]


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment (a mapping in deploy/compose.yaml), values as strings."""
    environment = service.get("environment") or {}
    assert isinstance(environment, dict), "deploy/compose.yaml: environment as a mapping"
    return {str(k): str(v) for k, v in environment.items()}


def redis_user(url: str) -> str | None:
    """The user name of a redis:// URL, interpolated or not (a ``${VAR:?message}``
    password may hold what ``urlsplit`` would misread)."""
    rest = url.partition("://")[2]
    if "@" not in rest:
        return None
    return urlsplit("redis://" + rest.rsplit("@", 1)[0].split(":", 1)[0] + "@h").username


# --- deploy/k8s -------------------------------------------------------------------------


def k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every document of deploy/k8s/*.yaml, with its file's name."""
    import yaml

    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def pod_containers(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The containers and init containers of a workload's pod (a Job's too)."""
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]
