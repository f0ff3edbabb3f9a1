"""Frozen records passed between the loop and its plugins.

Plugins (agents, executors, analysis) receive these read-only records, never the loop.
All records round-trip through ``to_dict`` / ``from_dict`` for the journal.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping


class TrialStatus(str, enum.Enum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    PRUNED = "pruned"
    INVALID = "invalid"
    CANCELLED = "cancelled"


# Verdicts (and statuses) of trials stopped before their end, by a pruner or by the run stopping
# (a manual stop, a stop rule, the total time limit): the configuration did not fail.
STOPPED_EARLY = frozenset({TrialStatus.PRUNED.value, TrialStatus.CANCELLED.value})
# Verdicts of noise-aware keeps for a gain that did not hold on re-run: neither helped nor hurt.
UNPROVEN = frozenset({"noise", "unconfirmed"})


def partial_value(verdict: str, metrics: Mapping[str, Any], name: str) -> float | None:
    """For a trial stopped early (``STOPPED_EARLY``), the value of ``name`` it had reached, when
    finite; None otherwise (a trial that ran to its end has its score, not a partial value)."""
    v = metrics.get(name) if verdict in STOPPED_EARLY else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


class FailureClass(str, enum.Enum):
    NONE = "none"
    CRASH = "crash"  # non-zero exit code
    OOM = "oom"  # out of memory (host or accelerator)
    NAN = "nan"  # target metric is NaN or infinite
    MISSING_METRIC = "missing_metric"  # the target metric was never reported
    TIMEOUT = "timeout"  # killed by the per-cycle time limit
    GUARD_REJECTED = "guard_rejected"  # the proposal was refused before running
    FROZEN_MODIFIED = "frozen_modified"  # a frozen file changed during the cycle
    AGENT_ERROR = "agent_error"  # the agent could not propose
    CANCELLED = "cancelled"  # manual stop while the trial ran


# Metric names where lower is better: as parts of the name, and as whole words of it.
_LOWER_PARTS = ("loss", "error", "perplexity", "nll", "mse", "mae", "wer", "cer", "regret")
_LOWER_WORDS = frozenset({"mape", "msle", "ppl", "bpc", "bpb", "fid", "ece", "brier"})


def lower_is_better(name: str) -> bool:
    """A guess from a metric's name, for when no direction is given: ``val_loss``,
    ``val_rmse``, ``test_wer``, ``ppl`` are minimized; ``val_accuracy``, ``f1``, ``auc`` maximized."""
    low = name.lower()
    return any(h in low for h in _LOWER_PARTS) or bool(_LOWER_WORDS & set(re.split(r"[^a-z0-9]+", low)))


class Direction(str, enum.Enum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"

    def better(self, a: float, b: float, min_delta: float = 0.0) -> bool:
        """True when ``a`` beats ``b`` by at least ``min_delta`` in this direction."""
        if self is Direction.MAXIMIZE:
            return a >= b + min_delta if min_delta > 0 else a > b
        return a <= b - min_delta if min_delta > 0 else a < b

    def meets(self, value: float, target: float) -> bool:
        return value >= target if self is Direction.MAXIMIZE else value <= target


class StopReason(str, enum.Enum):
    TARGET_MET = "target_met"
    MAX_CYCLES = "max_cycles"
    PLATEAU = "plateau"
    TIME_BUDGET = "time_budget"
    TOKEN_BUDGET = "token_budget"
    COST_BUDGET = "cost_budget"
    CIRCUIT_BREAKER = "circuit_breaker"
    VALIDATION_GATE = "validation_gate"
    MANUAL_STOP = "manual_stop"
    FROZEN_BROKEN = "frozen_broken"
    SEARCH_EXHAUSTED = "search_exhausted"
    ERROR = "error"

    @property
    def exit_code(self) -> int:
        """Exit codes of the CLI contract: 0 clean, 2 safeguard, 3 plateau, 4 unrecoverable."""
        return _EXIT_CODES[self]


_EXIT_CODES = {
    StopReason.TARGET_MET: 0,
    StopReason.MANUAL_STOP: 0,
    StopReason.SEARCH_EXHAUSTED: 0,
    StopReason.MAX_CYCLES: 2,
    StopReason.TIME_BUDGET: 2,
    StopReason.TOKEN_BUDGET: 2,
    StopReason.COST_BUDGET: 2,
    StopReason.CIRCUIT_BREAKER: 2,
    StopReason.VALIDATION_GATE: 2,
    StopReason.PLATEAU: 3,
    StopReason.FROZEN_BROKEN: 4,
    StopReason.ERROR: 4,
}


def _clean(value: Any) -> Any:
    """JSON-safe copy: enums to values, non-finite floats to strings."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _unclean_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


class _Record:
    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))  # type: ignore[call-overload,no-any-return]


@dataclass(frozen=True)
class Proposal(_Record):
    """What an agent wants the next cycle to run."""

    params: dict[str, Any] = field(default_factory=dict)
    patch: str | None = None  # unified diff against the current best code, or None
    rationale: str = ""
    agent: str = ""
    tokens_used: int = 0
    cost_usd: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Proposal:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class TrialSpec(_Record):
    """Everything an executor needs to run one trial; paths are absolute strings."""

    run_id: str
    cycle: int
    cycle_dir: str  # runs/cycle_NNNN
    code_dir: str  # runs/cycle_NNNN/code: the trial's working directory
    train_cmd: str
    eval_cmd: str | None
    params: dict[str, Any]
    seed: int
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)  # full RALPH_* environment + extras
    frozen_hashes: dict[str, str] = field(default_factory=dict)  # checked before eval_cmd

    @property
    def metrics_path(self) -> str:
        return self.env.get("RALPH_METRICS_PATH", "")


