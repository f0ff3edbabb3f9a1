"""Safeguards as pure functions of the history.

``judge`` says whether one cycle is kept; ``before_cycle`` refuses to start a cycle
that a budget cannot pay for; ``after_cycle`` applies the stop rules in the spec's order
(target met, hard caps and budgets, circuit breaker, validation gate, plateau). Each stop
carries its reason and the evidence it was based on.

The rules read the whole history only through :class:`Totals`, running totals that the
loop updates once per recorded cycle, and otherwise look at its last few records: the
loop's time per cycle stays flat however many cycles a run records.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Sequence

from .config import Config
from .journal import cycle_folder
from .records import CycleRecord, Decision, StopReason, TrialStatus


@dataclass(frozen=True)
class Usage:
    """What the run has spent so far."""

    elapsed_s: float = 0.0
    tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class Totals:
    """What the rules need from the whole history, as running totals: O(1) per recorded cycle.

    ``Totals.of(history, cfg)`` builds them from scratch (tests, tools, resume); the loop
    calls :meth:`add` once per cycle instead of rescanning its history.
    """

    cycles: int = 0
    last_cycle: int = 0  # the highest cycle number recorded
    best: CycleRecord | None = None  # the latest kept cycle
    best_seen: float | None = None  # the best target metric of any cycle, kept or not
    streak: int = 0  # cycles since the last kept one
    gate_passed: int = 0  # cycles whose metric passed safeguards.min_validation_gate
    tokens: int = 0
    cost_usd: float = 0.0
    noise_ss: float = 0.0  # pooled sum of squares of repeated runs ...
    noise_dof: int = 0  # ... and its degrees of freedom
    verdicts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, history: Sequence[CycleRecord], cfg: Config) -> "Totals":
        t = cls()
        for rec in history:
            t.add(rec, cfg)
        return t

    def add(self, rec: CycleRecord, cfg: Config) -> None:
        self.cycles += 1
        self.last_cycle = max(self.last_cycle, rec.cycle)
        if rec.kept:
            self.best, self.streak = rec, 0
        else:
            self.streak += 1
        direction = cfg.target.dir
        if rec.metric is not None:
            if self.best_seen is None or direction.better(rec.metric, self.best_seen):
                self.best_seen = rec.metric
            gate = cfg.safeguards.min_validation_gate
            if gate is not None and direction.meets(rec.metric, gate):
                self.gate_passed += 1
        self.tokens += rec.tokens_used
        self.cost_usd += rec.cost_usd
        self.verdicts[rec.verdict] = self.verdicts.get(rec.verdict, 0) + 1
        ss, dof = _repeat_ss(rec)
        self.noise_ss += ss
        self.noise_dof += dof

    def plus(self, rec: CycleRecord, cfg: Config) -> "Totals":
        """A copy with ``rec`` added (the cycle being decided, before it is recorded)."""
        t = replace(self, verdicts=dict(self.verdicts))
        t.add(rec, cfg)
        return t

    @property
    def noise(self) -> float | None:
        """Pooled run-to-run standard deviation of the target metric (None: no repeated runs yet)."""
        return math.sqrt(self.noise_ss / self.noise_dof) if self.noise_dof else None


def usage_of(history: Sequence[CycleRecord], elapsed_s: float) -> Usage:
    return Usage(
        elapsed_s=elapsed_s,
        tokens=sum(r.tokens_used for r in history),
        cost_usd=sum(r.cost_usd for r in history),
    )


def best_of(history: Sequence[CycleRecord]) -> CycleRecord | None:
    """The latest kept cycle: each kept cycle beat the previous best by min_delta."""
    for rec in reversed(history):
        if rec.kept:
            return rec
    return None


def noise_std(history: Sequence[CycleRecord]) -> float | None:
    """Pooled run-to-run standard deviation of the target metric over cycles run with several seeds."""
    ss, dof = 0.0, 0
    for rec in history:
        s, d = _repeat_ss(rec)
        ss, dof = ss + s, dof + d
    return math.sqrt(ss / dof) if dof else None


def _repeat_ss(rec: CycleRecord) -> tuple[float, int]:
    """Sum of squares around the mean of a cycle's repeated runs, and its degrees of freedom."""
    values = [v for v in rec.result.repeats if math.isfinite(v)] if rec.result.status is TrialStatus.OK else []
    if len(values) < 2:
        return 0.0, 0
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values), len(values) - 1


def required_gain(cfg: Config, noise: float | None, n: int, n_best: int) -> float:
    """The smallest gain that counts: min_delta, or z x the noise of the difference of two means."""
    delta = cfg.safeguards.min_improvement_delta
    if noise is None:
        return delta
    return max(delta, cfg.noise.z * noise * math.sqrt(1.0 / n + 1.0 / n_best))


