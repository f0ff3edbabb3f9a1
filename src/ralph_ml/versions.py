"""The tree of code versions a run explored: each cycle is a node whose parent is the version
its code derives from (None: the workspace). Drawn in the report as an indented tree."""

from __future__ import annotations

from typing import Any, Sequence

from .records import CycleRecord


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
