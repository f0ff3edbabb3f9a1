"""``reports/report.html``: one self-contained page (inline CSS, charts as base64 PNG, no
script, nothing fetched from the network), readable offline and safe to attach to a ticket."""

from __future__ import annotations

import base64
import html
import json
import time
from typing import Any

from . import __version__, charts
from .journal import cycle_folder
from .report import CycleView, ReportContext, _delta, _fmt_params, fmt, lesson_columns, lessons, metric_cell, stop_summary

_CSS = """
body{font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;
 max-width:1100px;margin:24px auto;padding:0 16px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:14px;margin:18px 0 6px}
.sub{color:#666;margin-bottom:14px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid #e3e3e3;border-radius:6px;padding:8px 12px;min-width:150px}
.card b{display:block;font-size:18px}.card span{color:#666;font-size:12px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #eee;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:6px 0}
pre{background:#f7f7f7;border:1px solid #e6e6e6;border-radius:4px;padding:8px;overflow:auto;font-size:12px}
pre.diff .a{color:#116329;background:#e6ffec}pre.diff .d{color:#82071e;background:#ffebe9}pre.diff .h{color:#6639ba}
.kept{color:#1a7f37;font-weight:600}.superseded{color:#9a6700}.hurt{color:#82071e}.failed{color:#d62728}.pruned{color:#8c6bb1}.muted{color:#777}
.note{background:#fff8c5;border:1px solid #e6d87a;border-radius:4px;padding:8px 10px;margin:10px 0}
.stop{border-left:4px solid #1f77b4;padding:6px 10px;background:#f3f8fc}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _img(ctx: ReportContext, name: str, alt: str) -> str:
    png = ctx.images.get(name)
    if png is None:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _diff(text: str) -> str:
    out = []
    for line in text.splitlines():
        cls = "h" if line.startswith(("@@", "diff ", "+++", "---")) else "a" if line.startswith("+") else "d" if line.startswith("-") else ""
        out.append(f'<span class="{cls}">{_e(line)}</span>' if cls else _e(line))
    return '<pre class="diff">' + "\n".join(out) + "</pre>"


def _table(head: list[str], rows: list[list[str]], numeric: frozenset[int] | set[int] = frozenset()) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _outcome(view: CycleView) -> str:
    return f'<span class="{view.outcome_kind}">{_e(view.outcome)}</span>'


def render_html(ctx: ReportContext) -> str:
    cfg, rp, t, best = ctx.cfg, ctx.rp, ctx.cfg.target, ctx.best
    name = _e(t.name)
    parts: list[str] = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>ralph-ml report: {_e(cfg.project.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>ralph-ml report: {_e(cfg.project.name)}</h1>",
        f'<div class=sub>run <code>{_e(rp.run["run_id"])}</code> · target <code>{_e(t.describe())}</code> · '
        f"generated {_e(time.strftime('%Y-%m-%d %H:%M:%S'))} by ralph-ml {_e(__version__)}</div>",
    ]
    reason, code, message, evidence = stop_summary(ctx.stop)
    cards = [
        (f"{best.metric:.6g}" if best and best.metric is not None else "n/a", f"best {name}" + (f" (cycle {best.cycle})" if best else "")),
        (str(len(ctx.views)), " · ".join(f"{ctx.count(c)} {charts.STYLE[c][0]}" for c in charts.STYLE if ctx.count(c)) or "cycles"),
        (_e(reason or "running"), f"stop reason (exit {code})" if reason else "not stopped yet"),
        (f"{rp.elapsed_s:.1f} s", f"elapsed (trials {ctx.trial_seconds:.1f} s)"),
        (f"{ctx.tokens}", f"tokens · ${ctx.cost_usd:.4f}"),
    ]
    parts.append("<div class=cards>" + "".join(f"<div class=card><b>{v}</b><span>{label}</span></div>" for v, label in cards) + "</div>")
    for note in ctx.notes:
        parts.append(f"<div class=note>{_e(note)}</div>")
    if reason:
        ev = json.dumps(evidence, indent=2, default=str) if evidence else ""
        parts.append(
            f"<h2>Why the run stopped</h2><div class=stop><b>{_e(reason)}</b> (exit code {_e(code)}): {_e(message)}</div>"
            + (f"<pre>{_e(ev)}</pre>" if ev else "")
        )
    else:
        parts.append("<h2>Why the run stopped</h2><p class=muted>It has not stopped: it is running or was interrupted "
                     "(<code>ralph-ml resume</code> continues it).</p>")
    parts.append(f"<h2>{name} per cycle</h2>" + (_img(ctx, "progress", f"{t.name} per cycle") or "<p class=muted>no chart</p>"))
    if "curves" in ctx.images:
        parts.append("<h2>Learning curves of the best cycles</h2>" + _img(ctx, "curves", "learning curves"))
    if "params" in ctx.images:
        parts.append(f"<h2>Parameter effects</h2><p class=muted>{name} against each parameter that varied; ★ the best "
                     "cycle; × beyond the grey line: cycles without a score.</p>" + _img(ctx, "params", "parameter effects"))
    compared = ctx.compared
    if compared:
        rows = []
        for v in compared:
            change = "; ".join(_e(c.text) for c in v.changes) or ("code change" if v.patch else "no param change")
            if v.patch and v.changes:
                change += "; code change"
            rows.append([str(v.cycle), change, _e(metric_cell(v.record, t.name)), _e(_delta(v.delta)), _outcome(v)])
        parts.append("<h2>What worked, what hurt</h2><p class=muted>Each cycle against the version it was built on, the best when it started.</p>"
                     + _table(["cycle", "change vs its base", name, "Δ vs base", "outcome"], rows, {0, 2, 3}))
        agg = lessons(ctx.views)
        if agg:
            cols = lesson_columns(agg)
            note = "pruned: stopped early, by a pruner or a stop; not a failure" + (
                "; noise: a gain that did not clear the noise on re-run" if "noise" in cols else "")
            parts.append(f"<h3>By kind of change</h3><p class=muted>{note}.</p>"
                         + _table(["param", "change", *cols, "mean Δ"],
                                  [[_e(r["param"]), _e(r["change"]), *(str(r[c]) for c in cols), _e(_delta(r["mean_delta"]))]
                                   for r in agg], set(range(2, len(cols) + 3))))
    if ctx.tree:
        parts.append(f"<h2>Version tree</h2><p class=muted>Each cycle under the version its code derives from.</p><pre>{_e(ctx.tree)}</pre>")
    kept = [v for v in ctx.views if v.record.kept]
    if kept:
        parts.append("<h2>Kept changes</h2>")
        for v in kept:
            r = v.record
            vs = f" ({_e(_delta(v.delta))} vs cycle {v.baseline.cycle})" if v.baseline else " (first kept)"
            parts.append(f"<h3>Cycle {r.cycle}: {name} = {_e(fmt(r.metric))}{vs}</h3>")
            if r.proposal.rationale:
                parts.append(f"<p>{_e(r.proposal.rationale)}</p>")
            if v.changes:
                parts.append(_table(["param", "before", "after"], [[_e(c.name), _e(fmt(c.before)), _e(fmt(c.after))] for c in v.changes]))
            else:
                parts.append("<p class=muted>params unchanged</p>")
            if r.commit:
                parts.append(f"<p class=muted>commit <code>{_e(r.commit[:12])}</code> · code <code>runs/{cycle_folder(r.cycle)}/code</code></p>")
            if v.patch:
                parts.append(_diff(v.patch))
    parts.append(f"<h2>Time and agent usage</h2><p>elapsed {rp.elapsed_s:.1f} s: {_e(ctx.time_split)} · "
                 f"{ctx.tokens} tokens · ${ctx.cost_usd:.4f}</p>"
                 + _img(ctx, "time", "seconds per cycle"))
    rows = []
    for v in ctx.in_cycle_order:
        r = v.record
        status = r.result.status_text()
        rows.append([str(r.cycle), _e(status), _e(metric_cell(r, t.name, ".6g")), "<span class=kept>kept</span>" if r.kept else _e(r.verdict),
                     _e(r.analysis.diagnosis if r.analysis else ""), f"{r.result.duration_s:.1f}", str(r.tokens_used),
                     f"{r.cost_usd:.4f}", _e(_fmt_params(v.params))])
    parts.append("<h2>Cycles</h2>" + _table(["cycle", "status", name, "verdict", "diagnosis", "seconds", "tokens", "cost $", "params"], rows, {0, 2, 5, 6, 7}))
    for title, category in (("Failures", "failed"), ("Stopped early", "pruned")):
        listed = [(r, text) for r, text in ctx.incidents(category) if r.result.message]
        if listed:
            parts.append(f"<h2>{title}</h2><ul>" + "".join(f"<li>cycle {r.cycle}: {_e(text)}</li>" for r, text in listed) + "</ul>")
    if ctx.board:
        parts.append("<h2>Leaderboard</h2>" + _table(["rank", "cycle", name, "params"], [
            [str(b["rank"]), str(b["cycle"]), _e(f"{b['metric']:.6g}"), _e(_fmt_params(b["params"]))] for b in ctx.board], {0, 1, 2}))
    links = " · ".join(f'<a href="{_e(link)}">{_e(label)}</a>' for label, link in ctx.files.items())
    parts.append(f"<h2>Files</h2><p>{links}</p></body></html>")
    return "\n".join(parts) + "\n"
