"""Executors run trials: ``get_executor(name, **kw).submit(spec) -> TrialHandle``.

Available: ``local`` (subprocess group on this machine), ``ray`` (a detached Ray actor per
trial; ``pip install 'ralph-ml[ray]'``), ``slurm`` (a Slurm job per trial through submitit;
``pip install 'ralph-ml[slurm]'``). The optional ones are imported only when asked for.
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


def _optional(module: str, cls: str, extra: str, needs: str) -> Callable[..., Executor]:
    def factory(**kwargs: Any) -> Executor:
        import importlib

        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ImportError as exc:
            if exc.name is not None and exc.name.startswith("ralph_ml"):
                raise  # our own bug, not a missing extra
            raise ExecutorError(
                f"execution.mode = {extra!r} needs the {needs!r} package, which could not be imported "
                f"({exc}); install it with: pip install 'ralph-ml[{extra}]'"
            ) from None
        built: Executor = getattr(mod, cls)(**kwargs)
        return built

    return factory


_REGISTRY: dict[str, Callable[..., Executor]] = {
    "local": LocalExecutor,
    "ray": _optional("ray_executor", "RayExecutor", "ray", "ray"),
    "slurm": _optional("slurm", "SlurmExecutor", "slurm", "submitit"),
}


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
