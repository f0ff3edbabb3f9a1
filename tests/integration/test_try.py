"""`ralph-ml try`: one trial outside any run, and what the loop would see of it."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_experiment, ralph, recorded

PRINTS = """
import json, math, os
x = json.load(open(os.environ["RALPH_PARAMS"]))["x"]
for epoch in range(5):
    acc = (1 - (x - 0.7) ** 2) * (1 - math.exp(-(epoch + 1) / 2))
    print(f"epoch {epoch} val_accuracy={acc:.4f}", flush=True)
print(f"val_accuracy: {acc:.4f}")
"""

REPORTS = """
from ralph_ml import trial
p = trial.params({"x": 0.1})
for step in range(3):
    trial.report(step, train_loss=1.0 / (step + 1))
trial.log_metrics(val_accuracy=0.5 + p["x"] / 10)
"""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_try_runs_one_trial_streams_it_and_says_what_the_loop_would_see(tmp_path: Path) -> None:
    root = make_experiment(tmp_path / "exp", PRINTS, target=0.9, execution={"stdout_progress": "epoch"})
    proc = ralph(root, "try", "--params", '{"x": 0.7}')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    [folder] = (root / "runs" / ".try").iterdir()
    assert f"trying one trial in {folder} (local executor, time limit 60 s)" in _one_line(out)
    assert "params: x=0.7" in out
    assert "│ epoch 0 val_accuracy=0.3935" in out and "│ val_accuracy: 0.9179" in out  # streamed as it ran
    assert "metrics (from stdout): val_accuracy = 0.9179" in out
    assert "target val_accuracy >= 0.9: met (val_accuracy = 0.9179)" in out
    assert "learning curve: 5 rows in progress.jsonl, steps 0-4: val_accuracy" in out
    assert "val_accuracy (what a pruner reads) at 5 steps, last 0.9179 at step 4" in _one_line(out)
    assert json.loads((folder / "params.json").read_text()) == {"x": 0.7}
    assert (folder / "code" / "train.py").exists() and len((folder / "progress.jsonl").read_text().splitlines()) == 5
    # Nothing of a run was written, and a run started afterwards is not confused by the try.
    assert not (root / "state" / "journal.jsonl").exists()
    assert ralph(root, "start").returncode in (0, 2)
    assert [r["cycle"] for r in recorded(root)][0] == 1 and (root / "runs" / "cycle_0001").is_dir()
    assert [p.name for p in (root / "runs" / ".try").iterdir()] == [folder.name]


def test_try_says_when_a_trial_gives_a_pruner_nothing_and_when_it_has_no_score(tmp_path: Path) -> None:
    root = make_experiment(tmp_path / "exp", PRINTS, extra={"pruning": {"pruner": "median"}})
    out = ralph(root, "try")
    assert out.returncode == 0, out.stdout + out.stderr
    text = _one_line(out.stdout)
    assert "params: x=0.1" in text  # the search space's defaults
    assert "learning curve: none (no progress.jsonl rows). a pruner would never stop it" in text
    assert 'its stdout has one: execution.stdout_progress = "epoch" would read 5 rows of it' in text

    reports = make_experiment(tmp_path / "reports", REPORTS, extra={"pruning": {"pruner": "median"}})
    text = _one_line(ralph(reports, "try").stdout)
    assert "metrics (from metrics.json): val_accuracy = 0.5100" in text
    assert "learning curve: 3 rows in progress.jsonl, steps 0-2: train_loss" in text
    assert "no row reports val_accuracy (pruning.metric, else the target metric): the pruner would have nothing" in text

    crash = make_experiment(tmp_path / "crash", "import sys\nprint('starting')\nsys.exit('the data folder is empty')\n")
    proc = ralph(crash, "try")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    text = _one_line(proc.stdout)
    assert "trial failed (crash) in" in text and "exited with code 1" in text
    assert "┆ the data folder is empty" in text
    assert "no score; the loop would record this trial as failed (crash), never as a score of 0" in text
    assert "or set execution.stdout_progress if the script prints it" in text  # it printed no curve


def test_try_applies_a_patch_through_the_guards(tmp_path: Path) -> None:
    root = make_experiment(tmp_path / "exp", REPORTS)
    good = root / "good.diff"
    good.write_text("--- a/train.py\n+++ b/train.py\n@@ -6 +6 @@\n-trial.log_metrics(val_accuracy=0.5 + p[\"x\"] / 10)\n"
                    "+trial.log_metrics(val_accuracy=0.6 + p[\"x\"] / 10)\n")
    proc = ralph(root, "try", "--patch", str(good))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "val_accuracy = 0.6100" in proc.stdout
    drops = root / "drops.diff"
    drops.write_text("--- a/train.py\n+++ b/train.py\n@@ -4,3 +4,3 @@\n for step in range(3):\n"
                     "-    trial.report(step, train_loss=1.0 / (step + 1))\n+    pass\n"
                     " trial.log_metrics(val_accuracy=0.5 + p[\"x\"] / 10)\n")
    proc = ralph(root, "try", "--patch", str(drops))
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "no longer calls 'ralph_ml.trial.report'" in _one_line(proc.stderr) and "nothing ran" in _one_line(proc.stderr)
    bad = ralph(root, "try", "--params", '{"x": 2}')
    assert bad.returncode == 4 and "x = 2 is outside its bounds [0, 1]" in bad.stderr


def test_try_beside_a_run_in_progress_says_it_shares_the_machine(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    slow = "import os, time\nif os.environ['RALPH_CYCLE'] != '0':\n    time.sleep(30)\nprint('val_accuracy: 0.5')\n"
    root = make_experiment(tmp_path / "exp", slow)
    run = subprocess.Popen([sys.executable, "-m", "ralph_ml", "start", "--plain"], cwd=root,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        state = root / "state" / "ralph_state.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and '"phase": "execute"' not in (state.read_text() if state.exists() else ""):
            time.sleep(0.1)
        proc = ralph(root, "try")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "warning: a run of this experiment is in progress: this trial shares its machine" in _one_line(proc.stdout)
        assert json.loads(state.read_text())["cycle"] == 1  # the run is untouched
    finally:
        run.terminate()
        run.wait(30)
    assert "in progress" not in ralph(root, "try").stdout  # once it has stopped


def test_try_with_seeds_measures_the_run_to_run_noise(tmp_path: Path) -> None:
    by_seed = "import os\nprint(f\"val_accuracy: {0.5 + int(os.environ['RALPH_SEED']) / 100:.4f}\")\n"
    root = make_experiment(tmp_path / "exp", by_seed, safeguards={"min_improvement_delta": 0.001})
    proc = ralph(root, "try", "--seeds", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = _one_line(proc.stdout)
    assert "── seed 0 (1 of 3)" in text and "── seed 2 (3 of 3)" in text
    assert sorted(p.name.split("-")[-1] for p in (root / "runs" / ".try").iterdir() if p.is_dir()) == ["seed0", "seed1", "seed2"]
    assert "seeds 0, 1, 2: val_accuracy 0.5000, 0.5100, 0.5200 → mean 0.5100, run-to-run noise σ 0.01" in text
    assert ("between two single runs a gain under 0.02828 (noise.z = 2 x σ x √2) is within the noise, and "
            "safeguards.min_improvement_delta = 0.001 would keep it") in text
    wide = make_experiment(tmp_path / "wide", by_seed, safeguards={"min_improvement_delta": 0.05})
    text = _one_line(ralph(wide, "try", "--seeds", "2").stdout)
    assert "safeguards.min_improvement_delta = 0.05 is over the noise bar 0.02 (noise.z = 2 x σ x √2)" in text
