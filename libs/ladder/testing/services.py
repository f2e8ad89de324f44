"""The service processes of an integration test, as the Settings (for clients in the
test) and the environment (for scripts and ``ladder`` commands it starts) that reach
them."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ladder.config import Settings
from ladder.testing.processes import ServiceProcess

ALL_SERVICES = ("services.suggest", "services.evaluate", "services.lineage",
                "services.earlystop")
_ADDRESSES = {"services.suggest": "suggest_addr", "services.evaluate": "evaluate_addr",
              "services.lineage": "lineage_addr"}


def start_services(
    start: Callable[[str], ServiceProcess],
    infra: Settings,
    state_dir: Path,
    modules: Sequence[str] = ALL_SERVICES,
) -> Settings:
    """Start ``modules`` with ``start`` (a ``ServiceGroup.start`` fixture); the Settings
    of ``infra``'s broker and Redis with their addresses and ``state_dir``."""
    addresses = {_ADDRESSES[m]: start(m).addr for m in modules if m in _ADDRESSES}
    for module in modules:
        if module not in _ADDRESSES:
            start(module)
    return dataclasses.replace(infra, state_dir=state_dir, **addresses)


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment with ``settings`` as the only LADDER_ variables (no
    address of a developer's stack leaks in), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LADDER_")}
    env.update({
        "LADDER_STATE_DIR": str(settings.state_dir),
        "LADDER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LADDER_REDIS_URL": settings.redis_url,
        "LADDER_TOPIC_PREFIX": settings.topics.prefix,
        "LADDER_SUGGEST_ADDR": settings.suggest_addr,
        "LADDER_EVALUATE_ADDR": settings.evaluate_addr,
        "LADDER_LINEAGE_ADDR": settings.lineage_addr,
    })
    env.update(extra)
    return env
