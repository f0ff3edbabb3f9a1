"""What every tracking sink shares: turning bus events into per-cycle calls, catching up on
cycles a crash kept from it, and disabling itself (once, loudly) when it cannot start.

A sink sees three events: ``run_started`` (open; on a resume, reuse the run it made before
and log the cycles the journal has that the tracker does not), ``cycle_recorded`` (log one
cycle) and ``run_stopped`` (say why). The event bus catches anything a sink raises, so a
tracker that breaks never stops the loop.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis import read_progress
from ..config import Config
from ..errors import RalphError
from ..events import Event
from ..journal import cycle_folder, replay, write_json_atomic
from ..records import CycleRecord

log = logging.getLogger("ralph_ml.sinks")


class SinkError(RalphError):
    """A tracking sink cannot start or log; the run goes on without it."""


@dataclass(frozen=True)
class CycleData:
    """One recorded cycle with the files a tracker logs."""

    record: CycleRecord
    cycle_dir: Path
    params: dict[str, Any]  # what the trial ran with (params.json)
    progress: list[dict[str, Any]]  # progress.jsonl rows
    best: CycleRecord | None  # the best cycle once this one is recorded

    @property
    def cycle(self) -> int:
        return self.record.cycle

    @property
    def tag(self) -> str:
        return cycle_folder(self.record.cycle)

    def finite_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.record.result.metrics.items() if math.isfinite(v)}

    def steps(self) -> list[tuple[int, float | None, dict[str, float]]]:
        """(step, wall time, finite numeric metrics) for each progress row."""
        out = []
        for i, row in enumerate(self.progress):
            step = row.get("step", i)
            step = int(step) if isinstance(step, (int, float)) and math.isfinite(step) else i
            ts = row.get("time")
            vals = {
                k: float(v)
                for k, v in row.items()
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            }
            out.append((step, float(ts) if isinstance(ts, (int, float)) else None, vals))
        return out

    def artifacts(self) -> list[Path]:
        names = ("metrics.json", "analysis.md", "decision.json", "params.json", "patch.diff", "recommendations.json")
        return [self.cycle_dir / n for n in names if (self.cycle_dir / n).is_file()]

    def checkpoint_files(self) -> list[Path]:
        ck = self.cycle_dir / "checkpoints"
        return sorted(p for p in ck.rglob("*") if p.is_file()) if ck.is_dir() else []


def _params(cdir: Path, rec: CycleRecord) -> dict[str, Any]:
    try:
        doc = json.loads((cdir / "params.json").read_text())
        if isinstance(doc, dict):
            return doc
    except (OSError, ValueError):
        pass
    return dict(rec.proposal.params)


class TrackingSink:
    """Base class: subclasses implement ``open``, ``logged_cycles``, ``log_cycle``, ``stopped``, ``shutdown``."""

    name = "tracker"
    extra = ""

    def __init__(self, cfg: Config, run_id: str) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.runs_dir = cfg.path(cfg.paths.runs)
        self.state_dir = cfg.path(cfg.paths.state)
        self.best: CycleRecord | None = None
        self._open = False
        self._stopped = False
        self._disabled: str | None = None

    # -- to implement
    def open(self, resumed: bool) -> None:
        raise NotImplementedError

    def logged_cycles(self) -> set[int]:
        raise NotImplementedError

    def log_cycle(self, data: CycleData) -> None:
        raise NotImplementedError

    def stopped(self, decision: dict[str, Any], exit_code: int | None) -> None:
        raise NotImplementedError

    def shutdown(self, finished: bool) -> None:
        raise NotImplementedError

    # -- the sink protocol
    def __call__(self, event: Event) -> None:
        if self._disabled:
            return
        kind = event.get("kind")
        if kind == "run_started":
            self._start(bool(event.get("resumed")))
        elif not self._open:
            return
        elif kind == "cycle_recorded" and isinstance(event.get("record"), dict):
            rec = CycleRecord.from_dict(event["record"])
            cdir = Path(event["cycle_dir"]) if event.get("cycle_dir") else self.runs_dir / cycle_folder(rec.cycle)
            self._log(rec, cdir)
        elif kind == "run_stopped":
            self.stopped(dict(event.get("decision") or {}), event.get("exit_code"))
            self._stopped = True

    def close(self) -> None:
        if self._open:
            self._open = False
            self.shutdown(self._stopped)

    @property
    def failure(self) -> str | None:
        """Why this sink switched itself off (shown by `ralph-ml status`), or None."""
        return self._disabled

    def _start(self, resumed: bool) -> None:
        try:
            self.open(resumed)
        except Exception as exc:
            self._disabled = (
                f"{self.name} logging is off for this run: it could not start ({type(exc).__name__}: {exc}). "
                f"Check [observability.{self.name}] in {self.cfg.source.name}; the loop goes on without it."
            )
            log.warning("%s", self._disabled)
            raise SinkError(self._disabled) from exc
        self._open = True
        self._catch_up()

    def _catch_up(self) -> None:
        """Log the journal's cycles the tracker lacks (a crash between journal and tracker)."""
        journal = self.state_dir / "journal.jsonl"
        if not journal.exists():
            return
        try:
            records = replay(journal).records
        except RalphError:
            return
        if not records:
            return
        done = self.logged_cycles()
        for rec in records:
            if rec.cycle in done:
                if rec.kept:
                    self.best = rec
                continue
            self._log(rec, self.runs_dir / cycle_folder(rec.cycle))

    def _log(self, rec: CycleRecord, cdir: Path) -> None:
        if rec.kept:
            self.best = rec
        self.log_cycle(CycleData(rec, cdir, _params(cdir, rec), read_progress(cdir / "progress.jsonl"), self.best))


class MarkerFile:
    """The cycles a file-based tracker has logged (TensorBoard, W&B offline have no query API)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> set[int]:
        try:
            return {int(c) for c in json.loads(self.path.read_text()).get("cycles", [])}
        except (OSError, ValueError, AttributeError, TypeError):
            return set()

    def add(self, cycle: int) -> None:
        cycles = self.read() | {cycle}
        write_json_atomic(self.path, {"cycles": sorted(cycles)})
