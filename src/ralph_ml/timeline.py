"""The run as a Chrome trace (``reports/timeline.json``): open it in ui.perfetto.dev or
chrome://tracing to see where the time went, phase by phase and cycle by cycle.

Built from ``state/events.jsonl``. Spans are complete events (``"ph": "X"``, microseconds):

- row "loop phases": each ``phase`` event starts a span that the next phase event ends (or
  the ``cycle_recorded`` of its cycle, or the end of the session); the loop does one thing
  at a time, so these never overlap;
- rows "cycles (lane N)": one span per cycle, from its proposal to its record, with the
  trial (``trial_started`` → ``trial_ended``) inside it; parallel cycles take separate lanes.

Each session (``start``, then every ``resume``) is its own process row, so a crash shows as
the end of one row and the start of the next instead of one misleading span.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .events import read_events

__all__ = ["build_trace", "write_timeline"]

_LOOP_TID = 1  # the loop's own phases: one at a time
_LANE_TID = 10  # + lane: one row per cycle in flight (parallel trials overlap)
_US = 1_000_000.0
_INSTANTS = ("run_stopped", "guard", "manual", "recovered", "prune", "prune_late")


def _span(name: str, cat: str, start: float, end: float, pid: int, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "cat": cat,
        "ph": "X",
        "ts": round(start * _US),
        "dur": max(0, round(end * _US) - round(start * _US)),  # so that spans that touch do not overlap
        "pid": pid,
        "tid": tid,
        "args": args,
    }


def _meta(pid: int, tid: int | None, what: str, args: dict[str, Any]) -> dict[str, Any]:
    ev: dict[str, Any] = {"name": what, "ph": "M", "pid": pid, "args": args}
    if tid is not None:
        ev["tid"] = tid
    return ev


class _Session:
    """Open spans of one session (``start`` or a ``resume``): one process row in the trace."""

    def __init__(self, out: list[dict[str, Any]], pid: int, label: str) -> None:
        self.out, self.pid = out, pid
        self.phase: tuple[str, int | None, float] | None = None  # (name, cycle, start)
        self.cycles: dict[int, float] = {}  # cycle -> start, for cycles not recorded yet
        self.trials: dict[int, float] = {}  # cycle -> trial start
        self.lanes: dict[int, int] = {}  # cycle -> lane
        self.named: set[int] = set()
        out += [
            _meta(pid, None, "process_name", {"name": label}),
            _meta(pid, None, "process_sort_index", {"sort_index": pid}),
            _meta(pid, _LOOP_TID, "thread_name", {"name": "loop phases"}),
        ]

    def lane(self, cycle: int) -> int:
        if cycle not in self.lanes:
            used = set(self.lanes.values())
            self.lanes[cycle] = next(i for i in range(len(used) + 1) if i not in used)
        lane = self.lanes[cycle]
        if lane not in self.named:
            self.named.add(lane)
            self.out.append(_meta(self.pid, _LANE_TID + lane, "thread_name", {"name": f"cycles (lane {lane + 1})"}))
        return _LANE_TID + lane

    def close_phase(self, ts: float, cycle: int | None = None) -> None:
        """End the open phase (only if it belongs to ``cycle``, when given)."""
        if self.phase is not None and (cycle is None or self.phase[1] == cycle):
            name, cyc, start = self.phase
            self.out.append(_span(name, "phase", start, ts, self.pid, _LOOP_TID, {"cycle": cyc}))
            self.phase = None

    def start_cycle(self, cycle: int, ts: float) -> None:
        if cycle not in self.cycles:
            self.cycles[cycle] = ts
            self.lane(cycle)

    def end_trial(self, cycle: int, ts: float, args: dict[str, Any], name: str = "") -> None:
        start = self.trials.pop(cycle, None)
        if start is not None:
            self.out.append(_span(name or f"trial {cycle}", "trial", start, ts, self.pid, self.lane(cycle), {"cycle": cycle, **args}))

    def end_cycle(self, cycle: int, ts: float, args: dict[str, Any], name: str) -> None:
        start = self.cycles.pop(cycle, None)
        if start is not None:
            self.out.append(_span(name, "cycle", start, ts, self.pid, self.lane(cycle), {"cycle": cycle, **args}))
        self.lanes.pop(cycle, None)

    def close(self, ts: float) -> None:
        self.close_phase(ts)
        for cycle in sorted(self.trials):
            self.end_trial(cycle, ts, {"status": "interrupted"}, f"trial {cycle} (interrupted)")
        for cycle in sorted(self.cycles):
            self.end_cycle(cycle, ts, {"verdict": "interrupted"}, f"cycle {cycle} (interrupted)")


def build_trace(events: list[dict[str, Any]], stopped: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Chrome trace document (``{"traceEvents": [...]}``) from the run's events, in order.

    ``stopped`` is the journal's ``run_stopped`` entry: the loop writes the report (and this
    trace) before it emits its own ``run_stopped`` event, so the end of the run comes from it.
    """
    if stopped is not None and events and float(stopped.get("ts", 0.0)) >= float(events[-1].get("ts", 0.0)):
        if not any(e.get("kind") == "run_stopped" for e in events[-3:]):
            events = [*events, {"ts": stopped["ts"], "kind": "run_stopped", "decision": stopped.get("decision"),
                                "exit_code": stopped.get("exit_code")}]
    out: list[dict[str, Any]] = []
    sess: _Session | None = None
    last_ts = 0.0
    for ev in events:
        try:
            ts = float(ev["ts"])
        except (KeyError, TypeError, ValueError):
            continue
        kind = ev.get("kind")
        cycle = ev.get("cycle") if isinstance(ev.get("cycle"), int) else None
        if kind == "run_started" or sess is None:
            if sess is not None:
                sess.close(last_ts)  # the previous session ended with its last event (a crash, a kill)
            label = f"{'resume' if ev.get('resumed') else 'start'} {ev.get('run_id', '')}".strip()
            pid = sess.pid + 1 if sess is not None else 1
            sess = _Session(out, pid, f"session {pid}: {label}")
        last_ts = ts
        if kind == "phase":
            sess.close_phase(ts)
            sess.phase = (str(ev.get("phase", "?")), cycle, ts)
            if ev.get("phase") == "propose" and cycle:
                sess.start_cycle(cycle, ts)  # a cycle starts when its proposal is asked for
        elif kind == "cycle_started" and cycle:
            sess.start_cycle(cycle, ts)  # (a recovered cycle has no propose phase)
        elif kind == "trial_started" and cycle:
            sess.start_cycle(cycle, ts)
            sess.trials[cycle] = ts
        elif kind == "trial_ended" and cycle:
            sess.end_trial(cycle, ts, {"status": ev.get("status"), "duration_s": ev.get("duration_s")})
        elif kind == "cycle_recorded" and cycle:
            sess.close_phase(ts, cycle)
            sess.end_trial(cycle, ts, {"status": ev.get("status")})
            args = {"verdict": ev.get("verdict"), "metric": ev.get("metric"), "status": ev.get("status")}
            sess.end_cycle(cycle, ts, args, f"cycle {cycle}")
        elif kind in _INSTANTS:
            if kind == "run_stopped":
                sess.close(ts)
            args = {k: v for k, v in ev.items() if k in ("cycle", "status", "verdict", "action", "how", "exit_code", "step", "reason")}
            if kind == "run_stopped":
                args["reason"] = (ev.get("decision") or {}).get("reason")
            out.append({"name": kind, "cat": "event", "ph": "i", "s": "p", "ts": round(ts * _US), "pid": sess.pid, "tid": _LOOP_TID, "args": args})
    if sess is not None:
        sess.close(last_ts)
    return {"traceEvents": out, "displayTimeUnit": "ms", "otherData": {"source": "ralph-ml state/events.jsonl"}}


def write_timeline(events_path: Path, out: Path, stopped: dict[str, Any] | None = None) -> Path:
    """Write the Chrome trace of ``events_path`` to ``out`` (atomically) and return ``out``."""
    from .journal import write_json_atomic

    events, _ = read_events(events_path)
    write_json_atomic(out, build_trace(events, stopped), indent=None)
    return out
