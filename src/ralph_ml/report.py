"""Final report, rebuilt from the journal (the source of truth) at the end of every run and
by ``ralph-ml report``.

Writes, next to the markdown report (``reports/`` by default):

- ``final_report.md``   summary, what worked / what hurt, kept changes, every cycle
- ``report.html``       the same with charts, self-contained (inline PNG and CSS, no network)
- ``progress.png``      the target metric per cycle, running best, target line
- ``leaderboard.json``  the best cycles, machine readable
- ``timeline.json``     Chrome trace of the phases (``observability.timeline``)

Charts need matplotlib (a core dependency); if it cannot be imported the text reports are
still written and say how to get the charts.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import charts
from .analysis import read_progress
from .config import Config
from .decision import best_of
from .journal import Replay, cycle_folder, replay, write_bytes_atomic, write_json_atomic, write_text_atomic
from .records import STOPPED_EARLY, UNPROVEN, CycleRecord, Direction, partial_value

log = logging.getLogger("ralph_ml.report")

__all__ = ["Change", "CycleView", "ReportFiles", "build_report", "cycle_views", "leaderboard", "lessons", "sparkline", "write_report"]

_SPARK = "▁▂▃▄▅▆▇█"
CURVES_TOP = 5  # learning curves of the best few cycles


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


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in params.items())


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
            "code": f"runs/{cycle_folder(r.cycle)}/code",
            "checkpoints": f"runs/{cycle_folder(r.cycle)}/checkpoints",
        }
        for i, r in enumerate(ok[:top])
    ]


# --------------------------------------------------------------------------- what changed


@dataclass(frozen=True)
class Change:
    """One parameter that differs from the cycle the cycle was compared with (its baseline)."""

    name: str
    before: Any
    after: Any

    @property
    def direction(self) -> str:
        num = (int, float)
        if isinstance(self.before, num) and isinstance(self.after, num) and not isinstance(self.before, bool) and not isinstance(self.after, bool):
            return "increase" if self.after > self.before else "decrease"
        return f"= {fmt(self.after)}"

    @property
    def text(self) -> str:
        return f"{self.name} {fmt(self.before)} → {fmt(self.after)}" if self.before is not None else f"{self.name} = {fmt(self.after)}"

    @property
    def short(self) -> str:
        arrow = {"increase": "↑", "decrease": "↓"}.get(self.direction)
        return f"{self.name}{arrow} {fmt(self.after)}" if arrow else f"{self.name}={fmt(self.after)}"


_CATEGORY = {"kept": "kept", "discarded": "discarded", "below_gate": "below_gate"}
# What the report says of a gain that did not hold on re-run (records.UNPROVEN).
_UNPROVEN_TEXT = {"noise": "noise (the gain did not clear the noise on re-run)", "unconfirmed": "unconfirmed (its re-run did not end)"}


@dataclass(frozen=True)
class CycleView:
    """A recorded cycle with what the report says about it."""

    record: CycleRecord
    params: dict[str, Any]  # the params the trial ran with
    baseline: CycleRecord | None  # what it was compared with: the version it was built on, else the best so far
    changes: tuple[Change, ...]  # vs the baseline's params (vs the search-space defaults before any)
    delta: float | None  # metric - baseline metric
    best_after: float | None  # running best once this cycle was recorded
    patch: str | None  # the code change (patch.diff), if any
    category: str = field(default="discarded")  # a key of charts.STYLE
    superseded: bool = False  # beat its base, but not the best by the time it was recorded (cycles in flight)

    @property
    def cycle(self) -> int:
        return self.record.cycle

    @property
    def outcome(self) -> str:
        return self._outcome[0]

    @property
    def outcome_kind(self) -> str:
        """The outcome's kind, for styling: kept, superseded, hurt, pruned, muted (noise,
        unconfirmed) or failed."""
        return self._outcome[1]

    @property
    def _outcome(self) -> tuple[str, str]:
        r = self.record
        if r.kept:
            return ("baseline" if self.baseline is None else "helped"), "kept"
        if r.verdict in UNPROVEN:
            return _UNPROVEN_TEXT[r.verdict], "muted"
        if r.metric is None:
            if r.verdict in STOPPED_EARLY:
                return r.verdict, "pruned"
            return (f"failed ({r.result.failure.value})" if r.result.failure.value != "none" else r.verdict), "failed"
        if r.verdict == "below_gate":
            return "hurt (below gate)", "hurt"
        if self.superseded:
            return "superseded (beat its base, not the best when recorded)", "superseded"
        return "hurt", "hurt"


def metric_cell(record: CycleRecord, name: str, spec: str = ".4g") -> str:
    """The target metric as the report's tables show it: the cycle's score, or for a trial
    stopped early (pruned, cancelled) the value it had reached, marked partial."""
    if record.metric is not None:
        return format(record.metric, spec)
    part = partial_value(record.verdict, record.result.metrics, name)
    return "n/a" if part is None else f"{format(part, spec)} (partial)"


def _read_params(path: Path) -> dict[str, Any] | None:
    import json

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def cycle_views(records: list[CycleRecord], cfg: Config, runs_dir: Path | None = None) -> list[CycleView]:
    """One view per record, in order: params, the baseline, changes, delta and running best."""
    defaults = {k: p.default for k, p in cfg.search_space.items() if p.default is not None}
    runs_dir = runs_dir or cfg.path(cfg.paths.runs)
    out: list[CycleView] = []
    best: CycleRecord | None = None
    eff: dict[int, dict[str, Any]] = {}
    seen: dict[int, CycleRecord] = {}
    by_cycle = {r.cycle: r for r in records}
    for r in records:
        cdir = runs_dir / cycle_folder(r.cycle)
        # Compared with the version it was built on (the best when it started): with several
        # cycles in flight, or after a resume, the best when it was recorded can be a cycle
        # that did not exist when it was proposed. Without one (the first cycle, a draft from
        # the workspace, a fix of a failed version), the best so far. A perturbation of a
        # cycle that was in flight (the built-in agent's "leader") is compared with that
        # cycle, which may be recorded after it.
        parent = seen.get(r.parent) if r.parent is not None else None
        lead = by_cycle.get(r.proposal.meta.get("from_cycle", -1)) if r.proposal.meta.get("source") == "leader" else None
        if lead is not None and lead.metric is not None and lead.cycle != r.cycle:
            parent = lead
        baseline = parent if parent is not None and parent.metric is not None else best
        if baseline is not None and baseline.cycle not in eff:  # the leader, recorded later
            eff[baseline.cycle] = _read_params(runs_dir / cycle_folder(baseline.cycle) / "params.json") or {
                **defaults, **baseline.proposal.params}
        base_params = eff[baseline.cycle] if baseline is not None else defaults
        params = _read_params(cdir / "params.json") or {**base_params, **r.proposal.params}
        eff[r.cycle] = params
        changes = tuple(
            Change(k, base_params.get(k), v) for k, v in params.items() if k not in base_params or base_params[k] != v
        )
        delta = None
        if baseline is not None and baseline.metric is not None and r.metric is not None:
            delta = r.metric - baseline.metric
        patch_file = cdir / "patch.diff"
        patch = patch_file.read_text(errors="replace") if patch_file.is_file() else r.proposal.patch
        seen[r.cycle] = r
        # Beat its base by the run's own bar for a gain, but a best recorded meanwhile was better.
        gain = None if delta is None else (delta if cfg.target.dir.value == "maximize" else -delta)
        superseded = (not r.kept and gain is not None and gain > 0 and gain >= cfg.safeguards.min_improvement_delta
                      and best is not baseline and r.verdict not in UNPROVEN)
        if r.kept:
            best = r
        if r.verdict in STOPPED_EARLY:
            category = "pruned"
        elif r.metric is None:
            category = "failed"
        else:
            category = _CATEGORY.get(r.verdict, "discarded")
        out.append(CycleView(r, params, baseline, changes, delta, best.metric if best else None, patch or None, category,
                             superseded))
    return out


def lessons(views: list[CycleView]) -> list[dict[str, Any]]:
    """What each kind of change did, over the cycles that were compared with a best so far."""
    agg: dict[tuple[str, str], dict[str, Any]] = {}
    for v in views:
        if v.baseline is None:
            continue
        for ch in v.changes:
            row = agg.setdefault((ch.name, ch.direction), {"param": ch.name, "change": ch.direction, "helped": 0, "hurt": 0,
                                                           "failed": 0, "pruned": 0, "noise": 0, "deltas": []})
            if v.record.kept or v.superseded:  # a superseded change beat the version it was built on
                row["helped"] += 1
            elif v.category == "pruned":  # stopped early (pruned, cancelled): it did not fail
                row["pruned"] += 1
            elif v.record.verdict in UNPROVEN:  # a gain that did not hold on re-run
                row["noise"] += 1
            elif v.record.metric is None:
                row["failed"] += 1
            else:
                row["hurt"] += 1
            if v.delta is not None:
                row["deltas"].append(v.delta)
    rows = []
    for row in agg.values():
        d = row.pop("deltas")
        row["tried"] = row["helped"] + row["hurt"] + row["failed"] + row["pruned"] + row["noise"]
        row["mean_delta"] = sum(d) / len(d) if d else None
        rows.append(row)
    rows.sort(key=lambda r: (-r["helped"], r["hurt"] + r["failed"], r["param"], r["change"]))
    return rows


def lesson_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The counts "by kind of change" shows: ``noise`` only for a run whose gains were re-run."""
    cols = ["tried", "helped", "hurt", "failed", "pruned"]
    return [*cols, "noise"] if any(r["noise"] for r in rows) else cols


