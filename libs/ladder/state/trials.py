"""Trial hot state in Redis: records, leases with fencing, resumable queues,
pending sets, decisions and the event outbox.

Every transition is one Lua script (``ladder.state.scripts``), so it is atomic
across the trial hash, the lease zset, the study's queue / pending set and the
outbox. A transition that changed something returns a ``Transition`` carrying
the event kind to publish and an outbox ``token``; after the event is on Kafka
the caller acknowledges it with ``ack``. Every event stays in the trial's outbox
until acknowledged, however many transitions follow it: ``outbox_due`` returns
them all in version order for re-publishing, and a new transition carries the
earlier unacknowledged ones (``Transition.earlier``) so its publisher sends them
first. So no event is lost and a trial's events reach the topic in order (at
least once); consumers are idempotent, and a re-published event is the same
bytes (same snapshot, same ``ts_ms``, same hostname). Idempotent repeats (same
attempt, same call) return ``changed=False``.

One exception to the order: suggest publishes TRIAL_SUGGESTED itself, with the
surrogate's prediction, off the request path, so a transition within
``outbox_retry_seconds`` of the suggestion leaves it out of ``earlier`` (a copy
sent first would race suggest's own). Once the suggestion is older than that,
suggest had its chance (it died, or its broker was down): ``earlier`` carries it
again, so it is published before the later event instead of after it by the relay.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from redis.exceptions import NoScriptError

from ladder import lifecycle, quotas
from ladder.errors import BudgetExhausted, Conflict, InvalidArgument, NotFound, StaleAttempt
from ladder.failures import MAX_FAILURES, FailureKind
from ladder.state import scripts
from ladder.state.attempts import (
    COUNT_FIELDS,
    Counts,
    fail_outcome,
    interrupt_outcome,
    kind_name,
    timeout_disposition,
)
from ladder.state.holds import Hold, refusal
from ladder.state.keys import Keys
from ladder.study import OomPolicy, TrialPolicySpec
from ladder.v1 import events_pb2, trial_pb2

TERMINAL = (trial_pb2.COMPLETED, trial_pb2.PRUNED, trial_pb2.FAILED)


@dataclass(frozen=True)
class Transition:
    """The trial after a call. ``event_kind`` is set when an event must be
    published (then ``token`` identifies it for ``ack``; ``ts_ms`` is when the
    transition happened). ``earlier`` holds the trial's events still unacknowledged
    before this one, oldest first: publish them before it."""

    trial: trial_pb2.Trial
    changed: bool
    event_kind: int = 0
    reason: str = ""
    token: str = ""
    hostname: str = ""
    environment: str = ""
    algorithm: str = ""
    version: int = 0
    ts_ms: int = 0
    earlier: tuple[Transition, ...] = ()
    # The attempt this transition ended ('' for none), and how (a trial_pb2.AttemptEnd).
    ended_attempt_id: str = ""
    attempt_end: int = 0
    # StartTrial's run environment, for its TRIAL_STARTED event (not kept in Redis: a
    # re-publish from the outbox goes without it).
    run_environment: trial_pb2.RunEnvironment | None = field(default=None, compare=False)


class AttemptEnded(StaleAttempt):
    """A heartbeat found its attempt over: it made no progress for the study's
    stall_timeout_seconds, or the trial's wall clock ran out. The refusal carries the
    transition that ended it (to publish before answering)."""

    def __init__(self, message: str, transition: Transition) -> None:
        super().__init__(message)
        self.transition = transition


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else raw


def _pairs(flat: Sequence[bytes]) -> dict[str, bytes]:
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def _decision(raw: bytes | None) -> events_pb2.Decision | None:
    if not raw:
        return None
    decision = events_pb2.Decision()
    decision.ParseFromString(raw)
    return decision


def _float(raw: bytes | None) -> float:
    try:
        return float(_text(raw)) if raw else 0.0
    except ValueError:
        return 0.0


def trial_event(transition: Transition, ts_ms: int, hostname: str = "") -> events_pb2.TrialEvent:
    """The TrialEvent announcing ``transition`` (topic trials, key = study id); its
    time is the transition's when known, so a re-publish repeats the same event.

    Its hostname is the one the trial recorded (the host its attempt started on),
    never the publisher's: a copy re-published from another host must be the same
    bytes, or lineage's digest de-duplication keeps both. ``hostname`` is therefore
    not used."""
    del hostname
    event = events_pb2.TrialEvent(
        kind=transition.event_kind,
        reason=transition.reason,
        ts_ms=transition.ts_ms or ts_ms,
        algorithm=transition.algorithm,
        hostname=transition.hostname,
        environment=transition.environment,
        ended_attempt_id=transition.ended_attempt_id,
        attempt_end=transition.attempt_end,
    )
    event.trial.CopyFrom(transition.trial)
    if transition.run_environment is not None:
        event.run_environment.CopyFrom(transition.run_environment)
    return event


def _int(raw: bytes | None) -> int:
    return int(_float(raw))


def trial_from_hash(fields: dict[str, bytes]) -> trial_pb2.Trial:
    """Assemble the Trial proto from the immutable proto plus the mutable fields."""
    trial = trial_pb2.Trial()
    trial.ParseFromString(fields.get("proto", b""))
    trial.trial_id = _text(fields.get("id"))
    trial.study_id = _text(fields.get("study")) or trial.study_id
    trial.state = _int(fields.get("state"))
    trial.attempt_id = _text(fields.get("attempt"))
    trial.attempt_number = _int(fields.get("attempt_no"))
    trial.worker_id = _text(fields.get("worker"))
    trial.last_step = _float(fields.get("last_step"))
    trial.checkpoint_uri = _text(fields.get("ckpt_uri"))
    trial.checkpoint_step = _float(fields.get("ckpt_step"))
    trial.paused_rung = _int(fields.get("paused_rung"))
    trial.failures = _int(fields.get("failures"))
    trial.failure_kind = _int(fields.get("failure_kind"))
    trial.last_attempt_end = _int(fields.get("last_end"))
    trial.checkpoint_seconds = _float(fields.get("ckpt_s"))
    trial.train_seconds = _float(fields.get("train_s"))
    trial.first_started_unix_ms = _int(fields.get("first_ms"))
    trial.stop_reason = _text(fields.get("stop_reason"))
    final = _text(fields.get("final"))
    if final:
        trial.has_final_value = True
        trial.final_value = float(final)
    return trial


def _version(token: str) -> str:
    """The version in an outbox token '<kind>|<version>|<reason>'."""
    parts = token.split("|", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an outbox token: {token!r}")
    return parts[1]


def _outbox_events(fields: dict[str, bytes], box: dict[str, bytes]) -> list[Transition]:
    """The trial's unacknowledged events (``box``: version -> JSON written by the
    scripts' ``mark``), oldest first, each with the trial as it was then."""
    out = []
    for version in sorted(box, key=int):
        entry = json.loads(box[version])
        then = {name: value.encode() for name, value in entry["trial"].items()}
        then["proto"] = fields.get("proto", b"")
        kind, reason = int(entry["kind"]), _text(then.get("reason"))
        ended = _text(then.get("ended"))
        out.append(
            Transition(
                trial=trial_from_hash(then),
                changed=True,
                event_kind=kind,
                reason=reason,
                token=f"{kind}|{version}|{reason}",
                hostname=_text(then.get("hostname")),
                environment=_text(then.get("environment")),
                algorithm=_text(then.get("algorithm")),
                version=int(version),
                ts_ms=int(entry["ms"]),
                ended_attempt_id=ended,
                attempt_end=_int(then.get("last_end")) if ended else 0,
            )
        )
    return out


