from __future__ import annotations

import pytest

from ralph_ml.config import Config
from ralph_ml.decision import Usage, after_cycle, before_cycle, best_of, judge
from ralph_ml.records import Analysis, CycleRecord, FailureClass, Proposal, Recommendation, StopReason, TrialResult, TrialStatus


def cfg(**safeguards: object) -> Config:
    return Config.model_validate(
        {"project": {"target_metric": {"name": "acc", "value": 0.9}}, "safeguards": {"max_cycles": 100, **safeguards}}
    )


def history(metrics: list[float | None], c: Config, *, failure: FailureClass = FailureClass.CRASH, stderr: str = "boom") -> list[CycleRecord]:
    out: list[CycleRecord] = []
    for i, m in enumerate(metrics, 1):
        status = TrialStatus.OK if m is not None else TrialStatus.FAILED
        kept, verdict = judge(m, status, best_of(out), c)
        res = TrialResult(status=status, failure=FailureClass.NONE if m is not None else failure, exit_code=0 if m is not None else 1,
                          stderr_tail="" if m is not None else stderr, started_at=0.0, ended_at=10.0)
        out.append(CycleRecord(cycle=i, proposal=Proposal(params={"i": i}), result=res, metric=m, kept=kept, verdict=verdict))
    return out


def test_judge_keeps_only_gains_of_at_least_min_delta() -> None:
    c = cfg(min_improvement_delta=0.01)
    h = history([0.5], c)
    assert judge(0.505, TrialStatus.OK, best_of(h), c) == (False, "discarded")
    assert judge(0.51, TrialStatus.OK, best_of(h), c) == (True, "kept")
    assert judge(None, TrialStatus.FAILED, best_of(h), c) == (False, "failed")
    assert judge(0.99, TrialStatus.INVALID, best_of(h), c) == (False, "invalid")


def test_minimize_direction() -> None:
    c = Config.model_validate({"project": {"target_metric": {"name": "val_loss", "value": 0.1}}})
    h = history([0.5], c)
    assert judge(0.4, TrialStatus.OK, best_of(h), c)[0] and not judge(0.6, TrialStatus.OK, best_of(h), c)[0]
    d = after_cycle(history([0.5, 0.09], c), c, Usage())
    assert d.reason is StopReason.TARGET_MET and d.exit_code == 0


def test_target_met_stops_with_exit_0() -> None:
    c = cfg()
    d = after_cycle(history([0.5, 0.95], c), c, Usage())
    assert d.stop and d.reason is StopReason.TARGET_MET and d.exit_code == 0 and d.evidence["cycle"] == 2


def test_max_cycles_exit_2() -> None:
    c = cfg(max_cycles=3)
    d = after_cycle(history([0.5, 0.6, 0.7], c), c, Usage())
    assert d.reason is StopReason.MAX_CYCLES and d.exit_code == 2
    assert before_cycle(history([0.5, 0.6, 0.7], c), c, Usage()).reason is StopReason.MAX_CYCLES


def test_plateau_exit_3_after_n_cycles_without_min_delta() -> None:
    c = cfg(no_improvement_stop_cycles=3, min_improvement_delta=0.01)
    assert not after_cycle(history([0.5, 0.505, 0.505], c), c, Usage()).stop
    d = after_cycle(history([0.5, 0.505, 0.505, 0.509], c), c, Usage())
    assert d.reason is StopReason.PLATEAU and d.exit_code == 3 and d.evidence["streak"] == 3 and d.evidence["best_cycle"] == 1


def test_total_time_limit_and_cycle_that_cannot_fit() -> None:
    c = cfg(total_time_limit_minutes=1)
    h = history([0.5], c)  # each cycle took 10 s
    assert after_cycle(h, c, Usage(elapsed_s=61)).reason is StopReason.TIME_BUDGET
    assert not before_cycle(h, c, Usage(elapsed_s=45)).stop
    d = before_cycle(h, c, Usage(elapsed_s=55))
    assert d.reason is StopReason.TIME_BUDGET and d.exit_code == 2 and d.evidence["needed_s"] == 10.0


def test_token_and_cost_budgets() -> None:
    c = cfg(token_budget_total=100, cost_budget_usd=1.0)
    assert before_cycle([], c, Usage(tokens=100)).reason is StopReason.TOKEN_BUDGET
    assert before_cycle([], c, Usage(cost_usd=1.5)).reason is StopReason.COST_BUDGET


