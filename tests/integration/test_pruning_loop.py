"""Pruning really stops running trials early: cooperatively, or by termination after the grace."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
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
        assert r["result"]["stopped_by"] == "pruner"
        assert f"pruned at step {r['result']['stopped_at_step']}:" in r["result"]["message"]
        # The steps it trained before it heard the request are named: they explain a partial metric past the verdict's.
        rows = (root / "runs" / f"cycle_{r['cycle']:04d}" / "progress.jsonl").read_text().splitlines()
        last = json.loads(rows[-1])["step"]
        went_on = f"; it stopped after step {last}"
        assert (went_on in r["result"]["message"]) == (last > r["result"]["stopped_at_step"]), (last, r["result"])
    # pruned cycles are not failures: no circuit breaker
    stop = [json.loads(line) for line in (root / "state" / "journal.jsonl").read_text().splitlines()][-1]
    assert stop["decision"]["reason"] == "max_cycles"
    # The trial's end is announced with the verdict: a pruned trial exits 0, and ends "pruned", not "ok".
    events = [json.loads(line) for line in (root / "state" / "events.jsonl").read_text().splitlines()]
    ended = {e["cycle"]: e["status"] for e in events if e["kind"] == "trial_ended"}
    assert {r["cycle"]: ended[r["cycle"]] for r in pruned} == {r["cycle"]: "pruned" for r in pruned}
    assert "trial pruned in " in proc.stdout and "(none)" not in proc.stdout and "pruned · pruned" not in proc.stdout
    for r in pruned:  # the plain line says where it stopped and what it had reached, not "pruned · pruned"
        step, part = r["result"]["stopped_at_step"], r["result"]["metrics"]["val_accuracy"]
        assert f"   pruned at step {step} · val_accuracy: {part:.4f} when stopped" in proc.stdout
    # The report lists them as stopped early, with the value they reached, and not as failures.
    md = (root / "reports" / "final_report.md").read_text()
    assert "## Failures" not in md
    early = md.split("## Stopped early")[1].split("## ")[0]
    assert [line.split(":")[0] for line in early.strip().splitlines()] == [f"- cycle {r['cycle']}" for r in pruned]
    for r in pruned:
        part = r["result"]["metrics"]["val_accuracy"]
        assert f"| {r['cycle']} | pruned (step {r['result']['stopped_at_step']}) | {part:.6g} (partial) | pruned |" in md
    kinds = md.split("By kind of change")[1].split("\n\n")[1]
    assert kinds.splitlines()[0] == "| param | change | tried | helped | hurt | failed | pruned | mean Δ |"
    assert all(row.split("|")[6].strip() == "0" for row in kinds.splitlines()[2:])  # failed: none


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
    # it wrote no metrics.json: its partial metrics are its last progress row
    assert second["result"]["metrics"] == {"val_accuracy": json.loads(rows[-1])["val_accuracy"]}


def test_a_trial_that_listened_is_not_terminated_while_its_evaluation_runs(exp) -> None:  # type: ignore[no-untyped-def]
    slow_eval = "python -c \"import time; time.sleep(1.5); from ralph_ml import trial; trial.log_metrics(evaluated=1)\""
    root = exp(CURVE, target=1.5, space={"x": {"type": "categorical", "choices": [0.7, 0.0], "default": 0.7}},
               safeguards={"max_cycles": 2}, execution={"eval_cmd": slow_eval},
               extra={"pruning": {"pruner": "forecast", "max_steps": 19, "n_warmup_steps": 3, "grace_s": 0.3}})
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    second = recorded(root)[1]
    assert second["result"]["status"] == "pruned", second["result"]
    # stopped at the request, then evaluated for longer than the grace: the evaluation's metric is kept
    assert second["result"]["metrics"]["evaluated"] == 1 and second["result"]["metrics"]["steps_done"] < 20



def test_a_trial_stops_at_the_step_its_curve_meets_the_target(exp) -> None:  # type: ignore[no-untyped-def]
    """The baseline's curve 1 - exp(-(step + 1) / 3) first reaches 0.9 at step 6 (0.903): it stops
    there, is evaluated on what it has, and the run ends at the target. 13 steps not trained."""
    root = exp(CURVE, target=0.9, space=SPACE, safeguards={"max_cycles": 3})
    proc = ralph(root, "start")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [rec] = recorded(root)
    assert rec["result"]["status"] == "ok" and rec["result"]["metrics"]["steps_done"] == 7
    assert rec["metric"] == pytest.approx(1 - math.exp(-7 / 3))
    cdir = root / "runs" / "cycle_0001"
    assert [json.loads(line)["step"] for line in (cdir / "progress.jsonl").read_text().splitlines()] == list(range(7))
    stderr = (cdir / "logs" / "stderr.log").read_text()
    assert "val_accuracy = 0.903028 at step 6 meets the target (val_accuracy >= 0.9)" in stderr
    # The record says so, and so do the analysis, the report and `ralph-ml status`.
    assert (rec["result"]["stopped_by"], rec["result"]["stopped_at_step"]) == ("target", 6)
    assert json.loads((cdir / "result.json").read_text())["stopped_at_step"] == 6
    analysis = (cdir / "analysis.md").read_text()
    assert "the trial stopped at step 6, where its reported val_accuracy first met the target" in analysis
    assert "under-trained" not in analysis  # its loss was still falling because it was stopped
    report = (root / "reports" / "final_report.md").read_text()
    assert "| 1 | ok, stopped at the target (step 6) | 0.903028 |" in report
    status = ralph(root, "status", check=True).stdout
    assert "0.903028 at cycle 1 (stopped at step 6, where it met the target)" in status


DISAGREES = """
import math
from ralph_ml import trial
for step in range(20):
    acc = 1 - math.exp(-(step + 1) / 3)
    if trial.report(step, val_accuracy=acc):
        break
