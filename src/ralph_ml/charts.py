"""Report charts as PNG bytes, drawn with matplotlib's Agg canvas (no display, no pyplot
global state, safe to call from any thread).

Each function takes plain data and returns PNG bytes, or ``None`` when there is nothing to
draw. ``ChartsUnavailable`` says how to install matplotlib when it is missing.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from .errors import RalphError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ChartsUnavailable", "Point", "learning_curves", "param_effects", "progress", "time_per_cycle"]

INSTALL_HINT = "pip install 'ralph-ml[report]'  (or: pip install matplotlib)"

# verdict category -> (label, colour, marker)
STYLE: dict[str, tuple[str, str, str]] = {
    "kept": ("kept", "#2e9e44", "o"),
    "discarded": ("discarded", "#a0a0a0", "o"),
    "below_gate": ("below gate", "#e69f00", "o"),
    "failed": ("failed (no score)", "#d62728", "x"),
    "pruned": ("pruned / cancelled", "#8c6bb1", "v"),
}
_DPI = 110


class ChartsUnavailable(RalphError):
    """matplotlib is not installed (or cannot be imported)."""


@dataclass(frozen=True)
class Point:
    """One cycle as the charts see it."""

    cycle: int
    metric: float | None
    category: str  # a key of STYLE
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # short text for kept points (what changed)
    duration_s: float = 0.0


def _figure(w: float, h: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ChartsUnavailable(f"charts need matplotlib, which cannot be imported ({exc}): {INSTALL_HINT}") from None
    fig = Figure(figsize=(w, h), dpi=_DPI, layout="constrained")
    return fig


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _style_axes(ax: Axes) -> None:
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _log_x(ax: Axes, values: Sequence[float]) -> None:
    """A log x axis labelled in plain text ("1e-03", "200"): matplotlib's default renders every label as
    mathtext, which costs more than drawing the rest of the panel."""
    from matplotlib.ticker import LogFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(LogFormatter())
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    pos = [v for v in values if v > 0]
    if pos and max(pos) / min(pos) > 30:  # a tick per decade is enough; 8 unlabelled minor ticks a decade cost more than the data
        ax.xaxis.set_minor_locator(NullLocator())


def _unscored_row(ax: Axes, points: Sequence[Point], row: float, sep: float) -> None:
    """Cycles without a score, in their own row past the worst values (there is no y to plot)."""
    for cat in ("failed", "pruned"):
        xs = [p.cycle for p in points if p.metric is None and p.category == cat]
        if xs:
            label, colour, marker = STYLE[cat]
            ax.scatter(xs, [row] * len(xs), marker=marker, s=46, color=colour, label=f"{label} ({len(xs)})", zorder=4, linewidths=1.6)
    ax.axhline(sep, color="#c8c8c8", linewidth=0.8)
    ax.text(-0.008, row, "no score", transform=ax.get_yaxis_transform(), ha="right", va="center", fontsize=7, color=STYLE["failed"][1])


def _limits(values: Sequence[float], extra: Sequence[float], unscored: bool, maximize: bool) -> tuple[float, float, float, float]:
    """(y low, y high, row for unscored cycles, separator) with the unscored row on the worse side."""
    vals = [*values, *extra]
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or max(abs(hi), 1.0) * 0.1
    if not unscored:
        return lo - 0.1 * span, hi + 0.1 * span, math.nan, math.nan
    if maximize:
        return lo - 0.22 * span, hi + 0.1 * span, lo - 0.15 * span, lo - 0.08 * span
    return lo - 0.1 * span, hi + 0.22 * span, hi + 0.15 * span, hi + 0.08 * span


def _trim_ticks(ax: Axes, sep: float, maximize: bool) -> None:
    """No value ticks in the unscored row."""
    lo, hi = ax.get_ylim()
    ax.set_yticks([t for t in ax.get_yticks() if lo <= t <= hi and (t > sep if maximize else t < sep)])
    ax.set_ylim(lo, hi)


def progress(points: Sequence[Point], *, name: str, target: float, maximize: bool) -> bytes | None:
    """The target metric per cycle, the running best as a step line, the target as a line."""
    if not points:
        return None
    from matplotlib.ticker import MaxNLocator

    fig = _figure(9.0, 4.6)
    ax = fig.add_subplot()
    _style_axes(ax)
    scored = [p for p in points if p.metric is not None and math.isfinite(p.metric)]
    for cat in ("discarded", "below_gate", "kept"):
        sel = [p for p in scored if p.category == cat]
        if sel:
            label, colour, marker = STYLE[cat]
            ax.scatter([p.cycle for p in sel], [float(p.metric or 0.0) for p in sel], color=colour, marker=marker,
                       s=48 if cat == "kept" else 30, zorder=3 if cat == "kept" else 2,
                       edgecolors="black" if cat == "kept" else "none", linewidths=0.6, label=f"{label} ({len(sel)})")
    # Running best over kept cycles, held to the last cycle.
    xs: list[float] = []
    ys: list[float] = []
    best: float | None = None
    for p in points:
        if p.category == "kept" and p.metric is not None:
            best = p.metric
        if best is not None:
            xs.append(p.cycle)
            ys.append(best)
    if xs:
        ax.plot(xs, ys, drawstyle="steps-post", color=STYLE["kept"][1], linewidth=1.8, alpha=0.8, label="best so far", zorder=2)
    # Say what changed at kept points, latest (best) first, skipping labels that would collide.
    cycles_per_char = max(p.cycle for p in points) * 6.0 / 720.0  # ~6 px a character, ~720 px of axes
    placed: list[int] = []
    for p in reversed([p for p in scored if p.category == "kept" and p.label]):
        text = p.label[:30]
        if all(c - p.cycle >= (len(text) + 2) * cycles_per_char for c in placed):
            placed.append(p.cycle)
            # a label that would run past the last cycle (into the legend) is written leftwards
            leftward = p.cycle + (len(text) + 2) * cycles_per_char > max(q.cycle for q in points) + 0.5
            ax.annotate(text, (p.cycle, float(p.metric or 0.0)), textcoords="offset points",
                        xytext=(-5 if leftward else 5, -12 if maximize else 8), ha="right" if leftward else "left",
                        fontsize=7, color="#1f5f2b")
    values = [float(p.metric) for p in scored if p.metric is not None] or [target]
    lo, hi = min(values), max(values)
    span = (hi - lo) or max(abs(hi), 1.0) * 0.1
    show_target = lo - 0.6 * span <= target <= hi + 0.6 * span
    unscored = any(p.metric is None for p in points)
    ylo, yhi, row, sep = _limits(values, [target] if show_target else [], unscored, maximize)
    if show_target:
        ax.axhline(target, color="#1f77b4", linestyle="--", linewidth=1.2, label=f"target {target:g}")
    else:
        where = "above" if target > hi else "below"
        ax.text(0.99, 0.98 if where == "above" else 0.02, f"target {target:g} is {where} the chart",
                transform=ax.transAxes, ha="right", va="top" if where == "above" else "bottom", fontsize=8, color="#1f77b4")
    if unscored:
        _unscored_row(ax, points, row, sep)
    ax.set_ylim(ylo, yhi)
    if unscored:
        _trim_ticks(ax, sep, maximize)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, max(p.cycle for p in points) + 0.5)
    ax.set_xlabel("cycle")
    ax.set_ylabel(f"{name} ({'higher' if maximize else 'lower'} is better)")
    ax.set_title(f"{name} per cycle", loc="left", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)  # beside, never on the data
    return _png(fig)


def learning_curves(curves: dict[int, list[dict[str, Any]]], *, labels: dict[int, str], prefer: str,
                    best_cycle: int | None = None, max_metrics: int = 3) -> bytes | None:
    """Per-step metrics (progress.jsonl rows) of a few cycles, one panel per metric."""
    counts: dict[str, int] = {}
    for rows in curves.values():
        for row in rows:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    counts[k] = counts.get(k, 0) + 1
    if not counts:
        return None
    names = sorted(counts, key=lambda k: (k != prefer, -counts[k], k))[:max_metrics]
    from matplotlib.ticker import MaxNLocator

    fig = _figure(4.2 * len(names) + 0.6, 3.6)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    colours = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]
    few = all(len(rows) <= 30 for rows in curves.values())  # markers only when every curve is short
    for ax, metric in zip(axes, names):
        _style_axes(ax)
        for i, (cycle, rows) in enumerate(curves.items()):
            pts = [(float(r.get("step", j)), float(r[metric])) for j, r in enumerate(rows)
                   if isinstance(r.get(metric), (int, float)) and math.isfinite(float(r[metric]))]
            if not pts:
                continue
            lw = 2.4 if cycle == best_cycle else 1.3
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colours[i % len(colours)], linewidth=lw,
                    marker="o" if few else None, markersize=3, label=labels.get(cycle, f"cycle {cycle}"))
        ax.set_title(metric, loc="left", fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=7, frameon=False, loc="best")
    return _png(fig)


def param_effects(points: Sequence[Point], params: dict[str, dict[str, Any]], *, name: str, maximize: bool,
                  best_cycle: int | None = None, max_params: int = 12) -> bytes | None:
    """The target metric against each parameter (one panel each); unscored cycles at the bottom.

    ``params`` maps a parameter name to ``{"log": bool, "choices": list | None}``.
    """
    fig = param_effects_figure(points, params, name=name, maximize=maximize, best_cycle=best_cycle, max_params=max_params)
    return None if fig is None else _png(fig)


def param_effects_figure(points: Sequence[Point], params: dict[str, dict[str, Any]], *, name: str, maximize: bool,
                         best_cycle: int | None = None, max_params: int = 12) -> Figure | None:
    """The figure of ``param_effects``, not yet drawn (None when no parameter varied or nothing scored)."""
    # Only parameters that took two values or more: a single value says nothing about its effect.
    names = [n for n in params if len({repr(p.params[n]) for p in points if n in p.params}) > 1][:max_params]
    if not names or not any(p.metric is not None for p in points):
        return None
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(3.6 * cols + 0.4, 2.9 * rows + 0.2)
    # One y range for all panels, set on each: sharey would make every panel measure its siblings' tick
    # labels at layout time (quadratic in panels, the chart's largest cost).
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    values = [float(p.metric) for p in points if p.metric is not None]
    unscored = any(p.metric is None for p in points)
    ylo, yhi, row, sep = _limits(values, [], unscored, maximize)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax, pname in zip(axes, names):
        _style_axes(ax)
        info = params[pname]
        choices = info.get("choices")
        numeric = not choices and all(isinstance(p.params.get(pname), (int, float)) for p in points if pname in p.params)
        if not numeric:
            seen: list[Any] = list(choices or [])
            for p in points:
                v = p.params.get(pname)
                if pname in p.params and v not in seen:
                    seen.append(v)
            pos = {repr(v): i for i, v in enumerate(seen)}

            def xval(p: Point) -> float:
                # a small deterministic jitter so repeated choices do not hide each other
                return pos[repr(p.params[pname])] + ((p.cycle * 0.618) % 1.0 - 0.5) * 0.3

            ax.set_xticks(range(len(seen)), [str(v)[:12] for v in seen], fontsize=8)
            ax.set_xlim(-0.6, len(seen) - 0.4)
        else:
            def xval(p: Point) -> float:
                return float(p.params[pname])

        have = [p for p in points if pname in p.params]
        if numeric and info.get("log"):
            _log_x(ax, [xval(p) for p in have])
        for cat in ("discarded", "below_gate", "kept"):
            sel = [p for p in have if p.category == cat and p.metric is not None]
            if sel:
                _, colour, marker = STYLE[cat]
                ax.scatter([xval(p) for p in sel], [float(p.metric or 0.0) for p in sel], color=colour, marker=marker, s=22,
                           edgecolors="black" if cat == "kept" else "none", linewidths=0.5, zorder=3)
        bad = [p for p in have if p.metric is None]
        if bad:
            ax.scatter([xval(p) for p in bad], [row] * len(bad), marker="x", color=STYLE["failed"][1], s=22, zorder=3)
        best = [p for p in have if p.cycle == best_cycle and p.metric is not None]
        if best:
            ax.scatter([xval(best[0])], [float(best[0].metric or 0.0)], marker="*", s=160, color="#ffd700", edgecolors="black",
                       linewidths=0.7, zorder=4)
        ax.set_xlabel(pname + (" (log)" if info.get("log") and numeric else ""), fontsize=9)
        ax.tick_params(which="both", labelsize=8)
    for i, ax in enumerate(axes[:len(names)]):
        ax.set_ylim(ylo, yhi)
        if unscored:
            ax.axhline(sep, color="#c8c8c8", linewidth=0.8)
            _trim_ticks(ax, sep, maximize)
        if i % cols:
            ax.tick_params(labelleft=False)  # the first panel of the row labels the shared range
    for r in range(rows):
        axes[r * cols].set_ylabel(name, fontsize=9)
        if unscored:
            axes[r * cols].text(-0.01, row, "no score", transform=axes[r * cols].get_yaxis_transform(), ha="right",
                                va="center", fontsize=7, color=STYLE["failed"][1])
    return fig


def time_per_cycle(points: Sequence[Point]) -> bytes | None:
    """Seconds each cycle's trial ran, coloured by verdict."""
    if not points:
        return None
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig = _figure(9.0, 2.8)
    ax = fig.add_subplot()
    _style_axes(ax)
    ax.bar([p.cycle for p in points], [p.duration_s for p in points], color=[STYLE[p.category][1] for p in points], width=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.4, max(p.cycle for p in points) + 0.6)
    ax.set_xlabel("cycle")
    ax.set_ylabel("trial seconds")
    ax.grid(False, axis="x")
    present = [c for c in STYLE if any(p.category == c for p in points)]
    ax.legend(handles=[Patch(color=STYLE[c][1], label=STYLE[c][0]) for c in present], fontsize=8, frameon=False,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)
