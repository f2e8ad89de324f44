"""``ladder run`` and ``ladder reproduce``: commands that run training scripts written
with the Python API (``ladder.api``)."""

from __future__ import annotations

from typing import Any


def register(commands: dict[str, Any], command_type: type) -> None:
    """Add this module's commands to the CLI's table."""
