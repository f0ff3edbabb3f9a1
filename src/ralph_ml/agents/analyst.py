"""Analysis agents: an LLM (``openai``) or a coding-agent CLI reads a finished cycle.

The built-in analysis always runs first and is handed to the agent; the agent's analysis
replaces it when valid, and the loop keeps the built-in one when the agent fails
(:func:`run_analyst`). The agent sees metrics, the learning curve, log tails (never whole
files) and the history; its ``advice`` (continue/stop) is recorded, never obeyed: the
decision engine stays the authority.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import Config
from ..errors import AgentError, ConfigError
from ..records import Analysis, CycleRecord, Proposal, Recommendation, TrialResult, TrialStatus
from . import memory
from ._text import ReplyInvalid, clip, extract_json
from .base import AnalysisContext, Analyst
from .briefing import base_values, render
from .budget import make_budget
from .cli_agents import budget_gate, resolve_exe, run_cli, usage_cost
from .cli_backends import BACKENDS, CLIBackend
from .codebase import JUNK
from .llm_client import ChatClient, Transcript
from .prompts import PLACEHOLDERS, Prompts

_CONFIDENCE = ("high", "medium", "low")

ANALYSIS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "diagnosis": {"type": "string"},
        "summary": {"type": "string"},
        "recommendations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "action": {"type": "string"},
                    "rationale": {"type": "string"},
                    "confidence": {"enum": list(_CONFIDENCE)},
                    "param": {"type": ["string", "null"]},
                    "direction": {"enum": ["increase", "decrease", None]},
                },
                "required": ["action", "rationale", "confidence"],
            },
        },
        "advice": {"enum": ["continue", "stop"]},
    },
    "required": ["diagnosis", "summary", "recommendations"],
}


def parse_analysis(data: Mapping[str, Any], space: Mapping[str, Any], agent: str) -> Analysis:
    """An Analysis from the agent's JSON; ReplyInvalid says what to fix."""
    diagnosis, summary = data.get("diagnosis"), data.get("summary")
    if not isinstance(diagnosis, str) or not diagnosis.strip():
        raise ReplyInvalid('"diagnosis" must be a non-empty string (e.g. "overfitting")')
    if not isinstance(summary, str):
        raise ReplyInvalid('"summary" must be a string')
    raw = data.get("recommendations")
    if not isinstance(raw, list) or not raw:
        raise ReplyInvalid('"recommendations" must be a non-empty list of {action, rationale, confidence}')
    recs: list[Recommendation] = []
    for i, r in enumerate(raw[:10]):
        if not isinstance(r, dict) or not isinstance(r.get("action"), str) or not r["action"].strip():
            raise ReplyInvalid(f"recommendation {i + 1} needs a non-empty string \"action\"")
        conf = str(r.get("confidence", "")).lower()
        if conf not in _CONFIDENCE:
            raise ReplyInvalid(f"recommendation {i + 1} has confidence {r.get('confidence')!r}; use high, medium or low")
        param = r.get("param") if r.get("param") in space else None
        direction = r.get("direction") if r.get("direction") in ("increase", "decrease") else None
        recs.append(
            Recommendation(
                action=clip(r["action"].strip(), 200), rationale=clip(str(r.get("rationale", "")), 500), confidence=conf,
                param=param, direction=direction if param else None,
            )
        )
    recs.sort(key=lambda r: _CONFIDENCE.index(r.confidence))
    advice = data.get("advice")
    return Analysis(
        diagnosis=clip(diagnosis.strip(), 60), summary=clip(summary.strip(), 2000), recommendations=tuple(recs),
        agent=agent, advice=advice if advice in ("continue", "stop") else None,
    )


def _tail(path: Path, chars: int) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - chars))
        return fh.read().decode("utf-8", errors="replace")


