"""The real CLI on tiny trial scripts: ok, crash, hang with grandchildren, NaN, missing metric,
slow improver, frozen-file tampering, config typos, git versions."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from conftest import QUADRATIC, journal_events, ralph, recorded


def test_ok_run_reaches_target_and_writes_the_layout(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(QUADRATIC, target=0.97, safeguards={"max_cycles": 20, "no_improvement_stop_cycles": 20})
    proc = ralph(root, "start")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TARGET MET" in proc.stdout
    recs = recorded(root)
    assert recs[0]["proposal"]["params"] == {"x": 0.1}  # cycle 1 runs the baseline (defaults)
    assert recs[-1]["metric"] >= 0.97 and recs[-1]["kept"]
    c1 = root / "runs" / "cycle_0001"
    for name in ("params.json", "config.json", "metrics.json", "analysis.md", "recommendations.json", "decision.json", "result.json", "logs/stdout.log", "logs/stderr.log", "code/train.py", "code/prepare.py"):
        assert (c1 / name).exists(), name
    m = json.loads((c1 / "metrics.json").read_text())
    assert m["cycle"] == 1 and m["target"]["name"] == "val_accuracy"
    assert abs(m["result"]["val_accuracy"] - (1 - 0.36)) < 1e-6
    assert "train_seconds" in m["runtime"]
    d = json.loads((root / "runs" / f"cycle_{len(recs):04d}" / "decision.json").read_text())
    assert d["reason"] == "target_met" and d["evidence"]["metric"] >= 0.97
    assert (root / "reports" / "final_report.md").exists()
    board = json.loads((root / "reports" / "leaderboard.json").read_text())["leaderboard"]
    assert board[0]["metric"] == max(r["metric"] for r in recs if r["metric"] is not None)
    st = json.loads(ralph(root, "status", "--json", check=True).stdout)
    assert st["status"] == "stopped" and st["best"]["metric"] >= 0.97 and st["stop"]["exit_code"] == 0
    table = ralph(root, "status", check=True).stdout
    assert "best" in table and "cycles" in table


def test_crash_is_recorded_failed_and_circuit_breaker_stops(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp("import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)\n", safeguards={"max_consecutive_failures": 3})
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    recs = recorded(root)
    assert len(recs) == 3
    for r in recs:
        assert r["result"]["status"] == "failed" and r["result"]["failure"] == "crash"
        assert r["result"]["exit_code"] == 3 and r["metric"] is None and r["verdict"] == "failed"
        assert "boom" in r["result"]["stderr_tail"]
    d = json.loads((root / "runs" / "cycle_0003" / "decision.json").read_text())
    assert d["reason"] == "circuit_breaker" and d["evidence"]["cycles"] == [1, 2, 3]
    assert "stderr.log" in d["message"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


HANG = """
import os, subprocess, sys, time
pids = os.environ["PIDS_FILE"]
child = subprocess.Popen(["sleep", "1000"])
escaper = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(1000)"])
with open(pids, "a") as fh:
    fh.write(f"{os.getpid()} {child.pid} {escaper.pid}\\n")
