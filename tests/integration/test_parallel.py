"""K trials at once: they really overlap, never share a GPU, never duplicate a proposal, and a
kill -9 with K in flight is resumed with each unfinished trial re-run exactly once."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from conftest import journal_events, ralph, ralph_bg, recorded

TRIAL = """
import json, os, time
t0 = time.time()
time.sleep(float(os.environ.get("SLEEP_S", "0.8")))
p = json.load(open(os.environ["RALPH_PARAMS"]))
with open(os.environ["LOG"], "a") as fh:
    fh.write(json.dumps({"cycle": int(os.environ["RALPH_CYCLE"]), "start": t0, "end": time.time(),
                         "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": os.environ.get("OMP_NUM_THREADS")}) + "\\n")
print(f"val_accuracy: {1 - (p['x'] - 0.7) ** 2:.6f}")
"""


def _runs(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_two_trials_overlap_get_different_gpus_and_different_params(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "runs.log"
    root = exp(TRIAL, target=1.5, safeguards={"max_cycles": 6, "no_improvement_stop_cycles": 20},
               execution={"max_concurrency": 2, "gpus": [3, 5], "cpus_per_trial": 1, "env": {"LOG": str(log)}})
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    recs = recorded(root)
    assert sorted(r["cycle"] for r in recs) == [1, 2, 3, 4, 5, 6]
    keys = [json.dumps(r["proposal"]["params"], sort_keys=True) for r in recs]
    assert len(set(keys)) == 6, "parallel proposals must differ"
    runs = _runs(log)
    assert len(runs) == 6
    overlapping = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:] if a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlapping, "with max_concurrency = 2 some trials must run at the same time"
    for a, b in overlapping:
        assert a["gpus"] != b["gpus"], f"cycles {a['cycle']} and {b['cycle']} shared GPU {a['gpus']}"
    assert {r["gpus"] for r in runs} <= {"3", "5"} and all(r["threads"] == "1" for r in runs)
    assert max(len([r for r in runs if r["start"] <= t < r["end"]]) for t in [x["start"] + 0.01 for x in runs]) <= 2
    # Two cycles' lines interleave on the terminal: each result line names its cycle.
    out = proc.stdout
    for c in range(1, 7):
        assert f"└─ Training cycle {c} (time limit" in out and f"   cycle {c}: trial ok in " in out, out
        assert f"   cycle {c}: val_accuracy: " in out and f"└─ Analysis of cycle {c}: " in out, out
        assert f"└─ Decision after cycle {c}: " in out, out
    assert "└─ Decision: " not in out and "   trial ok" not in out


def test_k_trials_split_the_cores_when_cpus_per_trial_is_unset(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import os

    log = tmp_path / "runs.log"
    root = exp(TRIAL, target=1.5, safeguards={"max_cycles": 2, "no_improvement_stop_cycles": 20},
               execution={"max_concurrency": 2, "env": {"LOG": str(log), "SLEEP_S": "0"}})
    assert ralph(root, "start").returncode == 2
    cores = len(os.sched_getaffinity(0))
    assert [r["threads"] for r in _runs(log)] == [str(max(1, cores // 2))] * 2  # not a thread per core each


def test_a_pool_too_small_for_k_is_a_config_error(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(TRIAL, execution={"max_concurrency": 2, "gpus": [0], "gpus_per_trial": 1})
    proc = ralph(root, "start")
    assert proc.returncode == 4
    assert "max_concurrency = 2" in proc.stderr and "needs 2 GPUs" in proc.stderr


def test_kill_9_with_two_trials_in_flight_reruns_each_once(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "runs.log"
    root = exp(TRIAL, target=1.5, safeguards={"max_cycles": 4, "no_improvement_stop_cycles": 20},
               execution={"max_concurrency": 2, "env": {"LOG": str(log), "SLEEP_S": "4"}})
    proc = ralph_bg(root, "start")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        started = [e["cycle"] for e in journal_events(root) if e["type"] == "cycle_started"] if (root / "state" / "journal.jsonl").exists() else []
        if len(started) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    in_flight = {e["cycle"] for e in journal_events(root) if e["type"] == "cycle_started"} - {r["cycle"] for r in recorded(root)}
    assert len(in_flight) == 2
    state = json.loads((root / "state" / "ralph_state.json").read_text())
    assert state["in_flight"] == sorted(in_flight)  # both trials were running when the loop died
    status = " ".join(ralph(root, "status", check=True).stdout.split())
    assert f"in flight: cycles {', '.join(map(str, sorted(in_flight)))}" in status, status
    res = ralph(root, "resume")
    assert res.returncode == 2, res.stdout + res.stderr
    recs = recorded(root)
    assert sorted(r["cycle"] for r in recs) == [1, 2, 3, 4]
    assert len({json.dumps(r["proposal"]["params"], sort_keys=True) for r in recs}) == 4
    executions = [r["cycle"] for r in _runs(log)]
    for c in in_flight:
        assert executions.count(c) == 1, f"cycle {c}: killed before finishing, then re-run exactly once"
    # the re-run cycles kept their journalled proposals
    starts: dict[int, list] = {}
    for e in journal_events(root):
        if e["type"] == "cycle_started":
            starts.setdefault(e["cycle"], []).append(e["proposal"])
    assert all(len(v) == 1 for v in starts.values())


SLOW_THIRD = '''
import time
from ralph_ml.agents.base import Agent
from ralph_ml.records import Proposal


class SlowThird(Agent):
    """Proposes x = 0.9, 0.8, 0.7, ...; the third proposal takes 2 s, long enough for the first two trials to end."""
    name = "slow-third"

    def __init__(self, cfg):
        pass

    def propose(self, ctx):
        n = len(ctx.history) + len(ctx.pending) + 1
        if n == 3:
            time.sleep(2.0)
        return Proposal(params={"x": round(1.0 - n / 10, 2)}, rationale=f"proposal {n}", agent=self.name)
'''


def test_two_trials_that_end_together_as_the_run_stops_are_each_recorded_once(exp) -> None:  # type: ignore[no-untyped-def]
    # Cycles 1 and 2 end while the third is being proposed, so one poll returns both; cycle 1 meets
    # the target and the stop drains the others. With the pruner on, handling cycle 2's end twice
    # once told Optuna a finished trial again and crashed the loop.
    quick = "import json, os\np = json.load(open(os.environ['RALPH_PARAMS']))\nprint(f\"val_accuracy: {p['x']}\")\n"
    root = exp(quick, target=0.85, safeguards={"max_cycles": 6, "no_improvement_stop_cycles": 20},
               execution={"max_concurrency": 3},
               extra={"agents": {"code_model": "slow_agent:SlowThird"}, "pruning": {"pruner": "median"}})
    (root / "slow_agent.py").write_text(SLOW_THIRD)
    proc = ralph(root, "start")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # target met
    recs = recorded(root)
    assert sorted(r["cycle"] for r in recs) == [1, 2, 3]
    by = {r["cycle"]: r for r in recs}
    assert by[1]["metric"] == 0.9 and by[1]["kept"]
    assert by[2]["result"]["status"] == "ok" and by[2]["metric"] == 0.8  # ended before the stop: its result stands
    assert by[3]["result"]["status"] == "cancelled"
    decisions = {e["record"]["cycle"]: e["decision"]["message"] for e in journal_events(root) if e.get("type") == "cycle_recorded"}
    assert len(decisions) == 3
    assert decisions[2].startswith("the run stopped as this trial ended") and decisions[3].startswith("cancelled")


STOP_THEN_HANG = """
import os, signal, sys, time
if os.environ["RALPH_CYCLE"] == "1":
    time.sleep(0.3)
    print("val_accuracy: 0.95")  # meets the target: the run stops and cancels cycle 2
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so the stop waits out the kill grace
time.sleep(4)
print("val_accuracy: 0.5")
"""


def test_a_crash_while_the_stop_cancels_the_trials_in_flight_resumes_into_that_stop(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(STOP_THEN_HANG, target=0.9, safeguards={"max_cycles": 5, "no_improvement_stop_cycles": 20},
               execution={"max_concurrency": 2, "kill_grace_s": 3.0})
    proc = ralph_bg(root, "start")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ((root / "state" / "journal.jsonl").exists() and recorded(root)):
            time.sleep(0.05)
        assert [r["cycle"] for r in recorded(root)] == [1]  # recorded: target met; cycle 2 is being cancelled
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    res = ralph(root, "resume")
    assert res.returncode == 0, res.stdout + res.stderr  # the recorded stop: target met
    recs = recorded(root)
    assert [r["cycle"] for r in recs] == [1, 2]  # no cycle 3 was started
    assert recs[1]["result"]["status"] == "cancelled"
    assert not (root / "runs" / "cycle_0003").exists()


IN_ORDER = '''
from ralph_ml.agents.base import Agent
from ralph_ml.records import Proposal


class InOrder(Agent):
    """x = 0.1, then 0.7 and 0.5 side by side (both on cycle 1, the best when they start), then 0.6."""
    name = "in-order"

    def __init__(self, cfg):
        pass

    def propose(self, ctx):
        n = len(ctx.history) + len(ctx.pending) + 1
        if n == 2 and ctx.pending:
            return None  # cycles 2 and 3 start once cycle 1 is the best
        return Proposal(params={"x": {1: 0.1, 2: 0.7, 3: 0.5}.get(n, 0.6)}, rationale=f"proposal {n}", agent=self.name)
'''

HELD_THIRD = """
import json, os, time
p = json.load(open(os.environ["RALPH_PARAMS"]))
deadline = time.monotonic() + 60
while os.environ["RALPH_CYCLE"] == "3" and os.path.exists(os.environ["HOLD"]) and time.monotonic() < deadline:
    time.sleep(0.05)
