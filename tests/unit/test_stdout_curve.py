"""Learning curves read from what a training script prints (execution.stdout_progress)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ralph_ml.config import ConfigError, load_config
from ralph_ml.stdout_curve import StdoutCurve


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in path.read_text().splitlines()]


def _curve(tmp_path: Path, key: str = "epoch", before: str = "") -> tuple[StdoutCurve, Path, Path]:
    log, progress = tmp_path / "stdout.log", tmp_path / "progress.jsonl"
    log.write_text(before)
    return StdoutCurve(log, progress, key), log, progress


def _print(log: Path, text: str) -> None:
    with open(log, "a") as fh:
        fh.write(text)


def test_the_common_printed_forms_become_one_row_per_point(tmp_path: Path) -> None:
    curve, log, progress = _curve(tmp_path)
    _print(log, "loading data\nloss=5\n"  # before the first step: not a point
           "epoch 1 train_loss=0.41 val_accuracy=0.83\n"
           "Epoch 2/10\n45/45 - 0s - 2ms/step - accuracy: 0.91 - loss: 0.30 - val_accuracy: 0.88 - val_loss: 0.41\n"
           "{'loss': 0.3, 'epoch': 2.5}\n"  # a logging step inside an epoch: skipped
           "{'eval_loss': 0.52, 'eval_accuracy': 0.8, 'epoch': 3.0}\n"
           "\x1b[32mepoch=4\x1b[0m acc: nan step=7 time=3\n"  # colours ignored; step/time are the row's own
           " 10%|#   |\r100%|####| epoch: 5, val_accuracy=0.9\n")
    assert curve.pump() == 5
    assert _rows(progress) == [
        {"train_loss": 0.41, "val_accuracy": 0.83, "step": 1},
        {"accuracy": 0.91, "loss": 0.30, "val_accuracy": 0.88, "val_loss": 0.41, "step": 2},
        {"eval_loss": 0.52, "eval_accuracy": 0.8, "step": 3},
        {"acc": "nan", "step": 4},
        {"val_accuracy": 0.9, "step": 5},
    ]


def test_name_value_parts_between_separators_are_pairs_and_prose_is_not(tmp_path: Path) -> None:
    curve, log, progress = _curve(tmp_path)
    _print(log, "epoch   1/30 | train_loss 1.3671 | train_accuracy 0.6750 | val_accuracy 0.8833\n"
                "Epoch 2, loss 0.52, acc 0.91; lr 1e-3\n"
                "epoch 3 loaded 5000 samples in 2 s\n"  # prose: no part is just a name and a number
                "epoch 4 - val_loss 0.25 - 12ms/step\n")
    curve.pump()
    assert _rows(progress) == [
        {"train_loss": 1.3671, "train_accuracy": 0.675, "val_accuracy": 0.8833, "step": 1},
        {"loss": 0.52, "acc": 0.91, "lr": 0.001, "step": 2},
        {"val_loss": 0.25, "step": 4},
    ]


def test_a_summary_after_a_one_line_curve_is_not_a_point(tmp_path: Path) -> None:
    curve, log, progress = _curve(tmp_path)
    _print(log, "epoch 0 val_accuracy=0.5\nepoch 1 val_accuracy=0.7\nbest val_accuracy: 0.7\nval_accuracy: 0.7\n")
    curve.pump()
    assert [r["step"] for r in _rows(progress)] == [0, 1]


def test_a_line_is_read_once_it_ends_and_the_last_one_when_the_command_has_ended(tmp_path: Path) -> None:
    curve, log, progress = _curve(tmp_path)
    _print(log, "epoch 0 val_accuracy=0.5\nepoch 1 val_acc")
    assert curve.pump() == 1
    _print(log, "uracy=0.75\nepoch 2 val_accuracy=0.8")
    assert curve.pump() == 1 and _rows(progress)[-1] == {"val_accuracy": 0.75, "step": 1}
    assert curve.pump(final=True) == 1 and _rows(progress)[-1] == {"val_accuracy": 0.8, "step": 2}
    assert curve.pump(final=True) == 0


def test_an_earlier_attempts_lines_are_not_this_trials_curve(tmp_path: Path) -> None:
    curve, log, progress = _curve(tmp_path, key="step", before="step 0 loss=9\nstep 1 loss=8\n")
    _print(log, "step 0 loss=1.5\n")
    curve.pump()
    assert _rows(progress) == [{"loss": 1.5, "step": 0}]


def test_rows_follow_a_line_a_killed_attempt_cut_off(tmp_path: Path) -> None:
    curve, log, progress = _curve(tmp_path)
    progress.write_text('{"step": 3, "val_accura')
    _print(log, "epoch 0 val_accuracy=0.5\n")
    curve.pump()
    assert progress.read_text().splitlines()[1:] == [progress.read_text().splitlines()[-1]]
    assert json.loads(progress.read_text().splitlines()[-1])["val_accuracy"] == 0.5


def test_the_step_key_must_be_a_name(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('val_accuracy: 1')\n")
    (tmp_path / "ralph.toml").write_text(
        '[project]\nname = "x"\ntarget_metric = { name = "val_accuracy", value = 0.9 }\n'
        '[execution]\nstdout_progress = "epoch 1"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "ralph.toml")
    assert "stdout_progress" in str(err.value)