trial.log_metrics(val_accuracy=acc - 0.1)  # the evaluation scores lower than the per-step curve
"""


def test_a_trial_stopped_at_its_target_that_the_evaluation_does_not_confirm_is_diagnosed(exp) -> None:  # type: ignore[no-untyped-def]
    """The curve met 0.9 at step 6 but the evaluation scored 0.803: not the target, so the run
    goes on, and the analysis says that the per-step metric and the evaluation disagree."""
    root = exp(DISAGREES, target=0.9, space=SPACE, safeguards={"max_cycles": 1})
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr  # max_cycles, not the target
    [rec] = recorded(root)
    assert (rec["result"]["stopped_by"], rec["result"]["stopped_at_step"]) == ("target", 6)
    assert rec["metric"] == pytest.approx(1 - math.exp(-7 / 3) - 0.1)
    analysis = (root / "runs" / "cycle_0001" / "analysis.md").read_text()
    assert "the evaluation scored 0.803028: the per-step val_accuracy and the evaluation disagree" in analysis
    assert "pruning.stop_at_target = false" in analysis


@pytest.mark.parametrize(
    "extra",
    [{"pruning": {"stop_at_target": False}}, {"noise": {"baseline_repeats": 1}}],
    ids=["switched-off", "noise-aware-keeps"],
)
def test_a_trial_trains_to_its_end_when_stopping_at_the_target_is_off(exp, extra) -> None:  # type: ignore[no-untyped-def]
    """Off by the switch, and with noise-aware keeps: a mean over seeds needs every run of a
    configuration trained alike, so neither the trial nor its repeat stops at its first crossing."""
    root = exp(CURVE, target=0.9, space=SPACE, safeguards={"max_cycles": 3}, extra=extra)
    proc = ralph(root, "start")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [rec] = recorded(root)
    assert rec["result"]["metrics"]["steps_done"] == 20
    final = 1 - math.exp(-20 / 3)
    cdir = root / "runs" / "cycle_0001"
    curves = [cdir / "progress.jsonl", *sorted((cdir / "repeats").glob("*/progress.jsonl"))]
    assert len(curves) == (2 if "noise" in extra else 1)
    for path in curves:
        assert len(path.read_text().splitlines()) == 20, path
    assert rec["metric"] == pytest.approx(final)  # the repeat (another seed) draws the same curve
    assert "meets the target" not in (cdir / "logs" / "stderr.log").read_text()
    assert (rec["result"]["stopped_by"], rec["result"]["stopped_at_step"]) == ("", None)
    assert not (cdir / "stopped.json").exists()


LATE_BLOOMER = """
import os, time
from pathlib import Path
from typing import Any
from ralph_ml import trial
p = trial.params({"x": 0.7})
if p["x"] == 0.7:  # the baseline: a steady curve to 0.75
    for step in range(6):
        trial.report(step, val_accuracy=0.5 + 0.05 * step)
        time.sleep(0.05)
    trial.log_metrics(val_accuracy=0.75)
else:  # low at first, so the median pruner asks it to stop ...
    for step in range(4):
        trial.report(step, val_accuracy=0.1)
    control, deadline = Path(os.environ["RALPH_CONTROL_PATH"]), time.time() + 30
    while not control.exists() and time.time() < deadline:
        time.sleep(0.05)
    # ... but it trains on, and its next report meets the target: it stops there itself
    stopped = trial.report(4, val_accuracy=0.99)
    trial.log_metrics(val_accuracy=0.99, asked_to_stop_first=int(control.exists()), stopped=int(stopped))
