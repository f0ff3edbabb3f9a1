"""Executors run trials: ``get_executor(name, **kw).submit(spec) -> TrialHandle``.

Available: ``local`` (subprocess group on this machine).
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ExecutorError
from .base import Executor, TrialHandle
from .local import LocalExecutor, LocalTrialHandle, read_result, reap_orphans

__all__ = [
    "Executor",
    "LocalExecutor",
    "LocalTrialHandle",
    "TrialHandle",
    "available_executors",
    "get_executor",
    "read_result",
    "reap_orphans",
]

_REGISTRY: dict[str, Callable[..., Executor]] = {"local": LocalExecutor}


def available_executors() -> list[str]:
    """Names accepted by ``get_executor``, sorted."""
    return sorted(_REGISTRY)


def get_executor(name: str, **kwargs: Any) -> Executor:
    """The executor called ``name``, built with ``kwargs`` (e.g. ``kill_grace_s=5.0`` for local)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ExecutorError(
            f"unknown executor {name!r}; available: {', '.join(available_executors())}; "
            "set execution.mode to one of them"
        ) from None
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ExecutorError(f"cannot build the {name!r} executor with {sorted(kwargs)}: {exc}") from exc