# --------------------------------------------------------------------------- the report


@dataclass
class ReportFiles:
    markdown: Path
    leaderboard: Path
    html: Path
    progress_png: Path | None
    timeline: Path | None
    notes: list[str] = field(default_factory=list)  # what could not be produced, and why
    seconds: float = 0.0


@dataclass
class ReportContext:
    """Everything the markdown and HTML renderers need, computed once."""

    cfg: Config
    rp: Replay
    views: list[CycleView]
    board: list[dict[str, Any]]
    best: CycleRecord | None
    images: dict[str, bytes] = field(default_factory=dict)  # chart name -> PNG
    tree: str = ""  # the version tree (branching runs), as text
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # label -> relative link

    @property
    def stop(self) -> dict[str, Any] | None:
        return self.rp.stopped

    @property
    def tokens(self) -> int:
        return sum(v.record.tokens_used for v in self.views)

    @property
    def cost_usd(self) -> float:
        return sum(v.record.cost_usd for v in self.views)

    @property
    def trial_seconds(self) -> float:
        return sum(v.record.result.duration_s for v in self.views)

    @property
    def time_split(self) -> str:
        """Where the elapsed time went: trials, and the loop and agent (the rest) when trials
        ran one at a time; with several at once their seconds add up past the elapsed time."""
        k = self.cfg.execution.max_concurrency
        if k > 1:
            return f"trials {self.trial_seconds:.1f} s in all, up to {k} at once"
        return f"trials {self.trial_seconds:.1f} s, loop and agent {max(0.0, self.rp.elapsed_s - self.trial_seconds):.1f} s"

    @property
    def in_cycle_order(self) -> list[CycleView]:
        """Every recorded cycle by number (with several in flight they are recorded out of order)."""
        return sorted(self.views, key=lambda v: v.cycle)

    @property
    def compared(self) -> list[CycleView]:
        """The cycles compared with a base ("what worked, what hurt"), in cycle order."""
        return [v for v in self.in_cycle_order if v.baseline is not None]

    def incidents(self, category: str) -> list[tuple[CycleRecord, str]]:
        """The cycles of ``category`` ("failed", "pruned") in cycle order, each with what the
        report says happened: a stopped trial's message starts with it ("pruned at step 4: ..."),
        a failure's is led by its status ("failed (crash): ...")."""
        out = []
        for v in self.in_cycle_order:
            if v.category != category:
                continue
            r = v.record
            first = r.result.message.splitlines()[0] if r.result.message else ""
            out.append((r, first if category == "pruned" and first else f"{r.result.status_text()}: {first}"))
        return out

    def count(self, category: str) -> int:
        return sum(1 for v in self.views if v.category == category)


