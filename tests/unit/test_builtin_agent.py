from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable

import pytest

from ralph_ml.agents import AgentContext, BuiltinAgent
from ralph_ml.agents.base import InFlight
import random

from ralph_ml.agents.builtin import inside, nominal, screen_order, toward
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
          scorer: Callable[[dict[str, Any]], float] | None = None,
          analyst: Callable[[dict[str, Any]], Analysis] | None = None) -> list[CycleRecord]:
    for _ in range(n):
        ctx = AgentContext(cycle=len(history) + 1, history=tuple(history), best=best_of(history),
                           last_analysis=history[-1].analysis if history else None, search_space=c.search_space,
                           target_name="acc", direction="maximize")
        prop = agent.propose(ctx)
        m = (scorer or score)(prop.params)
        kept, verdict = judge(m, TrialStatus.OK, best_of(history), c)
        rec = CycleRecord(cycle=ctx.cycle, proposal=prop, result=TrialResult(status=TrialStatus.OK, metrics={"acc": m}),
                          metric=m, kept=kept, verdict=verdict, analysis=analyst(prop.params) if analyst else None)
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


def advice(*recs: tuple[str, str, str]) -> Analysis:
    """An analysis recommending (confidence, direction, param) moves."""
    return Analysis(diagnosis="underfitting", summary="", recommendations=tuple(
        Recommendation(action=f"{d}:{p}", rationale="", confidence=conf, param=p, direction=d) for conf, d, p in recs))


UNDERFIT = advice(("high", "increase", "dropout"), ("high", "increase", "lr"), ("medium", "increase", "width"))


def with_analysis(rec: CycleRecord, analysis: Analysis) -> CycleRecord:
    return CycleRecord(**{**rec.__dict__, "analysis": analysis})


# `opt` is nominal: screen=False leaves the structure screen out of these.
def test_right_after_the_baseline_follows_its_diagnosis_moving_the_named_parameters_together() -> None:
    c = cfg(steer=True, screen=False)
    h = [with_analysis(record(1, BASE, 0.6, True), UNDERFIT)]
    agent = BuiltinAgent(c)
    agent.observe(h[0])
    prop = agent.propose(context(c, h))
    assert prop.meta["source"] == "analysis" and prop.meta["from_cycle"] == 1
    assert "following the analysis of the best cycle 1" in prop.rationale
    # the high-confidence advice is taken, each on its side of the best's value; the rest
    # (medium advice included) kept
    assert 0.0 < prop.params["dropout"] <= 0.5 and 1e-3 < prop.params["lr"] <= 1e-1
    assert {k: prop.params[k] for k in ("width", "opt")} == {"width": 32, "opt": "sgd"}
    # deterministic: a fresh agent given the same history proposes the same
    again = BuiltinAgent(c)
    again.observe(h[0])
    assert again.propose(context(c, h)).params == prop.params


def test_directed_proposals_are_bounded_per_best_and_a_new_best_brings_its_own() -> None:
    c = cfg(steer=True, screen=False)
    agent = BuiltinAgent(c)
    h = [with_analysis(record(1, BASE, 0.6, True), UNDERFIT)]
    agent.observe(h[0])
    sources = []
    for cycle in (2, 3, 4):  # two tries from cycle 1 that do not beat it, then TPE
        prop = agent.propose(context(c, h))
        sources.append(prop.meta["source"])
        h.append(with_analysis(record(cycle, prop.params, 0.5, False, meta=prop.meta), UNDERFIT))
        agent.observe(h[-1])
    assert sources == ["analysis", "analysis", "tpe"]
    # a new best with a high-confidence diagnosis of its own: followed from there
    h.append(with_analysis(record(5, {**BASE, "dropout": 0.1}, 0.7, True),
                           advice(("high", "decrease", "lr"))))
    agent.observe(h[-1])
    prop = agent.propose(context(c, h))
    assert prop.meta["source"] == "analysis" and prop.meta["from_cycle"] == 5
    assert prop.params == {**BASE, "dropout": 0.1, "lr": prop.params["lr"]} and 1e-4 <= prop.params["lr"] < 1e-3


def test_no_direction_without_high_confidence_advice_or_with_steering_off() -> None:
    for c, analysis in ((cfg(steer=True, screen=False), advice(("medium", "increase", "lr"))), (cfg(steer=False, screen=False), UNDERFIT)):
        h = [with_analysis(record(1, BASE, 0.6, True), analysis)]
        agent = BuiltinAgent(c)
        agent.observe(h[0])
        assert agent.propose(context(c, h)).meta["source"] == "tpe"