def _number(value: float) -> str:
    # repr of a float round-trips exactly, so repeats compare equal as strings.
    return repr(float(value))


def _optional_step(step: float | None) -> str:
    """A step the scripts record only when given: '' for none (or 0)."""
    return "" if not step else _number(step)


def _milliseconds(seconds: float | None) -> int:
    """A duration for the scripts: 0 for none (off)."""
    return int(seconds * 1000) if seconds else 0


def _seconds_spent(name: str, value: float) -> str:
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{name} must be finite and >= 0 (got {value})")
    return _number(value)


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _timeout_args() -> list[str]:
    """What running out of max_trial_seconds does, for the scripts' ``time_out``."""
    rule = timeout_disposition()
    return [_flag(rule.counts), _flag(not rule.retry)]


def _counts(raw: Sequence[bytes | None]) -> tuple[list[str], Counts]:
    """The trial's counts as read (``COUNT_FIELDS`` order): as the scripts compare
    them, and as numbers."""
    seen = [_text(value) for value in raw]
    return seen, Counts(*(_int(value) for value in raw))


def _state_name(state: int) -> str:
    return trial_pb2.TrialState.Name(state) if state in trial_pb2.TrialState.values() else "?"


# Default of LADDER_OUTBOX_RETRY_SECONDS, evaluate's relay age.
OUTBOX_RETRY_SECONDS = 10.0


