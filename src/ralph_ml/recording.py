"""What the loop records: each finished cycle's verdict, analysis and decision, and the run's state.

The loop calls :func:`assess` once a cycle's trial ended (target-metric rules, the keep
verdict, noise repeats, the analysis), decides, then writes what was decided with
:func:`write_decision`, :func:`journal_entry` and :func:`recorded_event`. :func:`run_state`
is the content of ``state/ralph_state.json``; :func:`write_run_env` writes ``state/env.json``.
The state machine itself (history, totals, the journal, the agent) stays in the loop;
nothing here keeps state.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import decision as dec
from .agents import Analyst, run_analyst
from .analysis import analyze, read_progress, render_markdown
from .config import Config
from .cyclefiles import classify, write_metrics
from .journal import write_json_atomic, write_text_atomic
from .noise import NoiseCheck
from .records import CycleRecord, Decision, Proposal, TrialResult
from .workspace import GitVersions


def assess(
    cfg: Config,
    *,
    run_id: str,
    cycle: int,
    cdir: Path,
    proposal: Proposal,
    result: TrialResult,
    code_hashes: dict[str, str],
    commit: str | None,
    parent: int | None,
    history: Sequence[CycleRecord],
    totals: dec.Totals,
    analyst: Analyst | None,
    noise: NoiseCheck,
    resources: Mapping[str, str] | None = None,
    time_left_s: float | None = None,
    repeats: Sequence[float] | None = None,
) -> CycleRecord:
    """The record of one finished cycle, not yet decided on.

    Writes ``metrics.json``, ``analysis.md`` and ``recommendations.json`` in ``cdir``;
    ``history`` and ``totals`` are the cycles recorded before this one. ``repeats``: the
    metrics of its noise repeats when they already ran (else they run here, if it needs them).
    """
    result, metric, kept, verdict = first_judgement(cfg, result, totals, noise)
    if metric is not None and noise.enabled:
        result, metric, kept, verdict = noise.check(
            run_id=run_id, cycle=cycle, cdir=cdir, result=result, metric=metric, kept=kept, verdict=verdict, totals=totals,
            resources=resources, time_left_s=time_left_s, values=repeats,
        )
    write_metrics(cdir, cycle, run_id, cfg.target, result)
    progress = read_progress(cdir / "progress.jsonl")
    analysis = analyze(result, metric, kept, history, progress, cfg, totals=totals, changed_code=bool(proposal.patch))
    if analyst is not None:  # the agent's analysis replaces the built-in one when valid
        analysis = run_analyst(
            analyst, cfg, cycle=cycle, cycle_dir=cdir, proposal=proposal, result=result, metric=metric,
            kept=kept, verdict=verdict, builtin=analysis, history=history, progress=progress,
            tokens_used=totals.tokens + proposal.tokens_used, cost_used_usd=totals.cost_usd + proposal.cost_usd,
        )
    write_text_atomic(cdir / "analysis.md", render_markdown(cycle, analysis, result, metric, verdict))
    write_json_atomic(cdir / "recommendations.json", [r.to_dict() for r in analysis.recommendations])
    return CycleRecord(
        cycle=cycle,
        proposal=proposal,
        result=result,
        metric=metric,
        kept=kept,
        verdict=verdict,
        analysis=analysis,
        commit=commit,
        frozen_hashes=code_hashes,
        parent=parent,
    )


def first_judgement(
    cfg: Config, result: TrialResult, totals: dec.Totals, noise: NoiseCheck,
) -> tuple[TrialResult, float | None, bool, str]:
    """A finished trial judged on its own run, before any noise repeat: ``(result, metric, kept, verdict)``."""
    result, metric = classify(result, cfg.target.name)
    # With confirmation repeats, a single run that beats the best at all is a candidate, and the
    # mean over its seeds decides against the noise (as SMAC's intensification races a
    # challenger): judged on the noise alone, one run would need z x noise x sqrt(1 + 1/n_best),
    # more than a real gain of z x noise clears, and would never be re-run to show it.
    confirming = noise.enabled and cfg.noise.confirm_repeats > 0 and totals.best_seen is not None
    kept, verdict = dec.judge(metric, result.status, totals.best, cfg, noise=None if confirming else totals.noise)
    return result, metric, kept, verdict


def write_decision(cdir: Path, record: CycleRecord, d: Decision) -> None:
    """``decision.json``: what was decided after the cycle, with its verdict and exit code."""
    write_json_atomic(
        cdir / "decision.json",
        {**d.to_dict(), "cycle": record.cycle, "verdict": record.verdict, "kept": record.kept, "exit_code": d.exit_code if d.stop else None},
    )


def journal_entry(record: CycleRecord, d: Decision, elapsed_s: float) -> dict[str, Any]:
    """The journal's ``cycle_recorded`` line (what ``journal.replay`` reads back)."""
    return {
        "type": "cycle_recorded",
        "ts": time.time(),
        "cycle": record.cycle,
        "record": record.to_dict(),
        "decision": d.to_dict(),
        "elapsed_s": round(elapsed_s, 3),
    }