def _points(views: list[CycleView]) -> list[charts.Point]:
    return [
        charts.Point(
            cycle=v.cycle,
            metric=v.record.metric if v.record.metric is not None and math.isfinite(v.record.metric) else None,
            category=v.category,
            params=v.params,
            label=", ".join(c.short for c in v.changes[:2]) if v.baseline is not None else "baseline",
            duration_s=v.record.result.duration_s,
        )
        for v in views
    ]


def _curves(ctx: ReportContext, runs_dir: Path) -> tuple[dict[int, list[dict[str, Any]]], dict[int, str]]:
    sign = 1.0 if ctx.cfg.target.dir is Direction.MINIMIZE else -1.0
    scored = sorted((v for v in ctx.views if v.record.metric is not None), key=lambda v: sign * float(v.record.metric or 0.0))
    curves: dict[int, list[dict[str, Any]]] = {}
    labels: dict[int, str] = {}
    for v in scored:
        rows = read_progress(runs_dir / cycle_folder(v.cycle) / "progress.jsonl")
        if rows:
            curves[v.cycle] = rows
            labels[v.cycle] = f"cycle {v.cycle}: {fmt(v.record.metric)}" + (" (best)" if ctx.best and v.cycle == ctx.best.cycle else "")
        if len(curves) >= CURVES_TOP:
            break
    return curves, labels


