"""Final report and leaderboard, rebuilt from the journal (the source of truth)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .config import Config
from .decision import best_of
from .journal import replay, write_json_atomic, write_text_atomic
from .records import CycleRecord, Direction

_SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None]) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append("·")
        else:
            out.append(_SPARK[0 if hi == lo else int((v - lo) / (hi - lo) * (len(_SPARK) - 1))])
    return "".join(out)


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def leaderboard(records: list[CycleRecord], direction: Direction, top: int = 10) -> list[dict[str, Any]]:
    ok = [r for r in records if r.metric is not None and math.isfinite(r.metric)]
    sign = 1.0 if direction is Direction.MINIMIZE else -1.0
    ok.sort(key=lambda r: sign * float(r.metric or 0.0))
    return [
        {
            "rank": i + 1,
            "cycle": r.cycle,
            "metric": r.metric,
            "verdict": r.verdict,
            "params": r.proposal.params,
            "commit": r.commit,
            "code": f"runs/cycle_{r.cycle:04d}/code",
            "checkpoints": f"runs/cycle_{r.cycle:04d}/checkpoints",
        }
        for i, r in enumerate(ok[:top])
    ]


def write_report(cfg: Config, out: Path | None = None) -> tuple[Path, Path]:
    """Write reports/final_report.md and reports/leaderboard.json; return their paths."""
    state_dir = cfg.path(cfg.paths.state)
    reports = cfg.path(cfg.paths.reports)
    rp = replay(state_dir / "journal.jsonl")
    records = rp.records
    t = cfg.target
    best = best_of(records)
    md_path = out or reports / "final_report.md"
    lb_path = md_path.parent / "leaderboard.json"
    board = leaderboard(records, t.dir)
    write_json_atomic(lb_path, {"run_id": rp.run["run_id"], "target": t.describe(), "leaderboard": board})

    first_ok = next((r for r in records if r.metric is not None), None)
    lines = [
        f"# ralph-ml report: {cfg.project.name}",
        "",
        f"- run: `{rp.run['run_id']}`",
        f"- target: `{t.describe()}`",
        f"- cycles recorded: {len(records)}",
    ]
    if rp.stopped:
        d = rp.stopped.get("decision", {})
        lines.append(f"- stopped: **{d.get('reason')}** (exit {rp.stopped.get('exit_code')}): {d.get('message', '')}")
    else:
        lines.append("- stopped: not yet (the run is in progress or was interrupted; `ralph-ml resume` continues it)")
    if best is not None and best.metric is not None:
        lines.append(f"- best: **{t.name} = {best.metric:.6g}** at cycle {best.cycle} ({_fmt_params(best.proposal.params)})")
        if first_ok is not None and first_ok.metric is not None and first_ok.cycle != best.cycle:
            gain = best.metric - first_ok.metric
            lines.append(f"- improvement: {first_ok.metric:.6g} (cycle {first_ok.cycle}) → {best.metric:.6g} ({gain:+.6g})")
        if best.commit:
            lines.append(f"- best code: commit `{best.commit[:12]}` (tag `ralph/{rp.run['run_id']}/best`)")
        lines.append(f"- best code folder: `runs/cycle_{best.cycle:04d}/code`")
    lines += [
        f"- elapsed: {rp.elapsed_s:.1f} s",
        "",
        f"{t.name} per cycle: `{sparkline([r.metric for r in records])}`",
        "",
        "## Cycles",
        "",
        f"| cycle | status | {t.name} | verdict | diagnosis | seconds | params |",
        "|---:|---|---:|---|---|---:|---|",
    ]
    for r in records:
        m = f"{r.metric:.6g}" if r.metric is not None else "n/a"
        status = r.result.status.value + (f" ({r.result.failure.value})" if r.result.failure.value != "none" else "")
        diag = r.analysis.diagnosis if r.analysis else ""
        lines.append(
            f"| {r.cycle} | {status} | {m} | {r.verdict} | {diag} | {r.result.duration_s:.1f} | {_fmt_params(r.proposal.params)} |"
        )
    failed = [r for r in records if r.metric is None]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            lines.append(f"- cycle {r.cycle}: {r.result.status.value} ({r.result.failure.value}): {r.result.message.splitlines()[0] if r.result.message else ''}")
    lines += ["", "## Leaderboard", "", "| rank | cycle | metric | params |", "|---:|---:|---:|---|"]
    for row in board:
        lines.append(f"| {row['rank']} | {row['cycle']} | {row['metric']:.6g} | {_fmt_params(row['params'])} |")
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return md_path, lb_path
