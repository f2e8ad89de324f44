"""The errors of the domain: what a request can be refused for.

Libraries and service handlers raise these; only the gRPC edge
(``ladder.grpcserver``) knows which status code each one answers with, so the
state layer and the algorithms stay free of transport vocabulary. The message
(``str(exc)``) is what the caller reads, so it names the field or the object.
"""

from __future__ import annotations


class LadderError(Exception):
    """A request the domain refuses."""


class InvalidArgument(LadderError):
    """The request itself is malformed: a missing, out-of-range or invalid field."""


class NotFound(LadderError):
    """The study or trial the request names does not exist."""


class AlreadyExists(LadderError):
    """An object of that id exists and differs from the one the request creates."""


class Conflict(LadderError):
    """The object's current state refuses the request (wrong lifecycle state, a
    different result already recorded, another live attempt holds the trial)."""


class StaleAttempt(LadderError):
    """The attempt named in the request does not hold the trial (any more)."""


class BudgetExhausted(LadderError):
    """The study has handed out all of its ``max_trials``."""

    def __init__(self, suggested: int | None, message: str = "") -> None:
        # A client knows only the server's message, not the count.
        super().__init__(message or f"study budget exhausted: {suggested} trials suggested")
        self.suggested = suggested


class StudyPaused(BudgetExhausted):
    """Suggest hands out nothing while the study is paused; once it is resumed it does
    again (a worker waits; a caller that only knows BudgetExhausted stops)."""


class Unavailable(LadderError):
    """A dependency the request needs did not answer; repeating it may succeed."""


class AtCapacity(LadderError):
    """The study has as many trials out as it allows at once (max_parallel_trials);
    repeating the request once one of them ended may succeed."""


class Unauthenticated(LadderError):
    """The call carries no token, or one that is malformed, unknown or revoked."""


def require(value: str, field: str) -> str:
    """``value``, or InvalidArgument naming ``field`` when it is empty."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    return value
