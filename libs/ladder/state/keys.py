"""Redis key layout. Every key starts with ``ladder:<topic prefix>:`` so that two
stacks (or two test sessions) sharing one Redis never see each other's state. Every
key family is built here, once: ``ladder.redisacl`` grants each service's Redis user
its families by these builders' names.

| key                                  | type   | contents                                   |
|--------------------------------------|--------|--------------------------------------------|
| ``{root}studies``                    | zset   | study id → created ms (ListStudies order)  |
| ``{root}study:{sid}``                | hash   | study (Study proto), suggested, completed, |
|                                      |        | state (lifecycle, once it changed), reason,|
|                                      |        | tenant, created_ms, live limits, run_ms /  |
|                                      |        | running / running_since (trial-hours)      |
| ``{root}tenants``                    | hash   | tenant name -> JSON record (ladder.tenancy)|
| ``{root}tokens``                     | hash   | token id -> JSON {tenant, sha256, ...}     |
| ``{root}tenant:{name}:studies``      | set    | the tenant's study ids (ladder.quotas)     |
| ``{root}sched:tenant:{name}``        | hash   | g, c, m: GPUs, CPU and memory (thousandths)|
|                                      |        | the tenant's RequestWork trials hold       |
| ``{root}sched:node:{id}``            | hash   | the same, held on node id                  |
| ``{root}sched:node:{id}:trials``     | set    | trial ids holding resources on node id     |
| ``{root}sched:nodes``                | hash   | node id → JSON offer (capacity, spot, ms)  |
| ``{root}sched:reserved``             | hash   | node id → JSON reservation (tenant, study, |
|                                      |        | demand, until ms: ladder.state.holds)      |
| ``{root}study:{sid}:pending``        | set    | trial ids suggested / running / resumable  |
| ``{root}study:{sid}:resumable``      | zset   | resumable trial ids → queued ms (FIFO)     |
| ``{root}study:{sid}:paused``         | zset   | PAUSED trial ids → paused ms (promotion    |
|                                      |        | form; they wait for a PROMOTE)             |
| ``{root}study:{sid}:draws:{p}``      | string | next draw index of partition p's sampler   |
| ``{root}trial:{tid}``                | hash   | see ``TRIAL_FIELDS``                       |
| ``{root}trial:{tid}:attempts``       | hash   | attempt id → attempt number (fencing)      |
| ``{root}trial:{tid}:decision``       | hash   | action, rung, proto (latest early-stop     |
|                                      |        | Decision)                                  |
| ``{root}trial:{tid}:outbox``         | hash   | version → JSON {kind, ms, trial snapshot}  |
|                                      |        | of each event not yet confirmed published  |
| ``{root}leases``                     | zset   | trial id → lease / claim deadline ms       |
| ``{root}deadlines``                  | zset   | trial id → running-time deadline ms of its |
|                                      |        | running attempt (what the study's          |
|                                      |        | max_trial_seconds leaves after run_ms)     |
| ``{root}last_sweep``                 | string | ms of the last sweeper pass (any evaluate  |
|                                      |        | process): a longer gap than a lease means  |
|                                      |        | no worker could renew, leases are extended |
| ``{root}outbox``                     | zset   | trial id → ms of its oldest event not yet  |
|                                      |        | confirmed published                        |
| ``{root}offsets:{consumer}``         | hash   | "topic:partition" → next offset to read    |
|                                      |        | (group-less consumers, shared progress)    |
| ``{root}suggest:members``            | zset   | suggest process id → ms of its last lease  |
|                                      |        | heartbeat (``ladder.state.leases``)        |
| ``{root}suggest:lease:{sid}:{p}``    | string | "member|fencing token" of partition p's    |
|                                      |        | owner (PX: the lease ttl)                  |
| ``{root}suggest:fence:{sid}:{p}``    | string | partition p's last fencing token (INCR)    |
| ``{root}suggest:ready:{sid}:{p}``    | list   | ready suggestions of partition p (JSON),   |
|                                      |        | pushed by its owner, popped by any replica |
| ``{root}suggest:taken:{sid}:{p}``    | string | points ever asked of it (request rate)     |
"""

from __future__ import annotations

from dataclasses import dataclass

