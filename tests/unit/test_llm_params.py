"""Params proposed by an LLM are validated against the search space; hybrid mode follows the history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import QUADRATIC, make_experiment

from ralph_ml.agents._text import ReplyInvalid
from ralph_ml.agents.openai_agent import OpenAIAgent, tried_on_current_code, validate_params
from ralph_ml.config import Param, load_config
from ralph_ml.records import CycleRecord, FailureClass, Proposal, TrialResult, TrialStatus

SPACE = {
    "lr": Param(type="float", low=1e-4, high=1e-1, log=True),
    "layers": Param(type="int", low=1, high=8),
    "act": Param(type="categorical", choices=["relu", "gelu"]),
    "flag": Param(type="categorical", choices=[True, False]),
}


def test_valid_values_are_normalized() -> None:
    out = validate_params({"lr": 0.01, "layers": 4.0, "act": "gelu", "flag": False}, SPACE)
    assert out == {"lr": 0.01, "layers": 4, "act": "gelu", "flag": False}
    assert isinstance(out["layers"], int) and isinstance(out["lr"], float)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"lr": 0.5}, "lr = 0.5 is outside its bounds [0.0001, 0.1]"),
        ({"layers": 2.5}, "must be an integer"),
        ({"layers": "3"}, "is not a finite number"),
        ({"lr": float("nan")}, "is not a finite number"),
        ({"act": "tanh"}, "'tanh' is not one of ['relu', 'gelu']"),
        ({"flag": 1}, "is not one of [True, False]"),
        ({"dropout": 0.1}, "unknown parameter 'dropout'"),
    ],
)
def test_invalid_values_are_refused_with_the_reason(raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(ReplyInvalid) as ei:
        validate_params(raw, SPACE)
    assert problem in str(ei.value)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ReplyInvalid) as ei:
        validate_params({"lr": 9, "dropout": 0.1}, SPACE)
    assert "lr = 9" in str(ei.value) and "dropout" in str(ei.value)


def _rec(cycle: int, kept: bool, *, mode: str = "params", verdict: str | None = None, patch: str | None = None,
         params: dict[str, Any] | None = None) -> CycleRecord:
    v = verdict or ("kept" if kept else "discarded")
    status = TrialStatus.INVALID if v == "invalid" else TrialStatus.OK
    return CycleRecord(
        cycle=cycle, proposal=Proposal(params=params or {}, patch=patch, meta={"mode": mode}),
        result=TrialResult(status=status, failure=FailureClass.GUARD_REJECTED if v == "invalid" else FailureClass.NONE),
        metric=None if v == "invalid" else 0.5, kept=kept, verdict=v,
    )


def _agent(tmp_path: Path, **llm: Any) -> OpenAIAgent:
    root = make_experiment(tmp_path / "exp", QUADRATIC, extra={
        "agents": {"code_model": "openai"}, "agents.llm": {"api_key_env": "", **llm}})
    return OpenAIAgent(load_config(root / "ralph.toml"))


def test_hybrid_switches_to_patches_on_a_streak_and_back_after_invalid_patches(tmp_path: Path) -> None:
    agent = _agent(tmp_path, hybrid_patch_after=2, max_invalid_patches=2)
    h = [_rec(1, True), _rec(2, False)]
    assert agent.mode_for(h) == "params"
    h.append(_rec(3, False))
    assert agent.mode_for(h) == "patch"
    h.append(_rec(4, False, mode="patch", verdict="invalid", patch="x"))
    assert agent.mode_for(h) == "patch"
    h.append(_rec(5, False, mode="patch", verdict="invalid", patch="x"))
    assert agent.mode_for(h) == "params"  # 2 invalid patches in a row: back to params...
    h.append(_rec(6, False))
    assert agent.mode_for(h) == "params"
    h.append(_rec(7, False))
    assert agent.mode_for(h) == "patch"  # ...until the streak builds up again
    h.append(_rec(8, True, mode="patch", patch="x"))
    assert agent.mode_for(h) == "params"  # an improvement resets the streak


def test_fixed_modes_and_an_empty_search_space(tmp_path: Path) -> None:
    assert _agent(tmp_path / "a", mode="patch").mode_for([]) == "patch"
    assert _agent(tmp_path / "b", mode="params").mode_for([_rec(1, False)] * 5) == "params"
    root = make_experiment(tmp_path / "c", QUADRATIC, space={}, extra={
        "agents": {"code_model": "openai"}, "agents.llm": {"api_key_env": "", "mode": "params"}})
    with pytest.raises(Exception) as ei:
        OpenAIAgent(load_config(root / "ralph.toml"))
    assert "needs a search_space" in str(ei.value)


def test_tried_configurations_reset_when_the_code_changes() -> None:
    h = [_rec(1, True, params={"x": 0.1}), _rec(2, False, params={"x": 0.2})]
    tried = tried_on_current_code(h)
    assert len(tried) == 2
    h.append(_rec(3, True, mode="patch", patch="diff"))
    assert tried_on_current_code(h) == {}