"""


def test_a_trial_that_meets_the_target_after_a_prune_request_is_not_recorded_as_pruned(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(LATE_BLOOMER, target=0.95, space={"x": {"type": "categorical", "choices": [0.7, 0.0], "default": 0.7}},
               safeguards={"max_cycles": 2},
               extra={"pruning": {"pruner": "median", "n_startup_trials": 1, "n_warmup_steps": 1, "grace_s": 30}})
    proc = ralph(root, "start")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the target, met at cycle 2
    first, second = recorded(root)
    assert first["result"]["status"] == "ok" and second["proposal"]["params"] == {"x": 0.0}
    assert second["result"]["metrics"]["asked_to_stop_first"] == 1 and second["result"]["metrics"]["stopped"] == 1
    assert second["result"]["status"] == "ok" and second["metric"] == pytest.approx(0.99), second["result"]
    assert (second["result"]["stopped_by"], second["result"]["stopped_at_step"]) == ("target", 4)
    events = [json.loads(line) for line in (root / "state" / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events if e["kind"] in ("prune", "prune_late")] == ["prune", "prune_late"]


FAST_THEN_EVAL = """
import math, time
from ralph_ml import trial
p = trial.params({"x": 0.7})
top = 1 - (p["x"] - 0.7) ** 2
for step in range(20):  # every step reported at once, faster than the loop polls ...
    acc = top * (1 - math.exp(-(step + 1) / 3))
    trial.report(step, val_accuracy=acc)
