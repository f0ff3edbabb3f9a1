from __future__ import annotations

import math

from ralph_ml.agents import AgentContext, BuiltinAgent
from ralph_ml.agents.builtin import step_param
from ralph_ml.config import Config, Param
from ralph_ml.decision import best_of, judge
from ralph_ml.records import Analysis, CycleRecord, Proposal, Recommendation, TrialResult, TrialStatus

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True, "default": 1e-3},
    "width": {"type": "int", "low": 16, "high": 256, "default": 32},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5, "default": 0.0},
    "opt": {"type": "categorical", "choices": ["sgd", "adam"], "default": "sgd"},
}


def cfg(steer: bool = False, space: dict | None = None) -> Config:
    return Config.model_validate({"project": {"seed": 7, "target_metric": {"name": "acc", "value": 2.0}},
                                  "agents": {"steer": steer}, "search_space": space or SPACE})


def score(p: dict) -> float:
    if "lr" not in p:
        return float(p["a"])
    return -abs(math.log10(p["lr"]) + 2) - abs(p["width"] - 128) / 256 - p["dropout"] + (0.1 if p["opt"] == "adam" else 0)


def drive(agent: BuiltinAgent, c: Config, history: list[CycleRecord], n: int) -> list[CycleRecord]:
    for _ in range(n):
        ctx = AgentContext(cycle=len(history) + 1, history=tuple(history), best=best_of(history),
                           last_analysis=history[-1].analysis if history else None, search_space=c.search_space,
                           target_name="acc", direction="maximize")
        prop = agent.propose(ctx)
        m = score(prop.params)
        kept, verdict = judge(m, TrialStatus.OK, best_of(history), c)
        rec = CycleRecord(cycle=ctx.cycle, proposal=prop, result=TrialResult(status=TrialStatus.OK, metrics={"acc": m}),
                          metric=m, kept=kept, verdict=verdict)
        history.append(rec)
        agent.observe(rec)
    return history


def test_first_proposal_is_the_baseline() -> None:
    c = cfg()
    h = drive(BuiltinAgent(c), c, [], 1)
    assert h[0].proposal.params == {"lr": 1e-3, "width": 32, "dropout": 0.0, "opt": "sgd"}


def test_deterministic_and_resume_proposes_what_an_uninterrupted_run_would() -> None:
    c = cfg()
    straight = drive(BuiltinAgent(c), c, [], 12)
    # "resume" after 7 cycles: a fresh agent replays the history, then continues
    first = drive(BuiltinAgent(c), c, [], 7)
    resumed_agent = BuiltinAgent(c)
    for rec in first:
        resumed_agent.observe(rec)
    resumed = drive(resumed_agent, c, list(first), 5)
    assert [r.proposal.params for r in resumed] == [r.proposal.params for r in straight]
    keys = {tuple(sorted(r.proposal.params.items())) for r in straight}
    assert len(keys) == 12  # never the same configuration twice


def test_small_discrete_space_never_repeats_and_reports_exhaustion() -> None:
    space = {"a": {"type": "categorical", "choices": [1, 2, 3], "default": 1}}
    c = cfg(space=space)
    agent = BuiltinAgent(c)
    h = drive(agent, c, [], 3)
    assert sorted(r.proposal.params["a"] for r in h) == [1, 2, 3]
    import pytest

    from ralph_ml.errors import AgentError

    with pytest.raises(AgentError, match="exhausted"):
        drive(agent, c, h, 1)


def test_follows_a_high_confidence_recommendation_one_step_after_exploring() -> None:
    c = Config.model_validate({"project": {"seed": 7, "target_metric": {"name": "acc", "value": 2.0}},
                               "agents": {"steer": True, "n_startup_trials": 0}, "search_space": SPACE})
    agent = BuiltinAgent(c)
    h = drive(agent, c, [], 1)
    rec = Recommendation(action="increase:dropout", rationale="over-fitting", confidence="high", param="dropout", direction="increase")
    h[-1] = CycleRecord(**{**h[-1].__dict__, "analysis": Analysis(diagnosis="overfitting", summary="", recommendations=(rec,))})
    ctx = AgentContext(cycle=2, history=tuple(h), best=h[0], last_analysis=h[-1].analysis, search_space=c.search_space,
                       target_name="acc", direction="maximize")
    prop = agent.propose(ctx)
    assert prop.meta.get("steered") and prop.params["dropout"] > 0.0
    # never two steered proposals in a row
    rec2 = CycleRecord(cycle=2, proposal=prop, result=TrialResult(status=TrialStatus.OK, metrics={"acc": 0.0}),
                       metric=0.0, kept=False, verdict="discarded", analysis=h[-1].analysis)
    agent.observe(rec2)
    ctx2 = AgentContext(cycle=3, history=(*h, rec2), best=h[0], last_analysis=rec2.analysis, search_space=c.search_space,
                        target_name="acc", direction="maximize")
    assert not agent.propose(ctx2).meta.get("steered")
    assert {k: v for k, v in prop.params.items() if k != "dropout"} == {k: v for k, v in h[0].proposal.params.items() if k != "dropout"}


def test_step_param_stays_in_bounds() -> None:
    lr = Param(type="float", low=1e-4, high=1e-1, log=True)
    assert step_param(lr, 1e-3, "decrease") == 5e-4 and step_param(lr, 0.09, "increase") == 0.1
    w = Param(type="int", low=16, high=256)
    assert step_param(w, 256, "increase") == 256 and step_param(w, 32, "increase") > 32
    cat = Param(type="categorical", choices=[16, 32, 64])
    assert step_param(cat, 32, "increase") == 64 and step_param(cat, 16, "decrease") == 16


def test_no_steering_during_the_random_start_up() -> None:
    c = Config.model_validate({"project": {"seed": 7, "target_metric": {"name": "acc", "value": 2.0}},
                               "agents": {"steer": True, "n_startup_trials": 3}, "search_space": SPACE})
    agent = BuiltinAgent(c)
    h = drive(agent, c, [], 1)
    rec = Recommendation(action="increase:dropout", rationale="over-fitting", confidence="high", param="dropout", direction="increase")
    h[-1] = CycleRecord(**{**h[-1].__dict__, "analysis": Analysis(diagnosis="overfitting", summary="", recommendations=(rec,))})
    ctx = AgentContext(cycle=2, history=tuple(h), best=h[0], last_analysis=h[-1].analysis, search_space=c.search_space,
                       target_name="acc", direction="maximize")
    assert not agent.propose(ctx).meta.get("steered")
