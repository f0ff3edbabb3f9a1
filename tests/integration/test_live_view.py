"""The live terminal view (`start` on a terminal) and `watch` (live and --plain), on real runs.

The terminal is a real pseudo-terminal; what the program draws is replayed into pyte, a VT
emulator, so the assertions read the screen a user would see.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pyte

from conftest import make_experiment, ralph, ralph_bg, recorded

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# ~1.5 s per trial: 6 epochs, each printing a line and reporting progress.
SLOW = """
import time
from ralph_ml import trial
p = trial.params({"x": 0.1, "epochs": 6})
for e in range(1, p["epochs"] + 1):
    time.sleep(0.25)
    print(f"epoch {e}/{p['epochs']} marker-line loss={1.0 / e:.3f}", flush=True)
    trial.report(e, train_loss=1.0 / e, lr=0.01, grad_norm=2.5, step_s=0.25, val_accuracy=0.4321)
print(f"val_accuracy: {1 - (p['x'] - 0.7) ** 2:.6f}")
"""
SPACE = {
    "x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.1},
    "epochs": {"type": "categorical", "choices": [6], "default": 6},
}


def _exp(root: Path, cycles: int) -> Path:
    return make_experiment(root, SLOW, target=1.5, space=SPACE, safeguards={"max_cycles": cycles})


class Term:
    """A command on a pseudo-terminal of ``cols`` x ``rows``, its output replayed into pyte."""

    def __init__(self, args: list[str], cwd: Path, cols: int = 120, rows: int = 40) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "TERM")}
        env.update(TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ralph_ml", *args], cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
            env=env, start_new_session=True,
        )
        os.close(slave)
        self.fd = master
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.closed = False

    def pump(self, timeout: float = 0.05) -> None:
        if self.closed:
            return
        while True:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the program exited and the terminal closed
                data = b""
            if not data:
                self.closed = True
                return
            self.raw += data
            self.stream.feed(data)
            timeout = 0

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, pred: Any, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if pred(self.text()):
                return self.text()
        raise AssertionError(f"screen never matched; last screen:\n{self.text()}")

    def finish(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pump()
        for _ in range(20):
            self.pump()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"did not exit in {timeout} s; screen:\n{self.text()}")
        os.close(self.fd)
        return self.proc.returncode


PANELS = ("trial · cycle", "log tail", "val_accuracy per cycle", "budgets", "plateau", "tokens", "cost", "elapsed")


def _mid_run(s: str) -> bool:
    """A frame drawn while a trial runs, with every panel (the state file is read once a second)."""
    return "● execute" in s and "marker-line" in s and "epochs" in s and "/6" in s and all(p in s for p in PANELS)


def test_start_on_a_terminal_draws_the_live_view(tmp_path: Path) -> None:
    root = _exp(tmp_path / "exp", cycles=2)
    term = Term(["start"], root)
    try:
        mid = term.wait_for(_mid_run)
        # header: cycle, phase, target, best; the running trial: params, progress bar, log tail
        assert "ralph-ml · t · run " in mid
        assert "cycle 1 of 2" in mid or "cycle 2 of 2" in mid
        assert "target val_accuracy ≥ 1.5" in mid
        assert "best " in mid
        assert "trial · cycle" in mid and "x=0.1" in mid and "━" in mid
        # the running trial's metrics, the target's first (reported last, it would be cut after four)
        assert "val_accuracy 0.4321  train_loss" in mid and "step_s" not in mid
        assert "log tail" in mid
        assert "budgets" in mid and "used ·" in mid and "left" in mid and "elapsed" in mid
        assert "plateau" in mid and "tokens" in mid and "cost" in mid
        assert "val_accuracy per cycle" in mid
        # once cycle 1 is recorded, its line scrolls above the live area and the chart has a bar
        after = term.wait_for(lambda s: "cycle   1  val_accuracy 0.6400" in s and "best 0.6400 (cycle 1" in s)
        assert "✓ kept" in after
        rc = term.finish()
    finally:
        if term.proc.poll() is None:
            os.killpg(term.proc.pid, signal.SIGKILL)
    final = term.text()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "live_view_mid_run.txt").write_text(mid + "\n")
    (ARTIFACTS / "live_view_final.txt").write_text(final + "\n")
    assert rc == 2, final  # max cycles
    assert "[STOPPED: max_cycles]" in final and "(exit 2)" in final
    assert "stopped max_cycles (exit 2)" in final  # the budgets panel's last frame stays on screen
    assert "cycle   2  val_accuracy" in final
    assert "[CYCLE 1 STARTED]" not in term.raw.decode(errors="replace")  # not the plain output
    assert len(recorded(root)) == 2


def test_plain_flag_keeps_line_output_on_a_terminal(tmp_path: Path) -> None:
    root = _exp(tmp_path / "exp", cycles=1)
    term = Term(["start", "--plain"], root)
    rc = term.finish()
    out = term.raw.decode(errors="replace")
    assert rc == 2
    assert "[CYCLE 1 STARTED]" in out and "└─ Decision: stop" in out
    assert "budgets" not in out and "log tail" not in out


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def _key_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(("[CYCLE", "└─ Decision", "[STOPPED", "[TARGET", "   val_accuracy"))]


def test_watch_follows_a_run_started_in_another_process(tmp_path: Path) -> None:
    root = _exp(tmp_path / "exp", cycles=3)
    # Both watchers attach before the run exists: they wait for it.
    plain = subprocess.Popen(
        [sys.executable, "-m", "ralph_ml", "watch", "--plain"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    live = Term(["watch"], root)
    loop = None
    try:
        live.wait_for(lambda s: "waiting for a run to start" in s, timeout=20)
        loop = ralph_bg(root, "start")
        live.wait_for(_mid_run)
        loop_out, loop_err = loop.communicate(timeout=60)
        plain_out, plain_err = plain.communicate(timeout=30)
        live_rc = live.finish(timeout=30)
    finally:
        for p in (plain, live.proc, loop):
            if p is not None and p.poll() is None:
                p.kill()
    assert loop.returncode == 2, loop_err
    # watch exits with the run's exit code, and prints what the loop's own terminal printed
    assert plain.returncode == 2, plain_err
    assert live_rc == 2, live.text()
    assert _key_lines(plain_out) == _key_lines(loop_out)
    assert plain_out.count("[CYCLE") == 3 and "[STOPPED: max_cycles]" in plain_out
    final = live.text()
    assert "[STOPPED: max_cycles]" in final and "cycle   3  val_accuracy" in final

    # Attaching after the end replays the run and exits at once; watching never writes a byte.
    before = _tree(root)
    again = ralph(root, "watch", "--plain", timeout=30)
    assert again.returncode == 2, again.stderr
    assert _key_lines(again.stdout) == _key_lines(loop_out)
    assert _tree(root) == before


def test_watch_says_so_when_the_loop_died_without_stopping(tmp_path: Path) -> None:
    root = _exp(tmp_path / "exp", cycles=5)
    loop = ralph_bg(root, "start")
    try:
        deadline = time.monotonic() + 30
        while not (root / "runs" / "cycle_0001" / "progress.jsonl").exists():
            assert time.monotonic() < deadline, "the trial never started"
            time.sleep(0.05)
        loop.kill()  # kill -9: no run_stopped event will ever come
        loop.wait(timeout=10)
        res = ralph(root, "watch", "--plain", timeout=30)
    finally:
        if loop.poll() is None:
            loop.kill()
    assert res.returncode == 4, res.stdout + res.stderr
    assert "[CYCLE 1 STARTED]" in res.stdout
    assert "no longer running" in res.stderr and "ralph-ml resume" in res.stderr


# ----------------------------------------------------------------------------- the cheap readers
def test_log_tail_reads_only_the_end_of_a_big_log(tmp_path: Path) -> None:
    from ralph_ml.runfiles import tail_lines

    log = tmp_path / "stdout.log"
    with open(log, "w") as fh:
        for i in range(200_000):  # ~3 MB
            fh.write(f"line {i}\n")
        fh.write("progress 10%\rprogress 50%\rprogress 100%\n\x1b[32mgreen\x1b[0m\n")
    assert tail_lines(log, 3) == ["line 199999", "progress 100%", "green"]
    assert tail_lines(tmp_path / "missing.log", 3) == []


def test_progress_is_read_incrementally_and_thinned(tmp_path: Path) -> None:
    import json as _json

    from ralph_ml.runfiles import ProgressTail, progress_of

    path = tmp_path / "progress.jsonl"
    tail = ProgressTail(path, max_rows=100)
    assert not tail.poll() and progress_of(tail, {"epochs": 10}) is None
    with open(path, "w") as fh:
        for step in range(1, 4):
            fh.write(_json.dumps({"step": step, "time": 0, "loss": 1 / step}) + "\n")
        fh.write('{"step": 4, "lo')  # a line still being written
        fh.flush()
        assert tail.poll()
        p = progress_of(tail, {"epochs": 10, "lr": 0.1})
        assert p is not None and (p.done, p.total, p.unit) == (3, 10, "epochs") and p.latest == {"loss": 1 / 3}
        fh.write('ss": 0.25}\n')
        for step in range(5, 1001):
            fh.write(_json.dumps({"step": step, "time": 0, "loss": 1 / step}) + "\n")
    assert tail.poll()
    rows = tail.series()
    assert len(rows) <= 101 and rows[0]["step"] == 1 and rows[-1]["step"] == 1000
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and len(set(b - a for a, b in zip(steps, steps[1:-1]))) == 1  # evenly spaced
    p = progress_of(tail, {"epochs": 10})
    assert p is not None and (p.done, p.total, p.unit) == (1000, None, "steps")  # more than planned: a counter
    p = progress_of(tail, {"max_steps": 1000, "epochs": 3})
    assert p is not None and (p.done, p.total, p.unit) == (1000, 1000, "steps")
