"""Which version a code agent's next change builds on: draft, debug or improve.

The loop builds a cycle on any recorded version its proposal names in ``meta``
(:func:`ralph_ml.versions.parent_of`); this is the shipped code agents' policy for choosing
one (the ``openai`` agent's patches and the coding-agent CLIs). It reads the history and the
proposals in flight alone, so a resumed run chooses as an uninterrupted one would:

* **debug**: the latest code change that ran and failed (crash, out of memory, NaN, no
  metric, timeout) after the best was recorded is handed back for a fix, with its error,
  unless a fix of it ran or is in flight. A fix that fails is handed back in turn, until the
  chain of fixes from the first failure is ``branching.max_fix_attempts`` long (0: never). A
  fix that never ran (guard-rejected, agent error) hands the same failure back with the
  rejection's reason, as long as the loop's limit of ``max_fix_attempts`` attempts per
  version allows. The fix builds on the failed version's code (``{"parent": N, "fix_of": N}``).
* **improve**: otherwise a child of one of the ``branching.top_k`` best versions (the run's
  best first, then the highest-scoring others): the one with the fewest children in flight,
  the best first. With K trials at once and
  ``top_k = K``, parallel changes spread over the top versions instead of all stacking on
  the best; with ``top_k = 1`` every change builds on the best.
* **draft**: with no successful version yet, the workspace as it is (``{"parent": None}``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..config import Config
from ..records import CycleRecord, FailureClass, Proposal, TrialStatus
from ._text import clip
from .base import AgentContext
from .memory import change_summary

__all__ = ["Base", "choose", "failure_brief", "fix_attempts", "fix_depth", "fix_target", "top_versions"]

# Failures of code that ran: a fix can address them. Guard rejections and agent errors never
# ran (their feedback goes through the history), pruned and cancelled trials did not fail.
FIXABLE = frozenset({FailureClass.CRASH, FailureClass.OOM, FailureClass.NAN, FailureClass.MISSING_METRIC, FailureClass.TIMEOUT})


@dataclass(frozen=True)
class Base:
    """The version a proposal builds on, and why."""

    cycle: int | None  # the recorded cycle whose code and params it starts from; None: the workspace
    fix_of: int | None = None  # set when that version failed and is handed back for a fix
    why: str = ""

    @property
    def meta(self) -> dict[str, Any]:
        """What the proposal's ``meta`` says so the loop builds it on this version."""
        return {"parent": self.cycle} if self.fix_of is None else {"parent": self.cycle, "fix_of": self.fix_of}


def _scored(rec: CycleRecord) -> bool:
    return rec.result.status is TrialStatus.OK and rec.metric is not None and math.isfinite(rec.metric)


def top_versions(
    history: Sequence[CycleRecord], direction: str, k: int, best: CycleRecord | None = None
) -> list[CycleRecord]:
    """The ``k`` best successful versions, best first (earlier cycle first on a tie).

    ``best``: the run's best (the last kept version) comes first whatever its rank. A cycle
    can score higher and still not be kept (under ``min_improvement_delta``, the noise test, or
    the validation gate): it is a candidate for the places after the best, never ahead of it."""
    sign = -1.0 if direction == "maximize" else 1.0
    ranked = sorted((r for r in history if _scored(r)), key=lambda r: (sign * float(r.metric or 0.0), r.cycle))
    if best is not None and _scored(best):
        ranked = [best, *(r for r in ranked if r.cycle != best.cycle)]
    return ranked[: max(1, k)]


def fix_depth(rec: CycleRecord, by_cycle: Mapping[int, CycleRecord]) -> int:
    """How many fixes deep ``rec`` is: 0 for a change, 1 for the fix of one, 2 for a fix of that fix, ..."""
    depth, node, seen = 0, rec, {rec.cycle}
    while node.proposal.meta.get("fix_of") is not None and node.proposal.meta.get("fix_of") == node.parent:
        depth += 1
        up = by_cycle.get(node.parent) if node.parent is not None else None
        if up is None or up.cycle in seen:
            break
        seen.add(up.cycle)
        node = up
    return depth