def analysis_values(cfg: Config, ctx: AnalysisContext) -> dict[str, str]:
    values = base_values(cfg, ctx.history, cycle=ctx.cycle, best=None, code={})
    rows = list(ctx.progress[-30:])
    b = ctx.builtin
    values.update(
        {
            "change": memory.proposal_summary(ctx.proposal, 300),
            "status": f"{ctx.result.status.value} ({ctx.result.failure.value})",
            "verdict": ctx.verdict,
            "metric": "n/a" if ctx.metric is None else f"{ctx.metric:.6g}",
            "metrics": clip(json.dumps(ctx.result.metrics, default=str), 1500),
            "message": clip(ctx.result.message, 1000) or "(none)",
            "curve": clip("\n".join(json.dumps(r, default=str) for r in rows), 4000) or "(no progress reported)",
            "stdout_tail": ctx.stdout_tail or "(empty)",
            "stderr_tail": ctx.stderr_tail or "(empty)",
            "builtin": "\n".join(
                [f"{b.diagnosis}: {b.summary}", *(f"- [{r.confidence}] {r.action}: {r.rationale}" for r in b.recommendations)]
            ),
        }
    )
    return values


class OpenAIAnalyst(Analyst):
    name = "openai"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.client = ChatClient(cfg.agents.llm, role="analyst")
        self.client.check_key()
        self.prompts = Prompts(cfg)
        self.prompts.check(("analyze.md",), PLACEHOLDERS)

    def analyze(self, ctx: AnalysisContext) -> Analysis:
        llm = self.cfg.agents.llm
        prompt = render(self.prompts, "analyze.md", analysis_values(self.cfg, ctx), llm.prompt_budget_chars)
        transcript = Transcript(
            Path(ctx.cycle_dir) / "agent" / "analysis_transcript.jsonl" if ctx.cycle_dir else None, (llm.api_key_env,)
        )
        budget = make_budget(
            max_tokens=llm.max_tokens, tokens_left=ctx.tokens_left, tokens_left_cycle=ctx.tokens_left_cycle,
            cost_left_usd=ctx.cost_left_usd, price_per_1k_input=llm.price_per_1k_input,
            price_per_1k_output=llm.price_per_1k_output,
        )
        analysis, tokens, cost = self.client.converse(
            [{"role": "user", "content": prompt}], schema=ANALYSIS_SCHEMA, name="ralph_analysis",
            validate=lambda d: parse_analysis(d, self.cfg.search_space, self.name), budget=budget, transcript=transcript,
        )
        return replace(analysis, tokens_used=tokens, cost_usd=cost)


class CLIAnalyst(Analyst):
    def __init__(self, cfg: Config, backend: CLIBackend) -> None:
        self.cfg = cfg
        self.backend = backend
        self.name = backend.name
        self.exe = resolve_exe(cfg, backend, "analysis_model")
        self.prompts = Prompts(cfg)
        self.prompts.check(("analyze.md", "cli_analyze.md"), PLACEHOLDERS)

    def analyze(self, ctx: AnalysisContext) -> Analysis:
        cfg, cli = self.cfg, self.cfg.agents.cli
        budget_gate(ctx.tokens_left, ctx.cost_left_usd, self.name)
        values = analysis_values(cfg, ctx)
        values["analysis"] = self.prompts.render("analyze.md", values)
        prompt = render(self.prompts, "cli_analyze.md", values, cfg.agents.llm.prompt_budget_chars)
        with tempfile.TemporaryDirectory(prefix=f"ralph-{self.name}-analysis-") as tmp:
            cwd = Path(tmp) / "code"
            src = Path(ctx.cycle_dir) / "code" if ctx.cycle_dir else None
            if src is not None and src.is_dir():  # a copy: whatever the agent does, the cycle's files stay intact
                shutil.copytree(src, cwd, symlinks=True, ignore=shutil.ignore_patterns(*JUNK, *cfg.files.exclude))
            else:
                cwd.mkdir()
            agent_dir = Path(ctx.cycle_dir) / "agent" if ctx.cycle_dir else Path(tmp) / "agent"
            run = run_cli(
                self.backend, self.exe, cli, cwd=cwd, prompt=prompt, agent_dir=agent_dir, read_only=True, files=[],
                stem="analysis_transcript", secret_names=(cfg.agents.llm.api_key_env,),
            )
        tokens, cost = run.usage.tokens, usage_cost(cli, run.usage)
        problem = run.failure(cli.timeout_s)
        try:
            if problem is not None:
                raise ReplyInvalid(f"{self.name} {problem}")
            analysis = parse_analysis(extract_json(run.usage.text or run.stdout), cfg.search_space, self.name)
        except ReplyInvalid as exc:
            raise AgentError(
                f"analysis by {self.name} unusable: {exc}. Transcript: {run.transcript.parent}", tokens_used=tokens, cost_usd=cost
            ) from None
        return replace(analysis, tokens_used=tokens, cost_usd=cost)


