"""The values every prompt template can use, each section held to a share of the budget.

``agents.llm.prompt_budget_chars`` bounds the whole prompt however long the run: every
section is clipped to its share first, and the rendered prompt is clipped as a last resort.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..config import Config
from ..records import CycleRecord
from .base import InFlight
from . import memory
from ._text import clip
from .codebase import PLAN_FILE, program_text
from .prompts import PLACEHOLDERS, Prompts

# Share of prompt_budget_chars each section may take (the rest is the template itself).
_SHARES = {
    "program": 0.15,
    "code": 0.40,
    "history": 0.15,
    "experience": 0.08,
    "feedback": 0.06,
    "in_flight": 0.04,
    "space": 0.04,
    "best": 0.02,
}


def best_line(best: CycleRecord | None) -> str:
    if best is None or best.metric is None:
        return "(no successful cycle yet)"
    params = ", ".join(f"{k}={memory._fmt_value(v)}" for k, v in sorted(best.proposal.params.items()))
    return f"cycle {best.cycle}: metric {best.metric:.6g}" + (f" with {params}" if params else "")


def base_values(
    cfg: Config,
    history: Sequence[CycleRecord],
    *,
    cycle: int,
    best: CycleRecord | None,
    code: Mapping[str, str],
    in_flight: Sequence[InFlight] = (),
    required_calls: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    llm = cfg.agents.llm
    budget = llm.prompt_budget_chars
    direction = cfg.target.dir.value
    name, text = program_text(cfg)
    values = {k: "" for k in PLACEHOLDERS}
    values.update(
        {
            "cycle": str(cycle),
            "target": cfg.target.describe(),
            "target_name": cfg.target.name,
            "direction": direction,
            "program_name": name or "program.md",
            "program": text.strip() or "(no program.md or IDEA.md in the workspace)",
            "space": memory.space_table(cfg.search_space),
            "best": best_line(best),
            "history": memory.history_table(history, rows=llm.history_rows, direction=direction),
            "experience": memory.experience_log(history, direction=direction),
            "feedback": memory.feedback(history),
            "in_flight": memory.in_flight(in_flight, cfg.target.name),
            "code": memory.code_block(code, min(llm.code_budget_chars, int(budget * _SHARES["code"]))),
            "mutable": ", ".join([*cfg.files.mutable, PLAN_FILE]),
            "frozen": ", ".join(cfg.files.frozen) or "(none)",
            "train_cmd": cfg.execution.train_cmd,
            "keep": keep_rule(required_calls or {}),
        }
    )
    for key, share in _SHARES.items():
        values[key] = clip(values[key], int(budget * share), keep_tail=key in ("history", "feedback"))
    return values


def keep_rule(required_calls: Mapping[str, Sequence[str]]) -> str:
    """The prompts' rule for ``files.required_calls`` ("" when nothing is required)."""
    if not required_calls:
        return ""
    listed = "; ".join(f"{name}: {', '.join(calls)}" for name, calls in required_calls.items())
    return f"- Keep these calls in the code (a change without one of them is rejected): {listed}."


def render(prompts: Prompts, name: str, values: Mapping[str, str], budget: int) -> str:
    """Render template ``name``; a prompt over ``budget`` characters is clipped in the middle."""
    return clip(prompts.render(name, values), budget)
