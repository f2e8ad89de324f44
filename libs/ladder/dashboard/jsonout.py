"""JSON for the browser: ``JSON.parse`` rejects NaN and Infinity, which Python's json
writes by default. The figures replace non-finite numbers as they are built; this is
the net under them."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(data: Any) -> Any:
    """``data`` with every non-finite float replaced by None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data


def dumps(data: Any) -> str:
    """Compact, strictly valid JSON (non-finite numbers as null)."""
    try:
        return json.dumps(data, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(finite(data), allow_nan=False, separators=(",", ":"))
