"""CPU-seconds the end-of-run report costs, per chart, each measured in a fresh interpreter.

    .venv/bin/python bench/report_cost.py RUN_FOLDER [--repeats 5]

RUN_FOLDER is an experiment folder with a finished run (its ralph.toml, runs/ and state/). The
report is rebuilt into a temporary folder, so the run's own reports/ are left as they are.
Fresh interpreters, because matplotlib caches text layout and mathtext within a process: a
second report in the same process costs less than the one a run writes. Prints the median
over the repeats of each part: the matplotlib import, each chart (drawing and PNG encoding),
and the whole build_report call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
t = time.process_time()
import matplotlib.figure, matplotlib.backends.backend_agg  # what charts.py imports first
out = {"matplotlib import": time.process_time() - t}
from ralph_ml import charts, report
from ralph_ml.config import load_config
for name in ("progress", "learning_curves", "param_effects", "time_per_cycle"):
    f = getattr(charts, name)
    def timed(*a, _f=f, _n=name, **k):
        t0 = time.process_time()
        try:
            return _f(*a, **k)
        finally:
            out[_n] = time.process_time() - t0
    setattr(charts, name, timed)
cfg = load_config(Path(sys.argv[1]) / "ralph.toml")
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.process_time()
    report.build_report(cfg, Path(tmp) / "final_report.md")
    out["build_report (all)"] = time.process_time() - t0
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_folder", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not (args.run_folder / "ralph.toml").is_file():
        sys.exit(f"{args.run_folder}: no ralph.toml here; pass an experiment folder that holds a finished run")
    rows: list[dict[str, float]] = []
    for _ in range(args.repeats):
        done = subprocess.run([sys.executable, "-c", _CHILD, str(args.run_folder)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the report failed (exit {done.returncode}):\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"CPU-s, median of {args.repeats} fresh interpreters ({args.run_folder}):")
    for key in rows[0]:
        vals = [r[key] for r in rows if key in r]
        print(f"  {key:<22} {statistics.median(vals):6.3f}   (min {min(vals):.3f}, max {max(vals):.3f})")


if __name__ == "__main__":
    main()
