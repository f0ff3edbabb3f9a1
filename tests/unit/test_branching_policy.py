"""The code agents' draft / debug / improve policy (ralph_ml.agents.branching) on hand-built histories."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ralph_ml.agents.base import AgentContext
from ralph_ml.agents.branching import choose, failure_brief, fix_target, top_versions
from ralph_ml.config import Config
from ralph_ml.records import CycleRecord, FailureClass, Proposal, TrialResult, TrialStatus

PATCH = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-A = 1\n+A = 2\n"


def cfg(**branching: Any) -> Config:
    return Config.model_validate({"project": {"target_metric": {"name": "acc", "value": 2.0}}, "branching": branching})


def ok(cycle: int, metric: float, *, parent: int | None = None, kept: bool = False, patch: bool = True) -> CycleRecord:
    return CycleRecord(cycle=cycle, proposal=Proposal(patch=PATCH if patch else None), parent=parent,
                       result=TrialResult(status=TrialStatus.OK, metrics={"acc": metric}), metric=metric,
                       kept=kept, verdict="kept" if kept else "discarded")


def failed(cycle: int, *, parent: int | None = None, failure: FailureClass = FailureClass.CRASH,
           status: TrialStatus = TrialStatus.FAILED, fix_of: int | None = None, patch: bool = True) -> CycleRecord:
    meta = {"parent": parent, "fix_of": fix_of} if fix_of is not None else {}
    return CycleRecord(cycle=cycle, proposal=Proposal(patch=PATCH if patch else None, meta=meta), parent=parent,
                       result=TrialResult(status=status, failure=failure, exit_code=1, message="exit code 1",
                                          stderr_tail="Traceback ...\nNameError: name 'oops' is not defined"),
                       metric=None, kept=False, verdict="failed")


def ctx(history: list[CycleRecord], pending: tuple[Proposal, ...] = (), direction: str = "maximize") -> AgentContext:
    best = next((r for r in reversed(history) if r.kept), None)
    return AgentContext(cycle=len(history) + 1, history=tuple(history), best=best, last_analysis=None, search_space={},
                        target_name="acc", direction=direction, pending=pending)


def test_no_successful_version_is_a_draft_on_the_workspace() -> None:
    base = choose(cfg(max_fix_attempts=0), ctx([failed(1)]))
    assert base.cycle is None and base.fix_of is None and base.meta == {"parent": None}
    assert base.why.startswith("draft")


def test_the_latest_failure_after_the_best_is_handed_back_for_a_fix() -> None:
    h = [ok(1, 0.5, kept=True, patch=False), failed(2, parent=1), ok(3, 0.4, parent=1), failed(4, parent=1)]
    base = choose(cfg(), ctx(h))
    assert base.cycle == 4 and base.fix_of == 4 and base.meta == {"parent": 4, "fix_of": 4}
    assert base.why == "fix of cycle 4 (crash), attempt 1 of 2 (branching.max_fix_attempts)"
    # its fix in flight: the older failure is next, then nothing (the improve of the best)
    assert choose(cfg(), ctx(h, pending=(Proposal(meta={"parent": 4, "fix_of": 4}),))).fix_of == 2
    both = (Proposal(meta={"parent": 4, "fix_of": 4}), Proposal(meta={"parent": 2, "fix_of": 2}))
    assert choose(cfg(), ctx(h, pending=both)).cycle == 1


def test_failures_before_the_best_and_failures_that_never_ran_are_not_fixed() -> None:
    h = [ok(1, 0.5, kept=True), failed(2, parent=1), ok(3, 0.6, parent=1, kept=True)]
    assert fix_target(cfg(), h, (), h[-1]) is None  # superseded: cycle 3 is the best now
    never_ran = [
        failed(4, parent=3, failure=FailureClass.GUARD_REJECTED, status=TrialStatus.INVALID),
        failed(5, parent=3, failure=FailureClass.NONE, status=TrialStatus.PRUNED),
        failed(6, parent=3, failure=FailureClass.CANCELLED, status=TrialStatus.CANCELLED),
        failed(7, parent=3, patch=False),  # params only: no code change to fix
    ]
    assert fix_target(cfg(), h + never_ran, (), h[-1]) is None
    for fixable in (FailureClass.OOM, FailureClass.NAN, FailureClass.MISSING_METRIC):
        assert fix_target(cfg(), [*h, failed(8, parent=3, failure=fixable)], (), h[-1]) is not None
    timed_out = failed(9, parent=3, failure=FailureClass.TIMEOUT, status=TrialStatus.TIMEOUT)
    assert fix_target(cfg(), [*h, timed_out], (), h[-1]) is timed_out


def test_a_failed_fix_is_handed_back_until_the_chain_is_max_fix_attempts_long() -> None:
    h = [ok(1, 0.5, kept=True), failed(2, parent=1), failed(3, parent=2, fix_of=2)]
    base = choose(cfg(max_fix_attempts=2), ctx(h))
    assert base.fix_of == 3 and "attempt 2 of 2" in base.why
    assert choose(cfg(max_fix_attempts=1), ctx(h)).cycle == 1  # chain used up: improve the best
    h.append(failed(4, parent=3, fix_of=3))
    assert choose(cfg(max_fix_attempts=2), ctx(h)).cycle == 1
    assert choose(cfg(max_fix_attempts=3), ctx(h)).fix_of == 4
    assert choose(cfg(max_fix_attempts=0), ctx(h[:2])).fix_of is None


def test_top_k_spreads_parallel_changes_over_the_best_versions() -> None:
    h = [ok(1, 0.5, kept=True, patch=False), ok(2, 0.7, parent=1, kept=True), ok(3, 0.6, parent=2), ok(4, 0.65, parent=2)]
    assert [r.cycle for r in top_versions(h, "maximize", 3)] == [2, 4, 3]
    assert [r.cycle for r in top_versions(h, "minimize", 2)] == [1, 3]
    assert choose(cfg(top_k=1), ctx(h, pending=(Proposal(meta={"parent": 2}),))).cycle == 2  # always the best
    k2 = cfg(top_k=2)
    assert choose(k2, ctx(h)).cycle == 2
    assert choose(k2, ctx(h, pending=(Proposal(meta={"parent": 2}),))).cycle == 4
    assert choose(k2, ctx(h, pending=(Proposal(),))).cycle == 4  # no parent named: the loop builds it on the best
    both = (Proposal(meta={"parent": 2}), Proposal(meta={"parent": 4}))
    pick = choose(k2, ctx(h, pending=both))
    assert pick.cycle == 2 and pick.meta == {"parent": 2} and "the best version" in pick.why
    second = choose(k2, ctx(h, pending=both[:1]))
    assert second.why == "improve the number 2 version (branching.top_k = 2): cycle 4, 0.65"


def test_a_version_that_scored_higher_but_was_not_kept_never_ranks_ahead_of_the_best() -> None:
    # cycle 3 beat the best by less than min_improvement_delta (or the noise test): discarded
    h = [ok(1, 0.5, kept=True, patch=False), ok(2, 0.700, parent=1, kept=True), ok(3, 0.705, parent=2), ok(4, 0.6, parent=2)]
    best = h[1]
    assert [r.cycle for r in top_versions(h, "maximize", 2, best)] == [2, 3]
    assert [r.cycle for r in top_versions(h, "maximize", 2)] == [3, 2]  # by raw score alone
    pick = choose(cfg(top_k=1), ctx(h))
    assert pick.cycle == 2 and pick.why == "improve the best version: cycle 2, 0.7"
    assert choose(cfg(top_k=2), ctx(h, pending=(Proposal(meta={"parent": 2}),))).cycle == 3


def rejected(cycle: int, fix_of: int, message: str) -> CycleRecord:
    """A fix of ``fix_of`` that the guard refused: it never ran."""
    rec = failed(cycle, parent=fix_of, fix_of=fix_of, failure=FailureClass.GUARD_REJECTED, status=TrialStatus.INVALID)
    return dataclasses.replace(rec, result=dataclasses.replace(rec.result, message=message, stderr_tail=""))


def test_a_fix_that_never_ran_hands_the_failure_back_with_the_reason_within_the_loops_limit() -> None:
    h = [ok(1, 0.5, kept=True), failed(2, parent=1)]
    h.append(rejected(3, 2, "the patch does not apply: hunk 1 context 'A = 3' not found in train.py"))
    base = choose(cfg(max_fix_attempts=2), ctx(h))
    assert base.fix_of == 2 and base.meta == {"parent": 2, "fix_of": 2}
    brief = failure_brief(h[1], base.why, history=h)
    assert "An earlier fix of it (cycle 3) never ran: guard_rejected: the patch does not apply" in brief
    # the loop refuses a version's third fix when max_fix_attempts = 2, so the policy stops at two
    h.append(rejected(4, 2, "the patch does not apply"))
    assert choose(cfg(max_fix_attempts=2), ctx(h)).cycle == 1
    assert choose(cfg(max_fix_attempts=3), ctx(h)).fix_of == 2
    # a fix that ran settles its version, whatever became of it
    ran = [ok(1, 0.5, kept=True), failed(2, parent=1), dataclasses.replace(ok(3, 0.4, parent=2), proposal=Proposal(patch=PATCH, meta={"parent": 2, "fix_of": 2}))]
    assert fix_target(cfg(max_fix_attempts=3), ran, (), ran[0]) is None


def test_with_trials_in_parallel_a_failure_recorded_after_the_best_is_fixed_whatever_its_cycle_number() -> None:
    # cycles 3 and 4 ran at once: 4 ended first and became the best, then 3 crashed
    h = [ok(1, 0.5, kept=True, patch=False), ok(2, 0.6, parent=1, kept=True), ok(4, 0.7, parent=2, kept=True), failed(3, parent=2)]
    assert fix_target(cfg(), h, (), h[2]) is h[3]
    # recorded before the best: superseded
    h2 = [ok(1, 0.5, kept=True, patch=False), failed(3, parent=1), ok(4, 0.7, parent=1, kept=True)]
    assert fix_target(cfg(), h2, (), h2[2]) is None


def test_failure_brief_names_the_change_the_error_and_the_diff() -> None:
    text = failure_brief(failed(2, parent=1), "fix of cycle 2 (crash), attempt 1 of 2")
    assert "Cycle 2 tried this change: patch: train.py (+1/-1)" in text
    assert "crash (status failed, exit code 1)" in text and "NameError: name 'oops' is not defined" in text
    assert "+A = 2" in text and text.endswith("Your task: the fix of cycle 2 (crash), attempt 1 of 2.")


@pytest.mark.parametrize("bad", [{"top_k": 0}, {"max_fix_attempts": -1}])
def test_branching_keys_are_checked(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        cfg(**bad)
