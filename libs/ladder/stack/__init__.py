"""The embedded default stack: SeaweedFS (S3), the tansu broker on it, Redis and the four
services on loopback.

``ladder up`` / ``ladder down`` / ``ladder status`` are thin wrappers over
:mod:`ladder.stack.launcher`; tests and the demo use the same API::

    from ladder.stack import Stack

    with Stack(tmp_path, services=False) as info:
        info["kafka_bootstrap"], info["redis_url"]
"""

from ladder.stack.launcher import (
    ComponentStatus,
    Stack,
    StackError,
    down,
    read_stack,
    status,
    up,
)

__all__ = ["ComponentStatus", "Stack", "StackError", "down", "read_stack", "status", "up"]