def test_circuit_breaker_needs_identical_failures() -> None:
    c = cfg(max_consecutive_failures=3, no_improvement_stop_cycles=50)
    assert after_cycle(history([None, None, None], c), c, Usage()).reason is StopReason.CIRCUIT_BREAKER
    mixed = history([None, None], c) + history([None], c, stderr="other error")
    mixed = [CycleRecord(**{**r.__dict__, "cycle": i + 1}) for i, r in enumerate(mixed)]
    assert not after_cycle(mixed, c, Usage()).stop


def test_validation_gate() -> None:
    c = cfg(min_validation_gate=0.6, validation_gate_cycles=3, no_improvement_stop_cycles=50)
    h = history([0.5, 0.55], c)
    assert [r.verdict for r in h] == ["below_gate", "below_gate"]
    assert not after_cycle(h, c, Usage()).stop
    d = after_cycle(history([0.5, 0.55, 0.58], c), c, Usage())
    assert d.reason is StopReason.VALIDATION_GATE and d.exit_code == 2
    assert not after_cycle(history([0.5, 0.65, 0.58], c), c, Usage()).stop


def test_continue_cites_a_high_confidence_recommendation() -> None:
    c = cfg(no_improvement_stop_cycles=5)
    h = history([0.5, 0.4], c)
    rec = Recommendation(action="increase:dropout", rationale="over-fitting", confidence="high", param="dropout", direction="increase")
    h[-1] = CycleRecord(**{**h[-1].__dict__, "analysis": Analysis(diagnosis="overfitting", summary="", recommendations=(rec,))})
    d = after_cycle(h, c, Usage())
    assert not d.stop and "increase:dropout" in d.message


@pytest.mark.parametrize("reason, code", [(StopReason.TARGET_MET, 0), (StopReason.MANUAL_STOP, 0), (StopReason.MAX_CYCLES, 2),
                                          (StopReason.CIRCUIT_BREAKER, 2), (StopReason.PLATEAU, 3), (StopReason.FROZEN_BROKEN, 4)])
def test_exit_codes_of_the_cli_contract(reason: StopReason, code: int) -> None:
    assert reason.exit_code == code


def test_noise_aware_keep_needs_a_gain_beyond_the_noise() -> None:
    c = Config.model_validate({"project": {"target_metric": {"name": "acc", "value": 0.99}},
                               "safeguards": {"min_improvement_delta": 0.001}, "noise": {"z": 2.0}})
    base = CycleRecord(cycle=1, proposal=Proposal(), metric=0.90, kept=True, verdict="kept",
                       result=TrialResult(status=TrialStatus.OK, repeats=(0.88, 0.90, 0.92)))
    from ralph_ml.decision import noise_std
    sd = noise_std([base])
    assert sd is not None and abs(sd - 0.02) < 1e-9
    # +0.02 on one seed is inside the noise (needs 2 * 0.02 * sqrt(1 + 1/3) = 0.046)
    assert judge(0.92, TrialStatus.OK, base, c, noise=sd, n=1) == (False, "discarded")
    assert judge(0.95, TrialStatus.OK, base, c, noise=sd, n=1) == (True, "kept")
    # with three seeds the bar drops to 2 * 0.02 * sqrt(2/3) = 0.033
    assert judge(0.935, TrialStatus.OK, base, c, noise=sd, n=3) == (True, "kept")
    # without a noise estimate only min_delta applies
    assert judge(0.902, TrialStatus.OK, base, c) == (True, "kept")


@pytest.mark.parametrize("seed", range(6))
def test_running_totals_and_a_short_tail_decide_exactly_as_the_whole_history(seed: int) -> None:
    """The loop passes after_cycle the last few records plus running totals (flat cost per
    cycle); every rule must then decide exactly as it does on the whole history."""
    import random

    from ralph_ml.decision import Totals

    rng = random.Random(seed)
    c = cfg(max_cycles=60, no_improvement_stop_cycles=rng.choice([4, 8, 30]), max_consecutive_failures=rng.choice([1, 3]),
            min_validation_gate=rng.choice([None, 0.3, 0.7]), validation_gate_cycles=rng.choice([2, 5]),
            min_improvement_delta=0.01)
    metrics = [None if rng.random() < 0.3 else round(rng.uniform(0.0, 0.85), 3) for _ in range(50)]
    h = history(metrics, c)
    totals = Totals()
    k = c.safeguards.max_consecutive_failures
    for n, rec in enumerate(h, 1):
        totals.add(rec, c)
        whole = after_cycle(h[:n], c, Usage())
        short = after_cycle(h[max(0, n - k):n], c, Usage(), totals)
        assert (short.action, short.reason, short.message, short.evidence) == (whole.action, whole.reason, whole.message, whole.evidence), n
    assert totals == Totals.of(h, c) and totals.best is best_of(h)
