"""Each tenant's weighted dominant share: the quantity the chooser equalises.

Why weighted Dominant Resource Fairness (Ghodsi, Zaharia, Hindman, Konwinski, Shenker,
Stoica, "Dominant Resource Fairness: Fair Allocation of Multiple Resource Types",
NSDI 2011, which also defines its weighted form) and not weighted deficit round-robin
over GPU-hours (Shreedhar and Varghese, "Efficient Fair Queueing using Deficit Round
Robin", SIGCOMM 1995):

- A trial asks for GPUs, CPU and memory together; DRF compares tenants on the resource
  each one uses most, so a tenant running CPU-heavy trials on GPU nodes is charged for
  what it really blocks. DRR over GPU-hours sees only GPUs.
- DRF is computed from what runs *now*, with no history: a tenant (or a high-priority
  study) that arrives mid-run gets the next free slots at once, and an idle tenant
  cannot bank credit and then starve the others. DRR carries deficits across rounds,
  which a service would have to persist and which punish a tenant for yesterday.
- DRF is strategy-proof and envy-free (the paper's theorems): a tenant cannot gain by
  inflating its demand. Trials are not preemptible at will, so the share is equalised
  at each placement (progressive filling): the next free slot goes to the tenant with
  the smallest weighted dominant share.

weighted dominant share(t) = max over resources r of used_t[r] / total[r], divided by
weight(t). Weights are relative (2:1:1 gives 1/2, 1/4, 1/4 under saturation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ladder.scheduling.resources import DEFAULT_POLICY, NOTHING, Resources, TenantPolicy


def dominant_share(used: Resources, total: Resources) -> float:
    """The largest fraction of any one resource ``used`` holds (0 if none exists)."""
    fractions = [0.0]
    if total.gpus:
        fractions.append(used.gpus / total.gpus)
    if total.cpu:
        fractions.append(used.cpu / total.cpu)
    if total.memory_gb:
        fractions.append(used.memory_gb / total.memory_gb)
    return max(fractions)


class Ledger:
    """What each tenant holds now, against the cluster's total; the running tally a
    scheduler keeps (add on start, remove on end or pause)."""

    def __init__(self, total: Resources, policies: Mapping[str, TenantPolicy] | None = None
                 ) -> None:
        self.total = total
        self.policies: Mapping[str, TenantPolicy] = policies or {}
        self.used: dict[str, Resources] = {}

    def copy(self) -> Ledger:
        """A ledger to change for a what-if without touching this one."""
        out = Ledger(self.total, self.policies)
        out.used = dict(self.used)
        return out

    def policy(self, tenant: str) -> TenantPolicy:
        return self.policies.get(tenant, DEFAULT_POLICY)

    def add(self, tenant: str, amount: Resources) -> None:
        self.used[tenant] = self.used.get(tenant, NOTHING) + amount

    def remove(self, tenant: str, amount: Resources) -> None:
        self.used[tenant] = self.used.get(tenant, NOTHING) - amount

    def usage(self, tenant: str) -> Resources:
        return self.used.get(tenant, NOTHING)

    def share(self, tenant: str, extra: Resources = NOTHING) -> float:
        """The tenant's weighted dominant share, with ``extra`` added (what it would be
        after one more trial)."""
        used = self.usage(tenant) + extra
        return dominant_share(used, self.total) / self.policy(tenant).weight

    def within_quota(self, tenant: str, extra: Resources) -> bool:
        """Whether the tenant may take ``extra`` more without exceeding max_gpus."""
        cap = self.policy(tenant).max_gpus
        return cap is None or self.usage(tenant).gpus + extra.gpus <= cap


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index (1 = all equal, 1/n = one takes all). For weighted
    fairness pass share/weight per tenant."""
    xs = list(values)
    if not xs or not any(xs):
        return 1.0
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))
