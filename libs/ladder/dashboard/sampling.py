"""Less for the browser to read: a study of 20,000 trials must not ship every one of
its trials to every plot, nor every digit of every number (the scale target is a
study page in under 2 s)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def even_sample(count: int, limit: int, keep: Iterable[int] = ()) -> list[int]:
    """At most ``limit`` indices of ``range(count)`` in order: every index in ``keep``
    (the best trials, say; cut to ``limit`` if there are more), the rest evenly spaced.
    Deterministic, so a refreshed page shows the same points."""
    if count <= limit:
        return list(range(count))
    if limit <= 0:
        return []
    kept = sorted({i for i in keep if 0 <= i < count})[:limit]
    room = limit - len(kept)
    chosen = set(kept)
    if room > 0:
        stride = count / room
        chosen.update(min(count - 1, int(k * stride)) for k in range(room))
        # Collisions with ``kept`` leave room: fill it from the start, in order.
        spare = (i for i in range(count) if i not in chosen)
        while len(chosen) < limit:
            chosen.add(next(spare))
    return sorted(chosen)


def decimate(xs: Sequence[float], ys: Sequence[float], limit: int) -> list[int]:
    """At most ``limit`` indices of a curve that keep its shape: the first and last
    point, and the lowest and highest point of each of ``(limit - 2) / 2`` buckets."""
    count = len(xs)
    if count <= limit:
        return list(range(count))
    if limit < 4:
        return [0, count - 1][:max(limit, 0)]
    buckets = (limit - 2) // 2
    chosen = {0, count - 1}
    inner = count - 2
    for b in range(buckets):
        start = 1 + b * inner // buckets
        end = 1 + (b + 1) * inner // buckets
        if start >= end:
            continue
        window = range(start, end)
        chosen.add(min(window, key=lambda i: ys[i]))
        chosen.add(max(window, key=lambda i: ys[i]))
    return sorted(chosen)


def rounded(values: Sequence[float | None], digits: int = 6) -> list[float | None]:
    """``values`` to ``digits`` significant digits (what a plot or a table cell shows),
    None for a missing or non-finite one: "0.806464" instead of "0.806464241055266"
    is a third of the JSON the browser reads and parses."""
    if not values:
        return []
    array = np.array([math.nan if v is None else v for v in values], dtype=float)
    finite = np.isfinite(array) & (array != 0)
    magnitude = np.floor(np.log10(np.abs(array[finite])))
    scale = 10.0 ** (digits - 1 - magnitude)
    array[finite] = np.round(array[finite] * scale) / scale
    out = array.astype(object)
    out[~np.isfinite(array)] = None
    return out.tolist()
