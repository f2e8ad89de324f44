"""Server-sent events: a study's progress, sent at once and then whenever it changes
(read every ``INTERVAL`` seconds; every viewer of one study shares each read through
the source's cache). A comment line every ``KEEPALIVE`` seconds keeps proxies from
closing a quiet stream; the stream ends when the client goes or the server stops."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from ladder.dashboard import jsonout

from services.dashboard.source import SourceError

INTERVAL = 1.0
KEEPALIVE = 15.0
# The browser's EventSource waits this long before reconnecting after an error.
RETRY_MS = 2000


def event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {jsonout.dumps(data)}\n\n".encode()


async def stream(
    request: web.Request,
    read: Callable[[], Awaitable[Any]],
    stopping: asyncio.Event,
    interval: float = INTERVAL,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # a proxy (nginx) must not hold events back
    })
    await response.prepare(request)
    last: Any = None
    quiet_since = time.monotonic()
    try:
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        while not stopping.is_set():
            try:
                current = await read()
            except SourceError as exc:
                await response.write(event("failure", {"error": str(exc), "status": exc.status}))
                current = last
            else:
                if current != last:
                    await response.write(event("progress", current))
                    last = current
                    quiet_since = time.monotonic()
            if time.monotonic() - quiet_since >= KEEPALIVE:
                await response.write(b": keep-alive\n\n")
                quiet_since = time.monotonic()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
    except ConnectionResetError:
        pass  # the viewer left
    return response
