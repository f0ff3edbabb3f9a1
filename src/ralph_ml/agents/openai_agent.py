"""The `openai` agent: an LLM behind any OpenAI-compatible endpoint proposes params and/or code.

Modes (``agents.llm.mode``):

* ``params``: a JSON object of values, validated against the search space (types, bounds,
  choices; unknown names rejected); an invalid reply is sent back for a correction.
* ``patch``: a unified diff to the mutable files (or whole new file contents, turned into a
  diff here); the loop's guard is the authority on whether it may run.
* ``hybrid`` (default): params until the no-improvement streak reaches
  ``hybrid_patch_after``, then patches; back to params after ``max_invalid_patches``
  invalid patches in a row. The mode is derived from the history, so a resumed run
  proposes as an uninterrupted one would.

When a mutable file named in ``files.mutable`` does not exist yet (a workspace with only
``program.md``/``IDEA.md`` and the frozen evaluation), the agent first writes ``PLAN.md``
and the code, as a patch creating the files (draft). A code change that ran and failed is
handed back with its error for a fix (debug: mode ``fix``, ``fix_patch.md``), and other
changes build on one of the ``branching.top_k`` best versions (improve): see
:mod:`ralph_ml.agents.branching`.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..config import Config, Param
from ..errors import ConfigError
from ..records import CycleRecord, Proposal
from ..workspace import parse_patch
from ._text import ReplyInvalid
from .base import Agent, AgentContext
from .briefing import base_values, render
from .budget import make_budget
from . import branching
from .codebase import PLAN_FILE, best_version, code_files, diff_texts, materialize, missing_mutable, read_tree
from .llm_client import ChatClient, Transcript
from .prompts import PLACEHOLDERS, Prompts

_TEMPLATES = ("system.md", "propose_params.md", "propose_patch.md", "fix_patch.md", "initial_code.md")


# ---------------------------------------------------------------------------- params
def param_schema(p: Param) -> dict[str, Any]:
    if p.type == "categorical":
        return {"enum": list(p.choices or [])}
    return {"type": "integer" if p.type == "int" else "number", "minimum": p.low, "maximum": p.high}


def _same(a: Any, b: Any) -> bool:
    """Equality that does not confuse True with 1 (but lets 2 match 2.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def validate_params(raw: Any, space: Mapping[str, Param]) -> dict[str, Any]:
    """Values checked against the search space; ReplyInvalid lists every problem."""
    if not isinstance(raw, dict):
        raise ReplyInvalid('"params" must be a JSON object mapping parameter names to values')
    problems: list[str] = []
    out: dict[str, Any] = {}
    for name, value in raw.items():
        p = space.get(name)
        if p is None:
            problems.append(f"unknown parameter {name!r} (the search space declares: {', '.join(space) or 'nothing'})")
            continue
        if p.type == "categorical":
            choices = list(p.choices or [])
            match = next((c for c in choices if _same(value, c)), None)
            if match is None:
                problems.append(f"{name} = {value!r} is not one of {choices}")
            else:
                out[name] = match
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{name} = {value!r} is not a finite number")
            continue
        if p.type == "int":
            if isinstance(value, float) and not value.is_integer():
                problems.append(f"{name} = {value!r} must be an integer")
                continue
            value = int(value)
        else:
            value = float(value)
        assert p.low is not None and p.high is not None
        if not p.low <= value <= p.high:
            problems.append(f"{name} = {value:g} is outside its bounds [{p.low:g}, {p.high:g}]")
            continue
        out[name] = value
    if problems:
        raise ReplyInvalid("invalid params: " + "; ".join(problems))
    return out


def baseline(space: Mapping[str, Param]) -> dict[str, Any] | None:
    if not space or any(p.default is None for p in space.values()):
        return None
    out: dict[str, Any] = {}
    for name, p in space.items():
        d = p.default
        out[name] = int(d) if p.type == "int" else (float(d) if p.type == "float" else d)  # type: ignore[arg-type]
    return out


def baseline_proposal(cfg: Config, ctx: AgentContext, agent: str) -> Proposal | None:
    """Cycle 1 with ``agents.llm.baseline_first``: the current code with the defaults, no call.

    It gives the agent a measured starting point for free. None when the history is not
    empty or the baseline is already in flight (parallel trials), or when the search space
    lacks a default (there is no baseline to run).
    """
    if not cfg.agents.llm.baseline_first or ctx.history or ctx.pending:
        return None
    bl = baseline(cfg.search_space)
    if cfg.search_space and bl is None:
        return None
    return Proposal(
        params=bl or {}, rationale="baseline: the current code with the default of every parameter", agent=agent,
        meta={"mode": "baseline", "source": "baseline"},
    )


def _key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(round(v, 12) if isinstance(v, float) else v)) for k, v in params.items()))


def tried_on_current_code(history: Sequence[CycleRecord]) -> dict[tuple[tuple[str, str], ...], int]:
    """Effective params already run on the current best code -> the cycle that ran them."""
    tried: dict[tuple[tuple[str, str], ...], int] = {}
    best: dict[str, Any] = {}
    for rec in history:
        eff = {**best, **rec.proposal.params}
        if rec.kept and rec.proposal.patch:
            tried.clear()  # the code changed: old configurations are new again
        if not rec.proposal.patch and rec.verdict != "invalid":
            tried[_key(eff)] = rec.cycle
        if rec.kept:
            best = eff
    return tried


