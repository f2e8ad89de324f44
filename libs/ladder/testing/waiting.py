"""Waiting on a condition with a deadline: the tests' only synchronisation (a bare sleep
either wastes time or, on a busy machine, is too short)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from ladder.client import wait_until

T = TypeVar("T")


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1
) -> Any:
    """Poll ``condition`` until it returns something truthy (returned) or fail with
    an AssertionError naming ``what`` once ``timeout`` seconds have passed."""
    value = wait_until(condition, timeout, every)
    if not value:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return value


def unless_not_found(call: Callable[[], T]) -> T | None:
    """``call()``, or None while the service answers NOT_FOUND: lineage ingests from the
    topics, reading at most every 500 ms, so a trial may not be there yet."""
    try:
        return call()
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def wait_for_found(
    condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2
) -> Any:
    """``wait_for`` where a NOT_FOUND answer counts as "not yet"."""
    return wait_for(lambda: unless_not_found(condition), timeout, what, every)