@dataclass(frozen=True)
class TrialResult(_Record):
    """How a trial ended. A failed trial has no score: ``metrics`` may be partial."""

    status: TrialStatus
    failure: FailureClass = FailureClass.NONE
    exit_code: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    started_at: float = 0.0
    ended_at: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    message: str = ""
    stderr_tail: str = ""
    # The target metric of every seed when the trial was repeated (noise-aware keeps), the
    # first run included; the cycle's metric is their mean. Empty: run once.
    repeats: tuple[float, ...] = ()
    # Why the trial ended before its own last step, and the reported step it stopped at:
    # "target" (its reported target metric met the target: pruning.stop_at_target) or
    # "pruner" (status pruned). "": it ran to its end, or was cancelled.
    stopped_by: str = ""
    stopped_at_step: int | None = None

    @property
    def duration_s(self) -> float:
        return max(0.0, self.ended_at - self.started_at)

    def status_text(self) -> str:
        """The status as the report's cycle tables show it: ``ok``, ``failed (crash)``,
        ``ok, stopped at the target (step 19)``, ``pruned (step 4)``."""
        shown = self.failure is not FailureClass.NONE and self.failure.value != self.status.value  # not "cancelled (cancelled)"
        text = self.status.value + (f" ({self.failure.value})" if shown else "")
        if self.stopped_at_step is not None:
            text += f", stopped at the target (step {self.stopped_at_step})" if self.stopped_by == "target" else f" (step {self.stopped_at_step})"
        return text

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialResult:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["status"] = TrialStatus(kw["status"])
        kw["failure"] = FailureClass(kw.get("failure", "none"))
        kw["metrics"] = _unclean_metrics(kw.get("metrics", {}))
        kw["repeats"] = tuple(float(v) for v in kw.get("repeats", ()))
        return cls(**kw)


@dataclass(frozen=True)
class Recommendation(_Record):
    action: str  # e.g. "decrease:lr", "increase:epochs", "explore"
    rationale: str
    confidence: str  # "high" | "medium" | "low"
    param: str | None = None
    direction: str | None = None  # "increase" | "decrease"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recommendation:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Analysis(_Record):
    diagnosis: str  # improving | plateau | diverged | overfitting | underfitting | failed | baseline
    summary: str
    recommendations: tuple[Recommendation, ...] = ()
    agent: str = "builtin"  # who wrote it: builtin, or the analysis agent's name
    advice: str | None = None  # an analysis agent's "continue" | "stop": advice, never a decision
    tokens_used: int = 0  # spent by the analysis agent (counted in the run's budgets)
    cost_usd: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Analysis:
        recs = tuple(Recommendation.from_dict(r) for r in d.get("recommendations", ()))
        return cls(
            diagnosis=d.get("diagnosis", ""),
            summary=d.get("summary", ""),
            recommendations=recs,
            agent=str(d.get("agent", "builtin")),
            advice=d.get("advice"),
            tokens_used=int(d.get("tokens_used", 0)),
            cost_usd=float(d.get("cost_usd", 0.0)),
        )


@dataclass(frozen=True)
class Decision(_Record):
    """The decision engine's verdict after a cycle (or before one, for budgets)."""

    action: str  # "continue" | "stop"
    reason: StopReason | None = None
    message: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def stop(self) -> bool:
        return self.action == "stop"

    @property
    def exit_code(self) -> int:
        return 0 if self.reason is None else self.reason.exit_code

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        reason = d.get("reason")
        return cls(
            action=d["action"],
            reason=StopReason(reason) if reason else None,
            message=d.get("message", ""),
            evidence=dict(d.get("evidence", {})),
        )


@dataclass(frozen=True)
class CycleRecord(_Record):
    """One recorded cycle: the unit of history every plugin reads."""

    cycle: int
    proposal: Proposal
    result: TrialResult
    metric: float | None  # the target metric, None when the trial did not produce a valid one
    kept: bool  # improved the best by at least min_delta (and passed the gate)
    verdict: str  # kept | discarded | below_gate | noise | unconfirmed | failed | invalid | timeout | pruned | cancelled
    analysis: Analysis | None = None
    commit: str | None = None  # git commit of this cycle's code, when versioned
    frozen_hashes: dict[str, str] = field(default_factory=dict)
    parent: int | None = None  # the version (cycle) this cycle's code derives from; None: the workspace

    @property
    def tokens_used(self) -> int:
        """Tokens the cycle cost: its proposal plus its analysis agent."""
        return self.proposal.tokens_used + (self.analysis.tokens_used if self.analysis else 0)

    @property
    def cost_usd(self) -> float:
        return self.proposal.cost_usd + (self.analysis.cost_usd if self.analysis else 0.0)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CycleRecord:
        metric = d.get("metric")
        return cls(
            cycle=int(d["cycle"]),
            proposal=Proposal.from_dict(d["proposal"]),
            result=TrialResult.from_dict(d["result"]),
            metric=None if metric is None else float(metric),
            kept=bool(d["kept"]),
            verdict=str(d["verdict"]),
            analysis=Analysis.from_dict(d["analysis"]) if d.get("analysis") else None,
            commit=d.get("commit"),
            frozen_hashes=dict(d.get("frozen_hashes", {})),
            parent=d.get("parent"),
        )
