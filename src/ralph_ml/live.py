"""The live terminal view of a run: ``ralph-ml start``/``resume`` on a terminal, ``ralph-ml watch``.

A ``RunView`` folds the loop's events (in process: the ``on_event`` callback only appends
to a deque; from another process: ``state/events.jsonl``) together with cheap reads of
``state/ralph_state.json`` and the running cycle's log tails and ``progress.jsonl``. A
``LiveDisplay`` thread folds, reads and renders at ~4 Hz with ``rich.live.Live``, never in
the loop's thread. Nothing here writes into the run's folders.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .config import Config
from .errors import ConfigError, StateError
from .events import read_events
from .journal import iter_events

log = logging.getLogger("ralph_ml.live")

Event = dict[str, Any]
REFRESH_S = 0.25  # the view redraws ~4 times a second
STATE_EVERY_S = 1.0  # ralph_state.json is re-read at most this often

# Params that give the planned length of a trial, most specific first (unit, then names).
PLANNED_PARAMS = (
    ("steps", ("total_steps", "max_steps", "num_steps", "n_steps", "steps", "iterations", "max_iters", "num_iterations")),
    ("epochs", ("epochs", "num_epochs", "n_epochs", "max_epochs")),
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


# ----------------------------------------------------------------------------- cheap readers
def strip_ansi(line: str) -> str:
    return _ANSI.sub("", line)


def tail_lines(path: Path, n: int, max_bytes: int = 16_384) -> list[str]:
    """The last ``n`` lines of a (possibly huge, growing) log: one seek and one small read.

    A carriage-return progress line (tqdm) shows only its last state.
    """
    if n <= 0:
        return []
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read(size - start)
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").split("\n")
    if start > 0:
        lines = lines[1:]  # the first line read is partial
    if lines and lines[-1] == "":
        lines.pop()
    return [strip_ansi(ln.rstrip("\r").rsplit("\r", 1)[-1]).rstrip() for ln in lines[-n:]]


class ProgressTail:
    """A progress.jsonl read incrementally (only new bytes), kept as an evenly thinned series.

    ``rows`` holds at most ``max_rows`` rows: when full, every other row is dropped and only
    every ``stride``-th new row is kept, so a 10^6-step curve costs the same as a short one.
    ``last`` is always the newest row.
    """

    def __init__(self, path: Path, max_rows: int = 1000) -> None:
        self.path = path
        self.max_rows = max_rows
        self.offset = 0
        self.rows: list[dict[str, Any]] = []
        self.last: dict[str, Any] | None = None
        self.first_step: int | None = None
        self._stride = 1
        self._seen = 0

    def poll(self) -> bool:
        """Read what was appended since the last call; True if there were new rows."""
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return False
        if size < self.offset:  # replaced (an interrupted cycle re-run): start over
            self.__init__(self.path, self.max_rows)  # type: ignore[misc]
        if size == self.offset:
            return False
        new = False
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            while self.offset < size:
                data = fh.read(min(size - self.offset, 1 << 22))
                end = data.rfind(b"\n") + 1
                if end == 0:
                    break  # a line still being written
                for line in data[:end].splitlines():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict):
                        self._add(row)
                        new = True
                self.offset += end
                fh.seek(self.offset)
        return new

    def _add(self, row: dict[str, Any]) -> None:
        if self.first_step is None and isinstance(row.get("step"), (int, float)):
            self.first_step = int(row["step"])
        self.last = row
        if self._seen % self._stride == 0:
            self.rows.append(row)
            if len(self.rows) > self.max_rows:
                self.rows = self.rows[::2]
                self._stride *= 2
        self._seen += 1

    def series(self) -> list[dict[str, Any]]:
        """The thinned rows, always ending with the newest one."""
        if self.last is not None and (not self.rows or self.rows[-1] is not self.last):
            return [*self.rows, self.last]
        return list(self.rows)


@dataclass(frozen=True)
class Progress:
    done: int  # steps/epochs finished
    total: int | None  # planned, when a param says it (and it is consistent)
    unit: str  # "steps" | "epochs"
    latest: dict[str, float]  # the newest row's metrics


def planned_length(params: dict[str, Any]) -> tuple[str, int] | None:
    """(unit, total) from a param such as ``epochs`` or ``max_steps``, if the trial has one."""
    for unit, names in PLANNED_PARAMS:
        for name in names:
            v = params.get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and float(v).is_integer():
                return unit, int(v)
    return None


def progress_of(tail: ProgressTail, params: dict[str, Any]) -> Progress | None:
    last = tail.last
    if last is None:
        return None
    step = int(last.get("step", 0)) if isinstance(last.get("step"), (int, float)) else 0
    done = step + 1 if tail.first_step == 0 else step  # report(0) after the first epoch
    latest = {k: float(v) for k, v in last.items() if k not in ("step", "time") and isinstance(v, (int, float))}
    planned = planned_length(params)
    if planned is None or done > planned[1]:
        return Progress(done=done, total=None, unit="epochs" if "epoch" in last else "steps", latest=latest)
    return Progress(done=done, total=planned[1], unit=planned[0], latest=latest)


def loop_alive(state: dict[str, Any]) -> bool:
    """Whether the loop process named in a ralph_state.json still exists."""
    try:
        os.kill(int(state.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return int(state.get("pid", 0)) > 0


def read_state(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / "ralph_state.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------- the view model
@dataclass(frozen=True)
class CycleRow:
    cycle: int
    metric: float | None
    verdict: str
    kept: bool
    status: str
    diagnosis: str
    duration_s: float

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> CycleRow:
        res = rec.get("result") or {}
        metric = rec.get("metric")
        return cls(
            cycle=int(rec["cycle"]),
            metric=float(metric) if isinstance(metric, (int, float)) else None,
            verdict=str(rec.get("verdict", "")),
            kept=bool(rec.get("kept")),
            status=str(res.get("status", "")),
            diagnosis=str((rec.get("analysis") or {}).get("diagnosis", "")),
            duration_s=max(0.0, float(res.get("ended_at", 0.0)) - float(res.get("started_at", 0.0))),
        )


@dataclass
class TrialView:
    """One trial in flight (several run at once with ``execution.max_concurrency`` > 1)."""

    cycle: int
    params: dict[str, Any]
    started_ts: float | None = None  # None until the executor started it
    timeout_s: float | None = None
    ended: str | None = None  # "ok in 3.2 s" once it ended (recorded a moment later)
    progress: ProgressTail | None = None

    def prog(self) -> Progress | None:
        return progress_of(self.progress, self.params) if self.progress is not None else None


@dataclass
class RunView:
    """Everything the live view shows, folded from events and read from the run's files.

    Used from one thread only (the display's); the loop's callback never touches it.
    """

    state_dir: Path
    runs_dir: Path
    project: str
    target_name: str
    target_value: float
    maximize: bool
    max_cycles: int
    run_id: str = ""
    started: bool = False
    cycle: int = 0
    phase: str = "waiting"
    phase_ts: float = field(default_factory=time.time)
    trials: dict[int, TrialView] = field(default_factory=dict)  # in flight, by cycle
    last_trial: TrialView | None = None  # the latest one recorded
    note: str = ""
    rows: dict[int, CycleRow] = field(default_factory=dict)
    stopped: Event | None = None
    state: dict[str, Any] = field(default_factory=dict)
    _state_read: float = 0.0

    @classmethod
    def for_config(cls, cfg: Config) -> RunView:
        return cls(
            state_dir=cfg.path(cfg.paths.state),
            runs_dir=cfg.path(cfg.paths.runs),
            project=cfg.project.name,
            target_name=cfg.target.name,
            target_value=cfg.target.value,
            maximize=cfg.target.dir.value == "maximize",
            max_cycles=cfg.safeguards.max_cycles,
        )

    def seed_from_journal(self) -> None:
        """Recorded cycles of a run being resumed (the journal is read once, before the loop runs)."""
        for ev in iter_events(self.state_dir / "journal.jsonl"):
            if ev.get("type") == "cycle_recorded" and isinstance(ev.get("record"), dict):
                row = CycleRow.from_record(ev["record"])
                self.rows[row.cycle] = row

    @property
    def best(self) -> CycleRow | None:
        kept = [r for r in self.rows.values() if r.kept]
        return max(kept, key=lambda r: r.cycle) if kept else None

    def cycle_dir(self, cycle: int) -> Path:
        return self.runs_dir / f"cycle_{cycle:04d}"

    def apply(self, ev: Event) -> Text | None:
        """Fold one event in; returns a line to print above the live area, if any."""
        kind = ev.get("kind")
        ts = float(ev.get("ts", time.time()))
        self.started = True
        if isinstance(ev.get("cycle"), int):
            self.cycle = ev["cycle"]
        if kind == "run_started":
            self.run_id = str(ev.get("run_id", ""))
            self.stopped = None
            self.note = "resumed" if ev.get("resumed") else ""
        elif kind == "phase":
            self.phase, self.phase_ts = str(ev.get("phase", "")), ts
        elif kind == "cycle_started":
            c = self.cycle
            self.trials[c] = TrialView(c, dict((ev.get("proposal") or {}).get("params") or {}))
            self.note = f"recovering interrupted cycle {c}" if ev.get("recovering") else self.note
        elif kind == "trial_started":
            c = self.cycle
            t = self.trials.setdefault(c, TrialView(c, {}))
            t.params, t.started_ts, t.ended = dict(ev.get("params") or {}), ts, None
            t.timeout_s = float(ev.get("timeout_s") or 0) or None
            t.progress = ProgressTail(self.cycle_dir(c) / "progress.jsonl")
        elif kind == "trial_ended" and self.cycle in self.trials:
            self.trials[self.cycle].ended = f"{ev.get('status')} in {float(ev.get('duration_s', 0)):.1f} s"
        elif kind == "prune":
            self.note = f"pruning cycle {ev.get('cycle')} at step {ev.get('step')}"
        elif kind == "manual":
            self.note = f"manual {ev.get('action')}"
        elif kind == "recovered":
            self.note = f"recovered cycle {ev.get('cycle')}: {ev.get('how')}"
        elif kind == "guard" and ev.get("verdict") == "rejected":
            self.note = f"guard rejected the patch of cycle {ev.get('cycle')}"
        elif kind == "cycle_recorded" and isinstance(ev.get("record"), dict):
            row = CycleRow.from_record(ev["record"])
            self.rows[row.cycle] = row
            done = self.trials.pop(row.cycle, None)
            if done is not None and done.started_ts is not None:
                self.last_trial = done
            return self._summary(row, ev)
        elif kind == "run_stopped":
            self.stopped = ev
            self.phase, self.phase_ts = "stopped", ts
        return None

    def _summary(self, row: CycleRow, ev: Event) -> Text:
        t = Text(f"cycle {row.cycle:>3}  ", style="bold")
        if row.metric is None:
            t.append(f"{row.status} ({ev.get('failure', '')})", style="red")
        else:
            t.append(f"{self.target_name} {fmt_metric(row.metric)}")
        t.append("  ")
        t.append(verdict_label(row.verdict), style=verdict_style(row.verdict))
        t.append(f"  · {row.diagnosis} · {(ev.get('decision') or {}).get('action', '')}", style="dim")
        return t

    def refresh_files(self, now: float) -> None:
        if now - self._state_read >= STATE_EVERY_S:
            self._state_read = now
            state = read_state(self.state_dir)
            if state and (not self.run_id or state.get("run_id") == self.run_id):
                self.state = state
        for t in (*self.trials.values(), self.last_trial):
            if t is not None and t.progress is not None:
                t.progress.poll()  # one stat() when nothing changed

    def focus(self) -> TrialView | None:
        """The trial whose log is shown: the latest started one still in flight, else the latest recorded."""
        started = [t for t in self.trials.values() if t.started_ts is not None]
        if started:
            return max(started, key=lambda t: (t.ended is None, t.started_ts or 0.0))
        return max(self.trials.values(), key=lambda t: t.cycle) if self.trials else self.last_trial


# ----------------------------------------------------------------------------- rendering
BLOCKS = " ▁▂▃▄▅▆▇█"
PHASE_STYLE = {
    "propose": "magenta", "materialize": "blue", "guard": "blue", "prepare": "blue", "execute": "bold cyan",
    "paused": "bold yellow", "analyze": "magenta", "decide": "magenta", "stopped": "bold", "waiting": "dim",
}


def fmt_metric(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-" if v is None else str(v)
    return f"{v:.4f}" if 0.01 <= abs(v) < 1000 else f"{v:.4g}"


def fmt_s(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def verdict_label(v: str) -> str:
    return {"kept": "✓ kept", "discarded": "discarded", "below_gate": "below gate"}.get(v, f"✗ {v}")


def verdict_style(v: str) -> str:
    return {"kept": "green", "discarded": "grey58", "below_gate": "yellow"}.get(v, "red")


def bar_chart(view: RunView, width: int, height: int = 4) -> Table:
    """The metric of each cycle as unicode bars (kept green, discarded grey, failed ×)."""
    avail = max(1, width - 10)
    rows = [view.rows[c] for c in sorted(view.rows)][-avail:]
    cell, gap = (2, " ") if len(rows) * 3 <= avail else ((1, " ") if len(rows) * 2 <= avail else (1, ""))
    vals = [r.metric for r in rows if r.metric is not None and math.isfinite(r.metric)]
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", style="dim", no_wrap=True)
    grid.add_column(no_wrap=True)
    if not vals:
        grid.add_row("", Text("no metric yet", style="dim"))
        return grid
    lo, hi = min(vals), max(vals)
    if len(vals) >= 5:  # one diverged cycle must not flatten the others: clip far outliers
        ranked = sorted(vals, reverse=view.maximize)  # best first
        q1, q3 = ranked[len(ranked) // 4], ranked[len(ranked) * 3 // 4]
        iqr = abs(q1 - q3)
        if iqr > 0:
            lo, hi = (max(lo, q3 - 3 * iqr), hi) if view.maximize else (lo, min(hi, q3 + 3 * iqr))
    if view.maximize:
        hi = max(hi, view.target_value) if view.target_value - hi < (hi - lo + 1e-12) * 3 else hi
    else:
        lo = min(lo, view.target_value) if lo - view.target_value < (hi - lo + 1e-12) * 3 else lo
    span = (hi - lo) or abs(hi) or 1.0
    base = lo - span * 0.15  # the lowest cycle still gets a visible bar
    levels = [None if r.metric is None or not math.isfinite(r.metric)
              else max(1, round((r.metric - base) / (hi - base) * height * 8)) for r in rows]
    for line in range(height):
        text = Text()
        floor = (height - 1 - line) * 8
        for r, lv in zip(rows, levels):
            if lv is None:
                text.append(("×" if line == height - 1 else " ").ljust(cell), style="red")
                text.append(gap)
                continue
            else:
                text.append(BLOCKS[min(8, max(0, lv - floor))] * cell, style=verdict_style(r.verdict))
            text.append(gap)
        label = fmt_metric(hi) if line == 0 else (fmt_metric(lo) if line == height - 1 else "")
        grid.add_row(label, text)
    return grid


def _header(view: RunView, now: float) -> Panel:
    st = view.state
    status = "stopped" if view.stopped else str(st.get("status") or ("running" if view.started else "waiting"))
    t = Text()
    t.append(f"cycle {view.cycle or '-'}", style="bold")
    t.append(f" of {view.max_cycles}   ", style="dim")
    t.append("phase ", style="dim")
    t.append(f"● {view.phase}", style=PHASE_STYLE.get(view.phase, "bold"))
    if view.phase not in ("stopped", "waiting"):
        t.append(f" {fmt_s(now - view.phase_ts)}", style="dim")
    op = "≥" if view.maximize else "≤"
    t.append(f"   target {view.target_name} {op} {view.target_value:g}", style="bold")
    best = view.best
    t.append("   best ", style="dim")
    if best is None or best.metric is None:
        t.append("none yet")
    else:
        t.append(fmt_metric(best.metric), style="bold green")
        gap = (view.target_value - best.metric) * (1 if view.maximize else -1)
        t.append(f" (cycle {best.cycle}" + (", target met)" if gap <= 0 else f", {abs(gap):.4g} to go)"), style="dim")
    title = Text.assemble(("ralph-ml", "bold"), f" · {view.project}" + (f" · run {view.run_id}" if view.run_id else ""))
    sub = status + (f" · {view.note}" if view.note else "")
    return Panel(t, title=title, title_align="left", subtitle=sub, subtitle_align="right", border_style="blue")


def _progress_row(t: TrialView, width: int) -> list[RenderableType]:
    prog = t.prog()
    if prog is not None and prog.total:
        return [Text(prog.unit), ProgressBar(total=prog.total, completed=prog.done, width=min(32, max(10, width // 4))),
                Text(f"{prog.done}/{prog.total}", style="bold"), _latest(prog)]
    if prog is not None:
        return [Text(f"{prog.unit[:-1]} {prog.done}", style="bold"), _latest(prog)]
    return [Text("no progress reported yet" if t.started_ts else "preparing the trial", style="dim")]


def _timing(t: TrialView, now: float) -> str:
    if t.started_ts is None:
        return ""
    timing = f"running {fmt_s(now - t.started_ts)}" if t.ended is None else t.ended
    return timing + (f" · limit {fmt_s(t.timeout_s)}" if t.timeout_s else "")


def _trial(view: RunView, now: float, log_lines: int, width: int) -> Panel:
    t = view.focus()
    if t is None:
        msg = f"waiting for a run to start in {view.state_dir.parent}" if not view.started else "no trial yet"
        return Panel(Text(msg, style="dim"), title="trial", title_align="left", border_style="grey50")
    body: list[RenderableType] = []
    params = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
    body.append(Text(params or "(no params)", style="dim", overflow="ellipsis", no_wrap=True))
    line = Table.grid(padding=(0, 1))
    line.add_row(*_progress_row(t, width), Text(_timing(t, now), style="dim"))
    body.append(line)
    others = sorted((o for o in view.trials.values() if o is not t), key=lambda o: o.cycle)
    if others:  # parallel trials: one line each
        grid = Table.grid(padding=(0, 1))
        for o in others[:4]:
            grid.add_row(Text(f"cycle {o.cycle}", style="cyan"), *_progress_row(o, width), Text(_timing(o, now), style="dim"))
        body.append(grid)
        log_lines -= min(4, len(others))
    logs = view.cycle_dir(t.cycle) / "logs"
    errs = tail_lines(logs / "stderr.log", max(1, log_lines // 3))
    out = tail_lines(logs / "stdout.log", max(1, log_lines - len(errs)))
    rel = f"cycle_{t.cycle:04d}/logs"
    body.append(Text(f"─ log tail ({rel}) " + "─" * max(0, width - len(rel) - 20), style="grey37", no_wrap=True, overflow="crop"))
    for ln in out:
        body.append(Text(ln, no_wrap=True, overflow="ellipsis"))
    for ln in errs:
        body.append(Text(ln, style="red", no_wrap=True, overflow="ellipsis"))
    if not out and not errs:
        body.append(Text("(no output yet)", style="dim"))
    state = "running" if t.started_ts is not None and t.ended is None else ("recorded" if t is view.last_trial else "")
    title = f"trial · cycle {t.cycle}" + (f" · {state}" if state else "") + (f" · {len(view.trials)} in flight" if len(view.trials) > 1 else "")
    return Panel(Group(*body), title=title, title_align="left", border_style="cyan")


def _latest(prog: Progress) -> Text:
    return Text("  ".join(f"{k} {fmt_metric(v)}" for k, v in list(prog.latest.items())[:4]), style="dim")


def _cycles(view: RunView, width: int, table_rows: int) -> Panel:
    body: list[RenderableType] = [bar_chart(view, width)]
    legend = Text()
    legend.append("█ kept ", style="green")
    legend.append("█ discarded ", style="grey58")
    legend.append("× failed", style="red")
    body.append(legend)
    t = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim")
    t.add_column("#", justify="right")
    t.add_column(view.target_name, justify="right")
    t.add_column("verdict")
    t.add_column("diagnosis", overflow="ellipsis", no_wrap=True)
    for c in sorted(view.rows)[-table_rows:][::-1]:
        r = view.rows[c]
        t.add_row(str(c), fmt_metric(r.metric), Text(verdict_label(r.verdict), style=verdict_style(r.verdict)), r.diagnosis)
    body.append(t)
    return Panel(Group(*body), title=f"{view.target_name} per cycle", title_align="left", border_style="green")


def _budgets(view: RunView, now: float) -> Panel:
    st = view.state
    bud = st.get("budgets") or {}
    sg = st.get("safeguards") or {}
    used = int(bud.get("cycles_used", len(view.rows)))
    g = Table.grid(padding=(0, 1))
    g.add_column(style="dim")
    g.add_column()
    cyc = Table.grid(padding=(0, 1))
    cyc.add_row(ProgressBar(total=view.max_cycles, completed=min(used, view.max_cycles), width=10),
                f"{used} used · {max(0, view.max_cycles - used)} left")
    g.add_row("cycles", cyc)
    live = not view.stopped and st.get("status") == "running"
    drift = max(0.0, now - float(st.get("updated_at", now))) if live else 0.0
    elapsed = float(st.get("elapsed_s", 0.0)) + drift
    left = bud.get("time_left_s")
    g.add_row("time", f"{fmt_s(elapsed)} elapsed" + ("" if left is None else f" · {fmt_s(float(left) - drift)} left"))
    if sg:
        g.add_row("plateau", f"{bud.get('no_improvement_streak', 0)} of {sg.get('no_improvement_stop_cycles')} cycles without gain")
    tl = bud.get("tokens_left")
    g.add_row("tokens", f"{bud.get('tokens_used', 0):,} used" + (" · no limit" if tl is None else f" · {tl:,} left"))
    cl = bud.get("cost_left_usd")
    g.add_row("cost", f"${float(bud.get('cost_used_usd', 0.0)):.4f}" + (" · no limit" if cl is None else f" · ${float(cl):.4f} left"))
    if view.stopped:
        dd = view.stopped.get("decision") or {}
        g.add_row("stopped", Text(f"{dd.get('reason')} (exit {view.stopped.get('exit_code')})", style="bold"))
    return Panel(g, title="budgets", title_align="left", border_style="magenta")


def render_view(view: RunView, width: int, height: int, now: float | None = None) -> RenderableType:
    """The whole screen: header, running trial (progress + log tail), cycles chart, budgets."""
    now = time.time() if now is None else now
    table_rows = 4 if height >= 30 else 2
    chart_h = 4 + 1 + 1 + table_rows + 2  # bars, legend, table header + rows, border
    log_lines = max(2, min(14, height - 3 - 6 - chart_h - 2))
    bottom = Table.grid(expand=True)
    bottom.add_column(ratio=3)
    bottom.add_column(ratio=2)
    bottom.add_row(_cycles(view, width * 3 // 5 - 4, table_rows), _budgets(view, now))
    return Group(_header(view, now), _trial(view, now, log_lines, width), bottom)


# ----------------------------------------------------------------------------- display
class EventQueue:
    """The loop's ``on_event`` callback for the live view: one deque append, nothing more."""

    def __init__(self) -> None:
        self._q: collections.deque[Event] = collections.deque()

    def __call__(self, kind: str, event: Event) -> None:
        self._q.append(event)

    def extend(self, events: list[Event]) -> None:
        self._q.extend(events)

    def drain(self) -> list[Event]:
        out: list[Event] = []
        while True:
            try:
                out.append(self._q.popleft())
            except IndexError:
                return out


MAX_LINES_PER_TICK = 20  # when attaching to a long run, only the latest cycle lines are printed


class LiveDisplay:
    """Draws a ``RunView`` with ``rich.live.Live`` from its own thread, ~4 times a second.

    ``source()`` (called in that thread) returns the events that arrived since the last
    call. A line per recorded cycle is printed above the live area, so the scrollback keeps
    the history. Rendering errors are logged and never reach the loop.
    """

    def __init__(
        self, view: RunView, console: Console, source: Callable[[], list[Event]], *, show_waiting: bool = False
    ) -> None:
        self.view = view
        self.console = console
        self.source = source
        self.show_waiting = show_waiting
        self._live: Optional[Live] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ralph-ml-live", daemon=True)
        self._failed = False

    def start(self) -> LiveDisplay:
        self._thread.start()
        return self

    def close(self) -> None:
        """Draw the last frame and leave it on the screen."""
        self._stop.set()
        self._thread.join(timeout=10)
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(REFRESH_S)
            try:
                self._tick()
            except Exception as exc:  # the view must never take the run down
                if not self._failed:
                    self._failed = True
                    log.warning("live view: rendering failed (%s: %s); the run goes on", type(exc).__name__, exc)
            if stopping:
                return

    def _tick(self) -> None:
        view = self.view
        lines = [line for ev in self.source() if (line := view.apply(ev)) is not None]
        now = time.time()
        view.refresh_files(now)
        if self._live is None:
            if not (view.started or self.show_waiting):
                return
            self._live = Live(console=self.console, auto_refresh=False, transient=False, vertical_overflow="crop")
            self._live.start()
        if len(lines) > MAX_LINES_PER_TICK:
            self._live.console.print(Text(f"… {len(lines) - MAX_LINES_PER_TICK} earlier cycles", style="dim"))
            lines = lines[-MAX_LINES_PER_TICK:]
        for line in lines:
            self._live.console.print(line)
        width, height = self.console.size
        self._live.update(render_view(view, width, height, now), refresh=True)


# ----------------------------------------------------------------------------- following a run
class EventsFollower:
    """Reads ``state/events.jsonl`` from the start, then what is appended (never writes)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "events.jsonl"
        self.offset = 0
        self.run_id = ""
        self.stopped: Event | None = None  # the last run_stopped not followed by a resume

    def poll(self) -> list[Event]:
        try:
            if os.stat(self.path).st_size < self.offset:  # moved aside and a new run began
                self.offset = 0
        except OSError:
            return []
        events, self.offset = read_events(self.path, self.offset)
        for ev in events:
            if ev.get("kind") == "run_started":
                self.run_id, self.stopped = str(ev.get("run_id", "")), None
            elif ev.get("kind") == "run_stopped":
                self.stopped = ev
        return events


def follow_run(cfg: Config, deliver: Callable[[list[Event]], None], *, poll_s: float = REFRESH_S, gone_after_s: float = 1.5) -> int:
    """Feed a run's events to ``deliver`` (its history first, then as they happen) until it stops.

    Returns the run's exit code (from its ``run_stopped`` event). Waits for a run that has not
    started yet. Raises StateError when the loop process is gone without recording a stop.
    """
    if not cfg.observability.emit_events_jsonl:
        raise ConfigError(
            f"{cfg.source}: observability.emit_events_jsonl = false, so the run writes no state/events.jsonl to follow. "
            "Set it to true (the default) for the next run; `ralph-ml status` shows this one."
        )
    state_dir = cfg.path(cfg.paths.state)
    follower = EventsFollower(state_dir)
    gone_since: float | None = None
    while True:
        events = follower.poll()
        if events:
            deliver(events)
        if follower.stopped is not None:
            return int(follower.stopped.get("exit_code", 0))
        state = read_state(state_dir) if follower.run_id else {}
        if state.get("run_id") == follower.run_id and not loop_alive(state):
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since >= gone_after_s:
                events = follower.poll()  # the last words of a loop that just exited
                if events:
                    deliver(events)
                if follower.stopped is not None:
                    return int(follower.stopped.get("exit_code", 0))
                stop = state.get("stop") or {}
                if state.get("status") == "stopped" and "exit_code" in stop:
                    return int(stop["exit_code"])
                raise StateError(
                    f"the loop of run {follower.run_id} (pid {state.get('pid')}) is no longer running and recorded "
                    f"no stop (killed or crashed during {state.get('phase')!r} of cycle {state.get('cycle')}). "
                    "Continue the run with `ralph-ml resume`, then watch it again."
                )
        else:
            gone_since = None
        time.sleep(poll_s)
