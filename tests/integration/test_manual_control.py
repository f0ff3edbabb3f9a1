"""`ralph-ml stop | pause | unpause` from another terminal, honoured within seconds."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import ralph, ralph_bg, recorded

LONG = """
import os, time
with open(os.environ["PID_FILE"], "w") as fh:
    fh.write(str(os.getpid()))
for i in range(600):
    time.sleep(0.1)
print("val_accuracy: 0.5")
"""


def _wait_for(pred, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _state(root: Path) -> dict:
    try:
        return json.loads((root / "state" / "ralph_state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]


def test_pause_unpause_and_stop_from_another_terminal(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pid_file = tmp_path / "pid"
    root = exp(LONG, execution={"env": {"PID_FILE": str(pid_file)}})
    loop = ralph_bg(root, "start")
    try:
        _wait_for(lambda: pid_file.exists() and pid_file.read_text() != "")
        pid = int(pid_file.read_text())
        ralph(root, "pause", check=True)
        _wait_for(lambda: _state(root).get("status") == "paused", timeout=3)
        _wait_for(lambda: _proc_state(pid) == "T", timeout=3)  # the trial is suspended
        st = json.loads(ralph(root, "status", "--json", check=True).stdout)
        assert st["status"] == "paused" and st["phase"] == "paused"
        ralph(root, "unpause", check=True)
        _wait_for(lambda: _proc_state(pid) in ("S", "R"), timeout=3)
        _wait_for(lambda: _state(root).get("status") == "running", timeout=3)
        t0 = time.monotonic()
        ralph(root, "stop", check=True)
        rc = loop.wait(timeout=15)
        assert time.monotonic() - t0 < 8
    finally:
        if loop.poll() is None:
            loop.kill()
    assert rc == 0
    rec = recorded(root)[0]
    assert rec["result"]["status"] == "cancelled" and not rec["kept"]
    # Cancelled from outside: the analysis does not blame the configuration (it said "failed")
    assert rec["analysis"]["diagnosis"] == "cancelled", rec["analysis"]
    assert "failed" not in (root / "runs" / "cycle_0001" / "analysis.md").read_text()
    d = json.loads((root / "runs" / "cycle_0001" / "decision.json").read_text())
    assert d["reason"] == "manual_stop"
    assert _state(root)["status"] == "stopped"
    assert not Path(f"/proc/{pid}").exists() or _proc_state(pid) == "Z"
    # a later resume is not stopped by the old request: the control file was cleared
    assert not (root / "state" / "control.json").exists()
