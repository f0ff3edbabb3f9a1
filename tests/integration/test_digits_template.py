"""The `digits` init template runs as a real trial: train.py, then prepare.py evaluate."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the digits template trains with PyTorch: pip install 'ralph-ml[templates]'")
pytest.importorskip("sklearn", reason="the digits template loads scikit-learn's digits: pip install 'ralph-ml[templates]'")

import ralph_ml  # noqa: E402

TEMPLATE = Path(ralph_ml.__path__[0]) / "templates" / "digits"
EPOCHS = 3  # short run: this test checks the contract, not the accuracy


def trial_env(cycle_dir: Path, tmp_path: Path, params: dict[str, object]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALPH_")}
    env.update(
        RALPH_RUN_ID="test-run",
        RALPH_CYCLE="1",
        RALPH_RUN_DIR=str(cycle_dir),
        RALPH_PARAMS=str(cycle_dir / "params.json"),
        RALPH_SEED="0",
        RALPH_METRICS_PATH=str(cycle_dir / "seed_000" / "metrics.json"),
        RALPH_CHECKPOINT_DIR=str(cycle_dir / "checkpoints"),
        RALPH_DATA_DIR=str(tmp_path / "data"),
        RALPH_PROGRESS_PATH=str(cycle_dir / "progress.jsonl"),
        RALPH_CONTROL_PATH=str(cycle_dir / "control.json"),
    )
    env.update({f"RALPH_PARAM_{name.upper()}": str(value) for name, value in params.items()})
    return env


def run(cmd: list[str], code: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *cmd], cwd=code, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, Path]:
    """(code dir, cycle dir): the template copied as `init` does, and an empty cycle folder."""
    code = tmp_path / "exp"
    shutil.copytree(TEMPLATE, code, ignore=shutil.ignore_patterns("__pycache__"))
    cycle_dir = tmp_path / "runs" / "cycle_0001"
    (cycle_dir / "seed_000").mkdir(parents=True)
    return code, cycle_dir


def test_template_has_the_files_init_copies() -> None:
    names = {p.name for p in TEMPLATE.iterdir() if p.name != "__pycache__"}
    assert names == {"prepare.py", "train.py", "program.md", "ralph.toml"}


def test_template_config_is_valid_and_its_defaults_match_train_py() -> None:
    from ralph_ml.config import load_config

    cfg = load_config(TEMPLATE / "ralph.toml")
    assert cfg.target.name == "val_accuracy"
    assert cfg.files.frozen == ["prepare.py"]
    tree = ast.parse((TEMPLATE / "train.py").read_text())
    (defaults,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEFAULTS" for t in node.targets)
    ]
    # Cycle 1 runs the search space's defaults; standalone `python train.py` runs DEFAULTS.
    assert {name: p.default for name, p in cfg.search_space.items()} == defaults


def test_evaluate_scores_logits_and_probabilities_alike() -> None:
    import numpy as np

    # exec the source rather than import it: no __pycache__ appears in the packaged template
    prepare = types.ModuleType("digits_prepare")
    exec(compile((TEMPLATE / "prepare.py").read_text(), str(TEMPLATE / "prepare.py"), "exec"), prepare.__dict__)
    labels = np.array([0, 1, 2, 1])
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 4.0]])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    from_logits, from_probs = prepare.score(logits, labels), prepare.score(probs, labels)
    assert from_logits["val_accuracy"] == from_probs["val_accuracy"] == 0.5
    assert from_logits["val_loss"] == pytest.approx(from_probs["val_loss"])
    diverged = prepare.score(np.full((4, 3), np.nan), labels)
    assert np.isnan(diverged["val_accuracy"]) and np.isnan(diverged["val_loss"])


def test_score_val_scores_against_the_held_out_labels_and_names_a_wrong_shape() -> None:
    import numpy as np

    prepare = types.ModuleType("digits_prepare")
    exec(compile((TEMPLATE / "prepare.py").read_text(), str(TEMPLATE / "prepare.py"), "exec"), prepare.__dict__)
    _, _, _, y_val = prepare._split()
    perfect = np.eye(prepare.NUM_CLASSES)[y_val] * 10.0  # logits that put every image in its class
    assert prepare.score_val(perfect)["val_accuracy"] == 1.0
    assert prepare.score_val(np.roll(perfect, 1, axis=1))["val_accuracy"] == 0.0
    with pytest.raises(ValueError, match=r"has shape \(10, 10\).*expected a numeric array of shape \(360, 10\)"):
        prepare.score_val(np.zeros((10, 10)))


@pytest.mark.slow
def test_train_then_evaluate_writes_metrics_and_progress(workspace: tuple[Path, Path], tmp_path: Path) -> None:
    code, cycle_dir = workspace
    params = {"epochs": EPOCHS, "width": 32, "batch_size": 64}
    (cycle_dir / "params.json").write_text(json.dumps(params))
    env = trial_env(cycle_dir, tmp_path, params)

    train = run(["train.py"], code, env)
    assert train.returncode == 0, train.stderr
    assert "train_loss: " in train.stdout

    evaluate = run(["prepare.py", "evaluate"], code, env)
    assert evaluate.returncode == 0, evaluate.stderr
    assert "val_accuracy: " in evaluate.stdout

    result = json.loads((cycle_dir / "seed_000" / "metrics.json").read_text())["result"]
    assert 0.0 <= result["val_accuracy"] <= 1.0
    assert result["val_loss"] > 0
    assert result["train_loss"] > 0 and 0.0 <= result["train_accuracy"] <= 1.0
    progress = [json.loads(line) for line in (cycle_dir / "progress.jsonl").read_text().splitlines()]
    assert [p["step"] for p in progress] == list(range(1, EPOCHS + 1))
    assert all("train_loss" in p and "train_accuracy" in p for p in progress)
    # The validation curve comes from prepare.score_val; its last point is the cycle's result.
    assert all(0.0 <= p["val_accuracy"] <= 1.0 and p["val_loss"] > 0 for p in progress)
    assert progress[-1]["val_accuracy"] == pytest.approx(result["val_accuracy"])
    assert progress[-1]["val_loss"] == pytest.approx(result["val_loss"], rel=1e-5)
    assert {p.name for p in (cycle_dir / "checkpoints").iterdir()} == {"val_scores.npy", "model.pt"}
    assert not (code / "metrics.json").exists()  # nothing written outside the cycle folder


@pytest.mark.slow
def test_training_stops_when_the_loop_asks(workspace: tuple[Path, Path], tmp_path: Path) -> None:
    code, cycle_dir = workspace
    params = {"epochs": 50, "width": 16}
    (cycle_dir / "params.json").write_text(json.dumps(params))
    (cycle_dir / "control.json").write_text(json.dumps({"action": "stop"}))
    env = trial_env(cycle_dir, tmp_path, params)

    train = run(["train.py"], code, env)
    assert train.returncode == 0, train.stderr
    assert len((cycle_dir / "progress.jsonl").read_text().splitlines()) == 1
    assert (cycle_dir / "checkpoints" / "val_scores.npy").is_file()  # a stopped trial still leaves its outputs


@pytest.mark.slow
def test_evaluate_without_predictions_fails_with_a_clear_message(workspace: tuple[Path, Path], tmp_path: Path) -> None:
    code, cycle_dir = workspace
    env = trial_env(cycle_dir, tmp_path, {})

    evaluate = run(["prepare.py", "evaluate"], code, env)
    assert evaluate.returncode != 0
    assert "no predictions at" in evaluate.stderr and "val_scores.npy" in evaluate.stderr
    assert not (cycle_dir / "seed_000" / "metrics.json").exists()


@pytest.mark.slow
def test_evaluate_rejects_predictions_of_the_wrong_shape(workspace: tuple[Path, Path], tmp_path: Path) -> None:
    import numpy as np

    code, cycle_dir = workspace
    (cycle_dir / "checkpoints").mkdir()
    np.save(cycle_dir / "checkpoints" / "val_scores.npy", np.zeros((10, 10), dtype=np.float32))
    env = trial_env(cycle_dir, tmp_path, {})

    evaluate = run(["prepare.py", "evaluate"], code, env)
    assert evaluate.returncode != 0
    assert "has shape (10, 10)" in evaluate.stderr and "expected" in evaluate.stderr