def get_analyst(cfg: Config) -> Analyst | None:
    """The configured analysis agent, or None for the built-in analysis."""
    name = cfg.agents.analysis_model
    if name == "builtin":
        return None
    if name == "openai":
        return OpenAIAnalyst(cfg)
    if name in BACKENDS:
        return CLIAnalyst(cfg, BACKENDS[name]())
    raise ConfigError(
        f"agents.analysis_model = {name!r} is not an analysis agent; use builtin, openai, {', '.join(sorted(BACKENDS))}."
    )


def run_analyst(
    analyst: Analyst,
    cfg: Config,
    *,
    cycle: int,
    cycle_dir: Path,
    proposal: Proposal,
    result: TrialResult,
    metric: float | None,
    kept: bool,
    verdict: str,
    builtin: Analysis,
    history: Sequence[CycleRecord],
    progress: Sequence[Mapping[str, Any]],
    tokens_used: int,
    cost_used_usd: float,
) -> Analysis:
    """The agent's analysis of one cycle, or the built-in one (with the reason) when it fails.

    ``tokens_used``/``cost_used_usd`` are the run's totals including this cycle's proposal.
    Nothing ran in an invalid or cancelled cycle, so the agent is not asked about it.
    """
    if result.status in (TrialStatus.INVALID, TrialStatus.CANCELLED):
        return builtin
    sg, chars = cfg.safeguards, cfg.agents.llm.log_tail_chars
    ctx = AnalysisContext(
        cycle=cycle, proposal=proposal, result=result, metric=metric, kept=kept, verdict=verdict, builtin=builtin,
        history=tuple(history), progress=tuple(progress),
        stdout_tail=_tail(cycle_dir / "logs" / "stdout.log", chars),
        stderr_tail=_tail(cycle_dir / "logs" / "stderr.log", chars),
        target_name=cfg.target.name, direction=cfg.target.dir.value,
        tokens_left=None if sg.token_budget_total is None else sg.token_budget_total - tokens_used,
        cost_left_usd=None if sg.cost_budget_usd is None else sg.cost_budget_usd - cost_used_usd,
        tokens_left_cycle=None if sg.token_budget_per_cycle is None else sg.token_budget_per_cycle - proposal.tokens_used,
        cycle_dir=str(cycle_dir),
    )
    try:
        return analyst.analyze(ctx)
    except AgentError as exc:
        note = f" [analysis agent {analyst.name} failed, built-in analysis used: {clip(str(exc), 500)}]"
        return replace(builtin, summary=builtin.summary + note, tokens_used=exc.tokens_used, cost_usd=exc.cost_usd)
    except Exception as exc:  # agents are untrusted: a bug in one never stops the run
        note = f" [analysis agent {analyst.name} crashed ({type(exc).__name__}: {clip(str(exc), 300)}), built-in analysis used]"
        return replace(builtin, summary=builtin.summary + note)
