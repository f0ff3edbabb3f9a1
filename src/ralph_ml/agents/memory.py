"""What agents remember of a run, rendered for a prompt and bounded however long the run.

* :func:`history_table`: one row per cycle (what changed, metric, verdict, failure, note),
  the last ``rows`` cycles plus the best few, never all of them.
* :func:`experience_log`: what helped and what hurt (change → delta against the best
  before it), the strongest effects first.
* :func:`feedback`: what happened to the last cycle, e.g. the guard's reason for rejecting
  a patch, so the agent can fix it.
* :func:`code_block`: the current best code, truncated to a character budget.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..records import CycleRecord, Proposal
from ..workspace import parse_patch, patch_paths
from ._text import clip
from .base import InFlight

_BEST_ROWS = 3


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _one_line(text: str, limit: int) -> str:
    return clip(" ".join(text.split()), limit).replace("|", "/")


def patch_summary(patch: str) -> str:
    """``train.py (+12/-3)`` for a unified diff."""
    added = sum(1 for ln in patch.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    removed = sum(1 for ln in patch.splitlines() if ln.startswith("-") and not ln.startswith("---"))
    try:
        files = ", ".join(patch_paths(parse_patch(patch))) or "?"
    except Exception:  # a malformed patch is still worth a row
        files = "?"
    return f"{files} (+{added}/-{removed})"


def proposal_summary(proposal: Proposal, limit: int = 120) -> str:
    """What a proposal changes: its params and/or its patch, in one short line."""
    parts: list[str] = []
    mode = proposal.meta.get("mode")
    if proposal.params:
        parts.append(", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(proposal.params.items())))
    if proposal.patch:
        parts.append(("initial code: " if mode == "initial" else "patch: ") + patch_summary(proposal.patch))
    elif mode in ("patch", "initial"):
        parts.append(f"({mode}, no valid patch)")
    if proposal.rationale and proposal.patch:
        parts.append(f"\"{proposal.rationale}\"")
    return _one_line("; ".join(parts) or "(no change: the code as it is)", limit)


def change_summary(rec: CycleRecord, limit: int = 120) -> str:
    return proposal_summary(rec.proposal, limit)


def _metric(rec: CycleRecord) -> str:
    return "-" if rec.metric is None or not math.isfinite(rec.metric) else f"{rec.metric:.6g}"


def _note(rec: CycleRecord, limit: int) -> str:
    if rec.result.status.value == "ok":
        return ""
    return _one_line(rec.result.message or rec.result.stderr_tail[-200:], limit)


def _better(direction: str, a: float, b: float) -> bool:
    return a > b if direction == "maximize" else a < b


def select_rows(history: Sequence[CycleRecord], rows: int, direction: str) -> list[CycleRecord]:
    """The last ``rows`` cycles plus the best few, in cycle order."""
    last = list(history[-rows:])
    scored = [(r.metric, r) for r in history if r.metric is not None and math.isfinite(r.metric)]
    scored.sort(key=lambda mr: mr[0] if direction == "minimize" else -mr[0])
    chosen = {r.cycle: r for r in [*(r for _, r in scored[:_BEST_ROWS]), *last]}
    return [chosen[c] for c in sorted(chosen)]


def history_table(history: Sequence[CycleRecord], *, rows: int, direction: str, note_chars: int = 160) -> str:
    if not history:
        return "(no cycle has run yet)"
    picked = select_rows(history, rows, direction)
    lines = ["| cycle | change | metric | verdict | failure | note |", "|---|---|---|---|---|---|"]
    prev = 0
    for rec in picked:
        if rec.cycle > prev + 1:
            lines.append(f"| ... | ({rec.cycle - prev - 1} cycles omitted) | | | | |")
        prev = rec.cycle
        failure = rec.result.failure.value if rec.result.failure.value != "none" else ""
        lines.append(
            f"| {rec.cycle} | {change_summary(rec)} | {_metric(rec)} | {rec.verdict} | {failure} | {_note(rec, note_chars)} |"
        )
    return "\n".join(lines)


def experience_log(history: Sequence[CycleRecord], *, direction: str, items: int = 10) -> str:
    """Changes that helped or hurt, with their delta against the best before them."""
    best: float | None = None
    effects: list[tuple[float, str]] = []  # (signed gain, line)
    failures: list[str] = []
    for rec in history:
        m = rec.metric if rec.metric is not None and math.isfinite(rec.metric) else None
        if m is None:
            if rec.result.status.value != "ok" or rec.verdict == "failed":
                failures.append(f"- cycle {rec.cycle}: {change_summary(rec, 90)} → {rec.verdict} ({rec.result.failure.value})")
        elif best is not None:
            gain = (m - best) if direction == "maximize" else (best - m)
            word = "helped" if gain > 0 else ("no effect" if gain == 0 else "hurt")
            effects.append((gain, f"- cycle {rec.cycle}: {change_summary(rec, 90)} → {word} ({gain:+.4g} vs best {best:.6g})"))
        if m is not None and (best is None or _better(direction, m, best)) and rec.kept:
            best = m
    if not effects and not failures:
        return "(nothing learned yet)"
    half = max(1, items // 2)
    helped = [line for gain, line in sorted(effects, key=lambda e: -e[0]) if gain > 0][:half]
    hurt = [line for gain, line in sorted(effects, key=lambda e: e[0]) if gain <= 0][:half]
    out = []
    if helped:
        out += ["Helped:", *helped]
    if hurt:
        out += ["Did not help:", *hurt]
    if failures:
        out += ["Recent failures:", *failures[-max(1, items // 3):]]
    return "\n".join(out)


def feedback(history: Sequence[CycleRecord], limit: int = 2_000) -> str:
    """What happened to the last cycle, in full enough detail to act on."""
    if not history:
        return "This is the first cycle."
    last = history[-1]
    lines = [f"Cycle {last.cycle} ({change_summary(last, 200)}) ended {last.result.status.value}, verdict {last.verdict}."]
    if last.metric is not None:
        lines.append(f"Its target metric was {last.metric:.6g}.")
    if last.result.failure.value == "guard_rejected":
        lines.append("The guard REJECTED the patch, so nothing ran. Reason: " + last.result.message)
        lines.append("Fix exactly that problem in your next proposal.")
    elif last.result.failure.value == "agent_error":
        lines.append("The previous proposal could not be used: " + last.result.message)
    elif last.result.status.value != "ok":
        lines.append(f"Failure ({last.result.failure.value}): {last.result.message}")
        if last.result.stderr_tail:
            lines.append("Last lines of stderr:\n" + clip(last.result.stderr_tail, 800, keep_tail=True))
    if last.analysis is not None:
        lines.append(f"Analysis ({last.analysis.agent}): {last.analysis.diagnosis}. {last.analysis.summary}")
        for r in last.analysis.recommendations[:4]:
            lines.append(f"- [{r.confidence}] {r.action}: {r.rationale}")
    return clip("\n".join(lines), limit)


def in_flight(flights: Sequence[InFlight], target_name: str) -> str:
    """The trials running beside this proposal (parallel trials), with how far each has got."""
    if not flights:
        return "(none: no other trial is running)"
    lines = []
    for f in flights:
        if f.value is None or not math.isfinite(f.value):
            how = "nothing reported yet"
        elif f.step is None:
            how = f"{target_name} {f.value:.6g} on its first run (it has ended; not recorded yet)"
        else:
            how = f"{target_name} {f.value:.6g} at step {f.step} so far (still training)"
        lines.append(f"- cycle {f.cycle} ({proposal_summary(f.proposal, 160)}): {how}")
    return "\n".join(lines)


def code_block(files: Mapping[str, str], budget: int) -> str:
    """The files as fenced blocks; small files whole, large ones cut to share what is left of ``budget``."""
    if not files:
        return "(no code yet)"
    limits: dict[str, int] = {}
    remaining = budget
    by_size = sorted(files.items(), key=lambda kv: len(kv[1]))
    for i, (path, text) in enumerate(by_size):
        fair = max(200, remaining // (len(by_size) - i))
        limits[path] = min(len(text), fair)
        remaining = max(0, remaining - limits[path])
    return "\n\n".join(f"### {path}\n```\n{clip(text, limits[path])}\n```" for path, text in files.items())


def space_table(space: Mapping[str, Any]) -> str:
    if not space:
        return "(no search space declared: improve the code itself)"
    lines = []
    for name, p in space.items():
        if p.type == "categorical":
            rng = f"one of {list(p.choices or [])}"
        else:
            rng = f"{p.type} in [{_fmt_value(p.low)}, {_fmt_value(p.high)}]" + (" (log scale)" if p.log else "")
            if p.step:
                rng += f", step {_fmt_value(p.step)}"
        default = f", default {_fmt_value(p.default)}" if p.default is not None else ""
        lines.append(f"- {name}: {rng}{default}")
    return "\n".join(lines)
