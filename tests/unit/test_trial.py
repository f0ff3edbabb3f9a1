"""ralph_ml.trial: the helper a training script calls inside (and outside) the loop."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from ralph_ml import trial
from ralph_ml.errors import RalphError

ENV_NAMES = (
    "RALPH_RUN_ID",
    "RALPH_CYCLE",
    "RALPH_RUN_DIR",
    "RALPH_PARAMS",
    "RALPH_SEED",
    "RALPH_METRICS_PATH",
    "RALPH_CHECKPOINT_DIR",
    "RALPH_DATA_DIR",
    "RALPH_PROGRESS_PATH",
    "RALPH_CONTROL_PATH",
)


@pytest.fixture(autouse=True)
def outside_loop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test starts as a standalone script would: no RALPH_* variables, cwd = tmp."""
    for name in list(os.environ):
        if name.startswith("RALPH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: object) -> None:
    path = tmp_path / "params.json"
    path.write_text(json.dumps(values))
    monkeypatch.setenv("RALPH_PARAMS", str(path))


# --------------------------------------------------------------------------- public surface


def test_public_surface_is_pinned() -> None:
    assert sorted(trial.__all__) == [
        "TrialError",
        "any_process",
        "checkpoint_dir",
        "cycle",
        "data_dir",
        "log_metrics",
        "params",
        "rank",
        "report",
        "seed",
        "should_stop",
        "world_size",
    ]
    assert all(callable(getattr(trial, name)) for name in trial.__all__)
    assert issubclass(trial.TrialError, RalphError)


def test_trial_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(trial.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)


def test_importing_trial_pulls_in_no_heavy_dependency() -> None:
    code = (
        "import sys, ralph_ml.trial; "
        "print([m for m in ('torch', 'numpy', 'optuna', 'sklearn') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- params


def test_params_outside_the_loop_returns_a_copy_of_the_defaults() -> None:
    defaults = {"lr": 1e-3, "width": 64}
    got = trial.params(defaults)
    assert got == defaults
    got["lr"] = 1.0
    assert defaults["lr"] == 1e-3
    assert trial.params() == {}


def test_params_overrides_defaults_and_casts_to_their_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_params(
        tmp_path,
        monkeypatch,
        {"lr": 0.01, "width": 128.0, "dropout": 0, "use_bn": "true", "opt": "sgd", "extra": [1, 2]},
    )
    got = trial.params({"lr": 1e-3, "width": 64, "dropout": 0.1, "use_bn": False, "opt": "adam", "epochs": 5})
    assert got == {"lr": 0.01, "width": 128, "dropout": 0.0, "use_bn": True, "opt": "sgd", "epochs": 5, "extra": [1, 2]}
    assert type(got["width"]) is int
    assert type(got["dropout"]) is float


def test_params_without_defaults_passes_json_values_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_params(tmp_path, monkeypatch, {"batch_size": 32, "lr": 0.5})
    got = trial.params()
    assert got == {"batch_size": 32, "lr": 0.5}
    assert type(got["batch_size"]) is int


def test_params_refuses_a_lossy_cast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_params(tmp_path, monkeypatch, {"width": 12.5})
    with pytest.raises(trial.TrialError, match=r"'width' = 12.5 cannot be used as int"):
        trial.params({"width": 64})


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("{not json", "not valid JSON"), ("[1, 2]", "must hold a JSON object")],
)
def test_params_explains_a_broken_params_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, message: str
) -> None:
    path = tmp_path / "params.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("RALPH_PARAMS", str(path))
    with pytest.raises(trial.TrialError, match=message):
        trial.params({"lr": 1e-3})


# --------------------------------------------------------------------------- seed, cycle, folders


def test_seed_cycle_and_folders_outside_the_loop(tmp_path: Path) -> None:
    assert trial.seed() == 0
    assert trial.cycle() is None
    assert trial.checkpoint_dir() == Path("checkpoints")
    assert (tmp_path / "checkpoints").is_dir()
    assert trial.data_dir() == Path("data")


def test_seed_cycle_and_folders_inside_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RALPH_SEED", "1234")
    monkeypatch.setenv("RALPH_CYCLE", "7")
    monkeypatch.setenv("RALPH_CHECKPOINT_DIR", str(tmp_path / "runs" / "cycle_0007" / "checkpoints"))
    monkeypatch.setenv("RALPH_DATA_DIR", str(tmp_path / "shared-data"))
    assert trial.seed() == 1234
    assert trial.cycle() == 7
    assert trial.checkpoint_dir().is_dir()
    assert trial.checkpoint_dir() == tmp_path / "runs" / "cycle_0007" / "checkpoints"
    assert trial.data_dir() == tmp_path / "shared-data"


