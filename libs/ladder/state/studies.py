"""Study records in Redis: the Study proto (config with defaults filled) plus
live counters (``suggested`` is the max_trials budget, ``completed``), the
lifecycle ``state`` (``ladder.lifecycle``; absent until the first change) with its
``reason``, the live limits ``max_trials`` / ``max_parallel`` / ``max_wall`` /
``max_hours`` / ``max_gpu_hours`` (absent until UpdateStudy changed them; they override
the config's in every Study read here), the owner ``tenant`` and ``created_ms``
(quotas, wall clock), and the running time of its attempts (``run_ms`` of those that
ended, ``running`` / ``running_since`` of those running: the trial-hours budget, and
times the trials' GPUs the GPU-hours budget: one clock, no second counter)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import astuple, dataclass

import redis

from ladder import lifecycle, quotas
from ladder.errors import NotFound
from ladder.space import StudyConfigError
from ladder.state import scripts
from ladder.state.keys import Keys
from ladder.study import StudySpec, TrialPolicySpec
from ladder.v1 import study_pb2

# States in which a study's limits no longer change.
_FINAL_STATES = frozenset(
    state for state in study_pb2.StudyState.values() if state not in lifecycle.UPDATABLE
) - {study_pb2.STUDY_STATE_UNSPECIFIED}
# UpdateStudy's budgets, in lifecycle.Budgets' order.
_BUDGETS = ("max_wall", "max_hours", "max_gpu_hours")
# The hash fields ``trial_ms`` reads, in its order.
_CLOCK = ("run_ms", "running", "running_since")
_FIELDS = ("study", "suggested", "state", "max_trials", "max_parallel", "reason",
           *_BUDGETS, *_CLOCK)


def trial_ms(run_ms: bytes | None, running: bytes | None, since: bytes | None,
             now_ms: float) -> float:
    """The running time of a study's attempts, ended and running, at ``now_ms``."""
    return float(run_ms or 0) + max(0.0, int(running or 0) * now_ms - int(since or 0))


def _study(
    raw: bytes,
    suggested: bytes | None,
    state: bytes | None = None,
    max_trials: bytes | None = None,
    max_parallel: bytes | None = None,
    reason: bytes | None = None,
    max_wall: bytes | None = None,
    max_hours: bytes | None = None,
    max_gpu_hours: bytes | None = None,
    *clock: bytes | None,
) -> study_pb2.Study:
    study = study_pb2.Study()
    study.ParseFromString(raw)
    study.trials_suggested = int(suggested or 0)
    if state is not None:
        study.state = int(state)
    if max_trials is not None:
        study.config.max_trials = int(max_trials)
    if max_parallel is not None:
        study.config.max_parallel_trials = int(max_parallel)
    if max_wall is not None:
        study.config.max_wall_clock_seconds = float(max_wall)
    if max_hours is not None:
        study.config.max_trial_hours = float(max_hours)
    if max_gpu_hours is not None:
        study.config.max_gpu_hours = float(max_gpu_hours)
    study.state_reason = (reason or b"").decode()
    if clock:
        study.trial_hours_used = trial_ms(*clock, time.time() * 1000) / 3_600_000
        study.gpu_hours_used = lifecycle.gpu_hours(study.trial_hours_used,
                                                   study.config.trial_resources.gpus)
    return study


@dataclass(frozen=True)
class Gate:
    """What Suggest checks before handing out trials, read in one round trip: the
    lifecycle state, the trials handed out and the live limits (None: the config's)."""

    state: int
    suggested: int
    max_trials: int | None
    max_parallel: int | None
    in_flight: int  # handed out, neither ended nor handed back (SUGGESTED or RUNNING)
    # UpdateStudy's budgets (None: the config's).
    budgets: lifecycle.Budgets = lifecycle.UNCHANGED
    age_seconds: float = 0.0  # since CreateStudy (0 when the study predates created_ms)
    trial_hours: float = 0.0  # its attempts' running time, ended and running
    # The tenant's max_trials_running: (room left, out, quota, tenant); None: no quota.
    tenant_room: tuple[int, int, int, str] | None = None
    queued: int = 0  # RESUMABLE trials queued (a stale entry or two included)

    def budget_exceeded(self, config: study_pb2.StudyConfig) -> str | None:
        """The circuit breaker's reason when a budget (live, else ``config``'s) is spent."""
        return lifecycle.budget_exceeded(self.budgets.over(config), self.age_seconds,
                                         self.trial_hours, config.trial_resources.gpus)