def judge(
    metric: float | None,
    status: TrialStatus,
    best: CycleRecord | None,
    cfg: Config,
    *,
    noise: float | None = None,
    n: int = 1,
) -> tuple[bool, str]:
    """(kept, verdict) for a cycle with this status and target metric (a mean over ``n`` seeds),
    given the best so far and, when known, the run-to-run noise."""
    if status is not TrialStatus.OK or metric is None or not math.isfinite(metric):
        return False, status.value if status is not TrialStatus.OK else "failed"
    direction = cfg.target.dir
    gate = cfg.safeguards.min_validation_gate
    if gate is not None and not direction.meets(metric, gate):
        return False, "below_gate"
    if best is None or best.metric is None:
        return True, "kept"
    gain = required_gain(cfg, noise, n, max(1, len(best.result.repeats)))
    if direction.better(metric, best.metric, gain):
        return True, "kept"
    return False, "discarded"


def _stop(reason: StopReason, message: str, **evidence: object) -> Decision:
    return Decision(action="stop", reason=reason, message=message, evidence=dict(evidence))


def budget_stop(history: Sequence[CycleRecord], cfg: Config, usage: Usage, started: int | None = None) -> Decision | None:
    """``started``: cycles recorded plus in flight (they count against max_cycles already)."""
    sg = cfg.safeguards
    n = len(history) if started is None else started
    if n >= sg.max_cycles:
        return _stop(
            StopReason.MAX_CYCLES,
            f"reached safeguards.max_cycles = {sg.max_cycles} ({n} cycles started)",
            cycles=n, max_cycles=sg.max_cycles,
        )
    if sg.total_time_limit_minutes is not None and usage.elapsed_s >= sg.total_time_limit_minutes * 60:
        return _stop(
            StopReason.TIME_BUDGET,
            f"used {usage.elapsed_s:.0f} s of safeguards.total_time_limit_minutes = {sg.total_time_limit_minutes:g}",
            elapsed_s=round(usage.elapsed_s, 3), limit_s=sg.total_time_limit_minutes * 60,
        )
    if sg.token_budget_total is not None and usage.tokens >= sg.token_budget_total:
        return _stop(
            StopReason.TOKEN_BUDGET,
            f"used {usage.tokens} tokens of safeguards.token_budget_total = {sg.token_budget_total}",
            tokens=usage.tokens, budget=sg.token_budget_total,
        )
    if sg.cost_budget_usd is not None and usage.cost_usd >= sg.cost_budget_usd:
        return _stop(
            StopReason.COST_BUDGET,
            f"spent ${usage.cost_usd:.4f} of safeguards.cost_budget_usd = ${sg.cost_budget_usd:g}",
            cost_usd=usage.cost_usd, budget=sg.cost_budget_usd,
        )
    return None


def estimate_cycle_s(history: Sequence[CycleRecord]) -> float:
    """Median duration of the recent cycles that ran (0 when none has)."""
    durations = [r.result.duration_s for r in history[-10:] if r.result.duration_s > 0]
    return statistics.median(durations) if durations else 0.0


def before_cycle(history: Sequence[CycleRecord], cfg: Config, usage: Usage, started: int | None = None) -> Decision:
    """Budgets are checked before spending: a cycle that cannot fit is not started."""
    stop = budget_stop(history, cfg, usage, started)
    if stop:
        return stop
    limit_min = cfg.safeguards.total_time_limit_minutes
    if limit_min is not None:
        left = limit_min * 60 - usage.elapsed_s
        need = estimate_cycle_s(history)
        if need > left:
            return _stop(
                StopReason.TIME_BUDGET,
                f"the next cycle would not fit: about {need:.1f} s needed (median of recent cycles), "
                f"{left:.1f} s left of safeguards.total_time_limit_minutes = {limit_min:g}",
                needed_s=round(need, 3), left_s=round(left, 3),
            )
    return Decision(action="continue", message="budgets allow another cycle")


def _failure_signature(rec: CycleRecord) -> tuple[str, str, str] | None:
    if rec.result.status in (TrialStatus.PRUNED, TrialStatus.CANCELLED):
        return None  # stopped on purpose: not a failure
    if rec.result.status is TrialStatus.OK and rec.verdict != "failed":
        return None
    if rec.verdict in ("kept", "discarded", "below_gate"):
        return None
    last_line = next((ln for ln in reversed(rec.result.stderr_tail.splitlines()) if ln.strip()), "")
    return (rec.result.failure.value, str(rec.result.exit_code), last_line.strip()[:200])