print(f"val_accuracy: {1 - (p['x'] - 0.7) ** 2:.6f}")
"""


def test_a_trial_re_run_after_a_crash_builds_on_the_version_it_started_on(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hold = tmp_path / "hold"
    hold.touch()
    root = exp(HELD_THIRD, target=1.5, safeguards={"max_cycles": 3, "no_improvement_stop_cycles": 20},
               execution={"max_concurrency": 2, "env": {"HOLD": str(hold)}},
               extra={"agents": {"code_model": "in_order:InOrder"}})
    (root / "in_order.py").write_text(IN_ORDER)
    proc = ralph_bg(root, "start")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(recorded(root) if (root / "state" / "journal.jsonl").exists() else []) < 2:
            time.sleep(0.05)
        assert [(r["cycle"], r["kept"]) for r in recorded(root)] == [(1, True), (2, True)]  # cycle 3 held, on cycle 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    hold.unlink()
    res = ralph(root, "resume")
    assert res.returncode == 2, res.stdout + res.stderr
    third = recorded(root)[2]
    assert third["cycle"] == 3 and third["parent"] == 1  # not cycle 2, the best when it was re-run
    assert json.loads((root / "runs" / "cycle_0003" / "version.json").read_text())["parent"] == 1


# The baseline (x = 0.7) ends first; cycle 2 (started beside it) ends before cycle 3.
PLATEAU = """
import json, os, time
p = json.load(open(os.environ["RALPH_PARAMS"]))
time.sleep(0.5 if p["x"] == 0.7 else 1.0 + float(os.environ["RALPH_CYCLE"]) * 0.3)
print(f"val_accuracy: {1 - (p['x'] - 0.7) ** 2:.6f}")
"""


def test_status_after_a_plateau_stop_with_a_cycle_in_flight_does_not_read_like_an_overflow(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(PLATEAU, target=1.5, space={"x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.7}},
               safeguards={"max_cycles": 10, "no_improvement_stop_cycles": 1}, execution={"max_concurrency": 2})
    proc = ralph(root, "start")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert [r["verdict"] for r in recorded(root)] == ["kept", "discarded", "cancelled"]
    # Cycle 2 met the plateau rule; cycle 3, in flight, was recorded after it: 2 cycles without gain.
    out = ralph(root, "status", check=True).stdout
    assert "2 cycles (min delta 0.0; the plateau rule stops at 1)" in out and "2 of 1" not in out, out


def test_a_trial_in_flight_past_the_best_is_what_the_next_proposal_builds_on(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Cycle 2 reports 0.9 at step 1 while the best recorded (cycle 1) scored 0.5: cycle 3 is
    cycle 2's configuration perturbed, proposed while cycle 2 still trains."""
    marks = tmp_path / "marks"
    trial = f"""
import os, pathlib, time
from ralph_ml import trial
marks = pathlib.Path({str(marks)!r})
marks.mkdir(exist_ok=True)
cycle = int(os.environ["RALPH_CYCLE"])
(marks / f"started_{{cycle}}").touch()

def wait(name):
    end = time.monotonic() + 15
    while not (marks / name).exists() and time.monotonic() < end:
        time.sleep(0.05)

if cycle == 1:
    wait("reported_2")  # the baseline ends once cycle 2 has reported its first step
    print("val_accuracy: 0.5")
elif cycle == 2:
    trial.report(1, val_accuracy=0.9)
    (marks / "reported_2").touch()
    wait("started_3")  # still training when cycle 3 is proposed
    print("val_accuracy: 0.9")
else:
    print("val_accuracy: 0.4")
"""
    root = exp(trial, target=1.5, space={"x": {"type": "float", "low": 0.05, "high": 0.95, "default": 0.5}},
               safeguards={"max_cycles": 3, "no_improvement_stop_cycles": 20}, execution={"max_concurrency": 2})
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    recs = {r["cycle"]: r for r in recorded(root)}
    third, x2 = recs[3]["proposal"], recs[2]["proposal"]["params"]["x"]
    assert third["meta"] == {"source": "leader", "steered": True, "from_cycle": 2}, third
    assert "following cycle 2 in flight (val_accuracy 0.9 at step 1, past the best 0.5 of cycle 1)" in third["rationale"]
    assert any(abs(third["params"]["x"] - min(0.95, max(0.05, x2 * f))) < 1e-12 for f in (0.8, 1.25)), (x2, third)