def test_parallel_directed_proposals_count_those_in_flight_and_differ() -> None:
    c = cfg(steer=True, screen=False)
    agent = BuiltinAgent(c)
    h = [with_analysis(record(1, BASE, 0.6, True), UNDERFIT)]
    agent.observe(h[0])
    first = agent.propose(context(c, h))
    second = agent.propose(context(c, h, pending=(first,)))
    third = agent.propose(context(c, h, pending=(first, second)))
    assert [p.meta["source"] for p in (first, second, third)] == ["analysis", "analysis", "tpe"]
    assert first.params != second.params


def test_resume_while_following_the_diagnosis_proposes_what_an_uninterrupted_run_would() -> None:
    c = cfg(steer=True, screen=False)
    straight = drive(BuiltinAgent(c), c, [], 10, analyst=lambda p: UNDERFIT)
    assert "analysis" in {r.proposal.meta["source"] for r in straight}
    first = drive(BuiltinAgent(c), c, [], 3, analyst=lambda p: UNDERFIT)
    resumed_agent = BuiltinAgent(c)
    for rec in first:
        resumed_agent.observe(rec)
    resumed = drive(resumed_agent, c, list(first), 7, analyst=lambda p: UNDERFIT)
    assert [r.proposal.params for r in resumed] == [r.proposal.params for r in straight]
    assert len({tuple(sorted(r.proposal.params.items())) for r in straight}) == 10


def test_toward_stays_strictly_on_its_side_and_inside_the_bounds() -> None:
    lr = Param(type="float", low=1e-4, high=1e-1, log=True)
    width = Param(type="int", low=16, high=256, log=True)
    epochs = Param(type="int", low=5, high=60)
    bs = Param(type="categorical", choices=[32, 64, 128, 256])
    rng = random.Random(0)
    for _ in range(200):
        assert 1e-3 < toward(lr, 1e-3, "increase", rng) <= 1e-1
        assert 1e-4 <= toward(lr, 1e-3, "decrease", rng) < 1e-3
        assert 64 < toward(width, 64, "increase", rng) <= 256
        assert 15 < toward(epochs, 15, "increase", rng) <= 60 and 5 <= toward(epochs, 15, "decrease", rng) < 15
        assert toward(bs, 64, "increase", rng) in (128, 256) and toward(bs, 64, "decrease", rng) == 32
    # spread over the side, not stuck next to the start: log-uniform on a log parameter
    ups = [toward(lr, 1e-3, "increase", rng) for _ in range(400)]
    assert 0.3 < sum(u > 1e-2 for u in ups) / len(ups) < 0.7
    for p, v, d in ((lr, 1e-1, "increase"), (epochs, 5, "decrease"), (bs, 256, "increase"), (bs, 32, "decrease")):
        assert toward(p, v, d, rng) is None  # already at that bound


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
    # One factor at a time: only `arch` changes, the choices after the default `mlp` first, then
    # those before it; the numeric categorical batch_size is not screened.
    assert [r.proposal.params for r in h[1:4]] == [{**ARCH_BASE, "arch": a} for a in ("conv", "rnn", "linear")]
    assert [r.proposal.meta["source"] for r in h[1:4]] == ["screen"] * 3
    assert "structure first" in h[1].proposal.rationale
    assert [r.proposal.meta["source"] for r in h[4:]] == ["tpe"] * 3  # every family has run: TPE takes over


def test_screen_order_is_after_the_default_then_before_it_nearest_first() -> None:
    fam = Param(type="categorical", choices=["a", "b", "c", "d", "e"], default="c")
    assert screen_order(fam) == ["d", "e", "b", "a"]
    assert screen_order(Param(type="categorical", choices=["a", "b"])) == ["a", "b"]  # no default: declared order


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
    assert prop.meta["source"] == "screen" and prop.params == {**ARCH_BASE, "lr": 1e-2, "arch": "conv"}


def test_parallel_screening_proposals_differ() -> None:
    c = cfg(space=ARCH_SPACE, target=0.95)
    agent = BuiltinAgent(c)
    first = agent.propose(context(c, []))  # the baseline, still running
    second = agent.propose(context(c, [], pending=(first,)))
    third = agent.propose(context(c, [], pending=(first, second)))
    assert [p.params["arch"] for p in (first, second, third)] == ["mlp", "conv", "rnn"]
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


