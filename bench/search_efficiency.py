"""Compute to reach the target: ralph-ml's built-in agent against plain random search and TPE.

    python bench/search_efficiency.py [--templates digits mnist1d] [--seeds 0 1 2] [--max-cycles 20] [--runs runs.jsonl]
    python bench/search_efficiency.py --from-runs runs.jsonl [more.jsonl]   # the tables again, from recorded runs
    python bench/search_efficiency.py --throughput      # K=2 vs K=1 trials/s on 1-second trials
    python bench/search_efficiency.py --budget-s 60 [--templates mnist1d] [--seeds ...]  # best metric within 60 s

For each template, strategy and seed it runs the real CLI (`ralph-ml start`) in a fresh copy
of the template and measures the CPU-seconds of the whole process tree (the loop and every
trial, from os.wait4) until the run stops: at the target (exit 0) or after --max-cycles.
The plateau rule is disabled so every strategy gets the same budget. --runs appends every
run (its CPU-seconds and each cycle's parameters, source and metric) to a JSON-lines file;
--from-runs prints the tables again from such a file. "CPU-s per seed" marks with * a run
that stopped at --max-cycles without reaching the target.

--budget-s S measures the other side: the best metric each strategy finds when every run
gets the same S seconds (safeguards.total_time_limit_minutes, which also cuts the trial in
flight at the deadline) and a target it cannot meet (accuracy's perfect score, 1.0), so
no run stops early. With one trial at a time on a quiet machine the seconds are CPU-seconds
too (the CPU-s column says so). It prints, seed by seed, how often ralph's best beats each
plain search's.
Strategies (--strategies picks some):

  ralph        ralph-ml as shipped: built-in agent (baseline, structure screen, following
               the analysis's diagnosis, TPE), K=1, warm starts (the template's execution.preload),
               each trial stopped at the epoch its validation curve meets the target
  ralph-prune  the same with the median pruner on the trials' validation curves (the
               templates report val_accuracy each epoch; the pruner reads the target metric)
  ralph-k2     the same as ralph with two trials at once
  ralph-cold   the same as ralph with a fresh interpreter per command (execution.preload = [])
  ralph-to-end the same as ralph with every trial trained to its end (pruning.stop_at_target = false)
  tpe          plain Optuna TPE (agent plugin bench_agents:TPE), a fresh interpreter per
               command, every trial trained to its end (pruning.stop_at_target = false),
               as the peers run trials
  random       plain Optuna random search (agent plugin bench_agents:Random), likewise
  tpe-warm     plain TPE on ralph-ml's warm executor: the search strategy alone is compared
  random-warm  plain random search on ralph-ml's warm executor
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TEMPLATES = BENCH.parent / "src" / "ralph_ml" / "templates"

BUDGET_MAX_CYCLES = 1000  # --budget-s: the time budget binds, never the cycle count
COLD = {"preload": "[]"}  # replaces the template's execution.preload line
PLAIN = {"pruning": "stop_at_target = false"}  # plain searches train every trial to its end
STRATEGIES: dict[str, dict[str, str]] = {
    "ralph": {},
    "ralph-prune": {"pruning": 'pruner = "median"\nn_startup_trials = 3\nn_warmup_steps = 4\ngrace_s = 2'},
    "ralph-k2": {"execution": "max_concurrency = 2\ncpus_per_trial = 1"},
    "ralph-cold": COLD,
    "ralph-to-end": PLAIN,
    "tpe": {"agents": 'code_model = "bench_agents:TPE"', **COLD, **PLAIN},
    "random": {"agents": 'code_model = "bench_agents:Random"', **COLD, **PLAIN},
    "tpe-warm": {"agents": 'code_model = "bench_agents:TPE"', **PLAIN},
    "random-warm": {"agents": 'code_model = "bench_agents:Random"', **PLAIN},
}


def _set(toml: str, section: str, body: str) -> str:
    """Add keys to a [section] of the template's ralph.toml (appending the section if absent)."""
    header = f"[{section}]"
    if re.search(rf"(?m)^\[{re.escape(section)}\]\s*$", toml):
        return re.sub(rf"(?m)^\[{re.escape(section)}\]\s*$", header + "\n" + body, toml, count=1)
    return toml + f"\n{header}\n{body}\n"


