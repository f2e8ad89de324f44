"""SendResult: the acknowledgement handle EventProducer.send returns (pure logic)."""

from __future__ import annotations

import pytest
from ladder.bus import SendResult


def test_callbacks_run_once_on_success_whether_added_before_or_after() -> None:
    result = SendResult()
    seen: list[object] = []
    result.add_callback(lambda md: seen.append(("early", md)))
    result.add_errback(lambda exc: seen.append(("error", exc)))
    result.resolve(None, "meta")
    result.add_callback(lambda md: seen.append(("late", md)))
    result.add_errback(lambda exc: seen.append(("late-error", exc)))
    assert seen == [("early", "meta"), ("late", "meta")]
    assert result.get(timeout=0) == "meta"


def test_a_delivery_error_reaches_errbacks_and_get() -> None:
    result = SendResult()
    errors: list[BaseException] = []
    result.add_errback(errors.append)
    result.add_callback(lambda md: pytest.fail("no callback on failure"))
    failure = RuntimeError("broker said no")
    result.resolve(failure, None)
    assert errors == [failure]
    with pytest.raises(RuntimeError, match="broker said no"):
        result.get(timeout=0)


def test_get_times_out_without_an_acknowledgement() -> None:
    with pytest.raises(TimeoutError):
        SendResult().get(timeout=0.01)


def test_a_failing_callback_does_not_stop_the_others() -> None:
    result = SendResult()
    seen: list[str] = []
    result.add_callback(lambda md: 1 / 0)
    result.add_callback(lambda md: seen.append("second"))
    result.resolve(None, "meta")
    assert seen == ["second"]
