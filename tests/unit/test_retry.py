"""The back-off the services' retry-until-done loops share (ladder.retry)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from ladder import retry
from ladder.retry import backoff_delay, retry_forever


def test_backoff_doubles_from_0_4_s_and_stops_growing_at_5_s() -> None:
    assert [backoff_delay(n) for n in range(1, 7)] == pytest.approx([0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_retry_forever_logs_each_failure_and_returns_the_first_success(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(retry.asyncio, "sleep", no_wait)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("broker away")
        return "done"

    log = logging.getLogger("test.retry")
    with caplog.at_level(logging.ERROR, logger="test.retry"):
        assert asyncio.run(retry_forever(flaky, "reading t", log, "reconnecting")) == "done"
    assert calls == 3 and waits == [backoff_delay(1), backoff_delay(2)]
    assert [r.getMessage() for r in caplog.records] == [
        "reading t failed (attempt 1); reconnecting",
        "reading t failed (attempt 2); reconnecting",
    ]
    assert all(r.exc_info for r in caplog.records)


def test_retry_forever_ends_when_cancelled() -> None:
    async def main() -> None:
        async def forever() -> None:
            await asyncio.Event().wait()

        task = asyncio.create_task(retry_forever(forever, "waiting", logging.getLogger("t")))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
