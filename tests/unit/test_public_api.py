"""The public surface is pinned: changing it is a deliberate act, not an accident."""

from __future__ import annotations

import subprocess
import sys

import ralph_ml
from ralph_ml import trial


def test_top_level_all_is_pinned() -> None:
    assert sorted(ralph_ml.__all__) == sorted([
        "AgentError", "Analysis", "Config", "ConfigError", "CycleRecord", "Decision", "Direction", "ExecutorError",
        "FailureClass", "GuardRejected", "Proposal", "RalphError", "Recommendation", "StateError", "StopReason",
        "TrialResult", "TrialSpec", "TrialStatus", "WorkspaceError", "__version__", "load_config",
    ])
    for name in ralph_ml.__all__:
        assert hasattr(ralph_ml, name)


def test_trial_helper_surface() -> None:
    for name in ("params", "report", "should_stop", "log_metrics", "checkpoint_dir", "seed"):
        assert name in trial.__all__ and callable(getattr(trial, name))


def test_core_does_not_import_torch() -> None:
    code = "import sys, ralph_ml.loop, ralph_ml.cli, ralph_ml.trial; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_trial_helper_import_does_not_load_pydantic_or_optuna() -> None:
    code = "import sys, ralph_ml.trial; print(sorted(m for m in ('pydantic', 'optuna', 'torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
