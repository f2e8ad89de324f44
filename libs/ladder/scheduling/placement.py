"""Which node a demand goes to.

Best-fit: among the nodes that fit, the one left with the fewest free GPUs after the
trial lands. Packing small trials into already-busy nodes keeps whole nodes empty for
the 8-GPU trials that need them (first-fit scatters 1-GPU trials over empty nodes and
leaves many nodes with 1-7 free GPUs that no large trial can use: fragmentation).
Ties are broken by: the least free CPU left, then the least free memory left (the same
packing argument on the other resources), then the node id, so a round is
reproducible whatever order the nodes were listed in.

A demand for no GPU is best-fit too, so CPU-only work lands on the busiest nodes and
does not take a slice of an empty GPU node.
"""

from __future__ import annotations

from collections.abc import Iterable

from ladder.scheduling.resources import Demand, Node


def fit_key(node: Node, demand: Demand) -> tuple[int, float, float, str]:
    """How tightly ``demand`` fills ``node`` (smaller is tighter); the node must fit."""
    left = node.free - demand.resources
    return (left.gpus, left.cpu, left.memory_gb, node.node_id)


def best_fit(demand: Demand, nodes: Iterable[Node]) -> Node | None:
    """The feasible node that leaves the least free GPUs (ties above), or None."""
    best: Node | None = None
    best_key: tuple[int, float, float, str] | None = None
    for candidate in nodes:
        if not candidate.fits(demand):
            continue
        key = fit_key(candidate, demand)
        if best_key is None or key < best_key:
            best, best_key = candidate, key
    return best


def first_fit(demand: Demand, nodes: Iterable[Node]) -> Node | None:
    """The first node in the given order that fits: the baseline best-fit is measured
    against (what a FIFO queue over a node list does without a packing rule)."""
    for candidate in nodes:
        if candidate.fits(demand):
            return candidate
    return None
