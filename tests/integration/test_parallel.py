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