def recorded_event(record: CycleRecord, d: Decision, cdir: Path, record_dict: dict[str, Any] | None = None,
                   decision_dict: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``cycle_recorded`` event's data (read by the live view, the dashboard and the sinks).
    ``record_dict``, ``decision_dict``: ``record.to_dict()`` and ``d.to_dict()`` when the caller
    has them already (the journal entry's), to serialize each once per cycle."""
    result, analysis = record.result, record.analysis
    assert analysis is not None  # assess() always sets it
    return {
        "cycle": record.cycle,
        "status": result.status.value,
        "failure": result.failure.value,
        "metric": record.metric,
        "verdict": record.verdict,
        "kept": record.kept,
        "diagnosis": analysis.diagnosis,
        "recommendations": [r.to_dict() for r in analysis.recommendations[:2]],
        "message": result.message,
        "decision": d.to_dict() if decision_dict is None else decision_dict,
        "record": record.to_dict() if record_dict is None else record_dict,
        "cycle_dir": str(cdir),
    }


def commit_message(cycle: int, proposal: Proposal, params: dict[str, Any]) -> str:
    """The git commit message of a cycle's code version."""
    ps = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    return f"ralph-ml cycle {cycle}: {proposal.rationale}\n\nparams: {ps}\nagent: {proposal.agent}\n"


def run_state(
    cfg: Config,
    *,
    run_id: str,
    status: str,
    phase: str,
    cycle: int,
    cycles_recorded: int,
    totals: dec.Totals,
    usage: dec.Usage,
    stop: Decision | None,
    git: GitVersions | None,
    safeguards: dict[str, Any],
    sink_failures: dict[str, str],
    in_flight: list[int] | None = None,
) -> dict[str, Any]:
    """The content of ``state/ralph_state.json`` (read by machines and `ralph-ml status`).

    ``stop``: the decision that stops the run, if any; ``safeguards``: ``cfg.safeguards``
    dumped (static for a run); ``sink_failures``: tracking sinks switched off, and why;
    ``in_flight``: the cycles whose trials run (started, not ended).
    """
    best = totals.best
    sg = cfg.safeguards
    return {
        "run_id": run_id,
        "status": status,
        "phase": phase,
        "cycle": cycle,
        "in_flight": list(in_flight or []),
        "cycles_recorded": cycles_recorded,
        "pid": os.getpid(),
        "updated_at": time.time(),
        "config_path": str(cfg.source),
        "target": {"name": cfg.target.name, "value": cfg.target.value, "direction": cfg.target.dir.value},
        "best": None
        if best is None
        else {"cycle": best.cycle, "metric": best.metric, "params": best.proposal.params, "commit": best.commit,
              "stopped_at_step": best.result.stopped_at_step if best.result.stopped_by == "target" else None},
        "verdicts": dict(totals.verdicts),
        "elapsed_s": round(usage.elapsed_s, 3),
        "safeguards": safeguards,
        "budgets": {
            "cycles_used": cycles_recorded,
            "cycles_left": max(0, sg.max_cycles - cycles_recorded),
            "time_left_s": None
            if sg.total_time_limit_minutes is None
            else max(0.0, round(sg.total_time_limit_minutes * 60 - usage.elapsed_s, 1)),
            "tokens_used": usage.tokens,
            "tokens_left": None if sg.token_budget_total is None else max(0, sg.token_budget_total - usage.tokens),
            "cost_used_usd": usage.cost_usd,
            "cost_left_usd": None if sg.cost_budget_usd is None else max(0.0, sg.cost_budget_usd - usage.cost_usd),
            "no_improvement_streak": totals.streak,
        },
        "stop": None if stop is None else {**stop.to_dict(), "exit_code": stop.exit_code},
        "git": None if git is None else {"branch": git.branch, "best_tag": git.best_tag},
        "sink_failures": sink_failures,
    }


def _name_version(dist: Any) -> tuple[str | None, str | None]:
    """A distribution's ``Name`` and ``Version``, read from its metadata's header lines.

    ``dist.metadata`` runs the e-mail parser over the whole file (descriptions included): a
    tenth of a CPU-second for 170 packages, at the start of every run. The two headers are
    single lines before the first blank one (the core metadata format), so a scan suffices."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    name = version = None
    for line in text.splitlines():
        if not line.strip():
            break  # the headers end here; the description follows
        if name is None and line.startswith("Name:"):
            name = line[5:].strip()
        elif version is None and line.startswith("Version:"):
            version = line[8:].strip()
        if name and version:
            break
    return name or None, version


def write_run_env(path: Path) -> None:
    """``state/env.json``: the Python, platform, host and installed packages the loop runs with."""
    from importlib import metadata

    pkgs = sorted(f"{name}=={version}" for name, version in map(_name_version, metadata.distributions()) if name)
    write_json_atomic(
        path,
        {
            "python": sys.version,
            "executable": sys.executable,
            "platform": platform.platform(),
            "hostname": socket.gethostname(),
            "cpu_count": os.cpu_count(),
            "packages": pkgs,
        },
    )
