"""Pruning really stops running trials early: cooperatively, or by termination after the grace."""

from __future__ import annotations

import json

from conftest import ralph, recorded

CURVE = """
import math, os, time
from ralph_ml import trial
p = trial.params({"x": 0.5})
top = 1 - (p["x"] - 0.7) ** 2          # final quality depends on x
ignore = os.environ.get("IGNORE_STOP") == "1"
acc = 0.0
for step in range(20):
    acc = top * (1 - math.exp(-(step + 1) / 3))
    stop = trial.report(step, val_accuracy=acc)
    if stop and not ignore:
        break
    time.sleep(0.06)
trial.log_metrics(val_accuracy=acc, steps_done=step + 1)
"""

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.7}}


def test_median_pruner_stops_doomed_trials_which_keep_partial_metrics(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(CURVE, target=1.5, space=SPACE, safeguards={"max_cycles": 6, "no_improvement_stop_cycles": 10},
               extra={"pruning": {"pruner": "median", "n_startup_trials": 1, "n_warmup_steps": 3}})
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    recs = recorded(root)
    assert recs[0]["result"]["status"] == "ok"  # the baseline x = 0.7 is the best possible curve
    pruned = [r for r in recs if r["result"]["status"] == "pruned"]
    assert pruned, [(r["proposal"]["params"], r["result"]["status"]) for r in recs]
    for r in pruned:
        assert r["verdict"] == "pruned" and not r["kept"] and r["metric"] is None
        assert 0 < r["result"]["metrics"]["steps_done"] < 20  # stopped early, partial metrics kept
        m = json.loads((root / "runs" / f"cycle_{r['cycle']:04d}" / "metrics.json").read_text())
        assert m["status"] == "pruned" and "val_accuracy" in m["result"]
        assert "pruned at step" in r["result"]["message"]
    # pruned cycles are not failures: no circuit breaker
    stop = [json.loads(line) for line in (root / "state" / "journal.jsonl").read_text().splitlines()][-1]
    assert stop["decision"]["reason"] == "max_cycles"


def test_a_trial_that_ignores_the_stop_request_is_terminated_after_the_grace(exp) -> None:  # type: ignore[no-untyped-def]
    # two choices: cycle 1 runs the best curve (x = 0.7), cycle 2 the hopeless one (x = 0.0)
    root = exp(CURVE, target=1.5, space={"x": {"type": "categorical", "choices": [0.7, 0.0], "default": 0.7}},
               safeguards={"max_cycles": 2}, execution={"env": {"IGNORE_STOP": "1"}},
               extra={"pruning": {"pruner": "forecast", "max_steps": 19, "n_warmup_steps": 3, "grace_s": 0.3}})
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    first, second = recorded(root)
    assert first["result"]["status"] == "ok"  # nothing to compare with yet: never pruned
    assert second["proposal"]["params"] == {"x": 0.0}
    assert second["result"]["status"] == "pruned", second["result"]
    assert "forecast" in second["result"]["message"]
    rows = (root / "runs" / "cycle_0002" / "progress.jsonl").read_text().splitlines()
    assert len(rows) < 20  # it ignored the request and was terminated before the end


def test_validate_warns_when_the_pruner_is_fed_a_training_metric(exp) -> None:  # type: ignore[no-untyped-def]
    on_train = exp(CURVE, space=SPACE, extra={"pruning": {"pruner": "median", "metric": "train_loss", "direction": "minimize"}})
    out = ralph(on_train, "validate")
    assert out.returncode == 0, out.stdout + out.stderr  # a warning, not an error
    text = " ".join((out.stdout + out.stderr).split())
    assert "pruning.metric = 'train_loss' is a training metric" in text and "prune on it" in text
    on_val = exp(CURVE, space=SPACE, extra={"pruning": {"pruner": "median"}})  # the target metric, val_accuracy
    assert "is a training metric" not in ralph(on_val, "validate").stdout
