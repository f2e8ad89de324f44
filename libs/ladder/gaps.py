"""Reading again what the broker's fetch skipped.

On a topic with neither compaction nor transactions, the offsets a consumer reads in
one partition follow each other. The embedded broker (tansu 0.6) breaks that when
several producers append to one partition: a fetch can return a batch whose first
offset is beyond records that were acknowledged and are stored, and the consumer's
position moves past them. Measured with ``bench/tansu_skip.py``: four producer
processes and a tailing consumer, 3 runs of 180,000 records: 67, 186 and 48 skipped,
every one of them there when the partition was read again. In Ladder several
processes produce to one partition of most topics (two early-stop processes to
``rungs`` and ``decisions``, suggest and evaluate to ``trials``, the simulator's
processes to ``metrics``); with two early-stop processes stage 2 lost three crossings of
a 1,000-worker run that way.

``GapGuard`` tells a consumer, record by record, whether to hand it on or to seek back
to the first offset it has not seen and read from there again. A gap still there when
read again is accepted (on Kafka: transaction markers), so a partition never loops on
it. Users: early-stop's Faust consumer, ``bus.ConsumerLoop`` (evaluate, suggest,
lineage) and the load simulator's two decision readers.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field

log = logging.getLogger("ladder.gaps")


@dataclass
class GapGuard:
    """Per-partition bookkeeping: the next offset expected, and the gaps read again.

    A consumer calls ``admit`` for each record of a fetched batch and hands on those it
    admits, then seeks where ``end_batch`` says. ``check`` is the decision alone."""

    _next: dict[Hashable, int] = field(default_factory=dict)
    # Partitions read again, from where: until that offset came back (or was found
    # missing again), a committing consumer must not commit past it.
    _reread: dict[Hashable, int] = field(default_factory=dict)
    _seeks: dict[Hashable, int] = field(default_factory=dict)  # asked in this batch
    rereads: int = 0
    accepted: int = 0

    def check(self, tp: Hashable, offset: int) -> int | None:
        """None: hand the record on. An offset: do not hand it (or anything after it
        in this partition) on; seek back there and read again."""
        expected = self._next.get(tp)
        if expected is None or offset <= expected:
            self._next[tp] = offset + 1
            if self._reread.get(tp, offset + 1) <= offset:
                del self._reread[tp]  # read again up to here
            return None
        if self._reread.get(tp) == expected:
            # Read again and still missing: a real gap.
            self.accepted += 1
            del self._reread[tp]
            self._next[tp] = offset + 1
            return None
        self._reread[tp] = expected
        self.rereads += 1
        return expected

    def admit(self, tp: Hashable, offset: int) -> bool:
        """True: hand the record on. False: drop it, its partition is read again from
        an earlier offset (the rest of this batch of that partition comes again)."""
        if tp in self._seeks:
            return False
        reread_from = self.check(tp, offset)
        if reread_from is None:
            return True
        log.warning(
            "%s: the fetch skipped offsets %d..%d; reading them again",
            tp,
            reread_from,
            offset - 1,
        )
        self._seeks[tp] = reread_from
        return False

    def end_batch(self) -> list[tuple[Hashable, int]]:
        """The seeks the batch asked for: (partition, offset), to do now."""
        seeks, self._seeks = list(self._seeks.items()), {}
        return seeks

    @property
    def rereading(self) -> bool:
        """A skipped range is not read again yet: commit nothing now."""
        return bool(self._reread)

    def forget(self) -> None:
        """After a rebalance or a new consumer: positions come from the offsets again."""
        self._next.clear()
        self._reread.clear()
        self._seeks.clear()
