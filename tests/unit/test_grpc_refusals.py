"""The gRPC edge answers every domain error with its status code, and lets
anything else through."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
import redis
from ladder import errors
from ladder.grpcserver import STATUS_OF, ServiceHost, answer_refusals, status_of
from ladder.schedulers.spec import SchedulerConfigError
from ladder.space import SpaceError, StudyConfigError

Code = grpc.StatusCode

EXPECTED = [
    (errors.InvalidArgument("x is required"), Code.INVALID_ARGUMENT),
    (errors.NotFound("trial 't' not found"), Code.NOT_FOUND),
    (errors.AlreadyExists("study 's' already exists"), Code.ALREADY_EXISTS),
    (errors.Conflict("cannot start trial 't': it is FAILED"), Code.FAILED_PRECONDITION),
    (errors.StaleAttempt("stale attempt: 'a1'"), Code.FAILED_PRECONDITION),
    (errors.BudgetExhausted(8), Code.FAILED_PRECONDITION),
    (errors.StudyPaused(None, "study 's' is paused"), Code.FAILED_PRECONDITION),
    (errors.Unavailable("event not published"), Code.UNAVAILABLE),
    (errors.AtCapacity("study 's' has 2 trials out"), Code.RESOURCE_EXHAUSTED),
    (errors.Unauthenticated("invalid or revoked token"), Code.UNAUTHENTICATED),
    (StudyConfigError("max_trials must be >= 0"), Code.INVALID_ARGUMENT),
    (SpaceError("lr: low must be < high"), Code.INVALID_ARGUMENT),
    (SchedulerConfigError("eta must be >= 2"), Code.INVALID_ARGUMENT),
]


def _kinds(cls: type[errors.LadderError]) -> Iterator[type[errors.LadderError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _kinds(sub)


@pytest.mark.parametrize(("exc", "code"), EXPECTED, ids=lambda v: type(v).__name__)
def test_each_domain_error_answers_its_code_with_its_message(
    exc: Exception, code: grpc.StatusCode
) -> None:
    assert status_of(exc) == (code, str(exc))


def test_every_kind_of_domain_error_is_in_the_table() -> None:
    kinds = {cls for cls in _kinds(errors.LadderError) if cls.__module__ == errors.__name__}
    assert kinds and kinds <= set(STATUS_OF)
    assert kinds <= {type(exc) for exc, _ in EXPECTED}


def test_budget_exhausted_names_the_count() -> None:
    assert str(errors.BudgetExhausted(8)) == "study budget exhausted: 8 trials suggested"


@pytest.mark.parametrize(
    "exc", [redis.ConnectionError("refused"), redis.TimeoutError("slow"), redis.RedisError("x")]
)
def test_redis_errors_answer_unavailable(exc: redis.RedisError) -> None:
    assert status_of(exc) == (Code.UNAVAILABLE, f"state store unavailable: {exc}")


@pytest.mark.parametrize("exc", [ValueError("bug"), KeyError("k"), RuntimeError("r")])
def test_other_exceptions_are_not_refusals(exc: Exception) -> None:
    assert status_of(exc) is None


def test_require_names_the_missing_field() -> None:
    assert errors.require("t1", "trial_id") == "t1"
    with pytest.raises(errors.InvalidArgument, match="^trial_id is required$"):
        errors.require("", "trial_id")


class Aborted(Exception):
    pass


class FakeContext:
    """Records ``abort`` and raises like grpc's does."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted


def _raising(exc: Exception) -> Callable[[object, object], object]:
    def behavior(request: object, context: object) -> object:
        raise exc

    return behavior


def test_a_refusal_aborts_the_call_with_its_status() -> None:
    context = FakeContext()
    handler = answer_refusals(_raising(errors.NotFound("trial 't' not found")), "/svc/Get")
    with pytest.raises(Aborted):
        handler(object(), context)
    assert context.aborted == (Code.NOT_FOUND, "trial 't' not found")


def test_an_unknown_exception_propagates_untouched() -> None:
    context = FakeContext()
    bug = ZeroDivisionError("bug")
    handler = answer_refusals(_raising(bug), "/svc/Get")
    with pytest.raises(ZeroDivisionError) as raised:
        handler(object(), context)
    assert raised.value is bug and context.aborted is None


def test_a_served_method_answers_with_the_mapped_status() -> None:
    """Through a real server: the interceptor ServiceHost installs reaches every method."""
    replies: dict[str, Callable[[object, object], object]] = {
        "Conflict": _raising(errors.Conflict("trial 't' is RUNNING")),
        "Bug": _raising(ZeroDivisionError("bug")),
        "Echo": lambda request, context: request,
    }
    host = ServiceHost("test.Refusals", 0, workers=2)
    host.server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Refusals",
                {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in replies.items()},
            ),
        )
    )
    host.server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{host.port}") as channel:

            def call(name: str) -> bytes:
                return channel.unary_unary(f"/test.Refusals/{name}")(b"hi", timeout=5)

            assert call("Echo") == b"hi"
            with pytest.raises(grpc.RpcError) as refused:
                call("Conflict")
            assert refused.value.code() == Code.FAILED_PRECONDITION
            assert refused.value.details() == "trial 't' is RUNNING"
            with pytest.raises(grpc.RpcError) as failed:
                call("Bug")
            assert failed.value.code() == Code.UNKNOWN
    finally:
        host.server.stop(0).wait()
