"""Early stopping of doomed trials, fed by the trial's progress reports.

Two families, chosen by ``[pruning] pruner``:
- Optuna's pruners (``median``, ``asha`` = successive halving, ``hyperband``), over a study
  of past cycles' learning curves (rebuilt from their ``progress.jsonl`` on resume);
- ``forecast``: a direction-aware learning-curve forecaster. It fits the watched metric
  against log(step) on the trial's recent reports, extrapolates to the planned last step
  with a prediction interval, and stops the trial only when even the optimistic end of that
  interval cannot beat the best final value seen so far.

A pruner only *decides*; the loop asks the trial to stop (the ``report`` return value and
its control file) and terminates it after a grace period.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .analysis import read_progress
from .config import Config
from .journal import cycle_folder
from .records import CycleRecord, Direction, TrialStatus, lower_is_better

if TYPE_CHECKING:  # pragma: no cover
    import optuna


@dataclass(frozen=True)
class PruneVerdict:
    prune: bool
    reason: str = ""
    step: int | None = None


class ProgressReader:
    """Reads new rows of a progress.jsonl as it grows (one stat per call when nothing changed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.count = 0  # rows returned so far

    def new_rows(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size <= self._offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(size - self._offset)
        end = data.rfind(b"\n") + 1
        self._offset += end
        rows = []
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        self.count += len(rows)
        return rows


def last_reported(path: Path, metric: str, tail_bytes: int = 16_384) -> tuple[int | None, float] | None:
    """(step, value) of the last row of a progress.jsonl that reports a finite ``metric``,
    read from the file's last ``tail_bytes`` (a long file is not read whole); None without one."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - tail_bytes))
            data = fh.read()
    except OSError:
        return None
    for line in reversed(data.splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by the tail's start, or one being written
        if not isinstance(row, dict):
            continue
        v = _value(row, metric)
        if v is not None and math.isfinite(v):
            step = row.get("step")
            return (step if isinstance(step, int) and not isinstance(step, bool) else None), v
    return None


def _value(row: Mapping[str, Any], metric: str) -> float | None:
    v = row.get(metric)
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f


def curve(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for i, row in enumerate(rows):
        v = _value(row, metric)
        if v is None:
            continue
        step = row.get("step", i)
        out[int(step) if isinstance(step, (int, float)) else i] = v
    return out


def read_curve(cycle_dir: Path, metric: str) -> dict[int, float]:
    return curve(read_progress(cycle_dir / "progress.jsonl"), metric)


def forecast(points: Mapping[int, float], last_step: int, *, z: float = 2.0) -> tuple[float, float] | None:
    """(prediction, half-width) of the metric at ``last_step`` from a fit on log(step + 1).

    A log-linear fit over-estimates a saturating curve's future progress, which keeps the
    pruning decision conservative. None when there are too few points to fit.
    """
    steps = sorted(points)
    steps = [s for s in steps if math.isfinite(points[s])][-8:]
    if len(steps) < 3:
        return None
    xs = [math.log(s + 1.0) for s in steps]
    ys = [points[s] for s in steps]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    beta = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    alpha = my - beta * mx
    resid = [y - (alpha + beta * x) for x, y in zip(xs, ys)]
    sigma = math.sqrt(sum(r * r for r in resid) / max(1, n - 2))
    x_t = math.log(last_step + 1.0)
    pred = alpha + beta * x_t
    # prediction interval of a simple linear regression at x_t
    half = z * sigma * math.sqrt(1.0 + 1.0 / n + (x_t - mx) ** 2 / sxx)
    # never narrower than the recent step-to-step noise, so a lucky smooth curve is not over-trusted
    jitter = max((abs(ys[i] - ys[i - 1]) for i in range(1, n)), default=0.0)
    return pred, max(half, jitter)


class TrialPruner:
    """Decides, report by report, whether the running trial should stop early."""

    def __init__(self, cfg: Config, history: Sequence[CycleRecord], runs_dir: Path) -> None:
        pc = cfg.pruning
        self.cfg = cfg
        self.kind = pc.pruner
        self.metric = cfg.pruning_metric
        if pc.direction is not None:
            self.direction = pc.direction
        elif self.metric == cfg.target.name:
            self.direction = cfg.target.dir
        else:
            self.direction = Direction.MINIMIZE if lower_is_better(self.metric) else Direction.MAXIMIZE
        self.n_warmup_steps = pc.n_warmup_steps
        self.runs_dir = runs_dir
        import optuna  # here, not at the top: a run without pruning never imports it for this

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction=self.direction.value, pruner=self._optuna_pruner())
        self.best_final: float | None = None  # the kept best's final value of the metric: what forecast must beat
        for rec in history:
            self.observe(rec)
            self.note_kept(rec)

    def _optuna_pruner(self) -> optuna.pruners.BasePruner:
        import optuna

        pc = self.cfg.pruning
        if self.kind == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=pc.n_startup_trials, n_warmup_steps=pc.n_warmup_steps)
        if self.kind == "asha":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, pc.n_warmup_steps), reduction_factor=pc.reduction_factor)
        if self.kind == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=max(1, pc.n_warmup_steps), reduction_factor=pc.reduction_factor)
        return optuna.pruners.NopPruner()

    # -- history ---------------------------------------------------------------------------
    def observe(self, rec: CycleRecord) -> None:
        """Add a finished cycle's learning curve (read from its progress.jsonl)."""
        points = read_curve(self.runs_dir / cycle_folder(rec.cycle), self.metric)
        if not points:
            return
        ok = rec.result.status is TrialStatus.OK
        final = rec.result.metrics.get(self.metric) if ok else None
        if final is None and ok:
            final = points[max(points)]
        from optuna.trial import TrialState, create_trial

        complete = ok and final is not None and math.isfinite(final)
        curve_ = {s: v for s, v in sorted(points.items()) if math.isfinite(v)}
        if self.kind in ("asha", "hyperband"):
            # Replayed through the pruner step by step, as a live trial reports: successive
            # halving compares a trial only with those that recorded the same rung, which it
            # records in the trial's system attributes when the trial passes it.
            replay = self.study.ask()
            for step, v in curve_.items():
                replay.report(v, step)
                if step >= self.n_warmup_steps:
                    replay.should_prune()
            self.study.tell(replay, final if complete else None, state=TrialState.COMPLETE if complete else TrialState.PRUNED)
            return
        self.study.add_trial(
            create_trial(
                state=TrialState.COMPLETE if complete else TrialState.PRUNED,
                value=final if complete else None,
                intermediate_values=curve_,
            )
        )

    # -- running trials ----------------------------------------------------------------------
    def start(self, params: Mapping[str, Any]) -> PruneSession:
        pc = self.cfg.pruning
        planned = None
        if pc.max_steps_param and pc.max_steps_param in params:
            try:
                planned = int(params[pc.max_steps_param])
            except (TypeError, ValueError):
                planned = None
        return PruneSession(trial=self.study.ask(), last_step=pc.max_steps, planned_steps=planned)

    def update(self, session: PruneSession, rows: Sequence[Mapping[str, Any]]) -> PruneVerdict:
        new = curve(rows, self.metric)
        if not new:
            return PruneVerdict(False)
        points = session.points
        optuna_kind = self.kind not in ("forecast", "none")
        for step, v in sorted(new.items()):
            if not math.isfinite(v):
                return PruneVerdict(True, f"{self.metric} became {v} at step {step}: the trial diverged", step)
            fresh = step not in points
            if fresh:
                session.trial.report(v, step)
            points[step] = v
            # Asked step by step, as in a training loop: several rows read in one poll must not
            # all be judged at the last one (ASHA records each rung's value when it is passed).
            if fresh and optuna_kind and step >= self.n_warmup_steps and session.trial.should_prune():
                return PruneVerdict(
                    True,
                    f"{self.kind} pruner: {self.metric} = {v:.6g} at step {step} is worse than "
                    "the other trials at the same step",
                    step,
                )
        step = max(points)
        if self.kind == "forecast" and step >= self.n_warmup_steps:
            return self._forecast_verdict(session, step)
        return PruneVerdict(False)

    def _forecast_verdict(self, session: PruneSession, step: int) -> PruneVerdict:
        last = session.last()
        if self.best_final is None or last is None or step >= last:
            return PruneVerdict(False)
        fc = forecast(session.points, last)
        if fc is None:
            return PruneVerdict(False)
        pred, half = fc
        optimistic = pred + half if self.direction is Direction.MAXIMIZE else pred - half
        if self.direction.better(optimistic, self.best_final):
            return PruneVerdict(False)
        d = next((d for d in range(4, 12) if f"{optimistic:.{d}g}" != f"{self.best_final:.{d}g}"), 12)
        return PruneVerdict(
            True,  # 4 significant digits, more where the optimistic end and the best would read the same
            f"forecast: {self.metric} at step {last} ≈ {pred:.{d}g} ± {half:.2g}; even {optimistic:.{d}g} "
            f"cannot beat the best {self.best_final:.{d}g}",
            step,
        )

    def finish(self, session: PruneSession, pruned: bool, final: float | None) -> None:
        from optuna.trial import TrialState

        if pruned or final is None or not math.isfinite(final):
            self.study.tell(session.trial, state=TrialState.PRUNED)
            return
        self.study.tell(session.trial, final)

    def note_kept(self, rec: CycleRecord) -> None:
        """A recorded cycle: when it is kept, its final value is the one a forecast must beat.

        Only a kept cycle counts: one that scored higher and was not kept (under the required
        gain, or a lucky run that the noise test rejected) is not the bar a trial must clear.
        With noise-aware keeps the kept metric is the mean over seeds."""
        if not rec.kept:
            return
        value = rec.metric if self.metric == self.cfg.target.name else rec.result.metrics.get(self.metric)
        if value is not None and math.isfinite(value):
            self.best_final = value


@dataclass
class PruneSession:
    """One running trial as the pruner sees it."""

    trial: optuna.trial.Trial
    last_step: int | None  # pruning.max_steps
    planned_steps: int | None = None  # the value of pruning.max_steps_param (e.g. epochs), when set
    points: dict[int, float] = field(default_factory=dict)

    def last(self) -> int | None:
        """The planned last step: ``planned_steps`` steps numbered from the first one reported
        (0 for ``range(epochs)``, 1 for ``range(1, epochs + 1)``), else ``max_steps``."""
        if self.planned_steps is None:
            return self.last_step
        first = 0 if self.points and min(self.points) <= 0 else 1
        return first + self.planned_steps - 1
