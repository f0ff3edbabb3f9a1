"""Noise-aware keeps: re-run a cycle's code with other seeds before trusting its metric.

The first successful cycle is repeated ``noise.baseline_repeats`` times, to measure the
run-to-run noise; a candidate new best is repeated ``noise.confirm_repeats`` times, to
confirm it. The cycle's metric becomes the mean over seeds, judged again against the best
(``decision.judge``); a gain that disappears on re-run gets the verdict ``noise``. Repeats run
in ``runs/cycle_NNNN/repeats/seed_S/`` with ``RALPH_SEED = project.seed + k``.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from . import decision as dec
from .config import Config
from .control import ControlReader
from .cyclefiles import classify, trial_env
from .events import EventBus
from .executors import Executor, TrialHandle
from .hashing import hash_files
from .records import CycleRecord, Proposal, TrialResult, TrialSpec


class NoiseCheck:
    """Runs the repeats of one cycle and re-judges it on the mean.

    ``on_phase(name)`` is called when the repeats start (phase ``confirm``); the result of
    each check is announced on ``bus`` as a ``noise`` event. A ``stop`` in ``control``
    cancels the repeat in flight.
    """

    def __init__(
        self,
        cfg: Config,
        executor: Executor,
        control: ControlReader,
        bus: EventBus,
        on_phase: Callable[[str], None],
        *,
        poll_s: float,  # how often a running repeat looks at the control file
    ) -> None:
        self.cfg = cfg
        self.executor = executor
        self.control = control
        self.bus = bus
        self.on_phase = on_phase
        self.poll_s = poll_s

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.noise.baseline_repeats or self.cfg.noise.confirm_repeats)

    def wanted(self, kept: bool, totals: dec.Totals) -> int:
        """How many repeats a cycle needs: the first successful one measures the noise, a
        candidate best (``kept`` on its first run) is confirmed, the others need none."""
        nc = self.cfg.noise
        if not self.enabled:
            return 0
        return nc.baseline_repeats if totals.best_seen is None else (nc.confirm_repeats if kept else 0)

    def check(
        self,
        *,
        run_id: str,
        cycle: int,
        cdir: Path,
        result: TrialResult,
        metric: float,
        kept: bool,
        verdict: str,
        totals: dec.Totals,
        resources: Mapping[str, str] | None = None,
        time_left_s: float | None = None,
        values: Sequence[float] | None = None,
    ) -> tuple[TrialResult, float, bool, str]:
        """Repeat the baseline (to measure noise) or a candidate best (to confirm it) with other seeds.

        ``resources``: the environment of the cycle's allocation from the resource pool
        (``CUDA_VISIBLE_DEVICES``, thread counts): the repeats run on the GPUs the cycle holds.
        ``time_left_s``: what is left of ``safeguards.total_time_limit_minutes``; the repeats
        are cut off there, as a trial is (a repeat cut off counts as a failed one).
        ``values``: the repeats' metrics when they already ran (``repeats``, beside other
        cycles); they are judged as they are, against the best recorded now.
        Returns the cycle's ``(result, metric, kept, verdict)``: unchanged when nothing was
        repeated, else with ``result.repeats`` set and the metric the mean over seeds.
        """
        first_ok = totals.best_seen is None
        if values is None:
            n = self.wanted(kept, totals)
            if n == 0:
                return result, metric, kept, verdict
            self.on_phase("confirm")
            values = self.repeats(run_id=run_id, cycle=cycle, cdir=cdir, n=n, resources=resources, time_left_s=time_left_s)
        if not values:
            if kept and not first_ok:  # its first repeat failed or was stopped: the gain is not confirmed
                self.bus.emit("noise", {"cycle": cycle, "first": metric, "repeats": [], "mean": metric,
                                        "noise_std": totals.noise, "verdict": "unconfirmed"}, cycle=cycle)
                return result, metric, False, "unconfirmed"
            return result, metric, kept, verdict
        values = list(values)
        result = replace(result, repeats=(metric, *values))
        mean = sum(result.repeats) / len(result.repeats)
        trial_rec = CycleRecord(cycle=cycle, proposal=Proposal(), result=result, metric=mean, kept=False, verdict="")
        noise = totals.plus(trial_rec, self.cfg).noise
        kept2, verdict2 = dec.judge(mean, result.status, totals.best, self.cfg, noise=noise, n=1 + len(values))
        if kept and not kept2 and not first_ok:
            verdict2 = "noise"  # the gain disappeared on re-run with other seeds
        self.bus.emit(
            "noise",
            {"cycle": cycle, "first": metric, "repeats": values, "mean": mean, "noise_std": noise, "verdict": verdict2},
            cycle=cycle,
        )
        return result, mean, kept2, verdict2

    def repeats(
        self, *, run_id: str, cycle: int, cdir: Path, n: int, resources: Mapping[str, str] | None = None,
        time_left_s: float | None = None, cancel: threading.Event | None = None,
    ) -> list[float]:
        """Run the cycle's code ``n`` more times with seeds seed+1..seed+n; their target metrics.

        A ``stop`` in the control file, or ``cancel`` set, cancels the repeat in flight (and so
        ends the repeats: judged on those that finished). Safe to call from a thread of its own."""
        cfg = self.cfg
        deadline = None if time_left_s is None else time.monotonic() + time_left_s
        params = json.loads((cdir / "params.json").read_text())
        out: list[float] = []
        for k in range(1, n + 1):
            timeout_s = cfg.safeguards.time_limit_per_cycle_minutes * 60
            if deadline is not None:
                if deadline - time.monotonic() < 1.0:
                    break  # the run's time budget is spent: judge on what we have
                timeout_s = min(timeout_s, deadline - time.monotonic())
            seed = cfg.project.seed + k
            rdir = cdir / "repeats" / f"seed_{seed}"
            if not self._may_go_on(cancel):
                break  # stopped (or paused until stopped) before this repeat started
            found = self.executor.recover(rdir) if rdir.exists() else None  # a loop that crashed during it
            if isinstance(found, TrialResult):  # it had finished: collected, not run again
                found, value = classify(found, cfg.target.name)
                if value is None:
                    break
                out.append(value)
                continue
            if isinstance(found, TrialHandle):  # still running on a cluster: stopped, run again
                found.cancel()
            if rdir.exists():
                shutil.rmtree(rdir)  # an attempt interrupted by a crash: run it again
            (rdir / "logs").mkdir(parents=True)
            (rdir / "checkpoints").mkdir()
            env = {**trial_env(cfg, run_id, cycle, rdir, params), **(resources or {}),
                   "RALPH_SEED": str(seed), "RALPH_PARAMS": str(cdir / "params.json")}
            spec = TrialSpec(
                run_id=run_id, cycle=cycle, cycle_dir=str(rdir), code_dir=str(cdir / "code"),
                train_cmd=cfg.execution.train_cmd, eval_cmd=cfg.execution.eval_cmd, params=params,
                seed=seed, timeout_s=timeout_s, env=env,
                frozen_hashes=hash_files(cdir / "code", cfg.files.frozen),
            )
            handle = self.executor.submit(spec)
            res = handle.wait(self.poll_s)
            paused = False
            while res is None:
                action = self.control.action()
                if action == "stop" or (cancel is not None and cancel.is_set()):
                    handle.cancel()
                elif (action == "pause") != paused:  # `ralph-ml pause` suspends it as it does a trial
                    paused = not paused
                    (handle.suspend if paused else handle.resume)()
                res = handle.wait(self.poll_s)
            res, value = classify(res, cfg.target.name)
            if value is None:
                break  # a failed repeat: judge on what we have
            out.append(value)
        return out

    def _may_go_on(self, cancel: threading.Event | None) -> bool:
        """False once the run is stopped; waits while it is paused."""
        while True:
            action = self.control.action()
            if action == "stop" or (cancel is not None and cancel.is_set()):
                return False
            if action != "pause":
                return True
            time.sleep(self.poll_s)
