from __future__ import annotations

import math
from typing import Any, Callable

import pytest

from ralph_ml.agents import AgentContext, BuiltinAgent
from ralph_ml.agents.builtin import nominal, step_param
from ralph_ml.errors import AgentError
from ralph_ml.config import Config, Param
from ralph_ml.decision import best_of, judge
from ralph_ml.records import Analysis, CycleRecord, Proposal, Recommendation, TrialResult, TrialStatus

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True, "default": 1e-3},
    "width": {"type": "int", "low": 16, "high": 256, "default": 32},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5, "default": 0.0},
    "opt": {"type": "categorical", "choices": ["sgd", "adam"], "default": "sgd"},
}


def cfg(steer: bool = False, space: dict | None = None, target: float = 2.0, **agents: object) -> Config:
    return Config.model_validate({"project": {"seed": 7, "target_metric": {"name": "acc", "value": target}},
                                  "agents": {"steer": steer, **agents}, "search_space": space or SPACE})


def score(p: dict) -> float:
    if "lr" not in p:
        return float(p["a"])
    return -abs(math.log10(p["lr"]) + 2) - abs(p["width"] - 128) / 256 - p["dropout"] + (0.1 if p["opt"] == "adam" else 0)


def drive(agent: BuiltinAgent, c: Config, history: list[CycleRecord], n: int,
          scorer: Callable[[dict[str, Any]], float] | None = None) -> list[CycleRecord]:
    for _ in range(n):
        ctx = AgentContext(cycle=len(history) + 1, history=tuple(history), best=best_of(history),
                           last_analysis=history[-1].analysis if history else None, search_space=c.search_space,
                           target_name="acc", direction="maximize")
        prop = agent.propose(ctx)
        m = (scorer or score)(prop.params)
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
    with pytest.raises(AgentError, match="exhausted"):
        drive(agent, c, h, 1)


def record(cycle: int, params: dict[str, Any], metric: float, kept: bool, **fields: Any) -> CycleRecord:
    return CycleRecord(cycle=cycle, proposal=Proposal(params=params, **fields),
                       result=TrialResult(status=TrialStatus.OK, metrics={"acc": metric}), metric=metric, kept=kept,
                       verdict="kept" if kept else "discarded")


def overfitting() -> Analysis:
    rec = Recommendation(action="increase:dropout", rationale="over-fitting", confidence="high", param="dropout", direction="increase")
    return Analysis(diagnosis="overfitting", summary="", recommendations=(rec,))


def context(c: Config, history: list[CycleRecord], pending: tuple[Proposal, ...] = ()) -> AgentContext:
    return AgentContext(cycle=len(history) + len(pending) + 1, history=tuple(history), best=best_of(history),
                        last_analysis=history[-1].analysis if history else None, search_space=c.search_space,
                        target_name="acc", direction="maximize", pending=pending)


BASE = {"lr": 1e-3, "width": 32, "dropout": 0.0, "opt": "sgd"}


def test_follows_a_high_confidence_recommendation_one_step_once_near_the_target() -> None:
    # Near: the gap to the target (0.85 - 0.80) is within what the numeric parameters have
    # already moved the metric by among the `opt = sgd` cycles (0.80 - 0.60).
    c = cfg(steer=True, target=0.85, n_startup_trials=0)
    h = [record(1, BASE, 0.6, True), record(2, {**BASE, "opt": "adam"}, 0.5, False),
         record(3, {**BASE, "lr": 1e-2}, 0.8, True)]
    h[-1] = CycleRecord(**{**h[-1].__dict__, "analysis": overfitting()})
    agent = BuiltinAgent(c)
    for r in h:
        agent.observe(r)
    prop = agent.propose(context(c, h))
    assert prop.meta.get("steered") and prop.params == {**BASE, "lr": 1e-2, "dropout": 0.125}
    # never two steered proposals in a row
    h.append(CycleRecord(cycle=4, proposal=prop, result=TrialResult(status=TrialStatus.OK, metrics={"acc": 0.7}),
                         metric=0.7, kept=False, verdict="discarded", analysis=h[-1].analysis))
    agent.observe(h[-1])
    assert not agent.propose(context(c, h)).meta.get("steered")


def test_no_steering_while_the_target_is_farther_than_the_numeric_parameters_reach() -> None:
    # The same history, but a target 0.4 away: more than the 0.2 that lr moved the metric by.
    c = cfg(steer=True, target=1.2, n_startup_trials=0)
    h = [record(1, BASE, 0.6, True), record(2, {**BASE, "opt": "adam"}, 0.5, False),
         record(3, {**BASE, "lr": 1e-2}, 0.8, True)]
    h[-1] = CycleRecord(**{**h[-1].__dict__, "analysis": overfitting()})
    agent = BuiltinAgent(c)
    for r in h:
        agent.observe(r)
    prop = agent.propose(context(c, h))
    assert not prop.meta.get("steered") and prop.meta["source"] == "tpe"


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


# --------------------------------------------------------------------------- structure first

ARCH_SPACE = {
    "arch": {"type": "categorical", "choices": ["linear", "mlp", "conv", "rnn"], "default": "mlp"},
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True, "default": 1e-3},
    "width": {"type": "int", "low": 16, "high": 256, "default": 32},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128], "default": 64},
}
ARCH_BASE = {"arch": "mlp", "lr": 1e-3, "width": 32, "batch_size": 64}


