"""Retrying work that must not be dropped, with one capped exponential back-off.

The services' loops that retry until they succeed (a broker or a store briefly away)
wait the same way: long enough not to spin against something that is down, short
enough (at most 5 s) to go on soon after it is back. A request that gives up at a
deadline is another policy: ``ladder.client.call_with_retry``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0


def backoff_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): 0.4, 0.8,
    1.6, 3.2, then 5 s for every later one."""
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**attempt)


async def retry_forever(
    call: Callable[[], Awaitable[T]],
    what: str,
    log: logging.Logger,
    then: str = "retrying",
) -> T:
    """``await call()`` until it returns. Each failure is logged with its traceback as
    "<what> failed (attempt n); <then>" and waited out with :func:`backoff_delay`.
    Cancellation is not a failure: it ends the loop."""
    attempt = 0
    while True:
        try:
            return await call()
        except Exception:  # noqa: BLE001 - the caller's work must not be dropped
            attempt += 1
            log.exception("%s failed (attempt %d); %s", what, attempt, then)
            await asyncio.sleep(backoff_delay(attempt))
