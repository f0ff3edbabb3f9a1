"""The report's reading of a run: comparisons with the best so far, lessons per kind of change,
and a 100-cycle report built within the time the loop can spend at the end of a run."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import make_experiment

from ralph_ml.config import Config, load_config
from ralph_ml.journal import Journal
from ralph_ml.records import Analysis, CycleRecord, FailureClass, Proposal, TrialResult, TrialStatus
from ralph_ml.report import Change, build_report, cycle_views, lessons

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True, "default": 0.01},
    "opt": {"type": "categorical", "choices": ["sgd", "adam"], "default": "sgd"},
}


def _cfg(tmp_path: Path, **kw: object) -> Config:
    root = make_experiment(tmp_path / "exp", "print('val_accuracy: 1')\n", target=0.95, space=SPACE, **kw)  # type: ignore[arg-type]
    return load_config(root / "ralph.toml")


def rec(cycle: int, params: dict[str, object], metric: float | None, verdict: str, *,
        status: TrialStatus = TrialStatus.OK, failure: FailureClass = FailureClass.NONE, tokens: int = 0,
        t0: float = 1000.0, patch: str | None = None) -> CycleRecord:
    start = t0 + cycle * 10
    return CycleRecord(
        cycle=cycle,
        proposal=Proposal(params=params, patch=patch, rationale=f"try {cycle}", agent="test", tokens_used=tokens, cost_usd=tokens * 1e-6),
        result=TrialResult(status=status, failure=failure, metrics={} if metric is None else {"val_accuracy": metric},
                           started_at=start, ended_at=start + 2.5, message="boom" if metric is None else ""),
        metric=metric,
        kept=verdict == "kept",
        verdict=verdict,
        analysis=Analysis(diagnosis="improving", summary=""),
    )


RUN = [
    rec(1, {"lr": 0.01, "opt": "sgd"}, 0.50, "kept"),
    rec(2, {"lr": 0.003, "opt": "sgd"}, 0.60, "kept"),
    rec(3, {"lr": 0.001, "opt": "adam"}, 0.55, "discarded"),
    rec(4, {"lr": 0.9, "opt": "sgd"}, None, "failed", status=TrialStatus.FAILED, failure=FailureClass.CRASH),
    rec(5, {"lr": 0.002, "opt": "sgd"}, None, "pruned", status=TrialStatus.PRUNED),
    rec(6, {"lr": 0.003, "opt": "adam"}, 0.70, "kept", patch="--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-A = 1\n+A = 2\n"),
]


def test_each_cycle_is_compared_with_the_best_so_far_when_it_ran(tmp_path: Path) -> None:
    views = cycle_views(RUN, _cfg(tmp_path), tmp_path / "no-runs")
    v = {x.cycle: x for x in views}
    assert v[1].baseline is None and v[1].changes == () and v[1].outcome == "baseline"  # the defaults
    assert v[2].changes == (Change("lr", 0.01, 0.003),) and v[2].delta == pytest.approx(0.1) and v[2].outcome == "helped"
    assert v[3].baseline is RUN[1] and v[3].delta == pytest.approx(-0.05) and v[3].outcome == "hurt"
    assert {c.name for c in v[3].changes} == {"lr", "opt"}
    assert v[4].category == "failed" and v[4].outcome == "failed (crash)" and v[4].delta is None
    assert v[5].category == "pruned"
    assert v[6].patch is not None and "+A = 2" in v[6].patch and v[6].changes == (Change("opt", "sgd", "adam"),)
    assert [x.best_after for x in views] == [0.5, 0.6, 0.6, 0.6, 0.6, 0.7]


def test_with_cycles_in_flight_each_is_compared_with_the_version_it_was_built_on(tmp_path: Path) -> None:
    # Cycles 2 and 3 both start from cycle 1 (K = 2); 3 ends first and is kept, then 2 is
    # recorded: it was built on cycle 1, not on cycle 3, which did not exist when it started.
    base, first, late = (rec(1, {"lr": 0.01, "opt": "sgd"}, 0.50, "kept"),
                         rec(3, {"lr": 0.01, "opt": "adam"}, 0.60, "kept"),
                         rec(2, {"lr": 0.003, "opt": "sgd"}, 0.55, "discarded"))
    records = [base, replace(first, parent=1), replace(late, parent=1)]
    v = {x.cycle: x for x in cycle_views(records, _cfg(tmp_path), tmp_path / "no-runs")}
    assert v[2].baseline is records[0] and v[2].changes == (Change("lr", 0.01, 0.003),)
    assert v[2].delta == pytest.approx(0.05)  # better than its base, not than the best by the time it was recorded
    assert v[2].outcome == "superseded (beat its base, not the best when recorded)"
    rows = {(r["param"], r["change"]): r for r in lessons(list(v.values()))}
    assert rows[("lr", "decrease")]["helped"] == 1 and rows[("lr", "decrease")]["hurt"] == 0  # its change helped
    # Minimizing, the same numbers are a loss to its base: hurt, not superseded.
    v = {x.cycle: x for x in cycle_views(records, _cfg(tmp_path / "min", metric="val_loss"), tmp_path / "no-runs")}
    assert v[2].outcome == "hurt"
    assert v[3].baseline is records[0] and v[3].changes == (Change("opt", "sgd", "adam"),)
    # A fix of a failed version (a base with no score) is compared with the best so far.
    failed = replace(rec(4, {"lr": 0.9, "opt": "sgd"}, None, "failed", status=TrialStatus.FAILED,
                         failure=FailureClass.CRASH), parent=3)
    fix = replace(rec(5, {"lr": 0.9, "opt": "sgd"}, 0.58, "discarded"), parent=4)
    v = {x.cycle: x for x in cycle_views([*records, failed, fix], _cfg(tmp_path), tmp_path / "no-runs")}
    assert v[5].baseline is records[1] and v[5].delta == pytest.approx(-0.02)


def test_the_report_of_parallel_cycles_lists_them_in_order_and_does_not_split_the_time(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, execution={"max_concurrency": 2})
    j = Journal(cfg.path(cfg.paths.state) / "journal.jsonl")
    j.append({"type": "run_started", "ts": 1000.0, "run_id": "r-1", "target": {}})
    for r in (rec(1, {"lr": 0.01, "opt": "sgd"}, 0.5, "kept"), replace(rec(3, {"lr": 0.02, "opt": "sgd"}, 0.6, "kept"), parent=1),
              replace(rec(2, {"lr": 0.005, "opt": "sgd"}, 0.55, "discarded"), parent=1)):
        j.append({"type": "cycle_recorded", "ts": 1001.0, "cycle": r.cycle, "record": r.to_dict(),
                  "decision": {"action": "continue"}, "elapsed_s": 4.0})
    j.close()
    files = build_report(cfg, charts_enabled=False)
    md = files.markdown.read_text()
    worked = md.split("## What worked, what hurt")[1].split("By kind of change")[0]
    assert [line.split("|")[1].strip() for line in worked.splitlines() if line.startswith("| ") and line[2].isdigit()] == ["2", "3"]
    assert "| 2 | lr 0.01 → 0.005 | 0.55 | +0.05 | superseded (beat its base, not the best when recorded) |" in worked
    assert '<span class="superseded">superseded' in files.html.read_text()
    table = md.split("## Cycles")[1].split("## ")[0]  # recorded 1, 3, 2: listed by cycle number
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()] == ["1", "2", "3"]
    assert "(trials 7.5 s in all, up to 2 at once)" in md and "loop and agent" not in md  # 3 x 2.5 s in 4 s


def test_params_json_is_what_the_trial_ran_with(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / "cycle_0002").mkdir(parents=True)
    (runs / "cycle_0002" / "params.json").write_text(json.dumps({"lr": 0.004, "opt": "sgd", "extra": 3}))
    v = cycle_views(RUN[:2], _cfg(tmp_path), runs)[1]
    assert v.params == {"lr": 0.004, "opt": "sgd", "extra": 3}
    assert set(v.changes) == {Change("lr", 0.01, 0.004), Change("extra", None, 3)}


def test_lessons_count_what_each_kind_of_change_did(tmp_path: Path) -> None:
    rows = {(r["param"], r["change"]): r for r in lessons(cycle_views(RUN, _cfg(tmp_path), tmp_path))}
    down = rows[("lr", "decrease")]  # cycles 2 (helped), 3 (hurt), 5 (pruned: stopped early, not failed)
    assert (down["tried"], down["helped"], down["hurt"], down["failed"], down["pruned"]) == (3, 1, 1, 0, 1)
    assert down["mean_delta"] == pytest.approx((0.1 - 0.05) / 2)
    up = rows[("lr", "increase")]  # cycle 4 crashed
    assert (up["helped"], up["hurt"], up["failed"], up["pruned"]) == (0, 0, 1, 0) and up["mean_delta"] is None
    assert rows[("opt", "= adam")]["helped"] == 1 and rows[("opt", "= adam")]["hurt"] == 1


def test_gains_that_did_not_hold_and_cancelled_trials_are_neither_hurt_nor_failed(tmp_path: Path) -> None:
    # Noise-aware keeps: cycle 2 beat the best on its first run, and its mean over seeds did not
    # clear the noise; cycle 3 was cancelled as the run stopped.
    records = [rec(1, {"lr": 0.01, "opt": "sgd"}, 0.50, "kept"),
               replace(rec(2, {"lr": 0.02, "opt": "sgd"}, 0.52, "noise"), parent=1),
               replace(rec(3, {"lr": 0.03, "opt": "sgd"}, None, "cancelled", status=TrialStatus.CANCELLED,
                           failure=FailureClass.CANCELLED), parent=1)]
    v = {x.cycle: x for x in cycle_views(records, _cfg(tmp_path), tmp_path / "no-runs")}
    assert v[2].outcome == "noise (the gain did not clear the noise on re-run)" and not v[2].superseded
    assert v[3].outcome == "cancelled" and v[3].category == "pruned"
    assert [v[c].outcome_kind for c in (1, 2, 3)] == ["kept", "muted", "pruned"]  # the HTML table's styles
    up = {(r["param"], r["change"]): r for r in lessons(list(v.values()))}[("lr", "increase")]
    assert (up["tried"], up["helped"], up["hurt"], up["failed"], up["pruned"], up["noise"]) == (2, 0, 0, 0, 1, 1)
    assert records[2].result.status_text() == "cancelled"  # not "cancelled (cancelled)"


def _synthetic_run(cfg: Config, n: int, steps: int) -> None:
    """A journal, events and cycle folders as the loop writes them, for n cycles."""
    state, runs = cfg.path(cfg.paths.state), cfg.path(cfg.paths.runs)
    j = Journal(state / "journal.jsonl")
    j.append({"type": "run_started", "ts": 1000.0, "run_id": "r-1", "target": {}})
    events = [{"ts": 1000.0, "run_id": "r-1", "kind": "run_started", "resumed": False}]
    best = -math.inf
    for c in range(1, n + 1):
        lr = 10 ** (-4 + 4 * ((c * 0.618) % 1.0))
        acc = 0.9 - (math.log10(lr) + 2.5) ** 2 / 10
        failed = c % 9 == 0
        verdict = "failed" if failed else ("kept" if acc > best else "discarded")
        best = max(best, acc) if not failed else best
        r = rec(c, {"lr": lr, "opt": "adam" if c % 2 else "sgd"}, None if failed else acc, verdict,
                status=TrialStatus.FAILED if failed else TrialStatus.OK, failure=FailureClass.CRASH if failed else FailureClass.NONE,
                tokens=100)
        cdir = runs / f"cycle_{c:04d}"
        cdir.mkdir(parents=True)
        (cdir / "params.json").write_text(json.dumps(r.proposal.params))
        (cdir / "progress.jsonl").write_text("".join(
            json.dumps({"step": s, "time": 1000.0 + s, "val_accuracy": acc * s / steps, "loss": 1 / s}) + "\n" for s in range(1, steps + 1)))
        j.append({"type": "cycle_recorded", "ts": 1000.0 + c, "cycle": c, "record": r.to_dict(),
                  "decision": {"action": "continue"}, "elapsed_s": 10.0 * c})
        t = r.result.started_at
        for i, phase in enumerate(("propose", "materialize", "execute", "analyze", "decide")):
            events.append({"ts": t + i * 0.5, "run_id": "r-1", "kind": "phase", "cycle": c, "phase": phase})
        events.append({"ts": t + 1.0, "run_id": "r-1", "kind": "trial_started", "cycle": c})
        events.append({"ts": t + 1.4, "run_id": "r-1", "kind": "trial_ended", "cycle": c, "status": r.result.status.value})
        events.append({"ts": t + 2.5, "run_id": "r-1", "kind": "cycle_recorded", "cycle": c, "verdict": verdict})
    j.append({"type": "run_stopped", "ts": 2000.0, "exit_code": 2, "elapsed_s": 10.0 * n,
              "decision": {"action": "stop", "reason": "max_cycles", "message": f"reached safeguards.max_cycles = {n}",
                           "evidence": {"cycles": n}}})
    j.close()
    (state / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def test_a_100_cycle_report_is_complete(tmp_path: Path) -> None:
    # Its cost is measured by bench/report_cost.py, never timed here (a shared machine is noisy).
    cfg = _cfg(tmp_path)
    _synthetic_run(cfg, 100, 50)
    files = build_report(cfg)
    assert files.notes == []
    assert files.progress_png is not None and files.progress_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = files.html.read_text()
    assert html.count("data:image/png;base64,") == 4  # progress, learning curves, params, time
    md = files.markdown.read_text()
    assert "**max_cycles** (exit 2)" in md and "![val_accuracy per cycle](progress.png)" in md
    assert md.count("\n| ") >= 100 + 100  # every cycle in the table, every compared cycle in what worked/hurt
    assert "- agent usage: 10000 tokens, $0.0100" in md


def test_token_and_cost_totals_include_the_analysis_agent(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    j = Journal(cfg.path(cfg.paths.state) / "journal.jsonl")
    j.append({"type": "run_started", "ts": 1000.0, "run_id": "r-1", "target": {}})
    r = rec(1, {"lr": 0.01, "opt": "sgd"}, 0.5, "kept", tokens=5)
    r = CycleRecord(**{**r.__dict__, "analysis": Analysis(diagnosis="baseline", summary="", tokens_used=7, cost_usd=0.5)})
    j.append({"type": "cycle_recorded", "ts": 1001.0, "cycle": 1, "record": r.to_dict(), "decision": {"action": "continue"}})
    j.close()
    files = build_report(cfg, charts_enabled=False)
    assert "12 tokens" in files.markdown.read_text()  # 5 for the proposal + 7 for the analysis


def test_a_perturbation_of_a_cycle_in_flight_is_compared_with_that_cycle(tmp_path: Path) -> None:
    # Cycle 3 perturbed cycle 2 while it trained (the built-in agent's leader rule) and was
    # recorded first: its change and its delta are against cycle 2, not the best (cycle 1).
    lead = replace(rec(3, {"lr": 0.04, "opt": "adam"}, 0.75, "kept"),
                   proposal=Proposal(params={"lr": 0.04, "opt": "adam"}, meta={"source": "leader", "from_cycle": 2}))
    records = [rec(1, {"lr": 0.01, "opt": "sgd"}, 0.5, "kept"), lead, rec(2, {"lr": 0.05, "opt": "adam"}, 0.7, "discarded")]
    v = {x.cycle: x for x in cycle_views(records, _cfg(tmp_path), tmp_path / "no-runs")}
    assert v[3].baseline is records[2] and v[3].changes == (Change("lr", 0.05, 0.04),)
    assert v[3].delta == pytest.approx(0.05)
    assert v[2].baseline is records[1] and v[2].delta == pytest.approx(-0.05)  # cycle 2 against the best then: cycle 3
