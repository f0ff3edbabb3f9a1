"""The tree of code versions a run explored: each cycle is a node whose parent is the version
its code derives from (None: the workspace). Drawn in the report as an indented tree."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .records import CycleRecord, Proposal, TrialStatus


def _change(rec: CycleRecord) -> str:
    if rec.proposal.patch:
        files = sorted({line[6:].strip() for line in rec.proposal.patch.splitlines() if line.startswith("+++ b/")})
        what = "patch " + ", ".join(files) if files else "patch"
    else:
        what = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.proposal.params.items())
    fix = rec.proposal.meta.get("fix_of")
    return (f"fix of {fix}: " if fix is not None else "") + (what or "no change")


def tree(records: Sequence[CycleRecord]) -> list[dict[str, Any]]:
    """Nodes in cycle order: cycle, parent, change, metric, status, verdict."""
    return [
        {
            "cycle": r.cycle,
            "parent": r.parent,
            "change": _change(r),
            "metric": r.metric,
            "status": r.result.status.value,
            "verdict": r.verdict,
        }
        for r in sorted(records, key=lambda r: r.cycle)
    ]


def render(records: Sequence[CycleRecord], metric_name: str = "metric") -> str:
    """An indented text tree, the workspace at the root."""
    children: dict[int | None, list[CycleRecord]] = {}
    for r in sorted(records, key=lambda r: r.cycle):
        children.setdefault(r.parent, []).append(r)
    lines = ["workspace"]

    def walk(parent: int | None, prefix: str) -> None:
        kids = children.get(parent, [])
        for i, r in enumerate(kids):
            last = i == len(kids) - 1
            m = f"{metric_name} {r.metric:.4g}" if r.metric is not None else r.result.status.value
            lines.append(f"{prefix}{'└─' if last else '├─'} cycle {r.cycle} [{r.verdict}] {m} · {_change(r)}")
            walk(r.cycle, prefix + ("   " if last else "│  "))

    walk(None, "")
    return "\n".join(lines)


def parent_of(
    proposal: Proposal, best: CycleRecord | None, by_cycle: Mapping[int, CycleRecord], max_fix_attempts: int
) -> tuple[int | None, str | None]:
    """The version a proposal builds on (default: the best), and why it is refused, if it is.

    A refused proposal keeps the parent it asked for, so the version tree shows the attempt."""
    if "parent" not in proposal.meta:
        return (best.cycle if best else None), None
    parent = proposal.meta["parent"]
    if parent is None:
        return None, None  # the workspace as it is
    rec = by_cycle.get(parent) if isinstance(parent, int) else None
    if rec is None:
        return None, (
            f"the proposal's parent version {parent!r} is not a recorded cycle "
            f"(recorded: {sorted(by_cycle)[-10:]}); branch from a recorded cycle or from None (the workspace)"
        )
    if rec.result.status is TrialStatus.INVALID:
        return parent, f"parent version {parent} never ran ({rec.result.failure.value}): its code is not a version to build on"
    if rec.metric is None:
        if proposal.meta.get("fix_of") != parent:
            return parent, (
                f"parent version {parent} failed ({rec.result.failure.value}); hand it back for a fix with "
                f'meta {{"parent": {parent}, "fix_of": {parent}}}, or branch from a version that worked'
            )
        tries = sum(1 for r in by_cycle.values() if r.proposal.meta.get("fix_of") == parent)
        limit = max_fix_attempts
        if tries >= limit:
            return parent, (
                f"version {parent} was already handed back for a fix {tries} time(s) "
                f"(branching.max_fix_attempts = {limit}); branch from another version"
            )
    return parent, None

def chain(version: int | None, by_cycle: Mapping[int, CycleRecord]) -> list[str]:
    """Patches from the workspace down to ``version`` (its ancestors first)."""
    patches: list[str] = []
    seen: set[int] = set()
    while version is not None and version not in seen:
        seen.add(version)
        rec = by_cycle.get(version)
        if rec is None:
            break
        if rec.proposal.patch:
            patches.append(rec.proposal.patch)
        version = rec.parent
    return patches[::-1]
