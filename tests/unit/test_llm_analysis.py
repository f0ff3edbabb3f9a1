"""An analysis agent's JSON becomes an Analysis; its advice is recorded; seed 000's rule is gated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import QUADRATIC, make_experiment

from ralph_ml.agents._text import ReplyInvalid
from ralph_ml.agents.analyst import parse_analysis
from ralph_ml.config import Param, load_config
from ralph_ml.decision import Usage, after_cycle
from ralph_ml.records import Analysis, CycleRecord, Proposal, Recommendation, TrialResult, TrialStatus

SPACE = {"lr": Param(type="float", low=0.001, high=0.1)}


def test_recommendations_are_ranked_and_unknown_params_dropped() -> None:
    a = parse_analysis({
        "diagnosis": "overfitting", "summary": "gap", "advice": "stop",
        "recommendations": [
            {"action": "try mixup", "rationale": "r1", "confidence": "Low"},
            {"action": "decrease:lr", "rationale": "r2", "confidence": "high", "param": "lr", "direction": "decrease"},
            {"action": "increase:dropout", "rationale": "r3", "confidence": "medium", "param": "dropout", "direction": "increase"},
        ],
    }, SPACE, "openai")
    assert [r.confidence for r in a.recommendations] == ["high", "medium", "low"]
    assert a.recommendations[0].param == "lr" and a.recommendations[1].param is None
    assert a.agent == "openai" and a.advice == "stop"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"summary": "s", "recommendations": [{"action": "a", "rationale": "r", "confidence": "high"}]}, '"diagnosis"'),
        ({"diagnosis": "d", "summary": "s", "recommendations": []}, "non-empty list"),
        ({"diagnosis": "d", "summary": "s", "recommendations": [{"action": "a", "confidence": "sure"}]}, "high, medium or low"),
    ],
)
def test_invalid_analyses_say_what_to_fix(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ReplyInvalid) as ei:
        parse_analysis(data, SPACE, "openai")
    assert problem in str(ei.value)


def _history(confidence: str, advice: str | None) -> list[CycleRecord]:
    ok = TrialResult(status=TrialStatus.OK)
    analysis = Analysis(diagnosis="plateau", summary="", agent="openai", advice=advice,
                        recommendations=(Recommendation(action="explore", rationale="", confidence=confidence),))
    return [
        CycleRecord(cycle=1, proposal=Proposal(), result=ok, metric=0.6, kept=True, verdict="kept"),
        CycleRecord(cycle=2, proposal=Proposal(), result=ok, metric=0.5, kept=False, verdict="discarded", analysis=analysis),
    ]


def _cfg(tmp_path: Path, analysis_model: str) -> Any:
    root = make_experiment(tmp_path / analysis_model, QUADRATIC, extra={"agents": {"analysis_model": analysis_model}})
    return load_config(root / "ralph.toml")


def test_seed_rule_only_with_an_analysis_agent(tmp_path: Path) -> None:
    builtin, agent = _cfg(tmp_path, "builtin"), _cfg(tmp_path, "openai")
    assert not after_cycle(_history("medium", None), builtin, Usage()).stop  # unchanged without an agent
    d = after_cycle(_history("medium", "continue"), agent, Usage())
    assert d.stop and d.reason is not None and d.reason.value == "plateau" and d.exit_code == 3
    assert d.evidence["analysis_advice"]["advice"] == "continue"
    d = after_cycle(_history("high", "stop"), agent, Usage())
    assert not d.stop and d.evidence["analysis_advice"]["advice"] == "stop"  # advice, never obeyed
