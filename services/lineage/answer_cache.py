"""What the service made for one request and may send again: serialized parts of an answer
(a trial's summary, a down-sampled curve), each with the stamp of the rows it was made
from. A part is reused only when the rows read for the new request carry the same stamp,
so nothing stale is sent; the rows are read every time, the work of turning them into
the answer is what is saved.

Least recently used parts go first once the parts exceed a byte budget. Shared by the
service's request threads (one lock, taken once per request).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

# Per part, besides its bytes: the key, the stamp, the dict entry (an estimate).
_OVERHEAD = 500


class AnswerCache:
    def __init__(self, budget_bytes: int) -> None:
        self._budget = budget_bytes
        self._used = 0
        self._parts: OrderedDict[Hashable, tuple[Hashable, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, wanted: Sequence[tuple[Hashable, Hashable]]) -> list[bytes | None]:
        """Per (key, stamp): the part made from rows with that stamp, or None."""
        found: list[bytes | None] = []
        with self._lock:
            for key, stamp in wanted:
                kept = self._parts.get(key)
                if kept is None or kept[0] != stamp:
                    found.append(None)
                    continue
                self._parts.move_to_end(key)
                found.append(kept[1])
        return found

    def put(self, made: Sequence[tuple[Hashable, Hashable, bytes]]) -> None:
        """Keep each (key, stamp, part)."""
        with self._lock:
            for key, stamp, part in made:
                old = self._parts.pop(key, None)
                if old is not None:
                    self._used -= len(old[1]) + _OVERHEAD
                self._parts[key] = (stamp, part)
                self._used += len(part) + _OVERHEAD
            while self._used > self._budget and self._parts:
                _, (_, part) = self._parts.popitem(last=False)
                self._used -= len(part) + _OVERHEAD
