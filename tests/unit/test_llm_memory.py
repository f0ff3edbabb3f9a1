"""Agent memory stays bounded however long the run, and keeps what matters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import QUADRATIC, make_experiment

from ralph_ml.agents.briefing import base_values, render
from ralph_ml.agents.memory import experience_log, feedback, history_table
from ralph_ml.agents.prompts import Prompts
from ralph_ml.config import load_config
from ralph_ml.records import CycleRecord, FailureClass, Proposal, TrialResult, TrialStatus

PATCH = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-a = 1\n+a = 2\n"


def _rec(cycle: int, metric: float | None, kept: bool, *, patch: str | None = None, status: str = "ok",
         failure: str = "none", message: str = "", params: dict[str, Any] | None = None) -> CycleRecord:
    verdict = "kept" if kept else ("discarded" if status == "ok" else status)
    return CycleRecord(
        cycle=cycle,
        proposal=Proposal(params=params if params is not None else {"x": round(cycle / 1000, 4)}, patch=patch,
                          rationale=f"idea {cycle}", agent="openai", meta={"mode": "patch" if patch else "params"}),
        result=TrialResult(status=TrialStatus(status), failure=FailureClass(failure), message=message),
        metric=metric, kept=kept, verdict=verdict,
    )


def _long_history(n: int) -> list[CycleRecord]:
    out = []
    best = 0.0
    for c in range(1, n + 1):
        if c % 7 == 0:
            out.append(_rec(c, None, False, patch=PATCH, status="invalid", failure="guard_rejected",
                            message="patch touches frozen file 'prepare.py' " + "x" * 400))
            continue
        m = 0.5 + (c % 13) / 100 + c / 100_000
        kept = m > best
        best = max(best, m)
        out.append(_rec(c, m, kept))
    return out


def test_a_thousand_cycles_keep_the_prompt_under_its_character_budget(tmp_path: Path) -> None:
    root = make_experiment(tmp_path / "exp", QUADRATIC * 200, extra={"agents.llm": {"prompt_budget_chars": 20_000}})
    cfg = load_config(root / "ralph.toml")
    (root / "program.md").write_text("# goal\n" + "Explain the goal at length. " * 3000)
    history = _long_history(1000)
    best = max((r for r in history if r.kept), key=lambda r: r.cycle)
    values = base_values(cfg, history, cycle=1001, best=best, code={"train.py": QUADRATIC * 200})
    prompts = Prompts(cfg)
    for name in ("propose_params.md", "propose_patch.md", "cli_code.md"):
        prompt = render(prompts, name, values, 20_000)
        assert len(prompt) <= 20_000, name
    table = values["history"]
    assert "| 1000 |" in table and "| 999 |" in table  # the last cycles
    assert "cycles omitted" in table and table.count("\n") < 30  # not all 1000 rows
    scored = [r for r in history if r.metric is not None]
    top = max(scored, key=lambda r: r.metric or 0.0)
    assert f"| {top.cycle} |" in table  # and the best ones
    assert len(values["experience"]) < 3_000


def test_history_table_and_feedback_carry_the_guard_rejection() -> None:
    history = [
        _rec(1, 0.6, True),
        _rec(2, None, False, patch=PATCH, status="invalid", failure="guard_rejected",
             message="patch touches frozen file 'prepare.py'; frozen files can never be changed"),
    ]
    table = history_table(history, rows=10, direction="maximize")
    assert "patch: train.py (+1/-1)" in table and "| invalid | guard_rejected |" in table
    fb = feedback(history)
    assert "REJECTED" in fb and "frozen file 'prepare.py'" in fb


def test_experience_log_says_what_helped_and_what_hurt_with_deltas() -> None:
    history = [_rec(1, 0.60, True), _rec(2, 0.70, True, params={"x": 0.5}), _rec(3, 0.65, False, params={"x": 0.9}),
               _rec(4, None, False, status="failed", failure="crash", message="boom")]
    log = experience_log(history, direction="maximize")
    helped, _, rest = log.partition("Did not help:")
    assert "cycle 2: x=0.5 → helped (+0.1 vs best 0.6)" in helped
    assert "cycle 3: x=0.9 → hurt (-0.05 vs best 0.7)" in rest
    assert "cycle 4" in rest and "crash" in rest
