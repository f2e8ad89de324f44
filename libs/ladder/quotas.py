"""Per-tenant quotas: the rules, their refusals and what a tenant uses.

A tenant (``ladder.tenancy``) may carry two quotas, stored in its record (the
``{root}tenants`` hash, JSON fields ``max_studies`` and ``max_trials_running``) and set
by the admin (``ladder tenant quota NAME --max-studies N --max-trials-running N``);
0 (or absent) = unbounded:

- ``max_studies``: live studies (neither COMPLETED nor CANCELLED) the tenant may hold.
  CreateStudy beyond it answers RESOURCE_EXHAUSTED naming the quota; finishing or
  cancelling a study makes room. Enforced by the CREATE_STUDY script.
- ``max_trials_running``: trials handed out and not yet ended or handed back
  (SUGGESTED or RUNNING), across all the tenant's studies. Suggest hands out no more
  (RESOURCE_EXHAUSTED, like a study's max_parallel_trials; fewer than asked when only
  part fits). Enforced by CREATE_TRIALS and CLAIM_RESUMABLE.

The running count is not a separate counter: each script sums the tenant's studies'
own in-flight counts (pending set less resumable queue, which every trial transition
already keeps) inside the same atomic step (``tenant_room`` in
``ladder.state.scripts``). So it is exact through every way a trial ends or comes back:
completion, prune, failure, lease expiry and resume, a stall, a timeout, an operator's
stop, and a process killed between two calls, with nothing to repair. It costs two
O(1) reads per study of the tenant per Suggest, only for a tenant with that quota.
The tenant's studies are the set ``{root}tenant:<name>:studies`` (CREATE_STUDY adds
each new one; ``index_studies`` adds those created before, when a quota is set).

Two more fields shape the scheduler (``ladder.scheduling``, RequestWork; set with
``ladder tenant quota NAME --weight W --max-gpus N``):

- ``max_gpus``: GPUs the tenant's trials hold at once on RequestWork's nodes (from
  assignment until the attempt ends). RequestWork hands out nothing that would pass it;
  the hold CREATE_TRIALS / CLAIM_RESUMABLE take is checked against it atomically, with the
  tenant's tally (``ladder.state.holds``). Trials taken with Suggest hold no resources.
- ``weight``: the tenant's weight in the weighted dominant-resource fair share
  (default 1; relative: 2 against 1 gets twice the share under contention).

Studies created with authentication off have no tenant and no quota.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from ladder.errors import AtCapacity, InvalidArgument
from ladder.scheduling import resources
from ladder.state.keys import Keys
from ladder.v1 import study_pb2

# The quota fields of a tenant's record, as the Lua scripts read them.
FIELDS = ("max_studies", "max_trials_running")
_FINISHED = frozenset({study_pb2.STUDY_COMPLETED, study_pb2.STUDY_CANCELLED})


@dataclass(frozen=True)
class Quota:
    max_studies: int = 0  # live studies; 0 = unbounded
    max_trials_running: int = 0  # trials out across the tenant's studies; 0 = unbounded
    max_gpus: int = 0  # GPUs held by its RequestWork trials at once; 0 = unbounded
    weight: float = 1.0  # its weight in the fair share

    @classmethod
    def from_record(cls, record: dict) -> Quota:
        return cls(*(int(record.get(name) or 0) for name in FIELDS),
                   int(record.get("max_gpus") or 0), float(record.get("weight") or 1.0))

    def policy(self) -> resources.TenantPolicy:
        """The scheduler's view: weight and GPU cap (None = unbounded)."""
        return resources.TenantPolicy(self.weight, self.max_gpus or None)


def check(name: str, value: int) -> int:
    """A quota value: 0 = unbounded, never negative."""
    if value < 0:
        raise InvalidArgument(f"{name} must be >= 0 (0 = unbounded; got {value})")
    return value