# ---------------------------------------------------------------------------- schemas
PATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rationale": {"type": "string"},
        "patch": {"type": "string"},
        "files": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["rationale"],
    "additionalProperties": False,
}
INITIAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rationale": {"type": "string"},
        "plan": {"type": "string"},
        "files": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["rationale", "plan", "files"],
    "additionalProperties": False,
}


def params_reply_schema(space: Mapping[str, Param]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "rationale": {"type": "string"},
            "params": {
                "type": "object",
                "properties": {n: param_schema(p) for n, p in space.items()},
                "additionalProperties": False,
            },
        },
        "required": ["rationale", "params"],
        "additionalProperties": False,
    }


def _rationale(data: Mapping[str, Any]) -> str:
    r = data.get("rationale")
    return " ".join(str(r).split())[:500] if r else ""


def _files(data: Mapping[str, Any], key: str = "files") -> dict[str, str]:
    files = data.get(key)
    if not isinstance(files, dict) or not files:
        raise ReplyInvalid(f'"{key}" must be a non-empty object mapping file paths to their complete content')
    out: dict[str, str] = {}
    for path, text in files.items():
        if not isinstance(text, str):
            raise ReplyInvalid(f'"{key}"[{path!r}] must be the file content as a string')
        norm = str(path).strip().removeprefix("./")
        if not norm or norm.startswith("/") or ".." in norm.split("/"):
            raise ReplyInvalid(f"file path {path!r} must be relative to the experiment folder, without '..'")
        out[norm] = text if text.endswith("\n") or not text else text + "\n"
    return out


def _strip_fences(patch: str) -> str:
    text = patch.strip("\n")
    if text.startswith("```"):
        lines = text.splitlines()
        lines = lines[1:-1] if lines[-1].strip().startswith("```") else lines[1:]
        text = "\n".join(lines)
    return text.rstrip("\n") + "\n"