def fix_target(
    cfg: Config, history: Sequence[CycleRecord], pending: Sequence[Proposal], best: CycleRecord | None
) -> CycleRecord | None:
    """The failed code change to hand back for a fix next, or None (see the module doc)."""
    limit = cfg.branching.max_fix_attempts
    if limit <= 0:
        return None
    by_cycle = {r.cycle: r for r in history}
    # A fix that ran (or is running) settles its version; one that never ran (guard-rejected,
    # agent error) does not, though it counts against the loop's limit of fixes per version.
    taken = {r.proposal.meta.get("fix_of") for r in history if r.result.status is not TrialStatus.INVALID}
    taken |= {p.meta.get("fix_of") for p in pending}
    for rec in reversed(history):  # recording order: with K trials at once, not the cycle numbers' order
        if best is not None and rec.cycle == best.cycle:
            break  # failures recorded before the best was found are superseded by it
        if (
            rec.proposal.patch
            and rec.metric is None
            and rec.result.status in (TrialStatus.FAILED, TrialStatus.TIMEOUT)
            and rec.result.failure in FIXABLE
            and rec.cycle not in taken
            and len(fix_attempts(history, rec.cycle)) < limit
            and fix_depth(rec, by_cycle) < limit
        ):
            return rec
    return None


def fix_attempts(history: Sequence[CycleRecord], cycle: int) -> list[CycleRecord]:
    """The recorded attempts to fix ``cycle``, those that never ran included (the loop counts them all)."""
    return [r for r in history if r.proposal.meta.get("fix_of") == cycle]


def choose(cfg: Config, ctx: AgentContext) -> Base:
    """The version the next code change builds on: a fix, a child of a top version, or a draft."""
    failed = fix_target(cfg, ctx.history, ctx.pending, ctx.best)
    if failed is not None:
        by_cycle = {r.cycle: r for r in ctx.history}
        attempt = fix_depth(failed, by_cycle) + 1
        return Base(
            failed.cycle, fix_of=failed.cycle,
            why=f"fix of cycle {failed.cycle} ({failed.result.failure.value}), attempt {attempt} of "
            f"{cfg.branching.max_fix_attempts} (branching.max_fix_attempts)",
        )
    tops = top_versions(ctx.history, ctx.direction, cfg.branching.top_k, ctx.best)
    if not tops:
        return Base(None, why="draft: no version has run successfully yet, so the change builds on the workspace")
    best_cycle = ctx.best.cycle if ctx.best is not None else None
    in_flight: dict[int | None, int] = {}
    for p in ctx.pending:
        parent = p.meta["parent"] if "parent" in p.meta else best_cycle
        in_flight[parent] = in_flight.get(parent, 0) + 1
    rank, pick = min(enumerate(tops), key=lambda ir: (in_flight.get(ir[1].cycle, 0), ir[0]))
    which = "the best version" if rank == 0 else f"the number {rank + 1} version (branching.top_k = {cfg.branching.top_k})"
    return Base(pick.cycle, why=f"improve {which}: cycle {pick.cycle}, {pick.metric:.6g}")


def failure_brief(rec: CycleRecord, attempt: str, *, history: Sequence[CycleRecord] = (), limit: int = 4_000) -> str:
    """What a fix needs to know of the failed version: the change, the error, the stderr tail, the
    diff, and why earlier fixes of it never ran (from ``history``)."""
    res = rec.result
    lines = [
        f"Cycle {rec.cycle} tried this change: {change_summary(rec, 300)}",
        f"It ran and failed: {res.failure.value} (status {res.status.value}, exit code {res.exit_code}).",
    ]
    if res.message:
        lines.append("Message: " + clip(res.message, 600))
    if res.stderr_tail:
        lines.append("Last lines of its stderr:\n```\n" + clip(res.stderr_tail, 1_500, keep_tail=True) + "\n```")
    if rec.proposal.patch:
        lines.append("The change that failed (already applied to the code below):\n```diff\n"
                     + clip(rec.proposal.patch, 1_500) + "\n```")
    for prior in fix_attempts(history, rec.cycle):
        if prior.result.status is TrialStatus.INVALID:
            lines.append(f"An earlier fix of it (cycle {prior.cycle}) never ran: {prior.result.failure.value}: "
                         + clip(prior.result.message, 600) + " Do not repeat that mistake.")
    lines.append(f"Your task: the {attempt}.")
    return clip("\n".join(lines), limit)