class TrialStore:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        policy_of: Callable[[str], TrialPolicySpec],
        outbox_retry_seconds: float = OUTBOX_RETRY_SECONDS,
    ) -> None:
        self.r = client
        self.keys = keys
        # A study id -> its trial policy (max_interruptions for an interruption found by
        # a heartbeat or the sweeper).
        self.policy_of = policy_of
        # How long suggest gets to publish a TRIAL_SUGGESTED itself; set it to the
        # relay's age (evaluate's --outbox-retry-seconds).
        self.outbox_retry_seconds = outbox_retry_seconds
        self._study_of: dict[str, str] = {}
        self._lock = threading.Lock()
        self._scripts = {
            name: client.register_script(getattr(scripts, name)) for name in scripts.TRIAL_SCRIPTS
        }

    # ------------------------------------------------------------------ reads

    def get(self, trial_id: str) -> trial_pb2.Trial | None:
        fields = {_text(k): v for k, v in self.r.hgetall(self.keys.trial(trial_id)).items()}
        return trial_from_hash(fields) if fields else None

    def get_many(self, trial_ids: Sequence[str]) -> list[trial_pb2.Trial]:
        """The known trials among ``trial_ids``, read in one round trip (Suggest calls
        this for every pending trial, so one HGETALL each would scale with workers)."""
        pipe = self.r.pipeline(transaction=False)
        for trial_id in trial_ids:
            pipe.hgetall(self.keys.trial(trial_id))
        rows = pipe.execute() if trial_ids else []
        return [trial_from_hash({_text(k): v for k, v in row.items()}) for row in rows if row]

    def study_of(self, trial_id: str) -> str:
        """The trial's study id (immutable, so cached); NOT_FOUND when unknown."""
        with self._lock:
            cached = self._study_of.get(trial_id)
        if cached:
            return cached
        study = self.r.hget(self.keys.trial(trial_id), "study")
        if not study:
            raise NotFound(f"trial {trial_id!r} not found")
        with self._lock:
            if len(self._study_of) > 100_000:
                self._study_of.clear()
            self._study_of[trial_id] = _text(study)
        return _text(study)

    def pending(self, study_id: str) -> list[str]:
        return sorted(_text(m) for m in self.r.smembers(self.keys.pending(study_id)))

    def paused(self, study_id: str) -> list[str]:
        """PAUSED trials of the study (ASHA promotion form), oldest first."""
        return [_text(m) for m in self.r.zrange(self.keys.paused(study_id), 0, -1)]

    def resumable(self, study_id: str) -> list[str]:
        return [_text(m) for m in self.r.zrange(self.keys.resumable(study_id), 0, -1)]

    def lease_deadline_ms(self, trial_id: str) -> float | None:
        return self.r.zscore(self.keys.leases, trial_id)

    def decision(self, trial_id: str) -> events_pb2.Decision | None:
        return _decision(self.r.hget(self.keys.decision(trial_id), "proto"))

    # ------------------------------------------------------------ suggest side

    def reserve_draws(self, study_id: str, partition: int, count: int) -> int:
        """Reserve ``count`` draws of a partition's sampler stream; first index."""
        end = self.r.incrby(self.keys.draws(study_id, partition), count)
        return int(end) - count

    def create_trials(
        self,
        study_id: str,
        protos: Sequence[trial_pb2.Trial],
        max_trials: int,
        claim_seconds: float,
        algorithm: str,
        max_parallel: int = 0,
        hold: Hold | None = None,
    ) -> list[Transition]:
        """Create SUGGESTED trials ``<study>-t<seq>`` within the study's budget and
        its max_parallel_trials (the limits UpdateStudy stored override those given).
        With ``hold`` (RequestWork) one trial, holding those resources on the node:
        AtCapacity when the tenant's max_gpus or the node's capacity refuses it.

        Returns fewer than asked when the limits only allow part; raises
        BudgetExhausted when the budget allows none, AtCapacity when max_parallel does,
        Conflict when the study is not ACTIVE."""
        status, first, count, *when = self._scripts["CREATE_TRIALS"](
            keys=[
                self.keys.study(study_id),
                self.keys.pending(study_id),
                self.keys.leases,
                self.keys.outbox,
                self.keys.resumable(study_id),
            ],
            args=[
                self.keys.root,
                study_id,
                max_trials,
                int(claim_seconds * 1000),
                algorithm,
                max_parallel,
                hold.encode() if hold else "",
                *(p.SerializeToString() for p in protos),
            ],
        )
        status = _text(status)
        if status == "NOT_FOUND":
            raise NotFound(f"study {study_id!r} not found")
        if status == "BUDGET":
            raise BudgetExhausted(int(first))
        if status == "STATE":
            state = int(first)
            raise lifecycle.refusal_to_suggest(study_id, state) or lifecycle.stopped(study_id)
        if status == "PARALLEL":
            raise lifecycle.at_capacity(study_id, int(first), int(count))
        if status == "TENANT":
            raise quotas.trials_at_quota(_text(when[0]), int(first), int(count))
        if status in ("GPUS", "NODE"):
            raise refusal(status, [first, count, *when])
        created = []
        reason = f"suggested by {algorithm}"
        for i in range(int(count)):
            trial = trial_pb2.Trial()
            trial.CopyFrom(protos[i])
            trial.trial_id = f"{study_id}-t{int(first) + i}"
            trial.study_id = study_id
            trial.state = trial_pb2.SUGGESTED
            created.append(
                Transition(
                    trial=trial,
                    changed=True,
                    event_kind=events_pb2.TRIAL_SUGGESTED,
                    reason=reason,
                    # Matches the outbox entry CREATE_TRIALS wrote (version 1).
                    token=f"{events_pb2.TRIAL_SUGGESTED}|1|{reason}",
                    algorithm=algorithm,
                    version=1,
                    ts_ms=int(when[0]) if when else 0,
                )
            )
        return created

    def claim_resumable(
        self, study_id: str, count: int, claim_seconds: float, max_parallel: int = 0,
        hold: Hold | None = None,
    ) -> list[trial_pb2.Trial]:
        """Pop up to ``count`` RESUMABLE trials of the study, oldest first, as many as
        its max_parallel_trials leaves room for; none while it is PAUSED or CANCELLED.
        With ``hold`` (RequestWork) at most one, holding those resources on the node;
        none when the tenant's max_gpus or the node's capacity refuses the hold."""
        k = self.keys
        rows = self._scripts["CLAIM_RESUMABLE"](
            keys=[k.resumable(study_id), k.leases, k.pending(study_id), k.study(study_id)],
            args=[k.root, count, int(claim_seconds * 1000), max_parallel,
                  hold.encode() if hold else ""],
        )
        return [trial_from_hash(_pairs(row)) for row in rows]

    def stop(self, trial_id: str, reason: str, decision: events_pb2.Decision) -> Transition:
        """Stop the trial, saying why (``decision``: the STOP its heartbeat answers while
        it runs). A RUNNING trial is unchanged until its worker obeys (``changed`` False,
        nothing to publish); another unfinished one is PRUNED now. Conflict for a trial
        that ended otherwise; a trial this stop already ended answers unchanged."""
        study = self.study_of(trial_id)
        k = self.keys
        status, fields, box = self._run(
            "STOP_TRIAL",
            self._fence_keys(
                trial_id, k.pending(study), k.resumable(study), k.paused(study),
                k.decision(trial_id), k.deadlines,
            ),
            [reason, decision.SerializeToString()],
        )
        if status == "STATE":
            trial = trial_from_hash(fields)
            raise Conflict(
                f"trial {trial_id!r} is {_state_name(trial.state)}: it cannot be stopped"
            )
        if status == "OK" and not box:  # RUNNING: its heartbeat carries the STOP
            return Transition(trial=trial_from_hash(fields), changed=False)
        return self._transition(trial_id, "", status, fields, "stop", box)

    def release_held(self, study_id: str, reason: str) -> list[Transition]:
        """The study left PAUSED: the trials its pause held are RESUMABLE again (those
        the scheduler paused stay PAUSED); their transitions, to publish."""
        k = self.keys
        out = []
        for trial_id in self.paused(study_id):
            status, fields, box = self._run(
                "RELEASE_HELD",
                [k.trial(trial_id), k.outbox, k.resumable(study_id), k.paused(study_id),
                 k.pending(study_id)],
                [reason],
            )
            if status == "OK":
                out.append(self._transition(trial_id, "", status, fields, "release", box))
        return out

    def apply_decision(self, decision: events_pb2.Decision) -> tuple[str, Transition | None]:
        """Keep the trial's latest decision: a STOP is never overridden, and an older
        rung or a weaker verdict on the same rung does not replace a stored one.

        Status OK, REPEAT, KEPT, UNKNOWN (no such trial) or RESUMED: a PROMOTE for the
        rung a PAUSED trial waits at made it RESUMABLE; the transition (TRIAL_PROMOTED)
        is returned for publishing."""
        trial_id = decision.trial_id
        try:
            study = self.study_of(trial_id)
        except NotFound:
            return "UNKNOWN", None
        k = self.keys
        status, flat, *box = self._scripts["STORE_DECISION"](
            keys=[
                k.trial(trial_id),
                k.decision(trial_id),
                k.outbox,
                k.resumable(study),
                k.paused(study),
                k.pending(study),
            ],
            args=[int(decision.action), decision.SerializeToString(), int(decision.rung)],
        )
        status = _text(status)
        if status != "RESUMED":
            return status, None
        return status, self._transition(
            trial_id, "", "OK", _pairs(flat), "promote", box[0] if box else []
        )

    # ----------------------------------------------------------- evaluate side

    def _run(
        self, name: str, keys: list[str], args: list[object]
    ) -> tuple[str, dict[str, bytes], list[bytes]]:
        """The script's status, the trial after it and, when it recorded an event,
        the trial's outbox (flat)."""
        status, flat, *box = self._scripts[name](keys=keys, args=args)
        return _text(status), _pairs(flat), box[0] if box else []

    def _fence_keys(self, trial_id: str, *more: str) -> list[str]:
        """KEYS of a script behind the ``_FENCE`` preamble: trial, outbox, leases, then
        the script's own."""
        return [self.keys.trial(trial_id), self.keys.outbox, self.keys.leases, *more]

    def _fenced(
        self,
        name: str,
        verb: str,
        trial_id: str,
        attempt_id: str,
        signature: str,
        args: list[object],
        more_keys: Sequence[str] = (),
    ) -> Transition:
        """Run a script an attempt calls while it should hold the lease (ARGV: the
        attempt, the signature of the call that closes it or '', then ``args``) and
        turn its status into the transition or the refusal."""
        status, fields, box = self._run(
            name, self._fence_keys(trial_id, *more_keys), [attempt_id, signature, *args]
        )
        return self._transition(trial_id, attempt_id, status, fields, verb, box)

    def _transition(
        self,
        trial_id: str,
        attempt_id: str,
        status: str,
        fields: dict[str, bytes],
        verb: str,
        box: Sequence[bytes] = (),
    ) -> Transition:
        if status == "NOT_FOUND":
            raise NotFound(f"trial {trial_id!r} not found")
        trial = trial_from_hash(fields)
        state = _state_name(trial.state)
        if status == "STALE" and not trial.attempt_id:
            raise StaleAttempt(
                f"attempt {attempt_id!r} does not hold trial {trial_id!r}: it is {state} and "
                "was never started (call StartTrial first)",
            )
        if status == "STALE":
            if trial.attempt_id == attempt_id:
                why = f"its lease expired and the trial is now {state}"
            else:
                why = f"attempt {trial.attempt_id!r} replaced it (trial is {state})"
            raise StaleAttempt(
                f"stale attempt: {attempt_id!r} no longer holds trial {trial_id!r}: {why}",
            )
        if status == "BUSY":
            raise Conflict(
                f"trial {trial_id!r} is RUNNING under another live attempt "
                f"{trial.attempt_id!r} (worker {trial.worker_id!r})",
            )
        if status == "CONFLICT":
            raise Conflict(
                f"trial {trial_id!r} is already COMPLETED with value {trial.final_value!r} "
                f"by attempt {trial.attempt_id!r}; refusing a different result",
            )
        if status == "STATE":
            raise Conflict(f"cannot {verb} trial {trial_id!r}: it is {state}")
        if status == "STOPPED":
            raise Conflict(
                f"trial {trial_id!r} was stopped (latest decision STOP): prune it, not {verb}",
            )
        if status == "REPEAT":
            return Transition(trial=trial, changed=False)
        if not box:  # changed without an event (a heartbeat)
            return Transition(trial=trial, changed=True)
        *earlier, this = _outbox_events(fields, _pairs(box))
        # suggest publishes TRIAL_SUGGESTED itself, with the surrogate's prediction
        # (not kept here), off the request path: a copy sent ahead of the next event
        # would race it. Past the relay's age suggest had its chance, and leaving the
        # suggestion out would let the relay send it after this event.
        suggest_window_ms = self.outbox_retry_seconds * 1000
        earlier = [
            e
            for e in earlier
            if e.event_kind != events_pb2.TRIAL_SUGGESTED
            or this.ts_ms - e.ts_ms >= suggest_window_ms
        ]
        return replace(this, earlier=tuple(earlier))

    def start(
        self,
        trial_id: str,
        attempt_id: str,
        worker_id: str,
        lease_seconds: float,
        hostname: str = "",
        environment: str = "",
        max_trial_seconds: float | None = None,
    ) -> Transition:
        """Lease the trial to a new attempt. ``max_trial_seconds`` limits the trial's
        running time over all its attempts: this attempt times out (TIMEOUT) once it
        ran what the earlier ones left (queued and PAUSED time never counts)."""
        study = self.study_of(trial_id)
        k = self.keys
        status, fields, box = self._run(
            "START",
            [
                k.trial(trial_id),
                k.outbox,
                k.attempts(trial_id),
                k.leases,
                k.resumable(study),
                k.pending(study),
                k.deadlines,
            ],
            [
                attempt_id,
                worker_id,
                int(lease_seconds * 1000),
                hostname,
                environment,
                _milliseconds(max_trial_seconds),
            ],
        )
        return self._transition(trial_id, attempt_id, status, fields, "start", box)

    def heartbeat(self, *args: Any, **kwargs: Any) -> events_pb2.Decision | None:
        """``heartbeat_verdict``'s decision alone (the study's state left out)."""
        return self.heartbeat_verdict(*args, **kwargs)[0]

    def heartbeat_verdict(
        self,
        trial_id: str,
        attempt_id: str,
        step: float | None,
        lease_seconds: float,
        stall_timeout_seconds: float | None = None,
    ) -> tuple[events_pb2.Decision | None, int]:
        """Renew the attempt's lease (recording ``step``) and return the trial's latest
        decision and its study's lifecycle state, in one Redis round trip: the HEARTBEAT
        script and the two reads are pipelined, and a refused heartbeat raises before
        the decision is used.

        Raises AttemptEnded (a StaleAttempt) when the attempt reported no step beyond
        its furthest for ``stall_timeout_seconds`` (None: no watchdog), an interruption
        (``ladder.failures.interruption``), or ran out of running time; the heartbeat
        then ended the attempt."""
        study = self.study_of(trial_id)
        k = self.keys
        keys = self._fence_keys(trial_id, k.resumable(study), k.pending(study), k.deadlines)
        args = [
            attempt_id,
            "",
            "" if step is None else _number(step),
            int(lease_seconds * 1000),
            _milliseconds(stall_timeout_seconds),
            *_timeout_args(),
        ]
        script = self._scripts["HEARTBEAT"]
        for attempt in range(2):
            # EVALSHA directly: a Script called on a pipeline makes redis-py send
            # SCRIPT EXISTS before every execute, a second round trip per heartbeat.
            pipe = self.r.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.hget(k.decision(trial_id), "proto")
            pipe.hget(k.study(study), "state")
            try:
                (status, flat, *box), raw, study_state = pipe.execute()
                break
            except NoScriptError:
                if attempt:
                    raise
                self.r.script_load(script.script)  # first use, or Redis restarted
        status, fields, box = _text(status), _pairs(flat), box[0] if box else []
        if status == "STALLED":
            status, fields, box = self._stall(
                trial_id, study, attempt_id, stall_timeout_seconds, lease_seconds
            )
        if status in ("STALLED", "TIMED_OUT"):
            ended = self._transition(trial_id, attempt_id, "OK", fields, "heartbeat", box)
            raise AttemptEnded(
                f"stale attempt: {attempt_id!r} no longer holds trial {trial_id!r}: "
                f"{ended.reason}",
                ended,
            )
        self._transition(trial_id, attempt_id, status, fields, "heartbeat")
        decision = _decision(raw)
        if fields.get("preempt") == b"1":
            # A preemption plan picked it (RequestWork): PAUSE, unless a STOP stands.
            decision = lifecycle.preempted(study, trial_id, decision)
        return decision, int(study_state or lifecycle.INITIAL)

    def _stall(
        self,
        trial_id: str,
        study_id: str,
        attempt_id: str,
        stall_timeout_seconds: float | None,
        lease_seconds: float,
    ) -> tuple[str, dict[str, bytes], list[bytes]]:
        """End the attempt a heartbeat found stalled: an interruption, whose outcome
        depends on the trial's counts (read, then checked by the script: RACE when
        they changed meanwhile, and it is computed again)."""
        k = self.keys
        max_interruptions = self.policy_of(study_id).max_interruptions
        for _ in range(5):
            seen, counted = _counts(self.r.hmget(k.trial(trial_id), *COUNT_FIELDS))
            outcome = interrupt_outcome(counted, max_interruptions)
            status, fields, box = self._run(
                "STALL",
                self._fence_keys(trial_id, k.resumable(study_id), k.pending(study_id), k.deadlines),
                [
                    attempt_id,
                    "",
                    _milliseconds(stall_timeout_seconds),
                    int(lease_seconds * 1000),
                    *seen,
                    *outcome.after.values(),
                    _flag(outcome.final),
                    outcome.note,
                ],
            )
            if status != "RACE":
                return status, fields, box
        raise Conflict(f"trial {trial_id!r}: its counts kept changing while it stalled")

    def checkpoint(
        self,
        trial_id: str,
        attempt_id: str,
        uri: str,
        step: float,
        lease_seconds: float,
        save_seconds: float = 0.0,
        train_seconds: float = 0.0,
    ) -> Transition:
        """Record the attempt's checkpoint at ``step``; ``save_seconds`` (the save) and
        ``train_seconds`` (training since the attempt's previous checkpoint or its
        start) add up into the trial's checkpoint_seconds / train_seconds."""
        return self._fenced(
            "CHECKPOINT",
            "checkpoint",
            trial_id,
            attempt_id,
            "",
            [
                uri,
                _number(step),
                int(lease_seconds * 1000),
                _seconds_spent("save_seconds", save_seconds),
                _seconds_spent("train_seconds", train_seconds),
            ],
        )

    def complete(
        self, trial_id: str, attempt_id: str, value: float, step: float | None = None
    ) -> Transition:
        if not math.isfinite(value):
            raise InvalidArgument("value must be finite")
        study = self.study_of(trial_id)
        return self._fenced(
            "COMPLETE",
            "complete",
            trial_id,
            attempt_id,
            f"complete|{attempt_id}|{_number(value)}",
            [_number(value), _optional_step(step)],
            [self.keys.pending(study), self.keys.study(study), self.keys.deadlines],
        )

    def prune(
        self,
        trial_id: str,
        attempt_id: str,
        step: float | None = None,
        last_value: float | None = None,
    ) -> Transition:
        study = self.study_of(trial_id)
        return self._fenced(
            "PRUNE",
            "prune",
            trial_id,
            attempt_id,
            f"prune|{attempt_id}",
            [_optional_step(step), "" if last_value is None else _number(last_value)],
            [self.keys.pending(study), self.keys.deadlines],
        )

    def pause(self, trial_id: str, attempt_id: str, step: float | None, rung: int) -> Transition:
        """The attempt obeyed a PAUSE (promotion form, or its study paused) after
        checkpointing ``step``."""
        study = self.study_of(trial_id)
        k = self.keys
        return self._fenced(
            "PAUSE_TRIAL",
            "pause",
            trial_id,
            attempt_id,
            f"pause|{attempt_id}",
            [_optional_step(step), rung],
            [
                k.pending(study),
                k.resumable(study),
                k.paused(study),
                k.decision(trial_id),
                k.deadlines,
                k.study(study),
            ],
        )

    def fail(
        self,
        trial_id: str,
        attempt_id: str,
        reason: str,
        kind: FailureKind,
        oom: OomPolicy = OomPolicy.RETRY_ONCE,
        max_failures: int = MAX_FAILURES,
    ) -> Transition:
        """End the attempt with a failure of class ``kind``; what the trial becomes is
        ``ladder.state.attempts.fail_outcome`` (preemption never counts, but is an
        interruption: past the study's max_interruptions the trial is FAILED; a trial
        is FAILED when the failure is not retried or ``max_failures`` counted ones)."""
        if not kind or kind not in trial_pb2.FailureKind.values():
            raise InvalidArgument(f"kind: unknown failure kind {kind}")
        if max_failures < 1:
            raise InvalidArgument(f"max_failures must be >= 1 (got {max_failures})")
        study = self.study_of(trial_id)
        key = self.keys.trial(trial_id)
        max_interruptions = self.policy_of(study).max_interruptions
        for _ in range(5):
            # The outcome depends on the trial's counts so far; the script applies it
            # only if they are still what was read (else RACE, and it is computed again).
            attempt_no, *raw = self.r.hmget(key, "attempt_no", *COUNT_FIELDS)
            seen, counted = _counts(raw)
            outcome = fail_outcome(
                kind,
                reason or "no reason given",
                oom=oom,
                counted=counted,
                max_failures=max_failures,
                max_interruptions=max_interruptions,
                attempt_number=_int(attempt_no),
            )
            status, fields, box = self._run(
                "FAIL",
                self._fence_keys(
                    trial_id,
                    self.keys.pending(study),
                    self.keys.resumable(study),
                    self.keys.deadlines,
                ),
                [
                    attempt_id,
                    f"fail|{attempt_id}",
                    _flag(outcome.final),
                    outcome.attempt_end,
                    outcome.reason,
                    *seen,
                    *outcome.after.values(),
                ],
            )
            if status != "RACE":
                return self._transition(trial_id, attempt_id, status, fields, "fail", box)
        raise Conflict(
            f"trial {trial_id!r}: its failure count kept changing during FailTrial "
            f"({kind_name(kind)}); repeat the call"
        )

    def _due(self, zset: str, limit: int) -> list[str]:
        """Members of ``zset`` whose score (a deadline in ms) is now or past."""
        now_s, now_us = self.r.time()
        now_ms = now_s * 1000 + now_us // 1000
        return [
            _text(raw) for raw in self.r.zrangebyscore(zset, "-inf", now_ms, start=0, num=limit)
        ]

    def _sweep(
        self,
        zset: str,
        limit: int,
        script: str,
        keys_for: Callable[[str, str], list[str]],
        args_for: Callable[[str, str], list[object]],
    ) -> list[Transition]:
        """Run ``script`` for every trial whose deadline in ``zset`` passed (KEYS from
        ``keys_for(trial id, study id)``, ARGV from ``args_for``, computed again while
        the script answers RACE); the transitions of those it changed."""
        out = []
        for trial_id in self._due(zset, limit):
            try:
                study = self.study_of(trial_id)
            except NotFound:
                self.r.zrem(zset, trial_id)
                continue
            keys = keys_for(trial_id, study)
            for _ in range(5):
                status, fields, box = self._run(script, keys, args_for(trial_id, study))
                if status != "RACE":
                    break
            if status == "OK":
                out.append(self._transition(trial_id, "", status, fields, script.lower(), box))
        return out

    def expire_due(self, limit: int = 200) -> list[Transition]:
        """Move trials whose lease (or hand-out claim) ran out to RESUMABLE; an expired
        lease is an interruption (FAILED past the study's max_interruptions)."""
        k = self.keys
        return self._sweep(
            k.leases,
            limit,
            "EXPIRE",
            lambda trial_id, study: [
                k.trial(trial_id),
                k.outbox,
                k.leases,
                k.resumable(study),
                k.pending(study),
                k.deadlines,
            ],
            self._expiry_args,
        )

    def _expiry_args(self, trial_id: str, study_id: str) -> list[object]:
        """EXPIRE's ARGV: for a RUNNING trial, the outcome of the interruption an expiry
        would be, computed from the counts read now (the script checks them)."""
        state, *raw = self.r.hmget(self.keys.trial(trial_id), "state", *COUNT_FIELDS)
        if _int(state) != trial_pb2.RUNNING:
            return [trial_id]  # a claim ran out: no attempt is interrupted
        seen, counted = _counts(raw)
        outcome = interrupt_outcome(counted, self.policy_of(study_id).max_interruptions)
        return [trial_id, *seen, *outcome.after.values(), _flag(outcome.final), outcome.note]

    def time_out_due(self, limit: int = 200) -> list[Transition]:
        """End (kind TIMEOUT) the running attempts that used up their trial's
        max_trial_seconds of running time."""
        k = self.keys
        return self._sweep(
            k.deadlines,
            limit,
            "TIME_OUT",
            lambda trial_id, study: [
                k.trial(trial_id),
                k.outbox,
                k.deadlines,
                k.leases,
                k.resumable(study),
                k.pending(study),
            ],
            lambda trial_id, _study: [trial_id, *_timeout_args()],
        )

    def sweep_grace(self, lease_seconds: float) -> tuple[float | None, int]:
        """Start a sweeper pass: record it and, when the previous pass by any process is
        more than ``lease_seconds`` ago (evaluate was away, so no worker could renew),
        extend every lease or claim that runs out within a lease to now + lease before
        anything expires. Returns (seconds since the previous pass, None for the first
        ever; leases extended)."""
        gap_ms, extended = self._scripts["SWEEP_GRACE"](
            keys=[self.keys.last_sweep, self.keys.leases],
            args=[int(lease_seconds * 1000), self.keys.trial("")],
        )
        return (None if int(gap_ms) < 0 else int(gap_ms) / 1000), int(extended)

    # ------------------------------------------------------------------ outbox

    def ack(self, trial_id: str, token: str) -> None:
        """The event of ``token`` is published; forget it (the trial's other pending
        events stay). Acknowledging it again changes nothing."""
        self._scripts["ACK_OUTBOX"](
            keys=[self.keys.trial(trial_id), self.keys.outbox], args=[trial_id, _version(token)]
        )

    def outbox_due(self, older_than_seconds: float, limit: int = 100) -> list[Transition]:
        """Every unacknowledged event of the (at most ``limit``) trials whose oldest
        one is older than ``older_than_seconds``; a trial's events oldest first."""
        now_s, now_us = self.r.time()
        cutoff = now_s * 1000 + now_us // 1000 - int(older_than_seconds * 1000)
        due = [
            _text(raw)
            for raw in self.r.zrangebyscore(self.keys.outbox, "-inf", cutoff, start=0, num=limit)
        ]
        pipe = self.r.pipeline(transaction=False)
        for trial_id in due:
            pipe.hget(self.keys.trial(trial_id), "proto")
            pipe.hgetall(self.keys.trial_outbox(trial_id))
        replies = pipe.execute() if due else []
        out = []
        for i, trial_id in enumerate(due):
            proto, box = replies[2 * i], replies[2 * i + 1]
            if not box:
                # Acknowledged meanwhile; the script drops the entry only if it is
                # still empty (a new event may have arrived since).
                self._scripts["ACK_OUTBOX"](
                    keys=[self.keys.trial(trial_id), self.keys.outbox], args=[trial_id, "0"]
                )
                continue
            fields = {"proto": proto or b""}
            out.extend(_outbox_events(fields, {_text(k): v for k, v in box.items()}))
        return out