def arch_score(p: dict[str, Any]) -> float:
    """The family sets the level (what no lr can make up for); lr and width nudge it."""
    level = {"linear": 0.3, "mlp": 0.6, "conv": 0.8, "rnn": 0.85}[p["arch"]]
    return level - 0.02 * abs(math.log10(p["lr"]) + 2) - abs(p["width"] - 64) / 6400


def test_nominal_categoricals_are_structure_numeric_ones_are_an_axis() -> None:
    assert nominal(Param(type="categorical", choices=["mlp", "cnn"]))
    assert nominal(Param(type="categorical", choices=[True, False]))  # a switch
    assert not nominal(Param(type="categorical", choices=[32, 64, 128]))
    assert not nominal(Param(type="categorical", choices=[0.1, 0.5]))
    assert not nominal(Param(type="int", low=1, high=4))


def test_far_from_the_target_each_untried_structure_runs_once_before_tpe() -> None:
    c = cfg(space=ARCH_SPACE, target=0.95)
    h = drive(BuiltinAgent(c), c, [], 7, arch_score)
    assert h[0].proposal.meta["source"] == "baseline"
    # One factor at a time: only `arch` changes, in declared order, the tried `mlp` skipped;
    # the numeric categorical batch_size is not screened.
    assert [r.proposal.params for r in h[1:4]] == [{**ARCH_BASE, "arch": a} for a in ("linear", "conv", "rnn")]
    assert [r.proposal.meta["source"] for r in h[1:4]] == ["screen"] * 3
    assert "structure first" in h[1].proposal.rationale
    assert [r.proposal.meta["source"] for r in h[4:]] == ["tpe"] * 3  # every family has run: TPE takes over


def test_screening_starts_from_the_best_configuration() -> None:
    space = {**ARCH_SPACE, "norm": {"type": "categorical", "choices": ["none", "batch"], "default": "none"}}
    c = cfg(space=space, target=0.95)
    h = drive(BuiltinAgent(c), c, [], 5, lambda p: arch_score(p) + (0.05 if p["norm"] == "batch" else 0.0))
    # `arch` screened from the baseline, then `norm` from the best found so far (rnn).
    assert h[4].proposal.meta["source"] == "screen"
    assert h[4].proposal.params == {**ARCH_BASE, "arch": "rnn", "norm": "batch"}


def test_no_screening_once_the_numeric_parameters_have_moved_the_metric_as_far_as_the_target() -> None:
    # mlp cycles spread over 0.2 and the target is 0.1 away: tuning, not structure, is next.
    c = cfg(space=ARCH_SPACE, target=0.8)
    h = [record(1, ARCH_BASE, 0.5, True), record(2, {**ARCH_BASE, "lr": 1e-2}, 0.7, True)]
    agent = BuiltinAgent(c)
    for r in h:
        agent.observe(r)
    assert agent.propose(context(c, h)).meta["source"] == "tpe"
    # A target farther than that spread: the untried families come first.
    far = cfg(space=ARCH_SPACE, target=0.95)
    agent = BuiltinAgent(far)
    for r in h:
        agent.observe(r)
    prop = agent.propose(context(far, h))
    assert prop.meta["source"] == "screen" and prop.params == {**ARCH_BASE, "lr": 1e-2, "arch": "linear"}


def test_parallel_screening_proposals_differ() -> None:
    c = cfg(space=ARCH_SPACE, target=0.95)
    agent = BuiltinAgent(c)
    first = agent.propose(context(c, []))  # the baseline, still running
    second = agent.propose(context(c, [], pending=(first,)))
    third = agent.propose(context(c, [], pending=(first, second)))
    assert [p.params["arch"] for p in (first, second, third)] == ["mlp", "linear", "conv"]
    assert [p.meta["source"] for p in (second, third)] == ["screen", "screen"]


def test_screening_takes_at_most_half_the_cycles_and_can_be_turned_off() -> None:
    many = {"arch": {"type": "categorical", "choices": [f"f{i}" for i in range(12)], "default": "f0"},
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True, "default": 1e-3}}
    c = Config.model_validate({"project": {"seed": 7, "target_metric": {"name": "acc", "value": 2.0}},
                               "safeguards": {"max_cycles": 8}, "search_space": many})
    h = drive(BuiltinAgent(c), c, [], 8, lambda p: 0.1)
    assert [r.proposal.meta["source"] for r in h] == ["baseline"] + ["screen"] * 4 + ["tpe"] * 3
    off = cfg(space=ARCH_SPACE, target=0.95, screen=False)
    assert "screen" not in {r.proposal.meta["source"] for r in drive(BuiltinAgent(off), off, [], 6, arch_score)}


def test_resume_during_the_screen_proposes_what_an_uninterrupted_run_would() -> None:
    c = cfg(space=ARCH_SPACE, target=0.95)
    straight = drive(BuiltinAgent(c), c, [], 8, arch_score)
    first = drive(BuiltinAgent(c), c, [], 2, arch_score)
    resumed_agent = BuiltinAgent(c)
    for rec in first:
        resumed_agent.observe(rec)
    resumed = drive(resumed_agent, c, list(first), 6, arch_score)
    assert [r.proposal.params for r in resumed] == [r.proposal.params for r in straight]
    assert len({tuple(sorted(r.proposal.params.items())) for r in straight}) == 8