def test_a_non_integer_seed_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RALPH_SEED", "abc")
    with pytest.raises(trial.TrialError, match=r"\$RALPH_SEED = 'abc'"):
        trial.seed()


# --------------------------------------------------------------------------- report, should_stop


def test_report_appends_one_json_line_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv("RALPH_PROGRESS_PATH", str(progress))
    assert trial.report(1, train_loss=0.5, train_accuracy=0.8) is False
    assert trial.report(2, train_loss=float("nan"), steps=10) is False
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert lines[0]["train_loss"] == 0.5 and lines[0]["train_accuracy"] == 0.8
    assert lines[1]["train_loss"] == "nan" and lines[1]["steps"] == 10
    assert all(abs(line["time"] - lines[0]["time"]) < 60 for line in lines)


def test_a_loss_that_still_has_its_graph_is_reported_without_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv("RALPH_PROGRESS_PATH", str(progress))
    weight = torch.tensor([2.0], requires_grad=True)
    loss = (weight * 3).sum()  # as `steps.report(loss=loss)` right after loss.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on float() of a tensor that requires grad
        trial.report(1, loss=loss)
        trial.log_metrics(loss=loss)
    assert json.loads(progress.read_text())["loss"] == 6.0
    assert json.loads((tmp_path / "metrics.json").read_text())["result"]["loss"] == 6.0


def test_metrics_named_step_or_time_give_way_to_the_rows_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv("RALPH_PROGRESS_PATH", str(progress))
    trial.report(3, step=7, time=-1.0, loss=0.25)  # Lightning's callback_metrics can hold a logged "step"
    (row,) = [json.loads(line) for line in progress.read_text().splitlines()]
    assert row["step"] == 3 and row["time"] > 0 and row["loss"] == 0.25


def test_only_process_0_of_a_distributed_trial_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RALPH_PROGRESS_PATH", str(tmp_path / "progress.jsonl"))
    monkeypatch.setenv("RALPH_METRICS_PATH", str(tmp_path / "metrics.json"))
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it
    assert trial.rank() == 1 and trial.any_process(True) is True  # no process group: the flag itself
    trial.report(1, loss=0.5)
    trial.log_metrics(val_accuracy=0.9)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("RANK", "0")
    trial.report(1, loss=0.5)
    trial.log_metrics(val_accuracy=0.9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "progress.jsonl"]


def test_world_size_comes_from_the_launcher_without_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert trial.world_size() == 1
    monkeypatch.setenv("SLURM_NTASKS", "4")  # srun
    assert trial.world_size() == 4
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's comes first
    assert trial.world_size() == 2
    monkeypatch.setenv("WORLD_SIZE", "0")  # not a size: the next launcher's
    assert trial.world_size() == 4


def test_a_line_cut_off_by_a_killed_attempt_does_not_swallow_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    progress = tmp_path / "progress.jsonl"
    progress.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # killed mid-write, then resumed
    monkeypatch.setenv("RALPH_PROGRESS_PATH", str(progress))
    trial.report(2, loss=0.4)
    lines = progress.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["loss"] == 0.4


def test_report_outside_the_loop_writes_nothing(tmp_path: Path) -> None:
    assert trial.report(1, loss=0.1) is False
    assert list(tmp_path.iterdir()) == []


def test_report_rejects_a_metric_that_is_not_a_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RALPH_PROGRESS_PATH", str(tmp_path / "progress.jsonl"))
    with pytest.raises(trial.TrialError, match="metric 'loss' = 'low' is not a number"):
        trial.report(1, loss="low")  # type: ignore[arg-type]


def test_should_stop_follows_the_control_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    control = tmp_path / "control.json"
    monkeypatch.setenv("RALPH_CONTROL_PATH", str(control))
    monkeypatch.setenv("RALPH_PROGRESS_PATH", str(tmp_path / "progress.jsonl"))
    assert trial.should_stop() is False  # no file yet
    control.write_text("{half")
    assert trial.should_stop() is False  # half-written: not a stop
    control.write_text(json.dumps({"action": "continue"}))
    assert trial.should_stop() is False
    control.write_text(json.dumps({"action": "stop", "reason": "pruned"}))
    assert trial.should_stop() is True
    assert trial.report(3, loss=0.1) is True


def test_should_stop_outside_the_loop_is_false() -> None:
    assert trial.should_stop() is False


# --------------------------------------------------------------------------- log_metrics


