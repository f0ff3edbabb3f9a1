"""What the dashboard shows, read from experiment folders (never written).

Every read is cheap and incremental: the journal and each progress.jsonl are read from
the byte offset reached last time, logs by seeking to their end, ralph_state.json whole
(it is small). Nothing here can block or change a running loop.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import CONFIG_NAMES, Config, load_config
from ..errors import RalphError
from ..journal import cycle_folder
from ..records import partial_value
from ..runfiles import ProgressTail, loop_alive, progress_of, read_state, tail_lines

LOG_LINES = 60  # stdout lines of the running trial sent to the page
ERR_LINES = 20  # stderr lines
CURVE_POINTS = 400  # learning-curve points per trial sent to the page
MAX_CACHED = 64  # progress files kept open in the cache


@dataclass(frozen=True)
class RunRef:
    """One experiment folder and where its run's files are."""

    key: str  # stable id in URLs: derived from the folder's absolute path
    folder: Path
    name: str
    state_dir: Path
    runs_dir: Path
    target: dict[str, Any]
    max_cycles: int | None


def _key(folder: Path) -> str:
    return hashlib.sha1(str(folder).encode()).hexdigest()[:10]


class JournalTail:
    """The cycles recorded in a journal, read incrementally (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.run: dict[str, Any] = {}
        self.cycles: dict[int, dict[str, Any]] = {}
        self.started: set[int] = set()  # cycles started; those not recorded are in flight

    def in_flight(self) -> list[int]:
        return sorted(c for c in self.started if c not in self.cycles)

    def poll(self) -> None:
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return
        if size < self.offset:  # truncated (a torn tail dropped) or replaced: read again
            self.__init__(self.path)  # type: ignore[misc]
        if size == self.offset:
            return
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(size - self.offset)
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            if ev.get("type") == "run_started":
                self.run = ev
            elif ev.get("type") == "cycle_started" and isinstance(ev.get("cycle"), int):
                self.started.add(ev["cycle"])
            elif ev.get("type") == "cycle_recorded" and isinstance(ev.get("record"), dict):
                row = cycle_row(ev["record"], (self.run.get("target") or {}).get("name"))
                self.cycles.setdefault(row["cycle"], row)  # never twice, whatever the file says
        self.offset += end


def cycle_row(rec: dict[str, Any], target: str | None = None) -> dict[str, Any]:
    """The page's view of a recorded cycle (small: no patch, no full analysis). ``partial``: for a
    trial stopped early (pruned, cancelled), the value of the ``target`` metric it had reached."""
    res = rec.get("result") or {}
    prop = rec.get("proposal") or {}
    analysis = rec.get("analysis") or {}
    metric = rec.get("metric")
    message = str(res.get("message") or "").strip().splitlines()
    partial = partial_value(str(rec.get("verdict", "")), res.get("metrics") or {}, target) if target else None
    return {
        "cycle": int(rec["cycle"]),
        "metric": metric if isinstance(metric, (int, float)) else None,
        "verdict": rec.get("verdict", ""),
        "kept": bool(rec.get("kept")),
        "status": res.get("status", ""),
        "failure": res.get("failure", "none"),
        "stopped_at_step": res.get("stopped_at_step") if res.get("stopped_by") == "target" else None,
        "pruned_at_step": res.get("stopped_at_step") if res.get("stopped_by") == "pruner" else None,
        "partial": partial,
        "duration_s": round(max(0.0, float(res.get("ended_at", 0.0)) - float(res.get("started_at", 0.0))), 2),
        "params": prop.get("params") or {},
        "patch": bool(prop.get("patch")),
        "rationale": prop.get("rationale", ""),
        "diagnosis": analysis.get("diagnosis", ""),
        "message": message[0][:300] if message else "",
    }


def finite(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (JSON has no NaN; the page's parser would fail)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


class RunStore:
    """Finds runs under the roots and reads them; safe to call from the server's threads."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(r).resolve() for r in roots]
        self._lock = threading.Lock()
        self._configs: dict[Path, tuple[int, Config | None]] = {}
        self._journals: dict[Path, JournalTail] = {}
        self._progress: collections.OrderedDict[Path, ProgressTail] = collections.OrderedDict()

    # ------------------------------------------------------------------ discovery
    def _config(self, path: Path) -> Config | None:
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        hit = self._configs.get(path)
        if hit is None or hit[0] != mtime:
            try:
                cfg: Config | None = load_config(path)
            except (RalphError, OSError, ValueError):
                cfg = None
            hit = self._configs[path] = (mtime, cfg)
        return hit[1]

    def _ref(self, folder: Path) -> RunRef | None:
        config_path = next((folder / n for n in CONFIG_NAMES if (folder / n).is_file()), None)
        if config_path is None:
            if not (folder / "state" / "ralph_state.json").is_file():
                return None
            cfg = None
        else:
            cfg = self._config(config_path)
        if cfg is None:  # unreadable config: the default layout still shows the run
            return RunRef(_key(folder), folder, folder.name, folder / "state", folder / "runs", {}, None)
        t = cfg.target
        return RunRef(
            key=_key(folder),
            folder=folder,
            name=cfg.project.name,
            state_dir=cfg.path(cfg.paths.state),
            runs_dir=cfg.path(cfg.paths.runs),
            target={"name": t.name, "value": t.value, "direction": t.dir.value},
            max_cycles=cfg.safeguards.max_cycles,
        )

    def discover(self) -> list[RunRef]:
        """Each root that is an experiment folder, else the experiment folders just inside it."""
        with self._lock:
            out: dict[str, RunRef] = {}
            for root in self.roots:
                ref = self._ref(root)
                if ref is not None:
                    out.setdefault(ref.key, ref)
                    continue
                try:
                    children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
                except OSError:
                    continue
                for child in children:
                    ref = self._ref(child)
                    if ref is not None:
                        out.setdefault(ref.key, ref)
            return list(out.values())

    # ------------------------------------------------------------------ reading
    def _journal(self, ref: RunRef) -> JournalTail:
        path = ref.state_dir / "journal.jsonl"
        jt = self._journals.get(path)
        if jt is None:
            jt = self._journals[path] = JournalTail(path)
        jt.poll()
        return jt

    def _curve(self, path: Path) -> ProgressTail:
        tail = self._progress.get(path)
        if tail is None:
            tail = self._progress[path] = ProgressTail(path, max_rows=CURVE_POINTS)
            while len(self._progress) > MAX_CACHED:
                self._progress.popitem(last=False)
        self._progress.move_to_end(path)
        tail.poll()
        return tail

    def _state(self, ref: RunRef) -> dict[str, Any]:
        state = read_state(ref.state_dir)
        if state:
            alive = state.get("status") in ("running", "paused") and loop_alive(state)
            if state.get("status") in ("running", "paused") and not alive:
                state["status"] = "interrupted"
            state["loop_alive"] = alive
        return state

    def _summary(self, ref: RunRef, state: dict[str, Any], jt: JournalTail) -> dict[str, Any]:
        best = state.get("best")
        return {
            "key": ref.key,
            "name": ref.name,
            "folder": str(ref.folder),
            "run_id": state.get("run_id") or jt.run.get("run_id"),
            "status": state.get("status") or ("recorded" if jt.cycles else "no run yet"),
            "cycle": state.get("cycle", 0),
            "phase": state.get("phase", ""),
            "cycles": len(jt.cycles),
            "max_cycles": ref.max_cycles,
            "best": best,
            "target": state.get("target") or ref.target,
            "updated_at": state.get("updated_at"),
        }

    def runs(self) -> list[dict[str, Any]]:
        refs = self.discover()
        with self._lock:
            return [finite(self._summary(r, self._state(r), self._journal(r))) for r in refs]

    def detail(self, key: str, since: int = 0) -> dict[str, Any] | None:
        """One run: state, cycles recorded after ``since``, the current trial and the best one."""
        ref = next((r for r in self.discover() if r.key == key), None)
        if ref is None:
            return None
        with self._lock:
            state = self._state(ref)
            jt = self._journal(ref)
            cycles = [jt.cycles[c] for c in sorted(jt.cycles) if c > since]
            flying = jt.in_flight()
            alive = bool(state.get("loop_alive"))
            # The trial whose log is shown: the latest in flight that has output, else the latest recorded.
            logging_ = [c for c in flying if (ref.runs_dir / cycle_folder(c) / "logs" / "stdout.log").exists()]
            focus = max(logging_ or flying or list(jt.cycles) or [int(state.get("cycle") or 0)])
            out: dict[str, Any] = {
                "summary": self._summary(ref, state, jt),
                "state": state,
                "cycles": cycles,
                "cycles_total": len(jt.cycles),
                "current": self._trial(ref, focus, running=alive and focus in flying, logs=True),
                "in_flight": [self._trial(ref, c, running=alive, logs=False) for c in flying if c != focus],
            }
            best = (state.get("best") or {}).get("cycle")
            kept = [c for c, r in jt.cycles.items() if r["kept"]]
            best = best or (max(kept) if kept else None)
            out["best_trial"] = self._trial(ref, int(best), running=False, logs=False) if best else None
            safe: dict[str, Any] = finite(out)
            return safe

    def _trial(self, ref: RunRef, cycle: int, *, running: bool, logs: bool) -> dict[str, Any] | None:
        if cycle <= 0:
            return None
        cdir = ref.runs_dir / cycle_folder(cycle)
        if not cdir.is_dir():
            return {"cycle": cycle, "running": running, "params": {}, "progress": None, "curve": [], "stdout": [], "stderr": []}
        try:
            params = json.loads((cdir / "params.json").read_text())
        except (OSError, ValueError):
            params = {}
        params = params if isinstance(params, dict) else {}
        tail = self._curve(cdir / "progress.jsonl")
        prog = progress_of(tail, params)
        return {
            "cycle": cycle,
            "running": running,
            "params": params,
            "progress": None if prog is None else {"done": prog.done, "total": prog.total, "unit": prog.unit, "latest": prog.latest},
            "curve": tail.series(),
            "stdout": tail_lines(cdir / "logs" / "stdout.log", LOG_LINES) if logs else [],
            "stderr": tail_lines(cdir / "logs" / "stderr.log", ERR_LINES) if logs else [],
        }
