"""ralph-ml: improve deep-learning models autonomously and safely.

Exports are loaded lazily so that ``import ralph_ml.trial`` inside a training script stays
fast (it must not pull in pydantic, optuna or the loop).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "config",
    "load_config": "config",
    "AgentError": "errors",
    "ConfigError": "errors",
    "ExecutorError": "errors",
    "GuardRejected": "errors",
    "RalphError": "errors",
    "StateError": "errors",
    "WorkspaceError": "errors",
    "Analysis": "records",
    "CycleRecord": "records",
    "Decision": "records",
    "Direction": "records",
    "FailureClass": "records",
    "Proposal": "records",
    "Recommendation": "records",
    "StopReason": "records",
    "TrialResult": "records",
    "TrialSpec": "records",
    "TrialStatus": "records",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config, load_config
    from .errors import AgentError, ConfigError, ExecutorError, GuardRejected, RalphError, StateError, WorkspaceError
    from .records import (
        Analysis,
        CycleRecord,
        Decision,
        Direction,
        FailureClass,
        Proposal,
        Recommendation,
        StopReason,
        TrialResult,
        TrialSpec,
        TrialStatus,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ralph_ml' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
