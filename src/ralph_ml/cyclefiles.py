"""Per-cycle files and rules shared by the loop: the trial's environment, the target-metric
rules (missing or non-finite = failed, never a score of 0), and metrics.json in the seed-000 shape."""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from .checks import trial_path_env
from .config import Config, TargetMetric
from .journal import write_json_atomic
from .records import FailureClass, TrialResult, TrialStatus
from .stdout_curve import STDOUT_PROGRESS_VAR

# The loop's request to one trial ($RALPH_CONTROL_PATH): {"action": "stop", "reason": ...};
# the pruner's also carries "by": "pruner", "step" and "rows_seen" (how far it had read).
TRIAL_CONTROL_FILE = "control.json"


def trial_env(cfg: Config, run_id: str, cycle: int, cdir: Path, params: Mapping[str, Any]) -> dict[str, str]:
    """The RALPH_* environment of a trial (DESIGN.md, trial contract). ``RALPH_STOP_AT_TARGET``
    (``Config.stops_at_target``) makes ``trial.report`` ask the trial to stop once a reported
    target metric meets the target."""
    env = {
        "RALPH_RUN_ID": run_id,
        "RALPH_CYCLE": str(cycle),
        "RALPH_RUN_DIR": str(cdir),
        "RALPH_PARAMS": str(cdir / "params.json"),
        "RALPH_SEED": str(cfg.project.seed),
        "RALPH_METRICS_PATH": str(cdir / "metrics.json"),
        "RALPH_CHECKPOINT_DIR": str(cdir / "checkpoints"),
        "RALPH_DATA_DIR": str(cfg.path(cfg.data.root)),
        "RALPH_PROGRESS_PATH": str(cdir / "progress.jsonl"),
        "RALPH_CONTROL_PATH": str(cdir / TRIAL_CONTROL_FILE),
        "PATH": trial_path_env(),
        "PYTHONUNBUFFERED": "1",
        **cfg.execution.env,
    }
    if cfg.execution.stdout_progress:
        env[STDOUT_PROGRESS_VAR] = cfg.execution.stdout_progress
    if cfg.stops_at_target:
        t = cfg.target
        env["RALPH_STOP_AT_TARGET"] = json.dumps({"name": t.name, "value": t.value, "direction": t.dir.value})
    for name, value in params.items():
        env[f"RALPH_PARAM_{name.upper()}"] = json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
    key_env = cfg.agents.llm.api_key_env
    if key_env and "openai" in (cfg.agent_name, cfg.agents.analysis_model):
        env.setdefault(key_env, "")  # agent-written code never sees the LLM's API key
    return env


def classify(result: TrialResult, name: str) -> tuple[TrialResult, float | None]:
    """Apply the target-metric rules: missing or non-finite target = failed, never a score of 0."""
    if result.status is not TrialStatus.OK:
        value = result.metrics.get(name)
        return result, None if value is None or not math.isfinite(value) else None
    if name not in result.metrics:
        seen = ", ".join(sorted(result.metrics)) or "none"
        return (
            replace(
                result,
                status=TrialStatus.FAILED,
                failure=FailureClass.MISSING_METRIC,
                message=f"the trial exited 0 but never reported the target metric {name!r} (metrics seen: {seen}); "
                f"write it to metrics.json (ralph_ml.trial.log_metrics) or print `{name}: value`",
            ),
            None,
        )
    value = result.metrics[name]
    if not math.isfinite(value):
        return (
            replace(
                result,
                status=TrialStatus.FAILED,
                failure=FailureClass.NAN,
                message=f"the target metric {name} is {value} (NaN/inf): the run diverged",
            ),
            None,
        )
    return result, value


def write_metrics(cdir: Path, cycle: int, run_id: str, target: TargetMetric, result: TrialResult) -> None:
    """metrics.json in the seed-000 shape, keeping what the trial itself wrote."""
    path = cdir / "metrics.json"
    doc: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            doc = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            doc = {}
    t = target
    doc.update(
        {
            "cycle": cycle,
            "run_id": run_id,
            "target": {"name": t.name, "value": t.value, "direction": t.dir.value},
            "result": {k: (v if math.isfinite(v) else repr(v)) for k, v in result.metrics.items()},
            "status": result.status.value,
            "failure": result.failure.value,
        }
    )
    runtime = dict(doc.get("runtime") or {})
    runtime.update(
        {
            "train_seconds": round(result.train_seconds, 3),
            "eval_seconds": round(result.eval_seconds, 3),
            "total_seconds": round(result.duration_s, 3),
        }
    )
    doc["runtime"] = runtime
    doc.setdefault("resources", {"hostname": socket.gethostname(), "cpu_count": os.cpu_count()})
    write_json_atomic(path, doc)
