"""Append-only, fsynced journal (the source of truth) and atomic JSON snapshots.

Each line of ``state/journal.jsonl`` is one event. A ``kill -9`` can tear only the last
line; ``replay`` drops a torn tail (and ``Journal`` truncates it before appending), so
every fully written event survives and none is read twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import StateError
from .records import CycleRecord, Decision, Proposal


def cycle_folder(cycle: int) -> str:
    """The name of cycle N's folder under the runs folder (seed 000's layout): ``cycle_0001``."""
    return f"cycle_{cycle:04d}"


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write a file so a reader never sees half of it: a temp file beside it, then rename.

    Only one writer per path is expected (the loop), so the temp name is fixed and cheap.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def dumps(obj: Any, *, indent: int | None = 2) -> bytes:
    return (json.dumps(obj, indent=indent, allow_nan=False, default=str) + "\n").encode()


def write_json_atomic(path: Path, obj: Any, *, fsync: bool = False, indent: int | None = 2) -> None:
    write_bytes_atomic(path, dumps(obj, indent=indent), fsync=fsync)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def _valid_prefix(data: bytes) -> int:
    """Length of the longest prefix made of complete, parseable JSON lines."""
    end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        line = data[pos:nl]
        if line.strip():
            try:
                json.loads(line)
            except ValueError:
                break
        pos = nl + 1
        end = pos
    return end


def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete event of a journal file, in order; a torn last line is ignored."""
    if not path.exists():
        return
    data = path.read_bytes()
    end = _valid_prefix(data)
    for line in data[:end].splitlines():
        if line.strip():
            yield json.loads(line)


class Journal:
    """Appends events as JSON lines; each append is flushed and fdatasync'ed before returning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            data = path.read_bytes()
            end = _valid_prefix(data)
            if end != len(data):  # a torn tail from a crash mid-append: drop it
                with open(path, "r+b") as fh:
                    fh.truncate(end)
                    os.fsync(fh.fileno())
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, event: dict[str, Any]) -> None:
        line = (json.dumps(event, allow_nan=False, separators=(",", ":"), default=str) + "\n").encode()
        os.write(self._fd, line)
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class Replay:
    """What the journal says about a run."""

    run: dict[str, Any]
    records: list[CycleRecord] = field(default_factory=list)
    decisions: dict[int, Decision] = field(default_factory=dict)
    in_flight: list[tuple[int, Proposal]] = field(default_factory=list)  # started, not recorded
    stopped: dict[str, Any] | None = None  # last run_stopped event, if no resume followed
    elapsed_s: float = 0.0  # active loop time up to the last recorded cycle
    sessions: int = 0


def replay(path: Path) -> Replay:
    """Rebuild the run's history from the journal. Raises StateError if there is no run."""
    run: dict[str, Any] | None = None
    records: dict[int, CycleRecord] = {}
    decisions: dict[int, Decision] = {}
    started: dict[int, Proposal] = {}
    stopped: dict[str, Any] | None = None
    elapsed = 0.0
    sessions = 0
    for ev in iter_events(path):
        kind = ev.get("type")
        if kind == "run_started":
            run = ev
            sessions += 1
        elif kind == "run_resumed":
            stopped = None
            sessions += 1
        elif kind == "cycle_started":
            started[int(ev["cycle"])] = Proposal.from_dict(ev["proposal"])
        elif kind == "cycle_recorded":
            rec = CycleRecord.from_dict(ev["record"])
            if rec.cycle in records:  # never count a cycle twice, whatever the file says
                continue
            records[rec.cycle] = rec
            if ev.get("decision"):
                decisions[rec.cycle] = Decision.from_dict(ev["decision"])
            elapsed = max(elapsed, float(ev.get("elapsed_s", 0.0)))
        elif kind == "run_stopped":
            stopped = ev
            elapsed = max(elapsed, float(ev.get("elapsed_s", 0.0)))
    if run is None:
        raise StateError(
            f"no run recorded in {path}. Start one with `ralph-ml start`."
        )
    in_flight = [(c, started[c]) for c in sorted(started) if c not in records]
    return Replay(
        run=run,
        records=list(records.values()),  # in the order they were recorded (completion order)
        decisions=decisions,
        in_flight=in_flight,
        stopped=stopped,
        elapsed_s=elapsed,
        sessions=sessions,
    )
