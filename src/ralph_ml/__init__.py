"""ralph-ml: improve deep-learning models autonomously and safely."""

from __future__ import annotations

from .config import Config, load_config
from .errors import (
    AgentError,
    ConfigError,
    ExecutorError,
    GuardRejected,
    RalphError,
    StateError,
    WorkspaceError,
)
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

__version__ = "0.1.0"

__all__ = [
    "AgentError",
    "Analysis",
    "Config",
    "ConfigError",
    "CycleRecord",
    "Decision",
    "Direction",
    "ExecutorError",
    "FailureClass",
    "GuardRejected",
    "Proposal",
    "RalphError",
    "Recommendation",
    "StateError",
    "StopReason",
    "TrialResult",
    "TrialSpec",
    "TrialStatus",
    "WorkspaceError",
    "__version__",
    "load_config",
]