def after_cycle(history: Sequence[CycleRecord], cfg: Config, usage: Usage, totals: Totals | None = None) -> Decision:
    """The decision after the last cycle of ``history`` was recorded.

    ``totals``: the running totals of the whole history, this last cycle included; then
    ``history`` need only hold the last ``safeguards.max_consecutive_failures`` records
    (the loop passes a short tail). Without ``totals`` they are computed from ``history``.

    With an analysis agent (``agents.analysis_model`` not builtin) the spec's continue rule
    applies too: after a successful cycle that did not improve, the run goes on only when
    the analysis has a high-confidence recommendation (else: plateau, exit 3). The agent's
    own continue/stop is advice, recorded in the evidence, never obeyed.
    """
    d = _after_cycle_rules(history, cfg, usage, totals if totals is not None else Totals.of(history, cfg))
    if not history:
        return d
    last = history[-1]
    a = last.analysis
    if not d.stop and cfg.agents.analysis_model != "builtin" and last.result.status is TrialStatus.OK and not last.kept:
        if not any(r.confidence == "high" for r in (a.recommendations if a else ())):
            d = _stop(
                StopReason.PLATEAU,
                f"cycle {last.cycle} did not improve {cfg.target.name} and its analysis "
                f"({a.agent if a else 'none'}) has no high-confidence recommendation; with an analysis agent the run "
                "continues only while the metric improves or a recommendation is high-confidence (seed 000). "
                f"Analysis: runs/{cycle_folder(last.cycle)}/analysis.md",
                cycle=last.cycle, analysis_agent=a.agent if a else None,
                recommendations=[r.to_dict() for r in (a.recommendations if a else ())][:3],
            )
    if a is not None and a.advice:
        advice = {"agent": a.agent, "advice": a.advice, "diagnosis": a.diagnosis}
        d = Decision(action=d.action, reason=d.reason, message=d.message, evidence={**d.evidence, "analysis_advice": advice})
    return d


def _after_cycle_rules(history: Sequence[CycleRecord], cfg: Config, usage: Usage, totals: Totals) -> Decision:
    if not history:
        return Decision(action="continue", message="no cycle yet")
    sg = cfg.safeguards
    target = cfg.target
    last = history[-1]
    if last.kept and last.metric is not None and target.dir.meets(last.metric, target.value):
        return _stop(
            StopReason.TARGET_MET,
            f"target met at cycle {last.cycle}: {target.name} = {last.metric:.6g} ({target.describe()})",
            cycle=last.cycle, metric=last.metric, target=target.value,
        )
    stop = budget_stop(history, cfg, usage, started=totals.cycles)
    if stop:
        return stop
    k = sg.max_consecutive_failures
    sigs = [_failure_signature(r) for r in history[-k:]]
    if len(sigs) == k and sigs[0] is not None and all(s == sigs[0] for s in sigs):
        failure, exit_code, line = sigs[0]
        return _stop(
            StopReason.CIRCUIT_BREAKER,
            f"the last {k} cycles failed the same way ({failure}, exit code {exit_code}: {line or 'no stderr'}); "
            f"safeguards.max_consecutive_failures = {k}. Fix the cause, then `ralph-ml resume`. "
            f"Logs: runs/{cycle_folder(last.cycle)}/logs/stderr.log",
            cycles=[r.cycle for r in history[-k:]], failure=failure, exit_code=exit_code, stderr_last_line=line,
        )
    gate = sg.min_validation_gate
    if gate is not None and totals.cycles >= sg.validation_gate_cycles and not totals.gate_passed:
        return _stop(
            StopReason.VALIDATION_GATE,
            f"no cycle passed the minimum validation gate ({target.name} vs {gate:g}) in "
            f"{totals.cycles} cycles (safeguards.validation_gate_cycles = {sg.validation_gate_cycles}); "
            f"best seen: {totals.best_seen}",
            gate=gate, cycles=totals.cycles, best_seen=totals.best_seen,
        )
    streak = totals.streak
    n = sg.no_improvement_stop_cycles
    if streak >= n:
        best = totals.best
        return _stop(
            StopReason.PLATEAU,
            f"no improvement of at least {sg.min_improvement_delta:g} in {target.name} for {streak} cycles "
            f"(safeguards.no_improvement_stop_cycles = {n}); best {best.metric:.6g} at cycle {best.cycle}"
            if best and best.metric is not None
            else f"no successful cycle in {streak} cycles (safeguards.no_improvement_stop_cycles = {n})",
            streak=streak, min_delta=sg.min_improvement_delta,
            best_cycle=best.cycle if best else None, best_metric=best.metric if best else None,
        )
    high = [r for r in (last.analysis.recommendations if last.analysis else ()) if r.confidence == "high"]
    if last.kept:
        why = f"{target.name} improved to {last.metric:.6g}"
    elif high:
        why = f"high-confidence recommendation: {high[0].action} ({high[0].rationale})"
    else:
        why = f"exploring: {streak} of {n} cycles without improvement used"
    return Decision(action="continue", message=why, evidence={"no_improvement_streak": streak})