def test_status_shows_how_far_each_trial_in_flight_has_got(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gate = tmp_path / "release"
    trial = f"""
import os, pathlib, time
from ralph_ml import trial
cycle = int(os.environ["RALPH_CYCLE"])
trial.report(3, val_accuracy=0.25 * cycle)
while not pathlib.Path({str(gate)!r}).exists():
    time.sleep(0.05)
print("val_accuracy:", 0.25 * cycle)
"""
    root = exp(trial, target=1.5, safeguards={"max_cycles": 2, "no_improvement_stop_cycles": 20},
               execution={"max_concurrency": 2})
    proc = ralph_bg(root, "start")
    try:
        deadline, shown = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            shown = ralph(root, "status").stdout
            if "cycle 2: val_accuracy 0.5 at step 3" in shown:
                break
            time.sleep(0.2)
        assert "cycle 1: val_accuracy 0.25 at step 3" in shown and "cycle 2: val_accuracy 0.5 at step 3" in shown, shown
        machine = json.loads(ralph(root, "status", "--json").stdout)["in_flight_progress"]
        assert machine == {"1": {"step": 3, "value": 0.25}, "2": {"step": 3, "value": 0.5}}, machine
    finally:
        gate.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, out + err
    assert json.loads(ralph(root, "status", "--json").stdout)["in_flight_progress"] == {}
