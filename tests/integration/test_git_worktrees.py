"""Git versioning across kill -9 and resume: each cycle's code folder is a git worktree while it
is in flight; a crash leaves registrations behind that the resumed run drops or reuses, and the
finished run has its version tree as commits, one ref per cycle, and no worktree left."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import journal_events, ralph, ralph_bg, recorded

TRIAL = """
import json, os, time
time.sleep(float(os.environ.get("SLEEP_S", "0")))
deadline = time.monotonic() + 60
while os.path.exists(os.environ.get("HOLD", "/nonexistent")) and time.monotonic() < deadline:
    time.sleep(0.05)  # held until the test lets it finish
p = json.load(open(os.environ["RALPH_PARAMS"]))
print(f"val_accuracy: {1 - (p['x'] - 0.7) ** 2:.6f}")
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def _user_repo(root: Path) -> tuple[str, bytes]:
    """Make the experiment folder a git repo with one commit; its HEAD and index bytes."""
    (root / ".gitignore").write_text("runs/\nreports/\nstate/\n__pycache__/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@u", "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@u"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the user's code"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env, capture_output=True)
    return git(root, "rev-parse", "HEAD"), (root / ".git" / "index").read_bytes()


def _code_worktrees(root: Path) -> list[str]:
    listed = git(root, "worktree", "list", "--porcelain").splitlines()
    return [line.split(" ", 1)[1] for line in listed if line.startswith("worktree ") and line.endswith("/code")]


def _check_history(root: Path, head: str, index: bytes, n: int) -> None:
    """n cycles recorded once each, committed as the version tree, nothing left registered."""
    recs = {r["cycle"]: r for r in recorded(root)}
    assert sorted(recs) == list(range(1, n + 1))
    run_id = journal_events(root)[0]["run_id"]
    for c, r in recs.items():
        want = head if r["parent"] is None else recs[r["parent"]]["commit"]
        assert git(root, "rev-parse", f"{r['commit']}^") == want, f"cycle {c}"
        assert git(root, "rev-parse", f"refs/ralph/{run_id}/cycles/{c:04d}") == r["commit"]
        assert (root / "runs" / f"cycle_{c:04d}" / "code" / "train.py").is_file()
    kept = [r for r in recorded(root) if r["kept"]]
    if kept:  # the best tag follows the best version, whatever the kills interrupted
        assert git(root, "rev-parse", f"ralph/{run_id}/best") == kept[-1]["commit"]
    assert _code_worktrees(root) == []
    assert not list(root.glob("runs/**/code/.git"))  # attic folders included
    assert git(root, "rev-parse", "HEAD") == head and (root / ".git" / "index").read_bytes() == index
    assert git(root, "status", "--porcelain") == ""


def test_kill_9_with_two_worktrees_in_flight_then_resume(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hold = tmp_path / "hold"
    hold.touch()
    root = exp(TRIAL, target=1.5, safeguards={"max_cycles": 4, "no_improvement_stop_cycles": 20},
               execution={"max_concurrency": 2, "env": {"HOLD": str(hold)}})
    head, index = _user_repo(root)
    proc = ralph_bg(root, "start")
    try:
        deadline = time.monotonic() + 60
        while len(list(root.glob("runs/cycle_*/trial.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # both trials started: their code is materialized and committed
        in_flight = _code_worktrees(root)
        assert len(in_flight) == 2, "two cycles should be in flight, each in its own worktree"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _code_worktrees(root) == in_flight  # the crash left them registered
    hold.unlink()

    res = ralph(root, "resume")

    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout.count("re-run") == 2
    _check_history(root, head, index, 4)
    attic = sorted((root / "runs" / ".interrupted").iterdir())
    assert len(attic) == 2 and all((a / "code" / "train.py").is_file() for a in attic)


def test_resume_moves_the_best_tag_that_a_crash_left_on_an_older_version(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(TRIAL, target=1.5, safeguards={"max_cycles": 3, "no_improvement_stop_cycles": 20})
    head, index = _user_repo(root)
    assert ralph(root, "start").returncode == 2
    run_id = journal_events(root)[0]["run_id"]
    # what a kill -9 between journalling a kept cycle and moving the tag leaves behind
    git(root, "update-ref", f"refs/tags/ralph/{run_id}/best", head)
    res = ralph(root, "resume")
    assert res.returncode == 2, res.stdout + res.stderr
    _check_history(root, head, index, 3)


def test_random_kills_with_git_on_never_leave_a_worktree_or_a_broken_history(exp) -> None:  # type: ignore[no-untyped-def]
    n = 6
    root = exp(TRIAL, target=1.5, safeguards={"max_cycles": n, "no_improvement_stop_cycles": 50},
               execution={"max_concurrency": 2, "env": {"SLEEP_S": "0.1"}})
    head, index = _user_repo(root)
    journal = root / "state" / "journal.jsonl"
    rng = random.Random(7)
    kills = 0
    for _ in range(60):
        proc = ralph_bg(root, "resume" if journal.exists() and journal.stat().st_size else "start")
        # kill at a random instant after this process started a cycle (whatever the machine's load)
        before = journal.read_text().count('"cycle_started"') if journal.exists() else 0
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and (
            not journal.exists() or journal.read_text().count('"cycle_started"') <= before
        ):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        rc = proc.poll()
        if rc is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        if rc == 2:
            break
        out, errs = proc.communicate()
        raise AssertionError(f"unexpected exit {rc}: {out} {errs}")
    else:
        raise AssertionError("the run never finished")
    assert kills >= 2, "the test did not exercise kills"
    _check_history(root, head, index, n)
    stopped = [e for e in journal_events(root) if e["type"] == "run_stopped"]
    assert stopped[-1]["decision"]["reason"] == "max_cycles"


def test_versioning_off_runs_without_git_on_path(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = exp(TRIAL, target=1.5, safeguards={"max_cycles": 2}, execution={"max_concurrency": 2},
               extra={"versioning": {"git": False}})
    head, _ = _user_repo(root)  # a repo, but versioning is off
    bin_dir = tmp_path / "bin"  # a PATH with python and no git
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir)}

    proc = subprocess.run([sys.executable, "-m", "ralph_ml", "start"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert [r["commit"] for r in recorded(root)] == [None, None]
    assert git(root, "for-each-ref", "--format=%(refname)") == f"refs/heads/{git(root, 'branch', '--show-current')}"
    assert _code_worktrees(root) == [] and not list(root.glob("runs/*/code/.git"))
    assert git(root, "rev-parse", "HEAD") == head