def run_one(template: str, strategy: str, seed: int, max_cycles: int, budget_s: float | None = None) -> dict[str, object]:
    """One run of the real CLI. ``budget_s``: a fixed budget instead of the target (see --budget-s)."""
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "exp"
        subprocess.run([sys.executable, "-m", "ralph_ml", "init", str(exp), "--template", template],
                       check=True, capture_output=True)
        shutil.copy(BENCH / "bench_agents.py", exp / "bench_agents.py")
        toml = (exp / "ralph.toml").read_text()
        if budget_s is not None:
            # The best metric the run can find: accuracy's perfect score as the target (on these
            # templates a run never meets it), the budget as the whole run's time limit.
            perfect = "0.0" if re.search(r'(?m)^direction = "minimize"', toml) else "1.0"
            toml = re.sub(r"(?m)^(\[project\.target_metric\][^\[]*?^value = )\S+", rf"\g<1>{perfect}", toml)
            toml = re.sub(r"(?m)^(time_limit_per_cycle_minutes = .*)$", rf"\g<1>\ntotal_time_limit_minutes = {budget_s / 60:.6g}", toml)
        toml = re.sub(r"(?m)^seed = \d+", f"seed = {seed}", toml)
        toml = re.sub(r"(?m)^max_cycles = \d+", f"max_cycles = {max_cycles}", toml)
        toml = re.sub(r"(?m)^no_improvement_stop_cycles = \d+", f"no_improvement_stop_cycles = {max_cycles}", toml)
        for section, body in STRATEGIES[strategy].items():
            if section == "preload":
                toml = re.sub(r"(?m)^preload = .*$", f"preload = {body}", toml)
            else:
                toml = _set(toml, section, body)
        (exp / "ralph.toml").write_text(toml)
        env = {**os.environ, "PYTHONPATH": str(BENCH) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "ralph_ml", "start", "--plain"], cwd=exp, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        rc = os.waitstatus_to_exitcode(status)
        if rc not in (0, 2, 3):
            raise SystemExit(f"{template}/{strategy}/seed {seed}: exit {rc}\n{proc.stderr.read().decode() if proc.stderr else ''}")
        recs = [json.loads(line)["record"] for line in (exp / "state" / "journal.jsonl").read_text().splitlines()
                if '"type":"cycle_recorded"' in line]
        best = max((r["metric"] for r in recs if r["metric"] is not None), default=float("nan"))
        trace = [{"cycle": r["cycle"], "params": r["proposal"]["params"], "source": r["proposal"].get("meta", {}).get("source"),
                  "metric": r["metric"], "status": r["result"]["status"]} for r in recs]
        return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall, "reached": rc == 0,
                "cycles": len(recs), "best": best, "pruned": sum(r["result"]["status"] == "pruned" for r in recs),
                "trace": trace}


def _header(template: str, seeds: list[int], max_cycles: int) -> None:
    print(f"\n## {template} (target from the template; budget {max_cycles} cycles; seeds {seeds})\n")
    print("| strategy | reached target | CPU-s to stop (median) | CPU-s to stop (mean) | CPU-s when reached (median) "
          "| CPU-s per seed | best metric (median) | cycles (median) | wall s (median) | trials pruned |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")


def _row(strategy: str, rows: list[dict[str, Any]]) -> None:
    cpu = [float(r["cpu_s"]) for r in rows]
    reached = [float(r["cpu_s"]) for r in rows if r["reached"]]
    per_seed = " ".join(f"{c:.0f}" + ("" if r["reached"] else "*") for c, r in zip(cpu, rows))
    print(f"| {strategy} | {len(reached)}/{len(rows)} | {statistics.median(cpu):.0f} | {statistics.mean(cpu):.0f} | "
          f"{f'{statistics.median(reached):.0f}' if reached else 'n/a'} | {per_seed} | "
          f"{statistics.median(float(r['best']) for r in rows):.4f} | {statistics.median(int(r['cycles']) for r in rows):.0f} | "
          f"{statistics.median(float(r['wall_s']) for r in rows):.1f} | {sum(int(r['pruned']) for r in rows)} |",
          flush=True)


def _interval(ours: list[float], theirs: list[float], stat: Any, n: int = 10_000) -> tuple[float, float]:
    """95% bootstrap interval of stat(ours) / stat(theirs): the seeds of each strategy resampled
    with replacement, each strategy on its own (a seed does not pair two strategies' runs)."""
    rng = random.Random(0)
    ratios = sorted(stat(rng.choices(ours, k=len(ours))) / stat(rng.choices(theirs, k=len(theirs))) for _ in range(n))
    return ratios[int(0.025 * n)], ratios[int(0.975 * n) - 1]


