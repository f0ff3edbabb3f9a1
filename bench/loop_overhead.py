"""Loop overhead per cycle with a no-op trial, against a bare subprocess and a thin Optuna loop.

    python bench/loop_overhead.py [--cycles 60]

Prints the median milliseconds per cycle of: the bare subprocess (`echo val_accuracy=...`),
a thin Optuna ask/tell loop around it, and the full ralph-ml loop (builtin agent, journal
fsyncs, snapshots, analysis, decision files); and the loop's overhead beyond the bare
subprocess, with a per-phase breakdown. The target is < 5 ms of overhead per cycle.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from ralph_ml.config import load_config
from ralph_ml.loop import Loop

TRIAL = "echo val_accuracy=0.5"

CONFIG = """
[project]
name = "overhead"
target_metric = {{ name = "val_accuracy", value = 2.0 }}
[safeguards]
max_cycles = {cycles}
no_improvement_stop_cycles = {cycles}
[execution]
train_cmd = "{trial}"
env_capture = false
[files]
frozen = ["prepare.py"]
mutable = ["train.py"]
[versioning]
git = false
[search_space.x]
type = "float"
low = 0.0
high = 1.0
"""


def bare(n: int, logdir: Path) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with open(logdir / "out.log", "ab") as o, open(logdir / "err.log", "ab") as e:
            subprocess.run(TRIAL, shell=True, stdout=o, stderr=e, start_new_session=True, check=True)
        out.append(time.perf_counter() - t0)
    return out


def thin_optuna(n: int, logdir: Path) -> list[float]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
        with open(logdir / "out.log", "wb") as o:
            subprocess.run(TRIAL, shell=True, stdout=o, start_new_session=True, check=True)
        value = float((logdir / "out.log").read_text().split("=")[1])
        study.tell(trial, value)
        out.append(time.perf_counter() - t0)
    return out


def ralph_loop(n: int, root: Path) -> tuple[list[float], dict[str, float]]:
    (root / "prepare.py").write_text("# frozen\n")
    (root / "train.py").write_text("# no-op\n")
    (root / "ralph.toml").write_text(CONFIG.format(cycles=n, trial=TRIAL))
    marks: list[float] = []
    phases: dict[str, list[float]] = {}
    last: list[tuple[str, float]] = []

    def on_event(kind: str, data: dict) -> None:
        now = time.perf_counter()
        if kind == "cycle_started":
            marks.append(now)
        if kind == "phase":
            if last:
                phases.setdefault(last[0][0], []).append(now - last[0][1])
            last[:] = [(data["phase"], now)]

    loop = Loop.start(load_config(root / "ralph.toml"), on_event)
    loop.run()
    per_cycle = [b - a for a, b in zip(marks, marks[1:])]
    return per_cycle, {k: statistics.median(v) for k, v in phases.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=60)
    args = ap.parse_args()
    n = max(50, args.cycles)
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        bare(10, tmpd)  # warm up the page cache and the shell
        b = statistics.median(bare(n, tmpd))
        o = statistics.median(thin_optuna(n, tmpd))
        (tmpd / "exp").mkdir()
        cycles, phases = ralph_loop(n, tmpd / "exp")
        r = statistics.median(cycles[5:])  # skip the first cycles (imports, JIT of caches)
    ms = lambda s: f"{s * 1000:8.2f} ms"  # noqa: E731
    print(f"cycles measured:            {n}  (python {sys.version.split()[0]})")
    print(f"bare subprocess:            {ms(b)}")
    print(f"thin optuna ask/tell loop:  {ms(o)}   overhead {ms(o - b)}")
    print(f"ralph-ml loop:              {ms(r)}   overhead {ms(r - b)}   (target < 5 ms)")
    print("ralph-ml per-phase medians (the execute phase includes the subprocess):")
    for k, v in phases.items():
        print(f"  {k:12s} {ms(v)}")


if __name__ == "__main__":
    main()