def updated(current: Quota, max_studies: int | None, max_trials_running: int | None,
            max_gpus: int | None = None, weight: float | None = None) -> Quota:
    """``current`` with the values given (None: unchanged), each checked (the weight by
    ``ladder.scheduling.resources.tenant_policy``: > 0)."""
    if all(v is None for v in (max_studies, max_trials_running, max_gpus, weight)):
        raise InvalidArgument(
            "set --max-studies, --max-trials-running, --max-gpus and / or --weight")
    return Quota(
        current.max_studies if max_studies is None else check("max_studies", max_studies),
        current.max_trials_running if max_trials_running is None
        else check("max_trials_running", max_trials_running),
        current.max_gpus if max_gpus is None else check("max_gpus", max_gpus),
        current.weight if weight is None else resources.tenant_policy(weight).weight,
    )


def gpus_at_quota(tenant: str, held: int, wanted: int, max_gpus: int) -> AtCapacity:
    """A hold refused at the tenant's max_gpus (RequestWork then places other work)."""
    return AtCapacity(
        f"tenant {tenant!r} holds {held} GPUs, {wanted} more would pass its quota "
        f"max_gpus {max_gpus}: ask an admin to raise it (`ladder tenant quota {tenant} "
        "--max-gpus N`)"
    )


def too_many_studies(tenant: str, live: int, max_studies: int) -> AtCapacity:
    """CreateStudy's refusal at the tenant's max_studies."""
    return AtCapacity(
        f"tenant {tenant!r} has {live} live studies, its quota max_studies is "
        f"{max_studies}: complete or cancel one (`ladder study cancel ID`), or ask an "
        f"admin to raise it (`ladder tenant quota {tenant} --max-studies N`)"
    )


def trials_at_quota(tenant: str, out: int, max_trials_running: int) -> AtCapacity:
    """Suggest's refusal at the tenant's max_trials_running."""
    return AtCapacity(
        f"tenant {tenant!r} has {out} trials out (suggested or running) across its "
        f"studies, its quota max_trials_running is {max_trials_running}: retry once one "
        f"ends, or ask an admin to raise it (`ladder tenant quota {tenant} "
        "--max-trials-running N`)"
    )


@dataclass(frozen=True)
class Usage:
    live_studies: int
    trials_out: int  # SUGGESTED or RUNNING, as the scripts count them


def usage(client: redis.Redis, keys: Keys, tenant: str) -> Usage:
    """What the tenant uses of its quotas, counted as the scripts count it."""
    ids = [m.decode() for m in client.smembers(keys.tenant_studies(tenant))]
    pipe = client.pipeline(transaction=False)
    for sid in ids:
        pipe.hget(keys.study(sid), "state")
        pipe.scard(keys.pending(sid))
        pipe.zcard(keys.resumable(sid))
    rows = pipe.execute() if ids else []
    live = out = 0
    for i in range(0, len(rows), 3):
        state, pending, queued = rows[i : i + 3]
        live += int(state or study_pb2.STUDY_ACTIVE) not in _FINISHED
        out += int(pending) - int(queued)
    return Usage(live, out)


def index_studies(client: redis.Redis, keys: Keys) -> int:
    """Enter every stored study with an owner in its tenant's set (and its hash's
    ``tenant`` field), for studies created before quotas existed; how many. Idempotent."""
    ids = [m.decode() for m in client.zrange(keys.studies, 0, -1)]
    pipe = client.pipeline(transaction=False)
    for sid in ids:
        pipe.hget(keys.study(sid), "study")
    indexed = 0
    write = client.pipeline(transaction=False)
    for sid, raw in zip(ids, pipe.execute() if ids else [], strict=True):
        if not raw:
            continue
        study = study_pb2.Study.FromString(raw)
        if study.tenant:
            write.sadd(keys.tenant_studies(study.tenant), sid)
            write.hset(keys.study(sid), "tenant", study.tenant)
            indexed += 1
    if indexed:
        write.execute()
    return indexed
