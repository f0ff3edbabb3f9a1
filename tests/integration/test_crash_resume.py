"""SIGKILL of the loop at any instant, then `resume`: no recorded cycle lost, none twice,
the in-flight trial re-run or collected once, and no configuration proposed twice."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest
from conftest import journal_events, ralph, ralph_bg, recorded

COUNTING = """
import json, os, time
with open(os.environ["EXEC_LOG"], "a") as fh:
    fh.write(os.environ["RALPH_CYCLE"] + "\\n")
time.sleep(float(os.environ.get("SLEEP_S", "0")))
p = json.load(open(os.environ["RALPH_PARAMS"]))
print(f"val_accuracy: {1 - (p['x'] - 0.7) ** 2:.6f}")
"""


def _state(root: Path) -> dict:
    try:
        return json.loads((root / "state" / "ralph_state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _check_ledger(root: Path, n: int) -> None:
    recs = recorded(root)
    assert [r["cycle"] for r in recs] == list(range(1, n + 1))  # none lost, none twice
    keys = [json.dumps(r["proposal"]["params"], sort_keys=True) for r in recs]
    assert len(set(keys)) == len(keys), "a configuration was proposed twice"
    starts = {}
    for e in journal_events(root):
        if e["type"] == "cycle_started":
            starts.setdefault(e["cycle"], []).append(e["proposal"])
    for c, props in starts.items():
        assert all(p == props[0] for p in props), f"cycle {c} was restarted with another proposal"


def test_sigkill_mid_trial_then_resume_reruns_the_trial_once(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "exec.log"
    root = exp(COUNTING, target=1.5, safeguards={"max_cycles": 3, "no_improvement_stop_cycles": 10},
               execution={"env": {"EXEC_LOG": str(log), "SLEEP_S": "3"}})
    proc = ralph_bg(root, "start")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = _state(root)
        if st.get("cycle") == 2 and st.get("phase") == "execute":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the loop never reached cycle 2")
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    trial = json.loads((root / "runs" / "cycle_0002" / "trial.json").read_text())
    res = ralph(root, "resume")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Recovered cycle 2: re-run" in res.stdout
    _check_ledger(root, 3)
    runs = [int(x) for x in log.read_text().split()]
    assert runs.count(1) == 1 and runs.count(2) == 2 and runs.count(3) == 1
    assert not Path(f"/proc/{trial['pid']}").exists() or "Z" in Path(f"/proc/{trial['pid']}/stat").read_text().split(")")[1][:3]
    assert list((root / "runs" / ".interrupted").iterdir()), "the killed attempt's files are kept as evidence"


def test_a_finished_trial_is_collected_not_rerun(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "exec.log"
    root = exp(COUNTING, target=1.5, safeguards={"max_cycles": 2, "no_improvement_stop_cycles": 10},
               execution={"env": {"EXEC_LOG": str(log)}})
    assert ralph(root, "start").returncode == 2
    # Make the journal look as if the loop died after the trial of cycle 2 ended but before
    # the cycle was recorded: drop its cycle_recorded and run_stopped events, tear the tail.
    jpath = root / "state" / "journal.jsonl"
    events = journal_events(root)
    kept = [e for e in events if not (e["type"] == "cycle_recorded" and e["cycle"] == 2) and e["type"] != "run_stopped"]
    jpath.write_text("".join(json.dumps(e) + "\n" for e in kept) + '{"type": "cycle_rec')
    res = ralph(root, "resume")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Recovered cycle 2: collected" in res.stdout
    _check_ledger(root, 2)
    assert [int(x) for x in log.read_text().split()] == [1, 2]  # cycle 2 was not run again


def test_random_sigkills_never_lose_or_duplicate_a_cycle(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "exec.log"
    n = 12
    root = exp(COUNTING, target=1.5, safeguards={"max_cycles": n, "no_improvement_stop_cycles": 50},
               execution={"env": {"EXEC_LOG": str(log), "SLEEP_S": "0.15"}})
    rng = random.Random(1234)
    kills = 0
    journal = root / "state" / "journal.jsonl"

    def size() -> int:
        return journal.stat().st_size if journal.exists() else 0

    def n_recorded() -> int:
        return journal.read_text().count('"type":"cycle_recorded"') if journal.exists() else 0

    for _ in range(80):
        # killed before its journal existed, a run has nothing to resume: start it again
        proc = ralph_bg(root, "resume" if size() else "start")
        # Kill at a random instant after the run recorded a new cycle (whatever the machine's load).
        before = n_recorded()
        deadline = time.monotonic() + 120
        while proc.poll() is None and n_recorded() <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
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
    assert kills >= 3, "the test did not exercise kills"
    _check_ledger(root, n)
    runs = [int(x) for x in log.read_text().split()]
    assert sorted(set(runs)) == list(range(1, n + 1))
    # one trial at a time: a kill interrupts at most one, which is re-run once
    assert len(runs) <= n + kills, f"{len(runs)} executions of {n} cycles with {kills} kills"
    stopped = [e for e in journal_events(root) if e["type"] == "run_stopped"]
    assert stopped[-1]["decision"]["reason"] == "max_cycles"


# The first attempt starts a helper in its process group and one that left it (as a data loader
# or a launcher may), then trains for a minute; an attempt run again ends at once.
HELPERS = """
import json, os, subprocess, time
marker = os.environ["ATTEMPT_MARKER"]
first = not os.path.exists(marker)
open(marker, "a").close()
if first:
    group = subprocess.Popen(["sleep", "60"])
    escaped = subprocess.Popen(["sleep", "61"], start_new_session=True)  # carries the trial's token
    pids = {"trial": os.getpid(), "group": group.pid, "escaped": escaped.pid}
    json.dump(pids, open(os.path.join(os.environ["RALPH_RUN_DIR"], "pids.json"), "w"))
    time.sleep(60)
print("val_accuracy: 0.5")
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_loop_killed_with_sigkill_takes_its_trials_down_without_a_resume(exp, tmp_path: Path, warm: bool) -> None:  # type: ignore[no-untyped-def]
    """Before, a trial of a loop killed with kill -9 trained on to its end (holding its GPUs),
    though a resume runs it again: the sentinel stops it, its group and what left the group."""
    marker = tmp_path / "attempted"
    root = exp(HELPERS, target=1.5, safeguards={"max_cycles": 1},
               execution={"env": {"ATTEMPT_MARKER": str(marker)}, **({"preload": ["json"]} if warm else {})})
    proc = ralph_bg(root, "start")
    pids_file = root / "runs" / "cycle_0001" / "pids.json"
    deadline = time.monotonic() + 60
    while not pids_file.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert pids_file.exists(), proc.communicate(timeout=5)
    time.sleep(0.2)  # pids.json is written whole before the trial sleeps
    pids = json.loads(pids_file.read_text())
    assert all(_alive(p) for p in pids.values()), pids
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [name for name, p in pids.items() if _alive(p)], "still running after the loop died"
    assert "the loop ended; killed" in proc.stderr.read()  # type: ignore[union-attr]
    res = ralph(root, "resume")  # the trial runs again, once, and ends at once
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Recovered cycle 1: re-run" in res.stdout
    _check_ledger(root, 1)