def test_the_tpe_study_built_late_holds_every_finished_cycle_and_samples_as_one_built_at_once() -> None:
    """Optuna's study is built when TPE first proposes; the cycles finished before wait for it, in order."""
    c = cfg(steer=True, screen=False)
    h = [with_analysis(record(1, BASE, 0.6, True), UNDERFIT)]
    for cycle, lr in ((2, 2e-3), (3, 5e-3)):
        h.append(record(cycle, {**BASE, "lr": lr}, 0.5 + cycle / 100, False, meta={"source": "analysis", "from_cycle": 1}))
    h.append(record(4, {**BASE, "lr": 9.0}, 0.9, True))  # outside the space (it was edited): TPE skips it
    h.append(CycleRecord(cycle=5, proposal=Proposal(params={**BASE, "lr": 3e-3}, rationale="", agent="builtin"),
                         result=TrialResult(status=TrialStatus.FAILED), metric=None, kept=False, verdict="failed"))
    eager, late = BuiltinAgent(c), BuiltinAgent(c)
    assert len(eager.study.trials) == 0  # built before any cycle
    for rec in h:
        eager.observe(rec)
        late.observe(rec)
    assert late._study is None  # nothing has needed it yet
    ctx = context(c, h[:1])
    ctx = AgentContext(**{**ctx.__dict__, "cycle": 6, "history": tuple(h), "best": best_of(h[:3])})
    ours, theirs = late.propose(ctx), eager.propose(ctx)
    assert ours.meta["source"] == theirs.meta["source"] == "tpe"  # the directed tries are spent
    assert ours.params == theirs.params
    got = [(t.params["lr"], t.value, t.state.name) for t in late.study.trials]
    assert got[:4] == [(1e-3, 0.6, "COMPLETE"), (2e-3, 0.52, "COMPLETE"), (5e-3, 0.53, "COMPLETE"), (3e-3, None, "FAIL")]
    assert got == [(t.params["lr"], t.value, t.state.name) for t in eager.study.trials]


