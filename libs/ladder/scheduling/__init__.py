"""Multi-tenant GPU scheduling as pure logic (issue 19, items 3 and 5).

Which pending trial runs next, on which node, and which running trials to pause for a
higher-priority one. Nothing here talks to Redis, Kafka or gRPC: a service (or the
offline fleet simulator, ``bench/fleet_sim.py``) holds the state and asks these
functions, so every rule is unit-tested on its own and measured without a cluster.

| module          | what it decides                                                   |
|-----------------|-------------------------------------------------------------------|
| ``resources``   | what a trial needs, what a node has; the one place they are validated |
| ``placement``   | which node a demand goes to (best-fit, first-fit as the baseline) |
| ``fairshare``   | each tenant's weighted dominant share (the fairness measure)      |
| ``chooser``     | a scheduling round: whose trial next, quotas, reservations        |
| ``preemption``  | the smallest set of lower-priority trials to checkpoint and pause |
"""
