"""Ladder: hyperparameter optimization for very large studies.

The Python API (``ladder.api``) is imported on first use, so that ``import ladder.x``
in the services stays light::

    import ladder
    study = ladder.create_study(space={...}, metric="val_loss", scheduler="asha", ...)
"""

from typing import Any

__version__ = '0.1.0'

_API = ("Study", "Trial", "TrialFailed", "WorkerFailed", "create_study", "load_study",
        "optimize")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from ladder import api

        return getattr(api, name)
    raise AttributeError(f"module 'ladder' has no attribute {name!r}")
