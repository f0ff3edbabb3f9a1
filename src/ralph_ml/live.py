"""The live terminal view of a run: ``ralph-ml start``/``resume`` on a terminal, ``ralph-ml watch``.

A ``RunView`` folds the loop's events (in process: the ``on_event`` callback only appends
to a deque; from another process: ``state/events.jsonl`` through ``runfiles.follow_run``)
together with cheap reads of ``state/ralph_state.json`` and the running cycle's log tails
and ``progress.jsonl`` (``runfiles``). A ``LiveDisplay`` thread folds, reads and renders at
~4 Hz with ``rich.live.Live``, never in the loop's thread. Nothing here writes into the
run's folders.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import sys
import termios
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
from .journal import cycle_folder, iter_events
from .records import STOPPED_EARLY, UNPROVEN
from .runfiles import Event, Progress, ProgressTail, progress_of, read_state, tail_lines

log = logging.getLogger("ralph_ml.live")

REFRESH_S = 0.25  # the view redraws ~4 times a second
STATE_EVERY_S = 1.0  # ralph_state.json is re-read at most this often


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
    plateau_cycles: int = 0  # safeguards.no_improvement_stop_cycles
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
            plateau_cycles=cfg.safeguards.no_improvement_stop_cycles,
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
        return self.runs_dir / cycle_folder(cycle)

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
        elif kind == "prune_late":
            self.note = f"cycle {ev.get('cycle')} had finished before the stop request: its result is kept"
        elif kind == "repeats":
            more, who = int(ev.get("n") or 0), ev.get("cycle")
            if ev.get("waiting_for") is not None:
                self.note = f"cycle {who} beats the best too: judged once cycle {ev['waiting_for']}'s re-runs are recorded"
            elif ev.get("reason") == "confirm":
                self.note = f"confirming cycle {who} ({fmt_metric(ev.get('first'))} beats the best {fmt_metric(ev.get('best'))}) with {more} more seed(s)"
            else:
                self.note = f"measuring the run-to-run noise: cycle {who} with {more} more seed(s)"
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
        elif kind == "notice":
            self.note = str(ev.get("message", ""))
            return Text(self.note, style="yellow")
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
    if v in STOPPED_EARLY:
        return f"▽ {v}"
    if v in UNPROVEN:
        return f"≈ {v}"
    return {"kept": "✓ kept", "discarded": "discarded", "below_gate": "below gate"}.get(v, f"✗ {v}")


def verdict_style(v: str) -> str:
    if v in STOPPED_EARLY:
        return "magenta"
    if v in UNPROVEN:
        return "grey58"  # as discarded
    return {"kept": "green", "discarded": "grey58", "below_gate": "yellow"}.get(v, "red")


def bar_chart(view: RunView, width: int, height: int = 4) -> Table:
    """The metric of each cycle as unicode bars (kept green, discarded grey, failed ×, pruned ▽)."""
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
    near = max(hi - lo, abs(hi) * 0.05, 1e-12) * 3  # the target joins the scale when it is this close
    if view.maximize:
        hi = max(hi, view.target_value) if view.target_value - hi <= near else hi
    else:
        lo = min(lo, view.target_value) if lo - view.target_value <= near else lo
    span = (hi - lo) or abs(hi) or 1.0
    base = lo - span * 0.15  # the lowest cycle still gets a visible bar
    levels = [None if r.metric is None or not math.isfinite(r.metric)
              else max(1, round((r.metric - base) / (hi - base) * height * 8)) for r in rows]
    for line in range(height):
        text = Text()
        floor = (height - 1 - line) * 8
        for r, lv in zip(rows, levels):
            if lv is None:
                mark = "▽" if r.verdict in STOPPED_EARLY else "×"
                text.append((mark if line == height - 1 else " ").ljust(cell), style=verdict_style(r.verdict))
                text.append(gap)
                continue
            else:
                text.append(BLOCKS[min(8, max(0, lv - floor))] * cell, style=verdict_style(r.verdict))
            text.append(gap)
        label = fmt_metric(hi) if line == 0 else (fmt_metric(lo) if line == height - 1 and lo < hi else "")
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


def _progress_row(t: TrialView, width: int, now: float, target: str) -> list[RenderableType]:
    """[unit, bar, done/total, latest metrics and timing] (one line: the last cell is cut to fit).
    The target metric comes first among the metrics, when the trial reports it."""
    prog = t.prog()
    tail = Text(no_wrap=True, overflow="ellipsis", style="dim")
    if prog is not None:
        latest = sorted(prog.latest.items(), key=lambda kv: kv[0] != target)  # stable: the rest keep their order
        tail.append("  ".join(f"{k} {fmt_metric(v)}" for k, v in latest[:4]) + "   ")
    tail.append(_timing(t, now))
    if prog is not None and prog.total:
        return [Text(prog.unit), ProgressBar(total=prog.total, completed=prog.done, width=min(32, max(10, width // 4))),
                Text(f"{prog.done}/{prog.total}", style="bold"), tail]
    if prog is not None:
        return [Text(f"{prog.unit[:-1]} {prog.done}", style="bold"), tail]
    return [Text("no progress reported yet  " if t.started_ts else "preparing the trial  ", style="dim", no_wrap=True), tail]


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
    line.add_row(*_progress_row(t, width, now, view.target_name))
    body.append(line)
    others = sorted((o for o in view.trials.values() if o is not t), key=lambda o: o.cycle)
    if others:  # parallel trials: one line each
        grid = Table.grid(padding=(0, 1))
        for o in others[:4]:
            grid.add_row(Text(f"cycle {o.cycle}", style="cyan"), *_progress_row(o, width, now, view.target_name))
        body.append(grid)
        log_lines -= min(4, len(others))
    logs = view.cycle_dir(t.cycle) / "logs"
    errs = tail_lines(logs / "stderr.log", max(1, log_lines // 3))
    out = tail_lines(logs / "stdout.log", max(1, log_lines - len(errs)))
    rel = f"{cycle_folder(t.cycle)}/logs"
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


def _cycles(view: RunView, width: int, table_rows: int) -> Panel:
    body: list[RenderableType] = [bar_chart(view, width)]
    legend = Text()
    legend.append("█ kept ", style="green")
    legend.append("█ discarded ", style="grey58")
    legend.append("× failed ", style="red")
    legend.append("▽ pruned", style="magenta")
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
    plateau = sg.get("no_improvement_stop_cycles", view.plateau_cycles)
    g.add_row("plateau", f"{bud.get('no_improvement_streak', 0)} of {plateau} cycles without gain")
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

    def notice(self, message: str) -> None:
        """A message for the user, shown by the display (printing directly would tear its frame)."""
        self._q.append({"kind": "notice", "ts": time.time(), "message": message})

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
        self._tty: tuple[int, list[Any]] | None = None  # terminal settings to restore
        self._events = 0  # events folded so far
        self._last: tuple[Any, ...] = ()  # what the last frame showed (see _tick)

    def start(self) -> LiveDisplay:
        self._quiet_ctrl_c()
        self._thread.start()
        return self

    def close(self) -> None:
        """Draw the last frame and leave it on the screen."""
        self._stop.set()
        self._thread.join(timeout=10)
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._tty is not None:
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(self._tty[0], termios.TCSADRAIN, self._tty[1])
            self._tty = None

    def _quiet_ctrl_c(self) -> None:
        """The terminal's "^C" echo would shift the frame by a line; turn it off while we draw."""
        try:
            fd = sys.stdin.fileno()
            if not os.isatty(fd):
                return
            attrs = termios.tcgetattr(fd)
            self._tty = (fd, list(attrs))
            attrs[3] &= ~termios.ECHOCTL
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except (OSError, ValueError, AttributeError, termios.error):
            self._tty = None

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
        events = self.source()
        self._events += len(events)
        lines = [line for ev in events if (line := view.apply(ev)) is not None]
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
        sig = (self._events, int(now), width, height, *self._files())
        if sig != self._last or lines:  # unchanged screen: skip the ~10 ms of rendering
            self._last = sig
            self._live.update(render_view(view, width, height, now), refresh=True)

    def _files(self) -> tuple[int, ...]:
        t = self.view.focus()
        if t is None:
            return ()
        logs = self.view.cycle_dir(t.cycle) / "logs"
        sizes = []
        for p in (logs / "stdout.log", logs / "stderr.log"):
            try:
                sizes.append(os.stat(p).st_size)
            except OSError:
                sizes.append(-1)
        return (t.cycle, *sizes, t.progress.offset if t.progress else -1)
