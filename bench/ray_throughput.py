"""Trials per second through the Ray executor with K concurrent slots, against the ideal.

    python bench/ray_throughput.py [--slots 1 2 4 8] [--trials-per-slot 6] [--trial-s 1.0]
                                   [--address ADDRESS] [--ship]

Each trial is `sleep TRIAL_S` run by the Ray executor exactly as the loop runs it (a detached
actor per trial holding 1 logical CPU, the trial in its own process group, result.json, ...).
K slots are kept busy: a new trial is submitted as soon as one ends, like the loop with
execution.max_concurrency = K. The ideal is K / TRIAL_S trials per second (the resources are
K one-CPU slots); the overhead is the time a slot spends on anything but the sleep. The local
executor with the same K is printed alongside as the floor for "no cluster at all".

Without --address a local Ray is started with max(K) logical CPUs (sleeping trials need no
real CPU, so K may exceed the machine's cores).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ralph_ml.executors import Executor, LocalExecutor, TrialHandle, get_executor
from ralph_ml.records import TrialSpec, TrialStatus


def spec_for(root: Path, i: int, trial_s: float) -> TrialSpec:
    cdir = root / f"cycle_{i:05d}"
    (cdir / "code").mkdir(parents=True)
    return TrialSpec(
        run_id="bench", cycle=i, cycle_dir=str(cdir), code_dir=str(cdir / "code"),
        train_cmd=f"sleep {trial_s:g}; echo val_accuracy: 0.5", eval_cmd=None, params={}, seed=0, timeout_s=600,
        env={"RALPH_METRICS_PATH": str(cdir / "metrics.json"), "PATH": "/usr/bin:/bin"},
    )


def run(ex: Executor, slots: int, n: int, trial_s: float, root: Path) -> tuple[float, list[float]]:
    """Keep ``slots`` trials in flight until ``n`` ended; wall seconds and per-trial latencies."""
    pending = list(range(1, n + 1))
    flying: dict[int, tuple[TrialHandle, float]] = {}
    latencies: list[float] = []
    t0 = time.perf_counter()
    while pending or flying:
        while pending and len(flying) < slots:
            i = pending.pop(0)
            flying[i] = (ex.submit(spec_for(root, i, trial_s)), time.perf_counter())
        for i, (h, started) in list(flying.items()):
            res = h.wait(0.01)
            if res is not None:
                if res.status is not TrialStatus.OK:
                    raise SystemExit(f"trial {i} ended {res.status.value}: {res.message}")
                latencies.append(time.perf_counter() - started)
                del flying[i]
    return time.perf_counter() - t0, latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--trials-per-slot", type=int, default=6)
    ap.add_argument("--trial-s", type=float, default=1.0)
    ap.add_argument("--address", default=None, help="an existing cluster (default: start a local Ray)")
    ap.add_argument("--ship", action="store_true", help="code_transfer = 'ship' instead of 'shared'")
    args = ap.parse_args()

    import ray

    t = time.perf_counter()
    if args.address:
        ray.init(address=args.address, namespace="ralph-bench", log_to_driver=False, logging_level="WARNING")
    else:
        ray.init(address="local", num_cpus=max(args.slots), namespace="ralph-bench", include_dashboard=False,
                 log_to_driver=False, logging_level="WARNING")
    startup = time.perf_counter() - t
    ex = get_executor("ray", namespace="ralph-bench", num_cpus=1, code_transfer="ship" if args.ship else "shared",
                      sync_interval_s=0.5, kill_grace_s=1.0)
    local = LocalExecutor(kill_grace_s=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        run(ex, 1, 2, 0.0, Path(tmp) / "warmup")  # first worker start, imports on the worker
        rows = []
        for k in args.slots:
            n = k * args.trials_per_slot
            wall, lat = run(ex, k, n, args.trial_s, Path(tmp) / f"ray-{k}")
            lwall, _ = run(local, k, n, args.trial_s, Path(tmp) / f"local-{k}")
            rows.append((k, n, wall, lat, lwall))
    ex.close()
    ray.shutdown()

    ideal = lambda k: k / args.trial_s  # noqa: E731 - trials per second with zero overhead
    print(f"ray {ray.__version__}, python {sys.version.split()[0]}, trial = sleep {args.trial_s:g} s, "
          f"code_transfer = {'ship' if args.ship else 'shared'}, "
          f"{'cluster ' + shlex.quote(args.address) if args.address else 'local Ray'} (started in {startup:.1f} s)")
    print(f"{'K':>3} {'trials':>6} {'wall s':>7} {'trials/s':>9} {'ideal':>6} {'eff.':>6} "
          f"{'overhead/trial':>15} {'p95 latency':>12} {'local trials/s':>15}")
    for k, n, wall, lat, lwall in rows:
        rate = n / wall
        over = wall * k / n - args.trial_s  # slot-seconds per trial beyond the sleep
        p95 = statistics.quantiles(lat, n=20)[-1] if len(lat) >= 2 else lat[0]
        print(f"{k:>3} {n:>6} {wall:>7.2f} {rate:>9.2f} {ideal(k):>6.2f} {rate / ideal(k):>6.0%} "
              f"{over * 1000:>12.0f} ms {p95:>10.2f} s {n / lwall:>15.2f}")


if __name__ == "__main__":
    main()