# ---------------------------------------------------------------------------- the agent
class OpenAIAgent(Agent):
    name = "openai"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.llm = cfg.agents.llm
        self.client = ChatClient(self.llm, role="agent")
        self.client.check_key()
        self.prompts = Prompts(cfg)
        self.prompts.check(_TEMPLATES, PLACEHOLDERS)
        if self.llm.mode == "params" and not cfg.search_space:
            raise ConfigError(
                'agents.llm.mode = "params" needs a search_space to propose values in, and this config declares none. '
                'Add [search_space.<name>] tables, or use mode = "patch" / "hybrid".'
            )

    def mode_for(self, history: Sequence[CycleRecord]) -> str:
        """params or patch, from the history alone (so resume proposes the same)."""
        if not self.cfg.search_space:
            return "patch"
        if self.llm.mode != "hybrid":
            return self.llm.mode
        streak = invalid = 0
        for rec in history:
            streak = 0 if rec.kept else streak + 1
            if rec.proposal.meta.get("mode") in ("patch", "fix", "initial"):
                invalid = invalid + 1 if rec.verdict == "invalid" else 0
                if invalid >= self.llm.max_invalid_patches:
                    streak = invalid = 0  # back to params for another hybrid_patch_after cycles
        return "patch" if streak >= self.llm.hybrid_patch_after else "params"

    def propose(self, ctx: AgentContext) -> Proposal:
        with tempfile.TemporaryDirectory(prefix="ralph-openai-") as tmp:
            base = Path(tmp) / "code"
            mode = self.mode_for(ctx.history)
            on = branching.choose(self.cfg, ctx)  # a failed change to fix, or the version to improve
            if on.fix_of is None and mode == "params":
                on = branching.Base(best_version(ctx.history), why="params on the best version")
            materialize(self.cfg, ctx.history, on.cycle, base)
            missing = missing_mutable(base, self.cfg)
            mode = "initial" if missing else ("fix" if on.fix_of is not None else mode)
            if mode not in ("initial", "fix") and (first := baseline_proposal(self.cfg, ctx, self.name)) is not None:
                return first
            code = code_files(base, self.cfg)
            frozen = {p: t for p, t in self._frozen_text(base).items() if p not in code}
            values = base_values(self.cfg, ctx.history, cycle=ctx.cycle, best=ctx.best, code={**code, **frozen},
                                 in_flight=ctx.in_flight, required_calls=ctx.required_calls)
            values["missing"] = ", ".join(missing)
            values["base"] = on.why
            if on.fix_of is not None:
                values["failed"] = branching.failure_brief(self._record(ctx, on.fix_of), on.why, history=ctx.history)
            template, schema, validate = self._mode(mode, base, ctx, missing, on)
            messages = [
                {"role": "system", "content": render(self.prompts, "system.md", values, 4_000)},
                {"role": "user", "content": render(self.prompts, template, values, self.llm.prompt_budget_chars)},
            ]
            transcript = Transcript(
                Path(ctx.cycle_dir) / "agent" / "transcript.jsonl" if ctx.cycle_dir else None, (self.llm.api_key_env,)
            )
            budget = make_budget(
                max_tokens=self.llm.max_tokens,
                tokens_left=ctx.tokens_left,
                tokens_left_cycle=ctx.tokens_left_cycle,
                cost_left_usd=ctx.cost_left_usd,
                price_per_1k_input=self.llm.price_per_1k_input,
                price_per_1k_output=self.llm.price_per_1k_output,
            )
            proposal, tokens, cost = self.client.converse(
                messages, schema=schema, name=f"ralph_{mode}", validate=validate, budget=budget,
                transcript=transcript, meta={"mode": mode},
            )
        meta = {**proposal.meta, "level": self.client.level, "model": self.llm.model}
        if proposal.patch and mode != "initial":
            meta.update(on.meta)  # built on the version the agent saw (the loop's default is the best at build time)
            meta["base"] = on.why
        if transcript.path is not None:
            meta["transcript"] = str(transcript.path)
        return replace(proposal, tokens_used=tokens, cost_usd=cost, meta=meta)

    def _frozen_text(self, base: Path) -> dict[str, str]:
        from ..guard import matches

        out: dict[str, str] = {}
        for rel, data in sorted(read_tree(base, self.cfg.files.exclude).items()):
            if matches(rel, self.cfg.files.frozen) and rel.endswith((".py", ".md", ".txt", ".toml", ".yaml", ".yml", ".json", ".cfg")):
                out[rel] = data.decode("utf-8", errors="replace")
        return out

    @staticmethod
    def _record(ctx: AgentContext, cycle: int) -> CycleRecord:
        return next(r for r in ctx.history if r.cycle == cycle)

    def _mode(
        self, mode: str, base: Path, ctx: AgentContext, missing: list[str], on: branching.Base
    ) -> tuple[str, dict[str, Any], Callable[[dict[str, Any]], Proposal]]:
        space = self.cfg.search_space

        def current(path: str) -> str | None:
            p = base / path
            return p.read_text(encoding="utf-8", errors="replace") if p.is_file() else None

        if mode == "params":
            best_params = dict(ctx.best.proposal.params) if ctx.best else {}
            taken = {k: f"already run at cycle {c}" for k, c in tried_on_current_code(ctx.history).items()}
            for p in ctx.pending:  # parallel trials: a configuration in flight is taken too
                if not p.patch:
                    taken.setdefault(_key({**best_params, **p.params}), "already running in a parallel trial")

            def v_params(data: dict[str, Any]) -> Proposal:
                params = validate_params(data.get("params"), space)
                if not params:
                    raise ReplyInvalid('"params" is empty; propose at least one value')
                effective = {**best_params, **params}
                if _key(effective) in taken:
                    raise ReplyInvalid(f"this configuration was {taken[_key(effective)]}; propose a different one")
                return Proposal(params=params, rationale=_rationale(data), agent=self.name, meta={"mode": "params"})

            return "propose_params.md", params_reply_schema(space), v_params

        if mode in ("patch", "fix"):

            # Built on the workspace there are no params to inherit: start from the defaults
            # (on a recorded version the loop starts from that version's params).
            start = (baseline(space) or {}) if on.cycle is None else {}

            def v_patch(data: dict[str, Any]) -> Proposal:
                params = {**start, **(validate_params(data["params"], space) if data.get("params") else {})}
                if data.get("files"):
                    files = _files(data)
                    patch = diff_texts({p: t for p in files if (t := current(p)) is not None}, files)
                    if not patch:
                        raise ReplyInvalid('"files" is identical to the current code; change something')
                elif isinstance(data.get("patch"), str) and data["patch"].strip():
                    patch = _strip_fences(data["patch"])
                    if not parse_patch(patch):
                        raise ReplyInvalid(
                            '"patch" is not a unified diff: it has no "--- a/<path>" / "+++ b/<path>" headers'
                        )
                else:
                    raise ReplyInvalid('send "patch" (a unified diff) or "files" (complete new file contents)')
                return Proposal(params=params, patch=patch, rationale=_rationale(data), agent=self.name, meta={"mode": mode})

            return ("fix_patch.md" if mode == "fix" else "propose_patch.md"), PATCH_SCHEMA, v_patch

        def v_initial(data: dict[str, Any]) -> Proposal:
            plan = data.get("plan")
            if not isinstance(plan, str) or not plan.strip():
                raise ReplyInvalid('"plan" must be the content of PLAN.md (markdown), not empty')
            files = _files(data)
            absent = [m for m in missing if m not in files]
            if absent:
                raise ReplyInvalid(f'"files" must include {absent}: they do not exist yet and the training needs them')
            after = {PLAN_FILE: plan if plan.endswith("\n") else plan + "\n", **files}
            before = {p: t for p in after if (t := current(p)) is not None}
            patch = diff_texts(before, after)
            return Proposal(
                params=baseline(space) or {}, patch=patch, rationale=_rationale(data) or "initial code from the program",
                agent=self.name, meta={"mode": "initial", "files": sorted(after)},
            )

        return "initial_code.md", INITIAL_SCHEMA, v_initial

