from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ralph_ml.config import Config
from ralph_ml.pruning import ProgressReader, TrialPruner, forecast
from ralph_ml.records import CycleRecord, Proposal, TrialResult, TrialStatus


def cfg(**pruning: object) -> Config:
    return Config.model_validate({"project": {"target_metric": {"name": "acc", "value": 2.0}}, "pruning": pruning})


def write_curve(runs: Path, cycle: int, values: list[float]) -> CycleRecord:
    d = runs / f"cycle_{cycle:04d}"
    d.mkdir(parents=True)
    (d / "progress.jsonl").write_text("".join(json.dumps({"step": i, "acc": v}) + "\n" for i, v in enumerate(values)))
    return CycleRecord(cycle=cycle, proposal=Proposal(), result=TrialResult(status=TrialStatus.OK, metrics={"acc": values[-1]}),
                       metric=values[-1], kept=True, verdict="kept")


def saturating(top: float, n: int = 10) -> list[float]:
    return [top * (1 - math.exp(-(i + 1) / 3)) for i in range(n)]


def test_forecast_brackets_a_saturating_curve_from_above() -> None:
    ys = saturating(0.9, 10)
    pred, half = forecast(dict(enumerate(ys[:5])), 9)  # type: ignore[misc]
    assert pred + half >= ys[9]  # optimistic end covers the true final value: conservative


def test_forecast_needs_three_points() -> None:
    assert forecast({0: 0.1, 1: 0.2}, 9) is None


def test_median_pruner_stops_a_trial_below_the_median(tmp_path: Path) -> None:
    history = [write_curve(tmp_path, c, saturating(0.9)) for c in (1, 2, 3)]
    p = TrialPruner(cfg(pruner="median", n_startup_trials=2, n_warmup_steps=2), history, tmp_path)
    s = p.start({})
    bad = saturating(0.3)
    assert not p.update(s, [{"step": 0, "acc": bad[0]}, {"step": 1, "acc": bad[1]}]).prune  # warm-up
    v = p.update(s, [{"step": 2, "acc": bad[2]}])
    assert v.prune and v.step == 2 and "median" in v.reason
    p.finish(s, True, None)
    s = p.start({})
    good = saturating(0.95)
    assert not any(p.update(s, [{"step": i, "acc": good[i]}]).prune for i in range(10))


def test_forecast_pruner_only_stops_when_it_cannot_win(tmp_path: Path) -> None:
    history = [write_curve(tmp_path, 1, saturating(0.9))]
    c = cfg(pruner="forecast", n_warmup_steps=3, max_steps_param="epochs")
    p = TrialPruner(c, history, tmp_path)
    s = p.start({"epochs": 10})
    hopeless = saturating(0.4)
    verdicts = [p.update(s, [{"step": i, "acc": hopeless[i]}]) for i in range(6)]
    assert any(v.prune for v in verdicts) and "forecast" in next(v for v in verdicts if v.prune).reason
    reason = next(v for v in verdicts if v.prune).reason  # 4 significant digits where they tell the values apart
    assert re.fullmatch(r"forecast: acc at step 9 ≈ \d\.\d{1,4} ± [\d.e-]+; even \d\.\d{1,4} cannot beat the best \d\.\d{1,4}", reason), reason
    p.finish(s, True, None)
    s = p.start({"epochs": 10})
    close = saturating(0.92)
    assert not any(p.update(s, [{"step": i, "acc": close[i]}]).prune for i in range(6))


def test_forecast_reads_the_last_step_from_the_epochs_param_in_the_trials_numbering(tmp_path: Path) -> None:
    history = [write_curve(tmp_path, 1, saturating(0.9))]
    p = TrialPruner(cfg(pruner="forecast", n_warmup_steps=3, max_steps_param="epochs"), history, tmp_path)
    hopeless = saturating(0.4)
    for first in (0, 1):  # range(epochs) and range(1, epochs + 1): 10 epochs end at step 9 and 10
        s = p.start({"epochs": 10})
        verdict = next(v for v in (p.update(s, [{"step": first + i, "acc": hopeless[i]}]) for i in range(6)) if v.prune)
        assert f"at step {first + 9} " in verdict.reason, verdict.reason
        p.finish(s, True, None)


def test_nan_in_the_curve_prunes_at_once(tmp_path: Path) -> None:
    p = TrialPruner(cfg(pruner="median"), [], tmp_path)
    s = p.start({})
    assert p.update(s, [{"step": 0, "acc": "nan"}]).prune


def test_progress_reader_returns_only_complete_new_rows(tmp_path: Path) -> None:
    f = tmp_path / "progress.jsonl"
    r = ProgressReader(f)
    assert r.new_rows() == []
    f.write_text('{"step": 0, "acc": 0.1}\n{"step": 1, "ac')
    assert r.new_rows() == [{"step": 0, "acc": 0.1}]
    with open(f, "a") as fh:
        fh.write('c": 0.2}\n')
    assert r.new_rows() == [{"step": 1, "acc": 0.2}]
    assert r.new_rows() == []


def rows(values: list[float]) -> list[dict[str, float]]:
    return [{"step": i, "acc": v} for i, v in enumerate(values)]


def test_rows_read_in_one_poll_are_judged_step_by_step(tmp_path: Path) -> None:
    history = [write_curve(tmp_path, c, saturating(0.9)) for c in (1, 2, 3)]
    p = TrialPruner(cfg(pruner="median", n_startup_trials=2, n_warmup_steps=2), history, tmp_path)
    v = p.update(p.start({}), rows(saturating(0.3)))  # ten steps arrive at once
    assert v.prune and v.step == 2  # where a step-by-step pruner stops it, not at the last row


def test_asha_compares_with_the_trials_of_a_resumed_run(tmp_path: Path) -> None:
    # a resumed run rebuilds its pruner from the recorded curves: successive halving must see
    # them at its rungs, or every trial would only compete with itself and always be promoted
    history = [write_curve(tmp_path, c, saturating(top)) for c, top in ((1, 0.9), (2, 0.88), (3, 0.86), (4, 0.92))]
    p = TrialPruner(cfg(pruner="asha", n_warmup_steps=1, reduction_factor=2), history, tmp_path)
    rungs = [t.system_attrs for t in p.study.trials]
    assert all("completed_rung_0" in attrs for attrs in rungs), rungs
    v = p.update(p.start({}), rows(saturating(0.3)))
    assert v.prune and v.step == 1 and "asha" in v.reason
    assert not p.update(p.start({}), rows(saturating(0.95))).prune


def test_the_forecast_must_beat_the_kept_best_not_a_higher_run_that_was_not_kept(tmp_path: Path) -> None:
    kept = write_curve(tmp_path, 1, saturating(0.5))
    lucky = write_curve(tmp_path, 2, saturating(0.9))
    lucky = CycleRecord(cycle=2, proposal=Proposal(), result=lucky.result, metric=lucky.metric, kept=False, verdict="noise")
    p = TrialPruner(cfg(pruner="forecast", n_warmup_steps=3, max_steps=9), [kept, lucky], tmp_path)
    assert p.best_final == kept.metric
    s = p.start({})
    middling = saturating(0.7)  # can beat the kept 0.5, not the lucky 0.9
    assert not any(p.update(s, [{"step": i, "acc": middling[i]}]).prune for i in range(6))