def test_log_metrics_merges_and_keeps_other_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = tmp_path / "seed_000" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps({"runtime": {"train_seconds": 3}, "result": {"old": 1.0}}))
    monkeypatch.setenv("RALPH_METRICS_PATH", str(metrics))
    trial.log_metrics(train_loss=0.25)
    trial.log_metrics(val_accuracy=0.97, train_loss=0.2)
    assert json.loads(metrics.read_text()) == {
        "runtime": {"train_seconds": 3},
        "result": {"old": 1.0, "train_loss": 0.2, "val_accuracy": 0.97},
    }
    assert [p.name for p in metrics.parent.iterdir()] == ["metrics.json"]  # no temp file left


def test_log_metrics_writes_non_finite_values_as_valid_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = tmp_path / "metrics.json"
    monkeypatch.setenv("RALPH_METRICS_PATH", str(metrics))
    trial.log_metrics(a=float("nan"), b=float("inf"), c=-math.inf, d=1)
    text = metrics.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["result"] == {"a": "nan", "b": "inf", "c": "-inf", "d": 1}


def test_log_metrics_outside_the_loop_writes_metrics_json_in_cwd(tmp_path: Path) -> None:
    trial.log_metrics(val_accuracy=0.9)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"result": {"val_accuracy": 0.9}}


