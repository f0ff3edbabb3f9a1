"""The agent plugin contracts: frozen context in, validated proposal (or analysis) out."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..records import Analysis, CycleRecord, Proposal, TrialResult


@dataclass(frozen=True)
class InFlight:
    """A cycle in flight, as far as it has got: its latest target metric, from the last
    progress row that reports it (``step``), or its first run's once the trial has ended
    (``step`` None; its noise repeats may still run). ``value`` None: nothing reported yet."""

    cycle: int
    proposal: Proposal
    value: float | None = None
    step: int | None = None


@dataclass(frozen=True)
class AgentContext:
    """A read-only view of the run that an agent may use to propose the next cycle."""

    cycle: int  # the cycle being proposed (1-based)
    history: tuple[CycleRecord, ...]
    best: CycleRecord | None
    last_analysis: Analysis | None
    search_space: Mapping[str, Any]  # name -> config.Param
    target_name: str
    direction: str  # "maximize" | "minimize"
    tokens_left: int | None = None  # of safeguards.token_budget_total (None: no budget)
    cost_left_usd: float | None = None  # of safeguards.cost_budget_usd
    tokens_left_cycle: int | None = None  # of safeguards.token_budget_per_cycle
    cycle_dir: str | None = None  # runs/cycle_NNNN: agents write transcripts under agent/
    pending: tuple[Proposal, ...] = ()  # proposals of the cycles in flight (parallel trials)
    in_flight: tuple[InFlight, ...] = ()  # the same cycles, with how far each has got
    # Calls each file must keep (files.required_calls, as fixed when the run started): the
    # guard rejects a change that drops one.
    required_calls: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class Agent(abc.ABC):
    """Proposes experiments. Agents are untrusted: the loop validates what they return."""

    name: str = ""

    @abc.abstractmethod
    def propose(self, ctx: AgentContext) -> Proposal | None:
        """The next experiment, or raise AgentError when none can be made.

        With parallel trials an agent may return None to wait: the loop asks again once a
        cycle in flight (``ctx.pending``) has been recorded."""

    def observe(self, record: CycleRecord) -> None:  # noqa: B027 - optional hook
        """Called once for every recorded cycle, in order (including replayed ones on resume)."""


@dataclass(frozen=True)
class AnalysisContext:
    """What an analysis agent sees of one finished cycle (log tails, never whole files)."""

    cycle: int
    proposal: Proposal
    result: TrialResult
    metric: float | None
    kept: bool
    verdict: str
    builtin: Analysis  # the built-in diagnosis, given to the agent as a starting point
    history: tuple[CycleRecord, ...]  # the cycles before this one
    progress: tuple[Mapping[str, Any], ...] = ()  # the learning curve (progress.jsonl rows)
    stdout_tail: str = ""
    stderr_tail: str = ""
    target_name: str = ""
    direction: str = "maximize"
    tokens_left: int | None = None
    cost_left_usd: float | None = None
    tokens_left_cycle: int | None = None
    cycle_dir: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class Analyst(abc.ABC):
    """Turns a finished cycle into an :class:`Analysis`. The decision engine stays the authority."""

    name: str = ""

    @abc.abstractmethod
    def analyze(self, ctx: AnalysisContext) -> Analysis:
        """The analysis, or raise AgentError (the loop then keeps the built-in one)."""
