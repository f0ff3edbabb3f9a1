"""Read-only access to a run's files, cheap enough to call several times a second.

Log tails by seeking to the end, ``progress.jsonl`` and ``state/events.jsonl`` from the byte
offset reached last time, ``ralph_state.json`` whole (it is small). Shared by the live
terminal view (``live.py``), ``ralph-ml watch`` and the web dashboard. Nothing here writes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import Config
from .errors import ConfigError, StateError
from .events import read_events
from .stdout_curve import strip_ansi

Event = dict[str, Any]
POLL_S = 0.25  # how often ``follow_run`` looks for new events

# Params that give the planned length of a trial, most specific first (unit, then names).
PLANNED_PARAMS = (
    ("steps", ("total_steps", "max_steps", "num_steps", "n_steps", "steps", "iterations", "max_iters", "num_iterations")),
    ("epochs", ("epochs", "num_epochs", "n_epochs", "max_epochs")),
)


# ----------------------------------------------------------------------------- cheap readers
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


def follow_run(cfg: Config, deliver: Callable[[list[Event]], None], *, poll_s: float = POLL_S, gone_after_s: float = 1.5) -> int:
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
