"""Configuration shared by every Ladder process.

Everything is read from environment variables with documented defaults; services
add their own flags on top (see each service's ``__main__``). When no explicit
endpoints are set, the addresses written by ``ladder up`` into the state folder
(``<state>/stack.json``) are used, so a process started beside the embedded stack
needs no configuration at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

TOPIC_NAMES = ("metrics", "rungs", "decisions", "trials", "studies", "dead-letter")


def state_dir() -> Path:
    """LADDER_STATE_DIR, default ``.ladder`` in the current directory."""
    return Path(os.environ.get("LADDER_STATE_DIR", ".ladder")).resolve()


def stack_file(base: Path | None = None) -> Path:
    return (base or state_dir()) / "stack.json"


def _stack_values() -> dict[str, str]:
    path = stack_file()
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
    return {}


def _pick(env: str, stack_key: str, default: str) -> str:
    value = os.environ.get(env)
    if value:
        return value
    return _stack_values().get(stack_key) or default


@dataclass(frozen=True)
class Topics:
    prefix: str = "ladder."

    def name(self, short: str) -> str:
        return f"{self.prefix}{short}"

    @property
    def metrics(self) -> str:
        return self.name("metrics")

    @property
    def rungs(self) -> str:
        return self.name("rungs")

    @property
    def decisions(self) -> str:
        return self.name("decisions")

    @property
    def trials(self) -> str:
        return self.name("trials")

    @property
    def studies(self) -> str:
        return self.name("studies")

    @property
    def dead_letter(self) -> str:
        return self.name("dead-letter")

    def all(self) -> list[str]:
        return [self.name(t) for t in TOPIC_NAMES]

    @property
    def compacted(self) -> list[str]:
        """Topics kept compacted (the latest record per key): offsets there have gaps."""
        return [self.studies]

    @property
    def contiguous(self) -> frozenset[str]:
        """Topics whose offsets follow each other: a gap read there was skipped by the
        fetch, and is read again (``ladder.gaps``)."""
        return frozenset(self.all()) - frozenset(self.compacted)


@dataclass(frozen=True)
class Settings:
    """Endpoints of the shared infrastructure and the services.

    | env var                    | default                         |
    |----------------------------|---------------------------------|
    | LADDER_STATE_DIR           | ./.ladder                       |
    | LADDER_KAFKA_BOOTSTRAP     | stack.json, else 127.0.0.1:9092 |
    | LADDER_REDIS_URL           | stack.json, else redis://127.0.0.1:6379/0 |
    | LADDER_TOPIC_PREFIX        | ladder.                         |
    | LADDER_SUGGEST_ADDR        | stack.json, else 127.0.0.1:50051 |
    | LADDER_EVALUATE_ADDR       | stack.json, else 127.0.0.1:50052 |
    | LADDER_LINEAGE_ADDR        | stack.json, else 127.0.0.1:50053 |
    | LADDER_KAFKA_LINGER_MS     | 20                              |
    """

    kafka_bootstrap: str
    redis_url: str
    topics: Topics = field(default_factory=Topics)
    suggest_addr: str = "127.0.0.1:50051"
    evaluate_addr: str = "127.0.0.1:50052"
    lineage_addr: str = "127.0.0.1:50053"
    state_dir: Path = field(default_factory=state_dir)
    # Producer linger of the services' event producers (suggest lingers less: its
    # TRIAL_SUGGESTED should reach the topic before the worker's TRIAL_STARTED).
    kafka_linger_ms: int = 20

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            kafka_bootstrap=_pick("LADDER_KAFKA_BOOTSTRAP", "kafka_bootstrap", "127.0.0.1:9092"),
            redis_url=_pick("LADDER_REDIS_URL", "redis_url", "redis://127.0.0.1:6379/0"),
            topics=Topics(os.environ.get("LADDER_TOPIC_PREFIX", "ladder.")),
            suggest_addr=_pick("LADDER_SUGGEST_ADDR", "suggest_addr", "127.0.0.1:50051"),
            evaluate_addr=_pick("LADDER_EVALUATE_ADDR", "evaluate_addr", "127.0.0.1:50052"),
            lineage_addr=_pick("LADDER_LINEAGE_ADDR", "lineage_addr", "127.0.0.1:50053"),
            state_dir=state_dir(),
            kafka_linger_ms=int(os.environ.get("LADDER_KAFKA_LINGER_MS", "20")),
        )