def test_the_cli_and_a_run_that_never_needs_tpe_do_not_import_optuna() -> None:
    """Its import is a few tenths of a CPU-second of every command and every run; the baseline,
    the screen and the directed steps do without it."""
    import subprocess
    import sys

    code = """
import sys
import ralph_ml.cli, ralph_ml.loop, ralph_ml.report
from ralph_ml.agents import AgentContext, BuiltinAgent
from ralph_ml.config import Config
from ralph_ml.records import Analysis, CycleRecord, Recommendation, TrialResult, TrialStatus
c = Config.model_validate({"project": {"target_metric": {"name": "acc", "value": 2.0}}, "agents": {"steer": True},
    "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True, "default": 1e-3}}})
agent = BuiltinAgent(c)
def ctx(h):
    return AgentContext(cycle=len(h) + 1, history=tuple(h), best=h[0] if h else None, last_analysis=None,
                        search_space=c.search_space, target_name="acc", direction="maximize")
first = agent.propose(ctx([]))
adv = Analysis(diagnosis="underfitting", summary="", recommendations=(
    Recommendation(action="increase:lr", rationale="", confidence="high", param="lr", direction="increase"),))
rec = CycleRecord(cycle=1, proposal=first, result=TrialResult(status=TrialStatus.OK, metrics={"acc": 0.5}), metric=0.5,
                  kept=True, verdict="kept", analysis=adv)
agent.observe(rec)
second = agent.propose(ctx([rec]))
assert [first.meta["source"], second.meta["source"]] == ["baseline", "analysis"], (first.meta, second.meta)
print(sorted(m for m in sys.modules if m.split(".")[0] == "optuna"))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_inside_moves_a_value_into_the_current_range_and_keeps_one_already_there() -> None:
    lr = Param(type="float", low=1e-4, high=1e-2, log=True, default=1e-3)
    assert inside(lr, 2.6e-2) == 1e-2 and inside(lr, 1e-5) == 1e-4 and inside(lr, 3e-3) == 3e-3
    epochs = Param(type="int", low=5, high=40, default=15)
    assert inside(epochs, 55) == 40 and isinstance(inside(epochs, 55), int) and inside(epochs, 20) == 20
    stepped = Param(type="float", low=0.0, high=0.5, step=0.1, default=0.0)
    assert inside(stepped, 0.9) == 0.5 and abs(inside(stepped, 0.27) - 0.3) < 1e-12
    opt = Param(type="categorical", choices=["adam", "sgd"], default="sgd")
    assert inside(opt, "rmsprop") == "sgd" and inside(opt, "adam") == "adam"
    assert inside(Param(type="categorical", choices=[32, 64]), 128) == 32  # no default: the first choice
    assert inside(epochs, "many") == 15  # not a number at all: the default


def test_after_the_space_is_narrowed_the_moves_from_the_best_stay_inside_it_and_say_so() -> None:
    wide = cfg(steer=True, screen=False)
    h = [record(1, BASE, 0.5, True), with_analysis(record(2, {**BASE, "lr": 5e-2, "width": 200}, 0.6, True), UNDERFIT)]
    narrow = cfg(steer=True, screen=False, space={**SPACE, "lr": {**SPACE["lr"], "high": 1e-2},
                                                  "width": {**SPACE["width"], "high": 128}})
    agent = BuiltinAgent(narrow)
    for rec in h:
        agent.observe(rec)
    prop = agent.propose(context(narrow, h))
    assert prop.meta["source"] == "analysis"
    assert 1e-4 <= prop.params["lr"] <= 1e-2 and prop.params["width"] == 128  # not moved by the advice: clamped
    assert "moved into the edited search space: `lr` 0.05 -> 0.01, `width` 200 -> 128" in prop.rationale
    # in the space it ran in, nothing is said and the width is kept
    same = BuiltinAgent(wide)
    for rec in h:
        same.observe(rec)
    prop = same.propose(context(wide, h))
    assert prop.params["width"] == 200 and "edited" not in prop.rationale


def test_a_parameter_added_to_the_space_counts_as_its_default_in_the_cycles_that_ran_before() -> None:
    """train.py read the default of a parameter the cycle did not set: the best is moved from
    there, TPE models those cycles, and the configuration is not proposed again."""
    old = {k: v for k, v in SPACE.items() if k != "dropout"}
    h = [record(1, {k: v for k, v in BASE.items() if k != "dropout"}, 0.5, True),
         with_analysis(record(2, {"lr": 5e-3, "width": 64, "opt": "sgd"}, 0.6, True), advice(("high", "increase", "lr")))]
    grown = cfg(steer=True, screen=False)  # SPACE: dropout (default 0.0) added
    agent = BuiltinAgent(grown)
    for rec in h:
        agent.observe(rec)
    prop = agent.propose(context(grown, h))
    assert prop.meta["source"] == "analysis" and prop.meta["from_cycle"] == 2
    assert prop.params["dropout"] == 0.0 and prop.params["width"] == 64 and prop.params["lr"] > 5e-3
    assert "(not set by cycle 2, its default: `dropout` = 0.0)" in prop.rationale
    assert len(agent.study.trials) == 2 and {t.params["dropout"] for t in agent.study.trials} == {0.0}
    assert {**BASE} == agent._baseline() and agent.propose(context(grown, h, pending=(prop,))).params != BASE
    assert set(old) < set(grown.search_space)


def test_a_pruned_cycle_is_told_to_tpe_as_pruned_at_its_last_value_not_as_a_failure() -> None:
    c = cfg(screen=False)
    pruned = CycleRecord(cycle=2, proposal=Proposal(params={**BASE, "lr": 5e-2}, rationale="", agent="builtin"),
                         result=TrialResult(status=TrialStatus.PRUNED, metrics={"acc": 0.21}, stopped_by="pruner",
                                            stopped_at_step=4),
                         metric=None, kept=False, verdict="pruned")
    silent = CycleRecord(cycle=3, proposal=Proposal(params={**BASE, "lr": 6e-2}, rationale="", agent="builtin"),
                         result=TrialResult(status=TrialStatus.PRUNED, stopped_by="pruner", stopped_at_step=2),
                         metric=None, kept=False, verdict="pruned")
    for late in (False, True):  # told before and after the study is built
        agent = BuiltinAgent(c)
        if not late:
            assert len(agent.study.trials) == 0
        for rec in (record(1, BASE, 0.6, True), pruned, silent):
            agent.observe(rec)
        got = [(t.state.name, t.intermediate_values) for t in agent.study.trials]
        assert got == [("COMPLETE", {}), ("PRUNED", {4: 0.21}), ("PRUNED", {})], got


# -- a cycle in flight that has overtaken the best (parallel trials) ---------------------
def _flight(cycle: int, params: dict[str, Any], value: float | None, step: int | None = 6) -> InFlight:
    return InFlight(cycle, Proposal(params=params, meta={"source": "screen"}), value, step)


def _moved_as_pbt(space: dict[str, Param], before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Every numeric parameter x0.8 or x1.25 (clamped; an int by at least one step), a numeric
    choice kept or a neighbour, a nominal one kept."""
    for name, p in space.items():
        b, a = before[name], after[name]
        if nominal(p):
            if a != b:
                return False
        elif p.type == "categorical":
            choices = list(p.choices or [])
            if abs(choices.index(a) - choices.index(b)) > 1:
                return False
        elif p.type == "int":
            if a not in {inside(p, int(round(b * f))) for f in (0.8, 1.25)} | {inside(p, b - 1), inside(p, b + 1)}:
                return False
        elif not any(math.isclose(a, inside(p, b * f)) for f in (0.8, 1.25)):
            return False
    return True


