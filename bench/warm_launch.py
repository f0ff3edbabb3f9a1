"""Latency of one trivial trial, cold (a fresh interpreter through /bin/sh) and warm (forked
from the ``execution.preload`` server), through the local executor's submit/wait.

    python bench/warm_launch.py [--trials 40] [--preload decimal]

Prints the median and 90th-percentile milliseconds from ``submit`` to the result for a
``python t.py`` trial that prints its metric: what each cycle pays to start and collect a
trial, the import of the preloaded modules aside (``--preload torch`` adds it to the cold
column only).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ralph_ml.executors import LocalExecutor
from ralph_ml.records import TrialSpec, TrialStatus


def spec_for(root: Path, i: int) -> TrialSpec:
    cdir = root / f"cycle_{i:05d}"
    code = cdir / "code"
    code.mkdir(parents=True)
    (cdir / "logs").mkdir()
    (code / "t.py").write_text("print('val_accuracy: 0.5')\n")
    return TrialSpec(
        run_id="bench", cycle=i, cycle_dir=str(cdir), code_dir=str(code),
        train_cmd=f"{shlex.quote(sys.executable)} t.py", eval_cmd=None, params={}, seed=0, timeout_s=600,
        env={"RALPH_METRICS_PATH": str(cdir / "metrics.json"), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )


def measure(ex: LocalExecutor, n: int, root: Path) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        res = ex.submit(spec_for(root, i)).wait(120)
        if res is None or res.status is not TrialStatus.OK:
            raise SystemExit(f"trial {i} did not end ok: {res and res.message}")
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--preload", nargs="+", default=["decimal"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ralph-warm-bench-") as tmp:
        root = Path(tmp)
        cold = LocalExecutor(kill_grace_s=1.0)
        warm = LocalExecutor(kill_grace_s=1.0, preload=args.preload)
        try:
            assert warm.warm is not None
            if not warm.warm.wait_ready(120):
                raise SystemExit(f"the warm-start server did not start: {warm.warm.error}")
            measure(warm, 3, root / "warmup")
            rows = {"cold": measure(cold, args.trials, root / "cold"), "warm": measure(warm, args.trials, root / "warm")}
        finally:
            warm.close()
            cold.close()
    print(f"{args.trials} trials of `python t.py` (print a metric), preload = {args.preload}; ms from submit to result")
    print(f"{'':6} {'median':>8} {'p90':>8}")
    for name, ms in rows.items():
        p90 = statistics.quantiles(ms, n=10)[-1]
        print(f"{name:6} {statistics.median(ms):8.1f} {p90:8.1f}")


if __name__ == "__main__":
    main()
