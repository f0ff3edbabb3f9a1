"""The live view's cycles panel: a trial stopped early (pruned, cancelled) is not drawn as a failure."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ralph_ml.live import CycleRow, RunView, render_view


def _row(cycle: int, metric: float | None, verdict: str, status: str) -> CycleRow:
    return CycleRow(cycle=cycle, metric=metric, verdict=verdict, kept=verdict == "kept", status=status,
                    diagnosis="", duration_s=1.0)


def test_pruned_and_failed_cycles_are_told_apart(tmp_path: Path) -> None:
    view = RunView(state_dir=tmp_path, runs_dir=tmp_path, project="p", target_name="val_accuracy",
                   target_value=0.99, maximize=True, max_cycles=10, started=True, cycle=4)
    for row in (_row(1, 0.6, "kept", "ok"), _row(2, None, "failed", "failed"), _row(3, None, "pruned", "pruned"),
                _row(4, 0.7, "kept", "ok"), _row(5, 0.71, "noise", "ok")):
        view.rows[row.cycle] = row
    console = Console(record=True, width=100, height=40, color_system="truecolor")
    console.print(render_view(view, 100, 40, now=0.0))
    text = console.export_text()
    assert "▽ pruned" in text and "✗ pruned" not in text and "✗ failed" in text
    assert "≈ noise" in text and "✗ noise" not in text  # a gain that did not hold on re-run is no failure
    assert "× failed" in text and "▽ pruned" in text.split("× failed")[1].splitlines()[0]  # the legend
    bars = next(line for line in text.splitlines() if "×" in line and "failed" not in line)
    assert bars.index("×") < bars.index("▽")  # cycle 2 failed, cycle 3 pruned, on the chart's bottom row


def test_the_view_says_why_a_cycle_is_re_run_with_other_seeds(tmp_path: Path) -> None:
    view = RunView(state_dir=tmp_path, runs_dir=tmp_path, project="p", target_name="val_accuracy",
                   target_value=0.99, maximize=True, max_cycles=10)
    view.apply({"kind": "repeats", "cycle": 1, "first": 0.62, "n": 2, "reason": "noise", "best": None,
                "best_cycle": None, "waiting_for": None})
    assert view.note == "measuring the run-to-run noise: cycle 1 with 2 more seed(s)"
    view.apply({"kind": "repeats", "cycle": 11, "first": 0.961, "n": 1, "reason": "confirm", "best": 0.9445,
                "best_cycle": 12, "waiting_for": None})
    assert view.note == "confirming cycle 11 (0.9610 beats the best 0.9445) with 1 more seed(s)"
    view.apply({"kind": "repeats", "cycle": 13, "first": 0.95, "n": 1, "reason": "confirm", "best": 0.9445,
                "best_cycle": 12, "waiting_for": 11})
    assert view.note == "cycle 13 beats the best too: judged once cycle 11's re-runs are recorded"
    console = Console(record=True, width=120, height=40, color_system="truecolor")
    console.print(render_view(view, 120, 40, now=0.0))
    assert "judged once cycle 11's re-runs are recorded" in console.export_text()
