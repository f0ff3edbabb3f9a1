"""The agent plugin contract: frozen context in, validated proposal out."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Mapping

from ..records import Analysis, CycleRecord, Proposal


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


class Agent(abc.ABC):
    """Proposes experiments. Agents are untrusted: the loop validates what they return."""

    name: str = ""

    @abc.abstractmethod
    def propose(self, ctx: AgentContext) -> Proposal:
        """The next experiment, or raise AgentError when none can be made."""

    def observe(self, record: CycleRecord) -> None:  # noqa: B027 - optional hook
        """Called once for every recorded cycle, in order (including replayed ones on resume)."""
