"""Metric collection: metrics.json (seed-000 shape or flat) first, stdout lines as fallback."""

from __future__ import annotations

import json
import math
import re
import tracemalloc
from pathlib import Path

import pytest

from ralph_ml.metrics import (
    DEFAULT_METRICS_PATTERN,
    collect_metrics,
    parse_metrics_json,
    read_metrics,
    to_float,
)


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "metrics.json", tmp_path / "stdout.log"


def test_seed000_shape_reads_result_floats_only(paths: tuple[Path, Path]) -> None:
    metrics_path, stdout = paths
    metrics_path.write_text(
        json.dumps(
            {
                "cycle": 1,
                "target": {"name": "test_accuracy", "value": 0.92},
                "result": {"test_accuracy": 0.784, "val_accuracy": 0.792, "epochs": 3, "note": "fine"},
                "runtime": {"train_seconds": 812, "eval_seconds": 44},
            }
        )
    )
    stdout.write_text("val_accuracy: 0.1\n")  # ignored: metrics.json wins
    reading = read_metrics(metrics_path, stdout)
    assert reading.metrics == {"test_accuracy": 0.784, "val_accuracy": 0.792, "epochs": 3.0}
    assert reading.source == "metrics.json"
    assert reading.note == ""


def test_flat_dict_of_numbers(paths: tuple[Path, Path]) -> None:
    metrics_path, stdout = paths
    metrics_path.write_text(json.dumps({"val_loss": 0.25, "ok": True, "name": "x", "lr": "1e-3"}))
    assert collect_metrics(metrics_path, stdout, DEFAULT_METRICS_PATTERN) == {"val_loss": 0.25, "lr": 0.001}


def test_non_finite_values_are_kept(paths: tuple[Path, Path]) -> None:
    metrics_path, stdout = paths
    # json.dumps writes the NaN/Infinity literals that Python's json reads back.
    metrics_path.write_text(
        json.dumps({"result": {"a": float("nan"), "b": "nan", "c": "inf", "d": float("-inf"), "e": "NaN"}})
    )
    got = collect_metrics(metrics_path, stdout, DEFAULT_METRICS_PATTERN)
    assert math.isnan(got["a"]) and math.isnan(got["b"]) and math.isnan(got["e"])
    assert got["c"] == math.inf and got["d"] == -math.inf


def test_malformed_json_falls_back_to_stdout_with_a_note(paths: tuple[Path, Path]) -> None:
    metrics_path, stdout = paths
    metrics_path.write_text('{"result": {"val_accuracy": 0.9')  # cut mid-write
    stdout.write_text("val_accuracy: 0.5\n")
    reading = read_metrics(metrics_path, stdout)
    assert reading.metrics == {"val_accuracy": 0.5}
    assert reading.source == "stdout"
    assert "malformed" in reading.note and str(metrics_path) in reading.note


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "\xff\xfe garbage"])
def test_non_object_json_never_raises(paths: tuple[Path, Path], content: str) -> None:
    metrics_path, stdout = paths
    metrics_path.write_bytes(content.encode("latin-1"))
    reading = read_metrics(metrics_path, stdout)
    assert reading.metrics == {}
    assert reading.note


def test_json_without_numbers_falls_back_to_stdout(paths: tuple[Path, Path]) -> None:
    metrics_path, stdout = paths
    metrics_path.write_text(json.dumps({"result": {}}))
    stdout.write_text("val_accuracy=0.7\n")
    reading = read_metrics(metrics_path, stdout)
    assert reading.metrics == {"val_accuracy": 0.7}
    assert "no numeric metrics" in reading.note


def test_stdout_fallback_last_value_wins_and_ignores_other_lines(paths: tuple[Path, Path]) -> None:
    metrics_path, stdout = paths
    stdout.write_text(
        "epoch 1 starting\n"
        "val_accuracy: 0.5\n"
        "  train/loss = 1.5e-1  \n"
        "val_accuracy: 0.75\n"
        "not a metric: hello\n"
        "val_loss: nan\n"
        "lr: -inf\r\n"
    )
    got = collect_metrics(metrics_path, stdout, DEFAULT_METRICS_PATTERN)
    assert got["val_accuracy"] == 0.75
    assert got["train/loss"] == 0.15
    assert math.isnan(got["val_loss"]) and got["lr"] == -math.inf
    assert "not a metric" not in got


def test_custom_pattern(paths: tuple[Path, Path]) -> None:
    metrics_path, stdout = paths
    stdout.write_text("METRIC acc 0.8\nacc: 0.1\nMETRIC loss 2\n")
    got = collect_metrics(metrics_path, stdout, r"^METRIC (\w+) (\S+)$")
    assert got == {"acc": 0.8, "loss": 2.0}


def test_nothing_reported_gives_empty_dict(paths: tuple[Path, Path]) -> None:
    metrics_path, stdout = paths
    reading = read_metrics(metrics_path, stdout)  # neither file exists
    assert reading.metrics == {} and reading.source == "none" and reading.note == ""
    assert collect_metrics(None, stdout, DEFAULT_METRICS_PATTERN) == {}


def test_stdout_is_streamed_not_loaded(tmp_path: Path) -> None:
    stdout = tmp_path / "stdout.log"
    line = "x" * 99 + "\n"
    with open(stdout, "w") as fh:
        for _ in range(20):
            fh.write(line * 10_000)  # 20 x 1 MB
        fh.write("val_accuracy: 0.9\n")
    tracemalloc.start()
    try:
        got = collect_metrics(tmp_path / "metrics.json", stdout, DEFAULT_METRICS_PATTERN)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == {"val_accuracy": 0.9}
    assert peak < 2_000_000  # bytes; reading the 20 MB file whole would need > 20 MB


def test_to_float() -> None:
    assert to_float(True) is None and to_float(None) is None and to_float("abc") is None
    assert to_float(3) == 3.0 and to_float(" 0.5 ") == 0.5
    assert math.isnan(to_float("NaN") or 0.0)


def test_parse_metrics_json_rejects_non_objects() -> None:
    with pytest.raises(ValueError):
        parse_metrics_json([1.0])


def test_default_pattern_has_name_and_value_groups() -> None:
    assert re.compile(DEFAULT_METRICS_PATTERN).groups == 2