def _optional_int(raw: bytes | None) -> int | None:
    return None if raw is None else int(raw)


def _optional_float(raw: bytes | None) -> float | None:
    return None if raw is None else float(raw)


class StudyStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys
        self._create = client.register_script(scripts.CREATE_STUDY)
        self._set_state = client.register_script(scripts.SET_STUDY_STATE)
        self._update_limits = client.register_script(scripts.UPDATE_LIMITS)
        self._tenant_room = client.register_script(scripts.TENANT_ROOM)
        # A study's config never changes, so its spec is read and validated once.
        self._specs: dict[str, StudySpec] = {}
        self._fallback_policies: dict[str, TrialPolicySpec] = {}
        self._specs_lock = threading.Lock()

    def create(self, study: study_pb2.Study) -> tuple[study_pb2.Study, bool]:
        """Store ``study`` unless its id exists; returns (stored study, created)."""
        status, raw, *quota = self._create(
            keys=[self.keys.study(study.study_id), self.keys.studies,
                  self.keys.tenant_studies(study.tenant)],
            args=[study.study_id, study.SerializeToString(), study.created_unix_ms,
                  study.tenant, self.keys.root],
        )
        status = status.decode() if isinstance(status, bytes) else status
        if status == "QUOTA":
            raise quotas.too_many_studies(study.tenant, int(raw), int(quota[0]))
        created = status == "OK"
        if created:
            return study, True
        return self.get(study.study_id) or _study(raw, b"0"), False

    def get(self, study_id: str) -> study_pb2.Study | None:
        fields = self.r.hmget(self.keys.study(study_id), *_FIELDS)
        return _study(*fields) if fields[0] else None

    def created_config(self, study_id: str) -> study_pb2.StudyConfig | None:
        """The study's config as CreateStudy stored it (without UpdateStudy's limits)."""
        raw = self.r.hget(self.keys.study(study_id), "study")
        return _study(raw, None).config if raw else None

    def gate(self, study_id: str) -> Gate:
        return self.gates([study_id])[0]

    def gates(self, study_ids: Sequence[str]) -> list[Gate]:
        """``gate`` of each study, all read in one round trip (RequestWork reads every
        live study's)."""
        pipe = self.r.pipeline(transaction=False)
        for study_id in study_ids:
            pipe.hmget(self.keys.study(study_id), "state", "suggested", "max_trials",
                       "max_parallel", *_BUDGETS, "created_ms", *_CLOCK)
            pipe.scard(self.keys.pending(study_id))
            pipe.zcard(self.keys.resumable(study_id))
            self._tenant_room(keys=[self.keys.study(study_id)], args=[self.keys.root],
                              client=pipe)
        rows = pipe.execute() if study_ids else []
        now = time.time() * 1000
        out = []
        for i in range(0, len(rows), 4):
            (state, suggested, max_trials, max_parallel, *fields), pending, queued, room = (
                rows[i : i + 4])
            budgets, (created, *clock) = fields[:len(_BUDGETS)], fields[len(_BUDGETS):]
            out.append(Gate(
                state=int(state or lifecycle.INITIAL),
                suggested=int(suggested or 0),
                max_trials=_optional_int(max_trials),
                max_parallel=_optional_int(max_parallel),
                in_flight=max(0, int(pending) - int(queued)),
                budgets=lifecycle.Budgets(*map(_optional_float, budgets)),
                age_seconds=(now - int(created)) / 1000 if created else 0.0,
                trial_hours=trial_ms(*clock, now) / 3_600_000,
                tenant_room=(int(room[0]), int(room[1]), int(room[2]), room[3].decode())
                if room else None,
                queued=int(queued),
            ))
        return out

    def update_limits(
        self, study_id: str, max_trials: int | None, max_parallel: int | None,
        budgets: lifecycle.Budgets = lifecycle.UNCHANGED,
    ) -> study_pb2.Study:
        """UpdateStudy: the live limits and budgets (None: unchanged), checked by
        ``lifecycle.check_update`` against the trials handed out, atomically (a Suggest
        between the check and the change cannot slip under a lowered budget). A GPU-hours
        budget is checked against the GPUs the study's trials declare (its config's)."""
        gpus = self.spec(study_id).demand.gpus if budgets.gpu_hours else None
        lifecycle.check_update(max_trials, max_parallel, 0, budgets, gpus)
        given = (max_trials, max_parallel, *astuple(budgets))
        status, value = self._update_limits(
            keys=[self.keys.study(study_id)],
            args=[
                *(item for v in given for item in ("0" if v is None else "1", v or 0)),
                *sorted(_FINAL_STATES),
            ],
        )
        status = status.decode() if isinstance(status, bytes) else status
        if status == "NOT_FOUND":
            raise NotFound(f"study {study_id!r} not found")
        if status == "REFUSED":
            lifecycle.can_update(study_id, int(value))
        if status == "BELOW":
            lifecycle.check_update(max_trials, max_parallel, int(value), budgets, gpus)
        study = self.get(study_id)
        if study is None:  # only a hand-deleted key: Ladder never deletes a study
            raise NotFound(f"study {study_id!r} not found")
        return study

    def state(self, study_id: str) -> int:
        """The study's lifecycle state (ACTIVE for an unknown study: callers check
        existence first)."""
        return int(self.r.hget(self.keys.study(study_id), "state") or lifecycle.INITIAL)

    def transition(
        self, study_id: str, action: lifecycle.Action, reason: str = ""
    ) -> tuple[study_pb2.Study, bool]:
        """Apply ``action`` atomically, recording ``reason`` (Study.state_reason) when
        the state changes: (the study after it, whether it changed). NotFound for an
        unknown study; ``lifecycle.refusal`` when its state refuses."""
        rule = lifecycle.RULES[action]
        status, before = self._set_state(
            keys=[self.keys.study(study_id)],
            args=[rule.target, lifecycle.INITIAL, reason, *sorted(rule.allowed_from)],
        )
        status = status.decode() if isinstance(status, bytes) else status
        if status == "NOT_FOUND":
            raise NotFound(f"study {study_id!r} not found")
        if status == "REFUSED":
            raise lifecycle.refusal(action, study_id, int(before))
        study = self.get(study_id)
        if study is None:  # only a hand-deleted key: Ladder never deletes a study
            raise NotFound(f"study {study_id!r} not found")
        return study, status == "OK"

    def progress(self, study_id: str, max_trials: int) -> lifecycle.Progress:
        """What ``lifecycle.finished`` decides from, read in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(self.keys.study(study_id), "suggested", "state", "max_trials")
        pipe.scard(self.keys.pending(study_id))
        pipe.zcard(self.keys.paused(study_id))
        (suggested, state, live_max), unfinished, paused = pipe.execute()
        return lifecycle.Progress(
            state=int(state or lifecycle.INITIAL),
            # UpdateStudy's budget, else the config's (``max_trials``).
            max_trials=max_trials if live_max is None else int(live_max),
            suggested=int(suggested or 0),
            unfinished=int(unfinished),
            paused=int(paused),
        )

    def spec(self, study_id: str) -> StudySpec:
        """The study's StudySpec (built from its stored config once, then cached);
        NotFound when the study is unknown."""
        with self._specs_lock:
            cached = self._specs.get(study_id)
        if cached is not None:
            return cached
        study = self.get(study_id)
        if study is None:
            raise NotFound(f"study {study_id!r} not found")
        spec = StudySpec.from_proto(study.config)
        with self._specs_lock:
            return self._specs.setdefault(study_id, spec)

    def trial_policy(self, study_id: str) -> TrialPolicySpec:
        """The study's trial policy for the lease sweeper and the heartbeat: never raises,
        so one study whose stored config no longer validates (or that is gone) cannot stop
        the expiry of every other study's leases; such a study gets its own policy field
        if that validates, else the defaults."""
        try:
            return self.spec(study_id).trial_policy
        except NotFound:
            return TrialPolicySpec()
        except StudyConfigError:
            pass
        with self._specs_lock:
            cached = self._fallback_policies.get(study_id)
        if cached is not None:
            return cached
        # Read once: the sweeper asks for every expiry of the study.
        study = self.get(study_id)
        try:
            policy = TrialPolicySpec.from_proto(study.config.trial_policy) if study else None
        except StudyConfigError:
            policy = None
        with self._specs_lock:
            return self._fallback_policies.setdefault(study_id, policy or TrialPolicySpec())

    def suggested(self, study_id: str) -> int:
        return int(self.r.hget(self.keys.study(study_id), "suggested") or 0)

    def completed(self, study_id: str) -> int:
        return int(self.r.hget(self.keys.study(study_id), "completed") or 0)

    def list(self) -> list[study_pb2.Study]:
        ids = self.r.zrange(self.keys.studies, 0, -1)
        pipe = self.r.pipeline(transaction=False)
        for sid in ids:
            pipe.hmget(self.keys.study(sid.decode()), *_FIELDS)
        return [_study(*fields) for fields in pipe.execute() if fields[0]]