def _draw(ctx: ReportContext, runs_dir: Path) -> None:
    """Fill ctx.images; a chart that fails is noted, never fatal (the loop calls this at the end of every run)."""
    t = ctx.cfg.target
    pts = _points(ctx.views)
    curves, labels = _curves(ctx, runs_dir)
    space = {k: {"log": p.log, "choices": p.choices} for k, p in ctx.cfg.search_space.items()}
    for v in ctx.views:  # params an agent set outside the declared space
        for k, val in v.params.items():
            if k not in space and isinstance(val, (int, float, str, bool)):
                space[k] = {"log": False, "choices": None}
    best_cycle = ctx.best.cycle if ctx.best else None
    jobs: list[tuple[str, Callable[[], bytes | None]]] = [
        ("progress", lambda: charts.progress(pts, name=t.name, target=t.value, maximize=t.dir is Direction.MAXIMIZE)),
        ("curves", lambda: charts.learning_curves(curves, labels=labels, prefer=t.name, best_cycle=best_cycle)),
        ("params", lambda: charts.param_effects(pts, space, name=t.name, maximize=t.dir is Direction.MAXIMIZE, best_cycle=best_cycle)),
        ("time", lambda: charts.time_per_cycle(pts)),
    ]
    for name, job in jobs:
        try:
            png = job()
        except charts.ChartsUnavailable as exc:
            ctx.notes.append(str(exc))
            log.warning("%s", exc)
            return
        except Exception as exc:  # a chart must never cost the run its report
            msg = f"the {name} chart could not be drawn ({type(exc).__name__}: {exc}); the rest of the report is complete"
            ctx.notes.append(msg)
            log.warning("%s", msg, exc_info=True)
            continue
        if png is not None:
            ctx.images[name] = png


