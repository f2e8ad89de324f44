"""Redis hot state: studies, trials, leases, queues, decisions.

``open_state(settings)`` connects and returns a ``State`` with ``studies``
(``StudyStore``) and ``trials`` (``TrialStore``); keys are laid out in
``ladder.state.keys`` (prefixed ``ladder:<topic prefix>:``) and every
multi-key change is a Lua script in ``ladder.state.scripts``. A refused change
raises one of the domain errors of ``ladder.errors``.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from ladder.config import Settings
from ladder.state.keys import Keys
from ladder.state.offsets import ConsumerOffsets
from ladder.state.studies import StudyStore
from ladder.state.trials import (
    TERMINAL,
    AttemptEnded,
    Transition,
    TrialStore,
    trial_event,
    trial_from_hash,
)


@dataclass
class State:
    client: redis.Redis
    keys: Keys
    studies: StudyStore
    trials: TrialStore

    def close(self) -> None:
        self.client.close()


def open_state(settings: Settings, client: redis.Redis | None = None) -> State:
    client = client or redis.Redis.from_url(
        settings.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
    )
    keys = Keys.for_prefix(settings.topics.prefix)
    studies = StudyStore(client, keys)
    trials = TrialStore(client, keys, policy_of=studies.trial_policy)
    return State(client, keys, studies, trials)


__all__ = [
    "TERMINAL",
    "AttemptEnded",
    "ConsumerOffsets",
    "Keys",
    "State",
    "StudyStore",
    "Transition",
    "TrialStore",
    "open_state",
    "trial_event",
    "trial_from_hash",
]