# Fields of the trial hash. ``proto`` is the immutable part of the Trial proto
# (study, params, seed, partition); the mutable fields live beside it so the Lua
# scripts can change them without parsing protobuf.
TRIAL_FIELDS = {
    "id": "trial id",
    "study": "study id",
    "proto": "Trial proto as suggested (params, seed, partition)",
    "state": "TrialState number",
    "attempt": "current (or last) attempt id",
    "attempt_no": "number of attempts started",
    "failures": "failed attempts that counted toward max_failures (ladder.failures)",
    "failure_kind": "FailureKind of the last counted failure (0 if none)",
    "oom_failures": "counted OUT_OF_MEMORY failures (RETRY_ONCE retries the first only)",
    "interruptions": "attempts preempted, lease expired or stalled (max_interruptions)",
    "last_end": "AttemptEnd of the last attempt that ended",
    "ended": "attempt id the latest event ended ('' if it ended none)",
    "first_ms": "first StartTrial in ms",
    "attempt_ms": "when the running attempt started, ms ('' when none runs)",
    "run_ms": "running time of the attempts that ended, ms (max_trial_seconds)",
    "deadline": "running-time deadline of the running attempt, ms ('' when none)",
    "progress_ms": "when the current attempt's step last advanced (or it started), ms",
    "progress_step": "the step that advance reached ('' until the attempt reports one)",
    "ckpt_s": "seconds spent saving checkpoints, all attempts",
    "train_s": "seconds spent training, all attempts (as reported with checkpoints)",
    "worker": "worker id of the current attempt",
    "hostname": "hostname of the current attempt",
    "environment": "environment string of the current attempt",
    "lease_until": "lease deadline in ms (0 when no attempt holds it)",
    "last_step": "last step reported by the current attempt",
    "last_value": "last value given with PruneTrial",
    "ckpt_uri": "last checkpoint uri",
    "ckpt_step": "step of the last checkpoint",
    "paused_rung": "rung a PAUSED trial waits at (promotion form)",
    "final": "final value (repr) once COMPLETED",
    "closed": "signature of the call that ended the last attempt (idempotent repeats)",
    "reason": "reason of the last transition",
    "algorithm": "sampler that suggested the trial",
    "version": "bumped by every transition that publishes an event",
    "hold_node": "node the trial holds resources on (RequestWork; '' / absent: none)",
    "hold_tenant": "tenant the hold counts against",
    "hold_g": "GPUs held", "hold_c": "CPU held, thousandths of a core",
    "hold_m": "memory held, thousandths of a GB",
    "hold_p": "its study's priority when placed", "hold_s": "1 on a spot node",
    "hold_sp": "1: its study asked for the stable tier for promoted trials",
    "preempt": "1: a preemption plan picked it; its heartbeats answer PAUSE",
    "promoted": "1 once a PROMOTE made it RESUMABLE (stable_for_promoted: no spot node)",
}


@dataclass(frozen=True)
class Keys:
    root: str

    @classmethod
    def for_prefix(cls, topic_prefix: str) -> Keys:
        base = topic_prefix.rstrip(".:")
        return cls(f"ladder:{base}:" if base else "ladder:")

    @property
    def studies(self) -> str:
        return f"{self.root}studies"

    def study(self, study_id: str) -> str:
        return f"{self.root}study:{study_id}"

    @property
    def tenants(self) -> str:
        return f"{self.root}tenants"

    @property
    def tokens(self) -> str:
        return f"{self.root}tokens"

    def tenant_studies(self, tenant: str) -> str:
        return f"{self.root}tenant:{tenant}:studies"

    # RequestWork's resource holds (ladder.state.holds); the Lua scripts build the same
    # names (``sched_key`` in ladder.state.scripts).
    def sched_tenant(self, tenant: str) -> str:
        return f"{self.root}sched:tenant:{tenant}"

    def sched_node(self, node_id: str) -> str:
        return f"{self.root}sched:node:{node_id}"

    def sched_node_trials(self, node_id: str) -> str:
        return f"{self.root}sched:node:{node_id}:trials"

    @property
    def sched_nodes(self) -> str:
        return f"{self.root}sched:nodes"

    @property
    def sched_reserved(self) -> str:
        return f"{self.root}sched:reserved"

    def pending(self, study_id: str) -> str:
        return f"{self.root}study:{study_id}:pending"

    def resumable(self, study_id: str) -> str:
        return f"{self.root}study:{study_id}:resumable"

    def paused(self, study_id: str) -> str:
        return f"{self.root}study:{study_id}:paused"

    def draws(self, study_id: str, partition: int) -> str:
        return f"{self.root}study:{study_id}:draws:{partition}"

    def trial(self, trial_id: str) -> str:
        return f"{self.root}trial:{trial_id}"

    def attempts(self, trial_id: str) -> str:
        return f"{self.root}trial:{trial_id}:attempts"

    def decision(self, trial_id: str) -> str:
        return f"{self.root}trial:{trial_id}:decision"

    def trial_outbox(self, trial_id: str) -> str:
        # The Lua scripts derive it the same way (trial key + ':outbox').
        return f"{self.trial(trial_id)}:outbox"

    @property
    def leases(self) -> str:
        return f"{self.root}leases"

    @property
    def deadlines(self) -> str:
        return f"{self.root}deadlines"

    @property
    def last_sweep(self) -> str:
        return f"{self.root}last_sweep"

    @property
    def outbox(self) -> str:
        return f"{self.root}outbox"

    def offsets(self, consumer: str) -> str:
        return f"{self.root}offsets:{consumer}"

    @property
    def suggest_members(self) -> str:
        return f"{self.root}suggest:members"

    def partition_lease(self, study_id: str, partition: int) -> str:
        return f"{self.root}suggest:lease:{study_id}:{partition}"

    def partition_fence(self, study_id: str, partition: int) -> str:
        return f"{self.root}suggest:fence:{study_id}:{partition}"

    def partition_ready(self, study_id: str, partition: int) -> str:
        return f"{self.root}suggest:ready:{study_id}:{partition}"

    def partition_taken(self, study_id: str, partition: int) -> str:
        return f"{self.root}suggest:taken:{study_id}:{partition}"