def _ratios(by_strategy: dict[str, list[dict[str, Any]]]) -> None:
    """ralph-ml's CPU-seconds to stop over each plain baseline's (median and mean), with the
    95% bootstrap interval over seeds of each: random search's cost per run is heavy-tailed
    (one lucky trial in some seeds, 8-15 in others), so 12 seeds leave a wide interval."""
    ours = [float(r["cpu_s"]) for r in by_strategy.get("ralph", [])]
    for plain in ("tpe", "random", "tpe-warm", "random-warm"):
        theirs = [float(r["cpu_s"]) for r in by_strategy.get(plain, [])]
        if ours and theirs:
            parts = []
            for name, stat in (("medians", statistics.median), ("means", statistics.mean)):
                lo, hi = _interval(ours, theirs, stat)
                parts.append(f"{stat(ours) / stat(theirs):.2f}x ({name}; 95% interval {lo:.2f}-{hi:.2f})")
            print(f"\nralph / {plain}: " + ", ".join(parts), end="")
    print()


def _run_all(template: str, seeds: list[int], names: Any, max_cycles: int, runs_path: Path | None,
             budget_s: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """Seed by seed, every strategy in turn (so a change of the machine's load hits them alike),
    each run printed and appended to ``runs_path``."""
    by_strategy: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    extra = {} if budget_s is None else {"budget_s": budget_s}
    for s in seeds:
        for strategy, rows in by_strategy.items():
            row = {"seed": s, **run_one(template, strategy, s, max_cycles, budget_s=budget_s)}
            rows.append(row)
            how = (f"best {row['best']:.4f}{'' if row['reached'] else ' (target not reached)'}" if budget_s is None
                   else f"best {row['best']:.4f} in {budget_s:g} s")
            print(f"{template} seed {s} {strategy}: {row['cpu_s']:.1f} CPU-s, {row['cycles']} cycles, {how}", flush=True)
            if runs_path is not None:
                with open(runs_path, "a") as fh:
                    fh.write(json.dumps({"template": template, "strategy": strategy, "max_cycles": max_cycles,
                                         **extra, **row}) + "\n")
    return by_strategy


def search_table(templates: list[str], seeds: list[int], max_cycles: int, runs_path: Path | None = None,
                 strategies: list[str] | None = None) -> None:
    """CPU-seconds to the target, for every strategy on the same seeds."""
    for template in templates:
        by_strategy = _run_all(template, seeds, strategies or STRATEGIES, max_cycles, runs_path)
        _header(template, seeds, max_cycles)
        for strategy, rows in by_strategy.items():
            _row(strategy, rows)
        _ratios(by_strategy)


def _budget_header(template: str, seeds: list[int], budget_s: float) -> None:
    print(f"\n## {template}: best metric after {budget_s:g} s (the whole run's time limit; seeds {seeds})\n")
    print("| strategy | best metric (median) | best metric (mean) | worst seed | best metric per seed | cycles (median) "
          "| CPU-s (median) |")
    print("|---|---:|---:|---:|---|---:|---:|")


def _budget_row(strategy: str, rows: list[dict[str, Any]]) -> None:
    best = [float(r["best"]) for r in rows]
    print(f"| {strategy} | {statistics.median(best):.4f} | {statistics.mean(best):.4f} | {min(best):.4f} | "
          f"{' '.join(f'{b:.3f}' for b in best)} | {statistics.median(int(r['cycles']) for r in rows):.0f} | "
          f"{statistics.median(float(r['cpu_s']) for r in rows):.0f} |", flush=True)


def _budget_wins(by_strategy: dict[str, list[dict[str, Any]]]) -> None:
    """Seed by seed (the same seed, the same budget): how often ralph's best beats each plain search's."""
    ours = {int(r["seed"]): float(r["best"]) for r in by_strategy.get("ralph", [])}
    for plain in ("tpe", "random", "tpe-warm", "random-warm"):
        theirs = {int(r["seed"]): float(r["best"]) for r in by_strategy.get(plain, [])}
        both = sorted(set(ours) & set(theirs))
        if both:
            wins = sum(ours[s] > theirs[s] for s in both)
            ties = sum(ours[s] == theirs[s] for s in both)
            gain = statistics.median(ours[s] - theirs[s] for s in both)
            print(f"\nralph vs {plain}: better in {wins} of {len(both)} seeds, tied in {ties}; "
                  f"median gain {gain:+.4f}", end="")
    print()


def budget_table(templates: list[str], seeds: list[int], budget_s: float, runs_path: Path | None = None,
                 strategies: list[str] | None = None) -> None:
    """The best metric each strategy finds within the same time budget, on the same seeds."""
    for template in templates:
        by_strategy = _run_all(template, seeds, strategies or ("ralph", "random", "tpe"), BUDGET_MAX_CYCLES, runs_path,
                               budget_s=budget_s)
        _budget_header(template, seeds, budget_s)
        for strategy, rows in by_strategy.items():
            _budget_row(strategy, rows)
        _budget_wins(by_strategy)


def _by_strategy(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Recorded runs grouped by strategy (in the order they first appear), each group by seed."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: int(r["seed"])):
        out.setdefault(r["strategy"], []).append(r)
    return out


def tables_from_runs(paths: list[Path]) -> None:
    """Print the tables again from one or more --runs files (their runs pooled, seed by seed)."""
    runs = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    budgeted = [r for r in runs if r.get("budget_s") is not None]
    runs = [r for r in runs if r.get("budget_s") is None]
    for template, budget in dict.fromkeys((r["template"], float(r["budget_s"])) for r in budgeted):
        mine = [r for r in budgeted if r["template"] == template and float(r["budget_s"]) == budget]
        _budget_header(template, sorted({int(r["seed"]) for r in mine}), budget)
        grouped = _by_strategy(mine)
        for strategy, rows in grouped.items():
            _budget_row(strategy, rows)
        _budget_wins(grouped)
    for template in dict.fromkeys(r["template"] for r in runs):
        mine = [r for r in runs if r["template"] == template]
        _header(template, sorted({int(r["seed"]) for r in mine}), max(int(r.get("max_cycles", 0)) for r in mine))
        grouped = _by_strategy(mine)
        for strategy, rows in grouped.items():
            _row(strategy, rows)
        _ratios(grouped)


def throughput(n: int = 12) -> None:
    """Trials per second with K=1 and K=2 on 1-second sleep trials."""
    out = {}
    for k in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            exp = Path(tmp)
            (exp / "prepare.py").write_text("# frozen\n")
            (exp / "train.py").write_text("import time\ntime.sleep(1.0)\nprint('val_accuracy: 0.5')\n")
            (exp / "ralph.toml").write_text(
                f'[project]\ntarget_metric = {{ name = "val_accuracy", value = 2.0 }}\n'
                f"[safeguards]\nmax_cycles = {n}\nno_improvement_stop_cycles = {n}\n"
                f"[execution]\nmax_concurrency = {k}\nenv_capture = false\n"
                '[search_space.x]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n'
            )
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "ralph_ml", "start", "--plain"], cwd=exp, capture_output=True)
            wall = time.monotonic() - t0
            events = [json.loads(line) for line in (exp / "state" / "events.jsonl").read_text().splitlines()]
            starts = [e["ts"] for e in events if e["kind"] == "trial_started"]
            ends = [e["ts"] for e in events if e["kind"] == "trial_ended"]
            span = max(ends) - min(starts)
            out[k] = n / span
            print(f"K={k}: {n} trials of 1 s in {span:.2f} s (first start to last end; {wall:.2f} s with start-up) "
                  f"= {out[k]:.3f} trials/s")
    print(f"K=2 / K=1 = {out[2] / out[1]:.2f}x (ideal 2.00x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--templates", nargs="+", default=["digits", "mnist1d"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max-cycles", type=int, default=20)
    ap.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), help="default: all, in this order")
    ap.add_argument("--runs", type=Path, help="append every run, with its cycles, to this JSON-lines file")
    ap.add_argument("--from-runs", type=Path, nargs="+",
                    help="only print the tables again from --runs files (several: their runs pooled)")
    ap.add_argument("--throughput", action="store_true", help="only the K=2 vs K=1 throughput check")
    ap.add_argument("--budget-s", type=float, metavar="SECONDS",
                    help="instead of the CPU-seconds to the target: the best metric each strategy finds within "
                         "this many seconds (the run's total_time_limit_minutes; the target raised to a perfect score)")
    args = ap.parse_args()
    if args.throughput:
        throughput()
        return
    if args.from_runs:
        tables_from_runs(args.from_runs)
        return
    if args.budget_s is not None:
        budget_table(args.templates, args.seeds, args.budget_s, args.runs, args.strategies)
        return
    search_table(args.templates, args.seeds, args.max_cycles, args.runs, args.strategies)


if __name__ == "__main__":
    main()