def test_a_cycle_in_flight_past_the_best_is_perturbed_instead_of_following_the_best() -> None:
    c = cfg(steer=True, screen=False)
    agent = BuiltinAgent(c)
    h = [with_analysis(record(1, BASE, 0.6, True), UNDERFIT)]  # the best's advice would move lr and dropout
    agent.observe(h[0])
    lead = {"lr": 1e-2, "width": 64, "dropout": 0.2, "opt": "adam"}
    ahead = _flight(2, lead, 0.85)
    first = agent.propose(replace(context(c, h, pending=(ahead.proposal,)), in_flight=(ahead,)))
    assert first.meta == {"source": "leader", "steered": True, "from_cycle": 2}
    assert first.params["opt"] == "adam" and first.params != lead and _moved_as_pbt(c.search_space, lead, first.params)
    assert "following cycle 2 in flight (acc 0.85 at step 6, past the best 0.6 of cycle 1)" in first.rationale
    pending = (ahead.proposal, first)
    second = agent.propose(replace(context(c, h, pending=pending), in_flight=(ahead, InFlight(3, first))))
    assert second.meta["source"] == "leader" and second.params not in (first.params, lead)
    pending = (*pending, second)
    third = agent.propose(replace(context(c, h, pending=pending), in_flight=(ahead, InFlight(3, first), InFlight(4, second))))
    assert third.meta["source"] == "analysis"  # two per leader: then the best's own advice again


def test_a_cycle_in_flight_not_past_the_best_by_the_delta_changes_nothing() -> None:
    c = cfg(steer=True, screen=False)
    c = c.model_copy(update={"safeguards": c.safeguards.model_copy(update={"min_improvement_delta": 0.001})})
    h = [with_analysis(record(1, BASE, 0.6, True), UNDERFIT)]
    code_change = InFlight(2, Proposal(params={**BASE, "lr": 1e-2}, patch="--- a/train.py\n+++ b/train.py\n"), 0.9, 6)
    for flight in (_flight(2, {**BASE, "lr": 1e-2}, 0.6005), _flight(2, {**BASE, "lr": 1e-2}, None),
                   _flight(2, {**BASE, "lr": 1e-2}, float("nan")), code_change):  # a code change's lead is its code's
        agent = BuiltinAgent(c)
        agent.observe(h[0])
        prop = agent.propose(replace(context(c, h, pending=(flight.proposal,)), in_flight=(flight,)))
        assert prop.meta["source"] == "analysis", flight  # min_improvement_delta (0.001) not cleared
    off = cfg(steer=False, screen=False)
    agent = BuiltinAgent(off)
    agent.observe(h[0])
    ahead = _flight(2, {**BASE, "lr": 1e-2}, 0.9)
    assert agent.propose(replace(context(off, h, pending=(ahead.proposal,)), in_flight=(ahead,))).meta["source"] == "tpe"


def test_the_leader_is_the_one_furthest_past_the_best_and_minimizing_counts_down() -> None:
    c = Config.model_validate({"project": {"seed": 7, "target_metric": {"name": "loss", "value": 0.01, "direction": "minimize"}},
                               "agents": {"steer": True, "screen": False}, "search_space": SPACE})
    agent = BuiltinAgent(c)
    h = [record(1, BASE, 0.5, True)]
    agent.observe(h[0])
    flights = (_flight(2, {**BASE, "width": 100}, 0.4), _flight(3, {**BASE, "width": 200}, 0.3, None), _flight(4, {**BASE, "width": 50}, 0.7))
    ctx = replace(context(c, h, pending=tuple(f.proposal for f in flights)), in_flight=flights, target_name="loss", direction="minimize")
    prop = agent.propose(ctx)
    assert prop.meta["from_cycle"] == 3 and "(loss 0.3 on its first run, past the best 0.5 of cycle 1)" in prop.rationale
    assert _moved_as_pbt(c.search_space, {**BASE, "width": 200}, prop.params)
