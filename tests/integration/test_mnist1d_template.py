"""The `mnist1d` init template runs as a real trial: train.py, then prepare.py evaluate."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ralph_ml

TEMPLATE = Path(ralph_ml.__path__[0]) / "templates" / "mnist1d"
ARCHS = ["logreg", "mlp", "cnn", "gru"]


def trial_env(cycle_dir: Path, data_dir: Path, params: dict[str, object]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALPH_")}
    env.update(
        RALPH_RUN_ID="test-run",
        RALPH_CYCLE="1",
        RALPH_RUN_DIR=str(cycle_dir),
        RALPH_PARAMS=str(cycle_dir / "params.json"),
        RALPH_SEED="0",
        RALPH_METRICS_PATH=str(cycle_dir / "metrics.json"),
        RALPH_CHECKPOINT_DIR=str(cycle_dir / "checkpoints"),
        RALPH_DATA_DIR=str(data_dir),
        RALPH_PROGRESS_PATH=str(cycle_dir / "progress.jsonl"),
        RALPH_CONTROL_PATH=str(cycle_dir / "control.json"),
    )
    env.update({f"RALPH_PARAM_{name.upper()}": str(value) for name, value in params.items()})
    return env


def run(cmd: list[str], code: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *cmd], cwd=code, env=env, capture_output=True, text=True, timeout=120)


def load_prepare() -> types.ModuleType:
    # exec the source rather than import it: no __pycache__ appears in the packaged template
    prepare = types.ModuleType("mnist1d_prepare")
    exec(compile((TEMPLATE / "prepare.py").read_text(), str(TEMPLATE / "prepare.py"), "exec"), prepare.__dict__)
    return prepare


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the module, as the loop shares RALPH_DATA_DIR across cycles."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, Path]:
    """(code dir, cycle dir): the template copied as `init` does, and an empty cycle folder."""
    code = tmp_path / "exp"
    shutil.copytree(TEMPLATE, code, ignore=shutil.ignore_patterns("__pycache__"))
    cycle_dir = tmp_path / "runs" / "cycle_0001"
    cycle_dir.mkdir(parents=True)
    return code, cycle_dir


def train(code: Path, cycle_dir: Path, data_dir: Path, params: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (cycle_dir / "params.json").write_text(json.dumps(params))
    proc = run(["train.py"], code, trial_env(cycle_dir, data_dir, params))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def progress(cycle_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (cycle_dir / "progress.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- the files


def test_template_has_the_files_init_copies() -> None:
    names = {p.name for p in TEMPLATE.iterdir() if p.name != "__pycache__"}
    assert names == {"prepare.py", "train.py", "program.md", "ralph.toml"}


def test_init_copies_the_template_and_validate_accepts_it(tmp_path: Path) -> None:
    from conftest import ralph

    proc = ralph(tmp_path, "init", "exp", "--template", "mnist1d")
    assert proc.returncode == 0, proc.stderr
    for name in ("ralph.toml", "prepare.py", "train.py", "program.md"):
        assert (tmp_path / "exp" / name).read_bytes() == (TEMPLATE / name).read_bytes()
    check = ralph(tmp_path / "exp", "validate")
    assert check.returncode == 0, check.stdout + check.stderr


def test_template_config_is_valid_and_its_defaults_match_train_py() -> None:
    from ralph_ml.config import load_config

    cfg = load_config(TEMPLATE / "ralph.toml")
    assert cfg.target.name == "val_accuracy"
    assert cfg.files.frozen == ["prepare.py"]
    assert cfg.search_space["arch"].choices == ARCHS
    tree = ast.parse((TEMPLATE / "train.py").read_text())
    (defaults,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEFAULTS" for t in node.targets)
    ]
    # Cycle 1 runs the search space's defaults; standalone `python train.py` runs DEFAULTS.
    assert {name: p.default for name, p in cfg.search_space.items()} == defaults
    assert defaults["arch"] == "mlp"  # the baseline is a family that cannot reach the target


def test_evaluate_scores_logits_and_probabilities_alike() -> None:
    prepare = load_prepare()
    labels = np.array([0, 1, 2, 1])
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 4.0]])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    from_logits, from_probs = prepare.score(logits, labels), prepare.score(probs, labels)
    assert from_logits["val_accuracy"] == from_probs["val_accuracy"] == 0.5
    assert from_logits["val_loss"] == pytest.approx(from_probs["val_loss"])
    diverged = prepare.score(np.full((4, 3), np.nan), labels)
    assert np.isnan(diverged["val_accuracy"]) and np.isnan(diverged["val_loss"])


def test_score_val_scores_against_the_held_out_labels_and_names_a_wrong_shape(data_dir: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RALPH_DATA_DIR", str(data_dir))
    prepare = load_prepare()
    y_val = prepare._load()["y_val"]
    perfect = np.eye(prepare.NUM_CLASSES)[y_val] * 10.0  # logits that put every signal in its class
    assert prepare.score_val(perfect)["val_accuracy"] == 1.0
    assert prepare.score_val(np.roll(perfect, 1, axis=1))["val_accuracy"] == 0.0
    with pytest.raises(ValueError, match=r"has shape \(10, 10\).*expected a numeric array of shape \(1000, 10\)"):
        prepare.score_val(np.zeros((10, 10)))


# --------------------------------------------------------------------------- the data


@pytest.mark.slow
def test_data_is_generated_deterministically_and_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    prepare = load_prepare()
    np.random.seed(123)
    rng_before = np.random.get_state()[1].copy()
    monkeypatch.setenv("RALPH_DATA_DIR", str(tmp_path / "a"))
    first = prepare._load()
    assert np.array_equal(np.random.get_state()[1], rng_before)  # train.py's seeding is left alone
    cache = tmp_path / "a" / "mnist1d" / prepare.CACHE_FILE
    assert cache.is_file()
    assert first["x_train"].shape == (4000, 40) and first["x_val"].shape == (1000, 40)
    assert first["x_train"].dtype == np.float32 and first["y_train"].dtype == np.int64
    assert np.bincount(first["y_val"], minlength=10).min() >= 80  # all ten digits, roughly balanced
    assert prepare._labels_hash(first["y_val"]) == prepare.VAL_LABELS_SHA256  # the published split

    monkeypatch.setenv("RALPH_DATA_DIR", str(tmp_path / "b"))
    second = prepare._load()  # generated again, elsewhere: the same arrays
    for name in first:
        assert np.array_equal(first[name], second[name]), name

    # A valid cache is read, not regenerated: a marker put into it comes back.
    monkeypatch.setenv("RALPH_DATA_DIR", str(tmp_path / "a"))
    marked = dict(first, x_train=first["x_train"] + 1.0)
    np.savez(cache, **marked)
    assert np.array_equal(prepare._load()["x_train"], marked["x_train"])


@pytest.mark.slow
def test_a_tampered_cache_cannot_change_the_validation_labels(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    prepare = load_prepare()
    monkeypatch.setenv("RALPH_DATA_DIR", str(data_dir))
    true = prepare._load()
    cache = data_dir / "mnist1d" / prepare.CACHE_FILE
    # What a training script could try: relabel the held-out split to match its predictions.
    np.savez(cache, **dict(true, y_val=np.zeros_like(true["y_val"])))
    assert np.array_equal(prepare._load()["y_val"], true["y_val"])
    with np.load(cache) as npz:  # and the cache is repaired
        assert np.array_equal(npz["y_val"], true["y_val"])


# --------------------------------------------------------------------------- the trial


@pytest.mark.slow
def test_train_then_evaluate_writes_metrics_and_progress(workspace: tuple[Path, Path], data_dir: Path) -> None:
    code, cycle_dir = workspace
    params = {"arch": "cnn", "epochs": 4, "width": 32, "lr": 3e-2}
    train_proc = train(code, cycle_dir, data_dir, params)
    assert "train_loss: " in train_proc.stdout

    evaluate = run(["prepare.py", "evaluate"], code, trial_env(cycle_dir, data_dir, params))
    assert evaluate.returncode == 0, evaluate.stderr
    assert "val_accuracy: " in evaluate.stdout

    result = json.loads((cycle_dir / "metrics.json").read_text())["result"]
    assert result["val_accuracy"] >= 0.5  # 4 epochs of a small CNN: well above the MLP's ~0.6 ceiling nearby
    assert result["val_loss"] > 0
    assert result["train_loss"] > 0 and 0.0 <= result["train_accuracy"] <= 1.0
    assert result["epochs_run"] == 4 and 0 < result["train_seconds"] < 30 and 0 < result["train_cpu_seconds"] < 30
    rows = progress(cycle_dir)
    assert [p["step"] for p in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["lr"] < rows[0]["lr"]  # the cosine schedule decays
    # The validation curve comes from prepare.score_val; its last point is the cycle's result.
    assert all(0.0 <= p["val_accuracy"] <= 1.0 and p["val_loss"] > 0 for p in rows)
    assert rows[-1]["val_accuracy"] == pytest.approx(result["val_accuracy"])
    assert rows[-1]["val_loss"] == pytest.approx(result["val_loss"], rel=1e-5)
    assert {p.name for p in (cycle_dir / "checkpoints").iterdir()} == {"val_scores.npy", "model.pt"}
    assert (data_dir / "mnist1d").is_dir()  # the data went to RALPH_DATA_DIR ...
    assert not (code / "metrics.json").exists() and not (code / "data").exists()  # ... nothing into the code


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["logreg", "mlp", "gru"])
def test_every_architecture_family_trains(arch: str, workspace: tuple[Path, Path], data_dir: Path) -> None:
    code, cycle_dir = workspace
    train(code, cycle_dir, data_dir, {"arch": arch, "epochs": 1, "width": 16, "batch_size": 256})
    scores = np.load(cycle_dir / "checkpoints" / "val_scores.npy")
    assert scores.shape == (1000, 10) and np.isfinite(scores).all()
    assert len(progress(cycle_dir)) == 1


@pytest.mark.slow
def test_training_stops_when_the_loop_asks(workspace: tuple[Path, Path], data_dir: Path) -> None:
    code, cycle_dir = workspace
    (cycle_dir / "control.json").write_text(json.dumps({"action": "stop"}))
    train(code, cycle_dir, data_dir, {"arch": "mlp", "epochs": 50, "width": 16})
    assert len(progress(cycle_dir)) == 1
    assert (cycle_dir / "checkpoints" / "val_scores.npy").is_file()  # a stopped trial still leaves its outputs


@pytest.mark.slow
def test_the_cpu_budget_ends_a_slow_configuration_with_its_outputs(workspace: tuple[Path, Path], data_dir: Path) -> None:
    code, cycle_dir = workspace
    source = (code / "train.py").read_text()
    assert "CPU_BUDGET_S = 30" in source
    (code / "train.py").write_text(source.replace("CPU_BUDGET_S = 30", "CPU_BUDGET_S = 0.5"))  # as an agent may
    proc = train(code, cycle_dir, data_dir, {"arch": "gru", "epochs": 60, "width": 64, "batch_size": 32})
    assert "CPU budget of 0.5 s used up" in proc.stdout
    result = json.loads((cycle_dir / "metrics.json").read_text())["result"]
    assert result["epochs_run"] < 60
    assert 0.5 <= result["train_cpu_seconds"] < 5
    assert progress(cycle_dir)[-1]["lr"] < 0.01 * 3e-3  # the schedule was squeezed to its end, not cut
    assert (cycle_dir / "checkpoints" / "val_scores.npy").is_file()


@pytest.mark.slow
def test_time_spent_waiting_does_not_use_the_cpu_budget(workspace: tuple[Path, Path], data_dir: Path) -> None:
    """The budget counts the trial's CPU time: a machine busy with other work (here: a trial
    that sleeps between steps) makes it slower, not shorter."""
    code, cycle_dir = workspace
    source = (code / "train.py").read_text()
    slowed = source.replace("CPU_BUDGET_S = 30", "CPU_BUDGET_S = 1").replace(
        "        optimizer.step()\n", "        optimizer.step()\n        time.sleep(0.05)\n")
    assert slowed.count("time.sleep(0.05)") == 1
    (code / "train.py").write_text(slowed)
    proc = train(code, cycle_dir, data_dir, {"arch": "cnn", "epochs": 2, "width": 16, "batch_size": 256})
    result = json.loads((cycle_dir / "metrics.json").read_text())["result"]
    assert result["train_seconds"] > 1.5  # 32 steps of 50 ms asleep: past the budget by the wall clock ...
    assert "budget" not in proc.stdout and result["epochs_run"] == 2  # ... yet every epoch ran
    assert result["train_cpu_seconds"] < 1


@pytest.mark.slow
def test_a_configuration_within_the_budget_trains_the_same_model_however_slow_its_first_step(
        workspace: tuple[Path, Path], data_dir: Path) -> None:
    """Only a configuration projected to overrun the CPU budget looks at the clock, so a slow
    first step (a cold interpreter's first optimizer step imports torch._dynamo, about a CPU-
    second) or a slow machine cannot change the learning-rate schedule of any other one."""
    code, cycle_dir = workspace
    params = {"arch": "cnn", "epochs": 3, "width": 16, "batch_size": 256}
    train(code, cycle_dir, data_dir, params)
    source = (code / "train.py").read_text()
    burn = ("        optimizer.step()\n        if step == 0:  # one CPU-second more in the first step\n"
            "            burn_from = time.process_time()\n            while time.process_time() - burn_from < 1.0:\n"
            "                pass\n")
    assert source.count("        optimizer.step()\n") == 1
    (code / "train.py").write_text(source.replace("        optimizer.step()\n", burn))
    slow_dir = cycle_dir.parent / "cycle_0002"
    slow_dir.mkdir()
    train(code, slow_dir, data_dir, params)
    first = json.loads((slow_dir / "metrics.json").read_text())["result"]
    assert first["train_cpu_seconds"] >= 1.0  # the burn did happen
    assert [r["lr"] for r in progress(slow_dir)] == [r["lr"] for r in progress(cycle_dir)]
    assert np.array_equal(np.load(slow_dir / "checkpoints" / "val_scores.npy"),
                          np.load(cycle_dir / "checkpoints" / "val_scores.npy"))


@pytest.mark.slow
def test_evaluate_without_predictions_fails_with_a_clear_message(workspace: tuple[Path, Path], data_dir: Path) -> None:
    code, cycle_dir = workspace
    evaluate = run(["prepare.py", "evaluate"], code, trial_env(cycle_dir, data_dir, {}))
    assert evaluate.returncode != 0
    assert "no predictions at" in evaluate.stderr and "val_scores.npy" in evaluate.stderr
    assert not (cycle_dir / "metrics.json").exists()


@pytest.mark.slow
def test_evaluate_rejects_predictions_of_the_wrong_shape(workspace: tuple[Path, Path], data_dir: Path) -> None:
    code, cycle_dir = workspace
    (cycle_dir / "checkpoints").mkdir()
    np.save(cycle_dir / "checkpoints" / "val_scores.npy", np.zeros((360, 10), dtype=np.float32))
    evaluate = run(["prepare.py", "evaluate"], code, trial_env(cycle_dir, data_dir, {}))
    assert evaluate.returncode != 0
    assert "has shape (360, 10)" in evaluate.stderr and "(1000, 10)" in evaluate.stderr
