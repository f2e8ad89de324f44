"""The samplers this suggest process holds: one per (study, partition).

Studies are immutable once created, so their config and encoded space are
cached. Completed observations arrive from the trials topic and are kept per
study (keyed by trial id, so a replayed event changes nothing); a sampler built
later starts from all of them.
"""

from __future__ import annotations

import logging
import math
import threading
import zlib

from ladder.params import params_to_dict
from ladder.samplers import Observation, Sampler, make_sampler
from ladder.space import Space
from ladder.state import TrialStore
from ladder.v1 import study_pb2, trial_pb2

log = logging.getLogger("ladder.suggest.pool")


def partition_of(worker_id: str, partitions: int) -> int:
    """Stable routing of a worker to a suggestion partition (crc32 mod P)."""
    return zlib.crc32(worker_id.encode()) % max(1, partitions)


class SamplerPool:
    def __init__(self, trials: TrialStore) -> None:
        self.trials = trials
        self._samplers: dict[tuple[str, int], Sampler] = {}
        self._spaces: dict[str, Space] = {}
        self._observations: dict[str, dict[str, Observation]] = {}
        self._lock = threading.Lock()

    def space(self, study: study_pb2.Study) -> Space:
        with self._lock:
            space = self._spaces.get(study.study_id)
            if space is None:
                space = self._spaces[study.study_id] = Space.from_proto(study.config.space)
            return space

    def sampler(self, study: study_pb2.Study, partition: int) -> Sampler:
        key = (study.study_id, partition)
        space = self.space(study)
        with self._lock:
            sampler = self._samplers.get(key)
            if sampler is None:
                sampler = make_sampler(
                    study.config,
                    space,
                    partition,
                    reserve=lambda n, sid=study.study_id, p=partition: self.trials.reserve_draws(
                        sid, p, n
                    ),
                    study_id=study.study_id,
                )
                known = list(self._observations.get(study.study_id, {}).values())
                if known:
                    sampler.update(known)
                self._samplers[key] = sampler
            return sampler

    def observe(self, trial: trial_pb2.Trial) -> bool:
        """Feed a COMPLETED trial to the study's samplers; False if already known."""
        if not trial.has_final_value or not math.isfinite(trial.final_value):
            return False
        observation = Observation(
            trial_id=trial.trial_id, params=params_to_dict(trial.params), value=trial.final_value
        )
        with self._lock:
            seen = self._observations.setdefault(trial.study_id, {})
            if trial.trial_id in seen:
                return False
            seen[trial.trial_id] = observation
            samplers = [s for (sid, _), s in self._samplers.items() if sid == trial.study_id]
        for sampler in samplers:
            sampler.update([observation])
        return True

    def observation_count(self, study_id: str) -> int:
        with self._lock:
            return len(self._observations.get(study_id, {}))