def build_report(cfg: Config, out: Path | None = None, *, charts_enabled: bool = True) -> ReportFiles:
    """Write every report file (see the module doc) next to ``out`` (default reports/final_report.md)."""
    from .report_html import render_html

    t0 = time.perf_counter()
    state_dir = cfg.path(cfg.paths.state)
    runs_dir = cfg.path(cfg.paths.runs)
    rp = replay(state_dir / "journal.jsonl")
    md_path = out or cfg.path(cfg.paths.reports) / "final_report.md"
    folder = md_path.parent
    lb_path = folder / "leaderboard.json"
    html_path = folder / "report.html"
    png_path = folder / "progress.png"
    board = leaderboard(rp.records, cfg.target.dir)
    write_json_atomic(lb_path, {"run_id": rp.run["run_id"], "target": cfg.target.describe(), "leaderboard": board})
    ctx = ReportContext(cfg, rp, cycle_views(rp.records, cfg, runs_dir), board, best_of(rp.records))
    timeline_path: Path | None = None
    from . import versions

    write_json_atomic(folder / "versions.json", versions.tree(rp.records))
    ctx.files["versions.json"] = "versions.json"
    if any(r.parent is not None or r.proposal.patch for r in rp.records):  # code changes: draw the tree of versions explored
        ctx.tree = versions.render(rp.records, cfg.target.name)
    if cfg.observability.timeline:
        from .timeline import write_timeline

        try:
            timeline_path = write_timeline(state_dir / "events.jsonl", folder / "timeline.json", rp.stopped)
            ctx.files["timeline.json (open in ui.perfetto.dev or chrome://tracing)"] = "timeline.json"
        except Exception as exc:  # the trace is a convenience; never lose the report for it
            ctx.notes.append(f"timeline.json could not be written ({type(exc).__name__}: {exc})")
            log.warning("%s", ctx.notes[-1], exc_info=True)
    if charts_enabled:
        _draw(ctx, runs_dir)
    png_written: Path | None = None
    if "progress" in ctx.images:
        write_bytes_atomic(png_path, ctx.images["progress"])
        png_written = png_path
    elif png_path.exists():  # never leave a stale chart beside a fresh report
        png_path.unlink()
    ctx.files = {"final_report.md": md_path.name, "leaderboard.json": lb_path.name, **ctx.files}
    try:
        write_text_atomic(html_path, render_html(ctx))
    except Exception as exc:  # the markdown below still says everything
        ctx.notes.append(f"report.html could not be written ({type(exc).__name__}: {exc})")
        log.warning("%s", ctx.notes[-1], exc_info=True)
    write_text_atomic(md_path, render_markdown(ctx, png_written is not None))
    return ReportFiles(md_path, lb_path, html_path, png_written, timeline_path, ctx.notes, time.perf_counter() - t0)


def write_report(cfg: Config, out: Path | None = None) -> tuple[Path, Path]:
    """Write the reports (see the module doc); return (final_report.md, leaderboard.json)."""
    files = build_report(cfg, out)
    return files.markdown, files.leaderboard


# --------------------------------------------------------------------------- markdown


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _delta(v: float | None) -> str:
    return "" if v is None else f"{v:+.4g}"


def stop_summary(stop: dict[str, Any] | None) -> tuple[str, str, str, dict[str, Any]]:
    """(reason, exit code, message, evidence) of a run_stopped journal event."""
    if not stop:
        return "", "", "", {}
    d = stop.get("decision") or {}
    return str(d.get("reason") or "?"), str(stop.get("exit_code", "")), str(d.get("message", "")), dict(d.get("evidence") or {})