time.sleep(1000)
"""


def test_hang_is_killed_with_grandchildren_at_the_time_limit(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pids = tmp_path / "pids.txt"
    root = exp(
        HANG,
        safeguards={"max_cycles": 1, "time_limit_per_cycle_minutes": 0.03},
        execution={"env": {"PIDS_FILE": str(pids)}},
    )
    t0 = time.monotonic()
    proc = ralph(root, "start")
    took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr  # max_cycles after the timeout cycle
    rec = recorded(root)[0]
    assert rec["result"]["status"] == "timeout" and rec["result"]["failure"] == "timeout"
    assert took < 30
    all_pids = [int(p) for p in pids.read_text().split()]
    assert len(all_pids) == 3
    time.sleep(0.2)
    assert [p for p in all_pids if _alive(p)] == []


def test_nan_metric_is_a_failure_not_a_score(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp("print('val_accuracy: nan')\n", safeguards={"max_cycles": 1})
    assert ralph(root, "start").returncode == 2
    rec = recorded(root)[0]
    assert rec["result"]["status"] == "failed" and rec["result"]["failure"] == "nan"
    assert rec["metric"] is None and not rec["kept"]
    assert "diverged" in (root / "runs" / "cycle_0001" / "analysis.md").read_text()


def test_missing_metric_is_a_failure(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp("print('loss: 0.3')\n", safeguards={"max_cycles": 1})
    assert ralph(root, "start").returncode == 2
    rec = recorded(root)[0]
    assert rec["result"]["failure"] == "missing_metric" and rec["metric"] is None
    assert "val_accuracy" in rec["result"]["message"] and "loss" in rec["result"]["message"]


SLOW = """
import os
c = int(os.environ["RALPH_CYCLE"])
print(f"val_accuracy={0.5 + 0.0001 * c}")
"""


def test_slow_improver_stops_on_plateau_with_exit_3(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(SLOW, safeguards={"max_cycles": 10, "no_improvement_stop_cycles": 3, "min_improvement_delta": 0.01})
    proc = ralph(root, "start")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    recs = recorded(root)
    assert len(recs) == 4  # cycle 1 kept, then 3 gains below min_delta
    assert [r["verdict"] for r in recs] == ["kept", "discarded", "discarded", "discarded"]
    d = json.loads((root / "runs" / "cycle_0004" / "decision.json").read_text())
    assert d["reason"] == "plateau" and d["evidence"]["streak"] == 3


def test_metrics_json_from_the_trial_helper(exp) -> None:  # type: ignore[no-untyped-def]
    train = """
from ralph_ml import trial
p = trial.params({"x": 0.0})
for step in range(3):
    trial.report(step, train_loss=1.0 / (step + 1))
trial.log_metrics(val_accuracy=0.5 + p["x"] / 10, train_accuracy=0.9)
"""
    root = exp(train, safeguards={"max_cycles": 2})
    assert ralph(root, "start").returncode == 2
    rec = recorded(root)[0]
    assert abs(rec["metric"] - 0.51) < 1e-9
    assert rec["result"]["metrics"]["train_accuracy"] == 0.9
    assert len((root / "runs" / "cycle_0001" / "progress.jsonl").read_text().splitlines()) == 3


TAMPER = """
import os
if os.environ["RALPH_CYCLE"] == "2":
    with open("prepare.py", "a") as fh:
        fh.write("THRESHOLD = 0.0  # make evaluation easier\\n")
"""

# The frozen evaluation: scores 0.99 only when its threshold was lowered (i.e. tampered with).
EVAL = """python -c "import prepare; print('val_accuracy:', 0.99 if prepare.THRESHOLD == 0.0 else 0.9)" """


def test_trial_that_tampers_with_prepare_py_is_invalid_never_kept(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(TAMPER, target=0.95, safeguards={"max_cycles": 3}, execution={"eval_cmd": EVAL})
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr  # the tampered cycle must NOT count as target met
    recs = recorded(root)
    assert recs[0]["metric"] == 0.9 and recs[2]["metric"] == 0.9
    assert recs[1]["result"]["status"] == "invalid" and recs[1]["result"]["failure"] == "frozen_modified"
    assert not recs[1]["kept"] and recs[1]["metric"] is None
    assert "prepare.py" in recs[1]["result"]["message"]


def test_prepare_py_changed_in_workspace_mid_run_stops_with_exit_4(exp) -> None:  # type: ignore[no-untyped-def]
    train = """
import os, pathlib
ws = pathlib.Path(os.environ["WS"])
if os.environ["RALPH_CYCLE"] == "2":
    (ws / "prepare.py").write_text("THRESHOLD = 0.0\\n")