time.sleep(1.5)  # ... then a long evaluation: the verdict arrives after the last step
trial.log_metrics(val_accuracy=acc)
"""


def test_a_trial_that_finished_its_steps_before_the_verdict_keeps_its_result(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(FAST_THEN_EVAL, target=1.5, space={"x": {"type": "categorical", "choices": [0.7, 0.0], "default": 0.7}},
               safeguards={"max_cycles": 2},
               extra={"pruning": {"pruner": "median", "n_startup_trials": 1, "n_warmup_steps": 3, "grace_s": 10}})
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    first, second = recorded(root)
    assert second["proposal"]["params"] == {"x": 0.0}
    # The pruner did judge it (its curve is below the baseline's) ...
    events = [json.loads(line) for line in (root / "state" / "events.jsonl").read_text().splitlines()]
    assert [e["cycle"] for e in events if e["kind"] == "prune"] == [2]
    assert [e["cycle"] for e in events if e["kind"] == "prune_late"] == [2]
    # ... but the trial had run every step: its complete result is recorded, not thrown away.
    assert second["result"]["status"] == "ok", second["result"]
    assert second["metric"] == pytest.approx(0.51 * (1 - math.exp(-20 / 3)))
    assert second["verdict"] == "discarded" and first["kept"]


def test_validate_warns_when_the_pruner_is_fed_a_training_metric(exp) -> None:  # type: ignore[no-untyped-def]
    on_train = exp(CURVE, space=SPACE, extra={"pruning": {"pruner": "median", "metric": "train_loss", "direction": "minimize"}})
    out = ralph(on_train, "validate")
    assert out.returncode == 0, out.stdout + out.stderr  # a warning, not an error
    text = " ".join((out.stdout + out.stderr).split())
    assert "pruning.metric = 'train_loss' is a training metric" in text and "prune on it" in text
    on_val = exp(CURVE, space=SPACE, extra={"pruning": {"pruner": "median"}})  # the target metric, val_accuracy
    assert "is a training metric" not in ralph(on_val, "validate").stdout



@pytest.mark.slow
def test_the_digits_template_is_pruned_on_its_validation_curve(tmp_path: Path) -> None:
    """The template reports val_accuracy each epoch (prepare.score_val), so `pruner = "median"`
    with no metric prunes a real PyTorch trial on the target metric's curve."""
    pytest.importorskip("torch", reason="the digits template trains with PyTorch: pip install 'ralph-ml[templates]'")
    assert ralph(tmp_path, "init", "exp", "--template", "digits").returncode == 0
    root = tmp_path / "exp"
    cfg = root / "ralph.toml"
    text = cfg.read_text().replace("value = 0.98", "value = 0.999")  # out of reach: both cycles run
    text = text.replace("max_cycles = 12", "max_cycles = 2")
    # Cycle 1 a good learning rate, cycle 2 a hopeless one, both 60 epochs of batch 32 (a few
    # seconds: slow enough for the pruner to catch the second one mid-way).
    space = {"lr": [0.003, 0.00001], "epochs": [60], "batch_size": [32]}  # the first choice is the default
    text = text[: text.index("[search_space.")] + "".join(
        f'[search_space.{name}]\ntype = "categorical"\nchoices = {choices}\ndefault = {choices[0]}\n\n'
        for name, choices in space.items())
    cfg.write_text(text + '[pruning]\npruner = "median"\nn_startup_trials = 1\nn_warmup_steps = 3\ngrace_s = 2\n')
    proc = ralph(root, "start", "--plain", timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    first, second = recorded(root)
    assert first["result"]["status"] == "ok" and first["proposal"]["params"]["lr"] == 0.003
    assert second["proposal"]["params"]["lr"] == 0.00001
    assert second["result"]["status"] == "pruned", second["result"]
    assert "val_accuracy" in second["result"]["message"]
    rows = [json.loads(line) for line in (root / "runs" / "cycle_0002" / "progress.jsonl").read_text().splitlines()]
    assert 3 <= len(rows) < 60  # past the warm-up, short of the 60 epochs
    ahead = [json.loads(line) for line in (root / "runs" / "cycle_0001" / "progress.jsonl").read_text().splitlines()]
    assert rows[-1]["val_accuracy"] < ahead[len(rows) - 1]["val_accuracy"]  # behind the baseline at the same epoch
    # The report's timeline marks the stop request, with its step and reason.
    trace = json.loads((root / "reports" / "timeline.json").read_text())["traceEvents"]
    (mark,) = [e for e in trace if e["name"] == "prune"]
    assert mark["ph"] == "i" and mark["args"]["cycle"] == 2 and "val_accuracy" in mark["args"]["reason"]


PRINTED_CURVE = """
import json, math, os, time
x = json.load(open(os.environ["RALPH_PARAMS"]))["x"]
top = 1 - (x - 0.7) ** 2
for epoch in range(20):
    acc = top * (1 - math.exp(-(epoch + 1) / 3))
    print(f"epoch {epoch} train_loss={1 - acc:.4f} val_accuracy={acc:.4f}", flush=True)
    time.sleep(0.06)
print(f"val_accuracy: {acc:.4f}")
"""


def test_a_script_that_only_prints_its_curve_is_pruned_from_its_stdout(exp) -> None:  # type: ignore[no-untyped-def]
    """No ralph_ml import, no progress.jsonl of its own: with execution.stdout_progress the
    printed `epoch N ... val_accuracy=...` lines are its learning curve, which the pruner reads;
    it cannot hear the stop request, so it is terminated after the grace, its last row its result."""
    root = exp(PRINTED_CURVE, target=1.5, space={"x": {"type": "categorical", "choices": [0.7, 0.0], "default": 0.7}},
               safeguards={"max_cycles": 2}, execution={"stdout_progress": "epoch"},
               extra={"pruning": {"pruner": "forecast", "max_steps": 19, "n_warmup_steps": 3, "grace_s": 0.3}})
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    first, second = recorded(root)
    rows1 = [json.loads(line) for line in (root / "runs" / "cycle_0001" / "progress.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows1] == list(range(20))  # the whole printed curve, one row per line
    assert rows1[-1]["val_accuracy"] == pytest.approx(1 - math.exp(-20 / 3), abs=1e-4)
    assert set(rows1[0]) == {"step", "time", "train_loss", "val_accuracy"}
    assert first["result"]["status"] == "ok" and first["metric"] == rows1[-1]["val_accuracy"]  # the final line
    assert second["result"]["status"] == "pruned", second["result"]
    assert "forecast" in second["result"]["message"]
    rows2 = [json.loads(line) for line in (root / "runs" / "cycle_0002" / "progress.jsonl").read_text().splitlines()]
    assert 3 <= len(rows2) < 20 and [r["step"] for r in rows2] == list(range(len(rows2)))
    assert second["result"]["metrics"]["val_accuracy"] == rows2[-1]["val_accuracy"]  # partial: its last printed row
    # The report draws the printed curves like reported ones.
    assert "<h2>Learning curves of the best cycles</h2>" in (root / "reports" / "report.html").read_text()


def test_validate_says_when_a_pruner_has_no_curve_to_read_and_when_a_curve_is_read_twice(tmp_path: Path) -> None:
    from conftest import make_experiment

    def warnings(name: str, train: str, **kw: Any) -> str:
        out = ralph(make_experiment(tmp_path / name, train, **kw), "validate")
        assert out.returncode == 0, out.stdout + out.stderr  # warnings, not errors
        return " ".join(out.stdout.split())  # as one line: the terminal wraps long warnings

    pruned = {"pruning": {"pruner": "median"}}
    silent = warnings("silent", PRINTED_CURVE, extra=pruned)
    assert "warning: pruning.pruner = 'median', but train.py never calls trial.report or a ralph_ml adapter" in silent
    assert 'set execution.stdout_progress = "epoch"' in silent
    assert "never calls trial.report" not in warnings("reports", CURVE, extra=pruned)
    assert "never calls trial.report" not in warnings("prints", PRINTED_CURVE, extra=pruned, execution={"stdout_progress": "epoch"})
    assert "never calls trial.report" not in warnings("unpruned", PRINTED_CURVE)
    twice = warnings("twice", CURVE, execution={"stdout_progress": "epoch"})
    assert "warning: execution.stdout_progress = 'epoch' is set and train.py also reports its curve" in twice
