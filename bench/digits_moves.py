"""Which move from an over-fit best pays on the digits template: the chance of meeting the target.

    python bench/digits_moves.py [--draws 8]

From three best configurations the built-in agent reached in benchmark runs (a width-64,
one-layer MLP that fits its training set, val_accuracy 0.975-0.978, target 0.98), each
variant moves the parameters it names the way the agent follows a diagnosis (``toward``: a
random point on the recommended side, log-uniform for log parameters), trains the template's
train.py in this process and scores it with its prepare.py. Prints, per variant, how many
draws met 0.98 and the median val_accuracy. About 1 CPU-second per draw.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

from ralph_ml.agents.builtin import toward
from ralph_ml.config import load_config

# Cycle 2 of digits seeds 5, 9 and 11 in bench/results/search_efficiency_2026-12-01-c-before.jsonl
# (the directed cycle 2 is the same in ..._2026-12-01-c.jsonl).
BESTS = [
    dict(lr=0.00393, width=64, depth=1, dropout=0.0, weight_decay=1e-5, epochs=16, batch_size=128),
    dict(lr=0.0259, width=64, depth=1, dropout=0.0, weight_decay=1e-5, epochs=55, batch_size=128),
    dict(lr=0.00177, width=64, depth=1, dropout=0.0, weight_decay=1e-5, epochs=40, batch_size=128),
]
VARIANTS = {
    "more regularization (dropout, weight_decay)": {"dropout": "increase", "weight_decay": "increase"},
    "wider": {"width": "increase"},
    "wider, more regularization": {"width": "increase", "dropout": "increase", "weight_decay": "increase"},
    "wider, fewer epochs": {"width": "increase", "epochs": "decrease"},
    "wider, deeper": {"width": "increase", "depth": "increase"},
}
TARGET = 0.98


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=8, help="draws per best configuration and variant")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()  # removed at exit
    exp = Path(tmp.name) / "digits"
    subprocess.run([sys.executable, "-m", "ralph_ml", "init", str(exp), "--template", "digits"], check=True, capture_output=True)
    os.chdir(exp)
    sys.path.insert(0, str(exp))
    import numpy as np
    import prepare  # the template's frozen data and scoring

    space = load_config(exp / "ralph.toml").search_space
    _, _, _, y_val = prepare._split()

    def score(params: dict[str, object], seed: int) -> float:
        with tempfile.TemporaryDirectory() as d:
            Path(d, "params.json").write_text(json.dumps(params))
            os.environ.update(RALPH_PARAMS=f"{d}/params.json", RALPH_SEED=str(seed), RALPH_CHECKPOINT_DIR=d,
                              RALPH_METRICS_PATH=f"{d}/metrics.json", RALPH_PROGRESS_PATH=f"{d}/progress.jsonl")
            with contextlib.redirect_stdout(io.StringIO()):
                runpy.run_path("train.py", run_name="__main__")
            return float((np.load(Path(d, prepare.PREDICTIONS_FILE)).argmax(1) == y_val).mean())

    print(f"| move from the over-fit best | met {TARGET} | median val_accuracy |\n|---|---:|---:|")
    for name, moves in VARIANTS.items():
        vals = []
        for b_i, best in enumerate(BESTS):
            for k in range(args.draws):
                rng = random.Random(1000 * b_i + k)
                params = dict(best)
                for p, direction in moves.items():
                    v = toward(space[p], best[p], direction, rng)
                    if v is not None:
                        params[p] = v
                vals.append(score(params, seed=k))
        hits = sum(v >= TARGET for v in vals)
        print(f"| {name} | {hits}/{len(vals)} | {sorted(vals)[len(vals) // 2]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
