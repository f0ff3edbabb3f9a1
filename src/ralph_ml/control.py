"""Manual override: `ralph-ml stop | pause | unpause` write a small control file the loop polls."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .journal import write_json_atomic

ACTIONS = ("stop", "pause", "unpause")


def send(state_dir: Path, action: str) -> Path:
    if action not in ACTIONS:
        raise ValueError(f"unknown control action {action!r}; use one of {ACTIONS}")
    path = state_dir / "control.json"
    write_json_atomic(path, {"action": action, "ts": time.time(), "pid": os.getpid()})
    return path


class ControlReader:
    """Reads the control file only when it changed (one stat per poll)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._action: str | None = None

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self._mtime = None
        self._action = None

    def action(self) -> str | None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._mtime, self._action = None, None
            return None
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self._action = json.loads(self.path.read_text()).get("action")
            except (ValueError, OSError):
                self._action = None
        return self._action
