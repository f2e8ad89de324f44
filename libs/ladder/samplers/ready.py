"""Where a ``SuggestionPolicy`` keeps its ready proposals.

``LocalBuffer``: in this process (a deque); the policy's refit loop always fills it.
A shared buffer (the suggest service's ``SharedBuffer``, over ``ladder.state.leases``)
lives in Redis: every suggest replica takes from it, and only the process owning the
partition's lease fills it (``owned``); its pushes are fenced, so ``fill`` answers -1
once the lease is lost.

``encode`` / ``decode`` are the wire form of a proposal in a shared buffer (JSON).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from typing import Protocol

from ladder.samplers.base import Proposal


class ReadyBuffer(Protocol):
    """The ready proposals of one (study, partition)."""

    # True when other processes take from it too (the policy then learns the
    # request rate and the fill level by polling, not from its own takes).
    shared: bool

    def take(self, count: int) -> tuple[list[Proposal], int]:
        """Up to ``count`` proposals, oldest first, and how many are left."""
        ...

    def size(self) -> int: ...

    def proposals(self) -> list[Proposal]:
        """What it holds, left in place."""
        ...

    def fill(self, proposals: Sequence[Proposal], replace: bool) -> int:
        """Append ``proposals`` (``replace``: instead of what it holds); the new size,
        or -1 when this process may no longer fill it."""
        ...

    def owned(self) -> bool:
        """Whether this process fills it (runs the partition's refits)."""
        ...

    def poll(self) -> tuple[int, int]:
        """(size, points ever asked of it by any process)."""
        ...


class LocalBuffer:
    """A ``ReadyBuffer`` in this process' memory (not thread-safe: the policy locks)."""

    shared = False

    def __init__(self) -> None:
        self._items: deque[Proposal] = deque()
        self._asked = 0

    def take(self, count: int) -> tuple[list[Proposal], int]:
        self._asked += count
        taken = [self._items.popleft() for _ in range(min(count, len(self._items)))]
        return taken, len(self._items)

    def size(self) -> int:
        return len(self._items)

    def proposals(self) -> list[Proposal]:
        return list(self._items)

    def fill(self, proposals: Sequence[Proposal], replace: bool) -> int:
        if replace:
            self._items.clear()
        self._items.extend(proposals)
        return len(self._items)

    def owned(self) -> bool:
        return True

    def poll(self) -> tuple[int, int]:
        return len(self._items), self._asked


def encode(proposal: Proposal) -> str:
    return json.dumps(asdict(proposal), separators=(",", ":"))


def decode(raw: bytes | str) -> Proposal:
    return Proposal(**json.loads(raw))