print("val_accuracy: 0.5")
"""
    root = exp(train, safeguards={"max_cycles": 5})
    cfg = (root / "ralph.toml").read_text().replace('kill_grace_s = 1.0', f'kill_grace_s = 1.0\nenv = {{ WS = "{root}" }}')
    (root / "ralph.toml").write_text(cfg)
    proc = ralph(root, "start")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    recs = recorded(root)
    assert len(recs) == 3
    assert recs[2]["result"]["status"] == "invalid" and recs[2]["result"]["failure"] == "frozen_modified"
    d = json.loads((root / "runs" / "cycle_0003" / "decision.json").read_text())
    assert d["reason"] == "frozen_broken" and "prepare.py" in d["evidence"]["files"]


def test_config_typo_exits_4_with_suggestion(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(QUADRATIC)
    cfg = root / "ralph.toml"
    cfg.write_text(cfg.read_text().replace("max_cycles", "max_cylces"))
    for cmd in (["start"], ["validate"]):
        proc = ralph(root, *cmd)
        assert proc.returncode == 4
        assert "safeguards.max_cylces" in proc.stderr and "Did you mean 'safeguards.max_cycles'" in proc.stderr
    assert not (root / "runs").exists()


def test_validate_reports_missing_frozen_file_and_unresolvable_command(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(QUADRATIC, execution={"train_cmd": "nosuchprogram-xyz train.py"})
    (root / "prepare.py").unlink()
    proc = ralph(root, "validate")
    assert proc.returncode == 4
    assert "prepare.py" in proc.stderr and "nosuchprogram-xyz" in proc.stderr
    assert not (root / "runs").exists() and not (root / "state").exists()


def test_start_refuses_to_overwrite_an_existing_run(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(QUADRATIC, safeguards={"max_cycles": 1})
    assert ralph(root, "start").returncode == 2
    proc = ralph(root, "start")
    assert proc.returncode == 4 and "ralph-ml resume" in proc.stderr
    assert len(recorded(root)) == 1


def test_resume_after_raising_max_cycles_continues_the_run(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(QUADRATIC, target=1.5, safeguards={"max_cycles": 2})
    assert ralph(root, "start").returncode == 2
    cfg = root / "ralph.toml"
    cfg.write_text(cfg.read_text().replace("max_cycles = 2", "max_cycles = 4"))
    assert ralph(root, "resume").returncode == 2
    recs = recorded(root)
    assert [r["cycle"] for r in recs] == [1, 2, 3, 4]
    keys = [json.dumps(r["proposal"]["params"], sort_keys=True) for r in recs]
    assert len(set(keys)) == 4


def test_git_versions_each_cycle_and_tags_the_best(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(QUADRATIC, target=1.5, safeguards={"max_cycles": 3})
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / ".gitignore").write_text("runs/\nreports/\nstate/\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=root, check=True, env=env)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout
    assert ralph(root, "start").returncode == 2
    run_id = journal_events(root)[0]["run_id"]
    log = subprocess.run(["git", "log", "--format=%s", f"ralph/{run_id}"], cwd=root, capture_output=True, text=True, check=True).stdout
    assert log.count("ralph-ml cycle") == 3
    recs = recorded(root)
    best = [r for r in recs if r["kept"]][-1]
    tag = subprocess.run(["git", "rev-parse", f"ralph/{run_id}/best"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    assert tag == best["commit"]
    # the user's checkout is untouched
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout == head
    assert subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout == ""


def test_events_jsonl_records_every_phase_with_ids_and_timestamps(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(QUADRATIC, target=1.5, safeguards={"max_cycles": 2})
    assert ralph(root, "start").returncode == 2
    events = [json.loads(line) for line in (root / "state" / "events.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_stopped"
    for kind in ("cycle_started", "phase", "trial_started", "trial_ended", "cycle_recorded"):
        assert kinds.count(kind) >= 2, kind
    run_id = journal_events(root)[0]["run_id"]
    assert all(e["run_id"] == run_id for e in events)
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)
    phases = [e["phase"] for e in events if e["kind"] == "phase" and e.get("cycle") == 1]
    assert phases[:4] == ["propose", "materialize", "execute", "analyze"]
    rec = [e for e in events if e["kind"] == "cycle_recorded"]
    assert [e["cycle"] for e in rec] == [1, 2] and rec[0]["record"]["cycle"] == 1
