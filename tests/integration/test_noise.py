"""Noise-aware keeps: seed luck is recorded as noise, a real gain survives the re-runs."""

from __future__ import annotations

import json

from conftest import ralph, recorded

# val_accuracy = 0.5 + x + seed noise; x = 0.01 is "lucky" on seed 0 only.
TRIAL = """
import json, os
p = json.load(open(os.environ["RALPH_PARAMS"]))
seed = int(os.environ["RALPH_SEED"])
noise = {0: 0.0, 1: -0.05, 2: 0.05}[seed]
luck = 0.2 if (p["x"] == 0.01 and seed == 0) else noise
print(f"val_accuracy: {0.5 + p['x'] + luck:.6f}")
"""

NOISE = {"noise": {"baseline_repeats": 2, "confirm_repeats": 2, "z": 2.0}}


def test_a_lucky_seed_is_recorded_as_noise(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(TRIAL, target=1.5, space={"x": {"type": "categorical", "choices": [0.0, 0.01], "default": 0.0}},
               safeguards={"max_cycles": 2, "no_improvement_stop_cycles": 5}, extra=NOISE)
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    base, lucky = recorded(root)
    assert base["result"]["repeats"] == [0.5, 0.45, 0.55] and abs(base["metric"] - 0.5) < 1e-9
    assert base["kept"] and base["verdict"] == "kept"
    assert lucky["result"]["repeats"][0] == 0.71  # looked like +0.21 on one seed ...
    assert lucky["verdict"] == "noise" and not lucky["kept"]  # ... and vanished on re-run
    for seed in (1, 2):
        assert (root / "runs" / "cycle_0002" / "repeats" / f"seed_{seed}" / "logs" / "stdout.log").exists()
    st = json.loads(ralph(root, "status", "--json", check=True).stdout)
    assert st["best"]["cycle"] == 1


def test_a_real_gain_survives_confirmation(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(TRIAL, target=1.5, space={"x": {"type": "categorical", "choices": [0.0, 0.3], "default": 0.0}},
               safeguards={"max_cycles": 2, "no_improvement_stop_cycles": 5}, extra=NOISE)
    assert ralph(root, "start").returncode == 2
    base, better = recorded(root)
    assert better["kept"] and better["verdict"] == "kept"
    assert len(better["result"]["repeats"]) == 3 and abs(better["metric"] - 0.8) < 1e-9