def test_log_metrics_refuses_to_overwrite_a_foreign_file(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("accuracy=0.9")
    with pytest.raises(trial.TrialError, match="not valid JSON"):
        trial.log_metrics(val_accuracy=0.9)
    assert (tmp_path / "metrics.json").read_text() == "accuracy=0.9"


# --------------------------------------------------------------------------- end to end


def test_env_contract_end_to_end_in_a_real_subprocess(tmp_path: Path) -> None:
    """A script run with the loop's environment gets its params and writes every artifact."""
    run_dir = tmp_path / "runs" / "cycle_0003"
    (run_dir / "seed_000").mkdir(parents=True)
    (run_dir / "params.json").write_text(json.dumps({"lr": 0.05, "epochs": 3.0}))
    (run_dir / "control.json").write_text(json.dumps({"action": "stop"}))
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import json
            from ralph_ml import trial

            cfg = trial.params({"lr": 1e-3, "epochs": 10, "width": 8})
            stopped_at = None
            for epoch in range(1, cfg["epochs"] + 1):
                if trial.report(epoch, loss=1.0 / epoch) and stopped_at is None:
                    stopped_at = epoch
            (trial.checkpoint_dir() / "model.txt").write_text("weights")
            trial.log_metrics(loss=1.0 / cfg["epochs"], seed=trial.seed())
            print(json.dumps({"cfg": cfg, "cycle": trial.cycle(), "stopped_at": stopped_at}))
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALPH_")}
    env.update(
        RALPH_RUN_ID="run-1",
        RALPH_CYCLE="3",
        RALPH_RUN_DIR=str(run_dir),
        RALPH_PARAMS=str(run_dir / "params.json"),
        RALPH_PARAM_LR="0.05",
        RALPH_PARAM_EPOCHS="3",
        RALPH_SEED="42",
        RALPH_METRICS_PATH=str(run_dir / "seed_000" / "metrics.json"),
        RALPH_CHECKPOINT_DIR=str(run_dir / "checkpoints"),
        RALPH_DATA_DIR=str(tmp_path / "data"),
        RALPH_PROGRESS_PATH=str(run_dir / "progress.jsonl"),
        RALPH_CONTROL_PATH=str(run_dir / "control.json"),
    )
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed == {"cfg": {"lr": 0.05, "epochs": 3, "width": 8}, "cycle": 3, "stopped_at": 1}
    assert json.loads((run_dir / "seed_000" / "metrics.json").read_text()) == {"result": {"loss": 1 / 3, "seed": 42}}
    progress = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert [p["step"] for p in progress] == [1, 2, 3]
    assert (run_dir / "checkpoints" / "model.txt").read_text() == "weights"


# --------------------------------------------------------------------------- stop at the target

_CURVE_SCRIPT = """
import json, sys
from ralph_ml import trial

stopped = None
for step, value in enumerate(json.loads(sys.argv[1]), start=1):
    if trial.report(step, val_accuracy=value, val_loss=1.0 - value):
        stopped = step
        break
print(json.dumps({"stopped": stopped, "should_stop": trial.should_stop()}))
"""


def _run_curve(
    tmp_path: Path, curve: list[float], target: str | None, run_dir: Path | None = None
) -> tuple[dict[str, object], list[int], str]:
    """A real trial process reporting ``curve``, with $RALPH_STOP_AT_TARGET = ``target``
    (and $RALPH_RUN_DIR = ``run_dir``)."""
    script = tmp_path / "curve.py"
    script.write_text(_CURVE_SCRIPT)
    progress = tmp_path / "progress.jsonl"
    progress.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALPH_")}
    env.update(RALPH_PROGRESS_PATH=str(progress), RALPH_CONTROL_PATH=str(tmp_path / "control.json"))
    if target is not None:
        env["RALPH_STOP_AT_TARGET"] = target
    if run_dir is not None:
        env["RALPH_RUN_DIR"] = str(run_dir)
    out = subprocess.run([sys.executable, str(script), json.dumps(curve)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 or target is not None, out.stderr
    steps = [json.loads(line)["step"] for line in progress.read_text().splitlines()] if progress.exists() else []
    return (json.loads(out.stdout) if out.returncode == 0 else {"rc": out.returncode}), steps, out.stderr


def test_report_stops_the_trial_at_the_first_step_that_meets_a_maximized_target(tmp_path: Path) -> None:
    target = json.dumps({"name": "val_accuracy", "value": 0.9, "direction": "maximize"})
    printed, steps, stderr = _run_curve(tmp_path, [0.5, 0.89, 0.9, 0.95, 0.97], target)
    assert printed == {"stopped": 3, "should_stop": True}
    assert steps == [1, 2, 3]  # the step that met it is recorded, nothing after it
    assert "val_accuracy = 0.9 at step 3 meets the target (val_accuracy >= 0.9)" in stderr
    assert "pruning.stop_at_target = false" in stderr


def test_report_leaves_stopped_json_in_the_run_dir_and_still_stops_when_it_cannot(tmp_path: Path) -> None:
    target = json.dumps({"name": "val_accuracy", "value": 0.9, "direction": "maximize"})
    printed, _, _ = _run_curve(tmp_path, [0.5, 0.89, 0.9, 0.95], target, run_dir=tmp_path / "cycle")
    doc = json.loads((tmp_path / "cycle" / "stopped.json").read_text())
    assert printed["stopped"] == 3
    assert {k: doc[k] for k in ("by", "step", "metric", "value", "target", "direction")} == {
        "by": "target", "step": 3, "metric": "val_accuracy", "value": 0.9, "target": 0.9, "direction": "maximize"}
    (tmp_path / "a-file").write_text("")
    printed, _, stderr = _run_curve(tmp_path, [0.5, 0.89, 0.9, 0.95], target, run_dir=tmp_path / "a-file" / "cycle")
    assert printed == {"stopped": 3, "should_stop": True}  # the stop does not depend on its record
    assert "could not write" in stderr and "stopped.json" in stderr


def test_report_stops_at_a_minimized_target_and_ignores_non_finite_values(tmp_path: Path) -> None:
    target = json.dumps({"name": "val_loss", "value": 0.2, "direction": "minimize"})
    # val_loss = 1 - value: 0.5, 0.25, 0.2 (meets <= 0.2 at step 3)
    printed, steps, _ = _run_curve(tmp_path, [0.5, 0.75, 0.8, 0.9], target)
    assert printed == {"stopped": 3, "should_stop": True} and steps == [1, 2, 3]
    nan_target = json.dumps({"name": "val_accuracy", "value": 0.5, "direction": "maximize"})
    printed, steps, _ = _run_curve(tmp_path, [float("nan"), float("inf"), 0.4], nan_target)  # never finite and met
    assert printed == {"stopped": None, "should_stop": False} and steps == [1, 2, 3]


def test_report_trains_to_the_end_without_the_target_or_when_it_is_never_met(tmp_path: Path) -> None:
    printed, steps, stderr = _run_curve(tmp_path, [0.5, 0.95, 0.99], None)
    assert printed == {"stopped": None, "should_stop": False} and steps == [1, 2, 3] and stderr == ""
    other = json.dumps({"name": "test_accuracy", "value": 0.1, "direction": "maximize"})  # never reported
    printed, steps, _ = _run_curve(tmp_path, [0.5, 0.95, 0.99], other)
    assert printed == {"stopped": None, "should_stop": False} and steps == [1, 2, 3]
    high = json.dumps({"name": "val_accuracy", "value": 0.999, "direction": "maximize"})
    printed, steps, _ = _run_curve(tmp_path, [0.5, 0.95, 0.99], high)
    assert printed == {"stopped": None, "should_stop": False} and steps == [1, 2, 3]


def test_a_malformed_stop_at_target_is_an_error_that_names_it(tmp_path: Path) -> None:
    printed, _, stderr = _run_curve(tmp_path, [0.5], '{"name": "val_accuracy"}')
    assert printed == {"rc": 1}
    assert "$RALPH_STOP_AT_TARGET = '{\"name\": \"val_accuracy\"}' is not a target" in stderr
    assert "unset it to train to the end" in stderr
    misspelt = json.dumps({"name": "val_accuracy", "value": 0.9, "direction": "maximise"})  # never read as minimize
    printed, _, stderr = _run_curve(tmp_path, [0.5], misspelt)
    assert printed == {"rc": 1} and "is not a target" in stderr
