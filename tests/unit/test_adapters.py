"""ralph_ml.adapters: the shared pieces, the plain-loop helper, imports and missing extras."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ralph_ml import trial
from ralph_ml.adapters import loops
from ralph_ml.adapters._common import scalars
from ralph_ml.adapters.loops import TrialSteps, trial_steps


@pytest.fixture(autouse=True)
def inside_a_trial(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The RALPH_* variables of a trial whose files live in tmp_path/cycle."""
    for name in list(os.environ):
        if name.startswith("RALPH_"):
            monkeypatch.delenv(name)
    cycle = tmp_path / "cycle"
    cycle.mkdir()
    monkeypatch.setenv("RALPH_PROGRESS_PATH", str(cycle / "progress.jsonl"))
    monkeypatch.setenv("RALPH_METRICS_PATH", str(cycle / "metrics.json"))
    monkeypatch.setenv("RALPH_CONTROL_PATH", str(cycle / "control.json"))
    monkeypatch.chdir(tmp_path)
    return cycle


def progress(cycle: Path) -> list[dict[str, object]]:
    path = cycle / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --------------------------------------------------------------------------- scalars


def test_scalars_keeps_single_numbers_of_any_library_and_drops_the_rest() -> None:
    import torch

    logs = {
        "int": 3,
        "float": 0.5,
        "bool": True,
        "numpy_scalar": np.float32(0.25),
        "numpy_0d": np.array(1.5),
        "numpy_1": np.array([2.5]),
        "torch_0d": torch.tensor(0.75),
        "torch_1": torch.tensor([4.0]),
        "vector": np.arange(3),
        "torch_vector": torch.zeros(2),
        "text": "cosine",
        "none": None,
        "object": object(),
    }
    assert scalars(logs) == {
        "int": 3.0, "float": 0.5, "bool": 1.0, "numpy_scalar": 0.25, "numpy_0d": 1.5, "numpy_1": 2.5,
        "torch_0d": 0.75, "torch_1": 4.0,
    }
    assert scalars(None) == {}


def test_scalars_keeps_nan_and_inf_so_a_diverged_run_shows() -> None:
    out = scalars({"loss": float("nan"), "grad": float("inf")})
    assert math.isnan(out["loss"]) and out["grad"] == math.inf


# --------------------------------------------------------------------------- loops.TrialSteps


def test_trial_steps_numbers_from_start_and_reports_at_the_current_step(inside_a_trial: Path) -> None:
    steps = trial_steps(3, start=0)
    seen = []
    for step in steps:
        seen.append(step)
        assert steps.report(loss=1.0 / (step + 1)) is False
    assert seen == [0, 1, 2] and not steps.stopped_early
    assert [row["step"] for row in progress(inside_a_trial)] == [0, 1, 2]
    assert steps.latest == {"loss": pytest.approx(1 / 3)}


def test_trial_steps_ends_after_the_step_whose_report_saw_the_stop(inside_a_trial: Path) -> None:
    seen = []
    with trial_steps(10) as steps:
        for step in steps:
            seen.append(step)
            if step == 4:
                (inside_a_trial / "control.json").write_text(json.dumps({"action": "stop"}))
            asked = steps.report(acc=step / 10)
            assert asked is (step >= 4)
    assert seen == [1, 2, 3, 4] and steps.stopped_early
    assert json.loads((inside_a_trial / "metrics.json").read_text())["result"] == {"acc": 0.4}


def test_trial_steps_sees_a_stop_written_between_steps_without_a_report(inside_a_trial: Path) -> None:
    steps = trial_steps(5)
    seen = []
    for step in steps:
        seen.append(step)
        if step == 2:
            assert not steps.stop_requested
            (inside_a_trial / "control.json").write_text(json.dumps({"action": "stop"}))
            assert steps.stop_requested  # a loop body running many batches can poll this
    assert seen == [1, 2] and steps.stopped_early
    assert progress(inside_a_trial) == []


def test_trial_steps_does_not_start_when_asked_to_stop_before(inside_a_trial: Path) -> None:
    (inside_a_trial / "control.json").write_text(json.dumps({"action": "stop"}))
    with trial_steps(5) as steps:
        seen = list(steps)
    assert seen == [] and steps.stopped_early
    assert not (inside_a_trial / "metrics.json").exists()  # nothing reported, nothing logged


def test_trial_steps_context_leaves_metrics_alone_when_training_raises(inside_a_trial: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with trial_steps(5) as steps:
            for step in steps:
                steps.report(loss=1.0)
                if step == 2:
                    raise RuntimeError("boom")
    assert not (inside_a_trial / "metrics.json").exists()
    assert len(progress(inside_a_trial)) == 2


def test_trial_steps_log_metrics_merges_extra_values(inside_a_trial: Path) -> None:
    steps = TrialSteps(2)
    for _ in steps:
        steps.report(loss=0.5, acc=0.8)
    steps.log_metrics(acc=0.9, val_accuracy=0.85)
    result = json.loads((inside_a_trial / "metrics.json").read_text())["result"]
    assert result == {"loss": 0.5, "acc": 0.9, "val_accuracy": 0.85}


def test_trial_steps_rejects_misuse_with_a_trial_error() -> None:
    with pytest.raises(trial.TrialError, match="cannot be negative"):
        trial_steps(-1)
    with pytest.raises(trial.TrialError, match="before the first step"):
        trial_steps(3).report(loss=1.0)


def test_trial_steps_outside_the_loop_writes_only_the_final_metrics(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("RALPH_PROGRESS_PATH", "RALPH_METRICS_PATH", "RALPH_CONTROL_PATH"):
        monkeypatch.delenv(name)
    with trial_steps(3) as steps:
        for _ in steps:
            steps.report(loss=0.1)
    assert json.loads((tmp_path / "metrics.json").read_text())["result"] == {"loss": 0.1}
    assert not (tmp_path / "cycle" / "progress.jsonl").exists()


def test_loops_surface_is_pinned() -> None:
    assert sorted(loops.__all__) == ["TrialSteps", "trial_steps"]


# --------------------------------------------------------------------------- imports


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_adapters_package_and_loops_import_no_framework() -> None:
    proc = python(
        "import sys, ralph_ml.adapters, ralph_ml.adapters.loops; "
        "print(sorted(m for m in ('torch', 'numpy', 'lightning', 'pytorch_lightning', 'keras', 'transformers', 'jax') "
        "if m in sys.modules))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("keras", ["keras"], "keras"),
        ("hf", ["transformers"], "hf"),
        ("lightning", ["lightning", "pytorch_lightning"], "lightning"),
    ],
)
def test_a_missing_framework_names_the_extra_to_install(module: str, blocked: list[str], extra: str) -> None:
    # None in sys.modules makes `import name` fail as if the package were not installed.
    block = "; ".join(f"sys.modules[{name!r}] = None" for name in blocked)
    proc = python(f"import sys; {block}; import ralph_ml.adapters.{module}")
    assert proc.returncode != 0
    assert f"pip install 'ralph-ml[{extra}]'" in proc.stderr