def render_markdown(ctx: ReportContext, with_png: bool) -> str:
    cfg, rp, t, best = ctx.cfg, ctx.rp, ctx.cfg.target, ctx.best
    records = [v.record for v in ctx.views]
    first_ok = next((r for r in records if r.metric is not None), None)
    counts = ", ".join(f"{ctx.count(c)} {charts.STYLE[c][0]}" for c in charts.STYLE if ctx.count(c))
    lines = [
        f"# ralph-ml report: {cfg.project.name}",
        "",
        f"- run: `{rp.run['run_id']}`",
        f"- target: `{t.describe()}`",
        f"- cycles recorded: {len(records)}" + (f" ({counts})" if counts else ""),
    ]
    reason, code, message, evidence = stop_summary(ctx.stop)
    if reason:
        lines.append(f"- stopped: **{reason}** (exit {code}): {message}")
    else:
        lines.append("- stopped: not yet (the run is in progress or was interrupted; `ralph-ml resume` continues it)")
    if best is not None and best.metric is not None:
        lines.append(f"- best: **{t.name} = {best.metric:.6g}** at cycle {best.cycle} ({_fmt_params(ctx.views[records.index(best)].params)})")
        if first_ok is not None and first_ok.metric is not None and first_ok.cycle != best.cycle:
            gain = best.metric - first_ok.metric
            lines.append(f"- improvement: {first_ok.metric:.6g} (cycle {first_ok.cycle}) → {best.metric:.6g} ({gain:+.6g})")
        if best.commit:
            lines.append(f"- best code: commit `{best.commit[:12]}` (tag `ralph/{rp.run['run_id']}/best`)")
        lines.append(f"- best code folder: `runs/{cycle_folder(best.cycle)}/code`")
    lines += [
        f"- elapsed: {rp.elapsed_s:.1f} s ({ctx.time_split})",
        f"- agent usage: {ctx.tokens} tokens, ${ctx.cost_usd:.4f}",
        "- more: " + " · ".join(f"[{label}]({link})" for label, link in [("report.html (charts)", "report.html"), *[(k, v) for k, v in ctx.files.items() if v != "final_report.md"]]),
        "",
        f"{t.name} per cycle: `{sparkline([r.metric for r in records])}`",
        "",
    ]
    if with_png:
        lines += [f"![{t.name} per cycle](progress.png)", ""]
    for note in ctx.notes:
        lines += [f"> note: {note}", ""]
    if reason:
        lines += ["## Why the run stopped", "", f"**{reason}** (exit code {code}): {message}", ""]
        lines += [f"- {k}: `{_cell(v)}`" for k, v in evidence.items()]
        lines.append("")
    compared = ctx.compared
    if compared:
        lines += [
            "## What worked, what hurt",
            "",
            "Each cycle against the version it was built on, the best when it started (kept = helped; discarded or failed = hurt).",
            "",
            f"| cycle | change vs its base | {t.name} | Δ vs base | outcome |",
            "|---:|---|---:|---:|---|",
        ]
        for v in compared:
            change = "; ".join(c.text for c in v.changes) or ("code change" if v.patch else "no param change")
            if v.patch and v.changes:
                change += "; code change"
            lines.append(f"| {v.cycle} | {_cell(change)} | {metric_cell(v.record, t.name)} | {_delta(v.delta)} | {v.outcome} |")
        rows = lessons(ctx.views)
        if rows:
            cols = lesson_columns(rows)
            lines += ["", "By kind of change (pruned: stopped early, by a pruner or a stop; not a failure"
                      + ("; noise: a gain that did not clear the noise on re-run" if "noise" in cols else "") + "):", "",
                      "| param | change | " + " | ".join(cols) + " | mean Δ |", "|---|---|" + "---:|" * (len(cols) + 1)]
            for row in rows:
                lines.append(f"| {_cell(row['param'])} | {_cell(row['change'])} | " + " | ".join(str(row[c]) for c in cols)
                             + f" | {_delta(row['mean_delta'])} |")
        lines.append("")
    if ctx.tree:
        lines += ["## Version tree", "", "Each cycle under the version its code derives from.", "", "```", ctx.tree, "```", ""]
    kept = [v for v in ctx.views if v.record.kept]
    if kept:
        lines += ["## Kept changes", ""]
        for v in kept:
            r = v.record
            head = f"### Cycle {r.cycle}: {t.name} = {fmt(r.metric)}" + (f" ({_delta(v.delta)} vs cycle {v.baseline.cycle})" if v.baseline else " (first kept)")
            lines += [head, ""]
            if r.proposal.rationale:
                lines.append(f"- why: {r.proposal.rationale}")
            lines.append("- params: " + ("; ".join(c.text for c in v.changes) if v.changes else "unchanged"))
            if r.commit:
                lines.append(f"- commit: `{r.commit[:12]}`")
            if v.patch:
                lines += ["", "```diff", v.patch.rstrip("\n"), "```"]
            lines.append("")
    lines += [
        "## Cycles",
        "",
        f"| cycle | status | {t.name} | verdict | diagnosis | seconds | tokens | params |",
        "|---:|---|---:|---|---|---:|---:|---|",
    ]
    for v in ctx.in_cycle_order:
        r = v.record
        status = r.result.status_text()
        diag = r.analysis.diagnosis if r.analysis else ""
        lines.append(
            f"| {r.cycle} | {status} | {metric_cell(r, t.name, '.6g')} | {r.verdict} | {diag} | {r.result.duration_s:.1f} | {r.tokens_used} | {_cell(_fmt_params(v.params))} |"
        )
    for title, category in (("Failures", "failed"), ("Stopped early", "pruned")):
        listed = ctx.incidents(category)
        if listed:
            lines += ["", f"## {title}", ""]
            lines += [f"- cycle {r.cycle}: {text}" for r, text in listed]
    lines += ["", "## Leaderboard", "", "| rank | cycle | metric | params |", "|---:|---:|---:|---|"]
    for row in ctx.board:
        lines.append(f"| {row['rank']} | {row['cycle']} | {row['metric']:.6g} | {_cell(_fmt_params(row['params']))} |")
    return "\n".join(lines) + "\n"
