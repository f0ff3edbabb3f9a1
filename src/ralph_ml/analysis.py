"""Built-in analysis: diagnose a cycle from its result, learning curve and the history.

Diagnoses: baseline, improving, plateau, diverged, overfitting, underfitting, failed.
Recommendations are ranked (high confidence first) and name a search-space parameter
and a direction when one applies, so the built-in agent can follow them one step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from .config import Config
from .decision import Totals
from .records import Analysis, CycleRecord, FailureClass, Recommendation, TrialResult, TrialStatus, lower_is_better

_CONF_RANK = {"high": 0, "medium": 1, "low": 2}


def read_progress(path: Path, max_rows: int = 10_000) -> list[dict[str, Any]]:
    """Rows of a progress.jsonl file (bad lines skipped, at most the last ``max_rows``)."""
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
                if len(rows) > max_rows:
                    del rows[0]
    return rows


def _series(rows: Sequence[Mapping[str, Any]], name: str) -> list[float]:
    out = []
    for r in rows:
        v = r.get(name)
        if isinstance(v, (int, float)) or (isinstance(v, str) and v in ("nan", "inf", "-inf")):
            out.append(float(v))
    return out


class _Recs:
    def __init__(self, cfg: Config) -> None:
        self.space = cfg.search_space
        self.items: list[Recommendation] = []

    def add(self, confidence: str, rationale: str, param: str | None = None, direction: str | None = None) -> None:
        if param is not None and param not in self.space:
            return  # not something we can act on in this experiment
        action = f"{direction}:{param}" if param else rationale.split(":")[0]
        if any(r.action == action for r in self.items):
            return
        self.items.append(Recommendation(action=action, rationale=rationale, confidence=confidence, param=param, direction=direction))

    def ranked(self) -> tuple[Recommendation, ...]:
        return tuple(sorted(self.items, key=lambda r: _CONF_RANK.get(r.confidence, 3)))


# Names a search space gives the length of training, epochs first (Hugging Face: num_train_epochs).
_LENGTH = ("epochs", "num_epochs", "num_train_epochs", "max_epochs", "steps", "max_steps")
# Names a search space gives a model's width (hidden units, channels, embedding size).
_WIDTH = ("width", "hidden", "hidden_size", "hidden_dim", "channels", "d_model", "n_embd")


def _first(space: Mapping[str, Any], *names: str) -> str | None:
    return next((n for n in names if n in space), None)


def analyze(
    result: TrialResult,
    metric: float | None,
    kept: bool,
    history: Sequence[CycleRecord],
    progress: Sequence[Mapping[str, Any]],
    cfg: Config,
    *,
    totals: Totals | None = None,
    changed_code: bool = False,
) -> Analysis:
    """Diagnose the cycle that produced ``result`` (``history`` excludes it).

    ``totals``: the history's running totals when the caller keeps them (the loop does), so
    the analysis reads no more than the cycle itself however long the history is.
    ``changed_code``: the cycle ran a code change (a patch), so a crash is the change's bug."""
    before = totals if totals is not None else Totals.of(history, cfg)
    target = cfg.target
    space = cfg.search_space
    recs = _Recs(cfg)
    lr = _first(space, "lr", "learning_rate")
    notes: list[str] = []

    if result.status is TrialStatus.PRUNED:
        notes.append(f"Stopped early: {result.message}. The partial metrics are kept in metrics.json.")
        recs.add("medium", "explore another region of the search space: this configuration was not going to win")
        return Analysis(diagnosis="pruned", summary=" ".join(notes), recommendations=recs.ranked())
    if result.status is TrialStatus.CANCELLED:  # stopped from outside: nothing is known of the configuration
        notes.append(f"Cancelled before it ended ({result.message}): the run was stopping. It says nothing about "
                     "this configuration; its partial metrics are kept in metrics.json.")
        recs.add("low", "run this configuration again to learn how it ends: it was cancelled, not beaten")
        return Analysis(diagnosis="cancelled", summary=" ".join(notes), recommendations=recs.ranked())
    if result.status is not TrialStatus.OK or metric is None:
        failure = result.failure
        if failure is FailureClass.NAN or _diverged(progress):
            diag = "diverged"
            notes.append(f"{target.name} or the training loss became NaN/inf.")
            recs.add("high", "lower the learning rate: the run diverged", lr, "decrease")
            recs.add("medium", "add gradient clipping or warm-up: the run diverged")
        elif failure is FailureClass.TIMEOUT:
            diag = "failed"
            notes.append("The trial hit the per-cycle time limit.")
            recs.add("high", "shorten training: the trial ran out of time", _first(space, *_LENGTH), "decrease")
            recs.add("medium", "shrink the model: the trial ran out of time", _first(space, *_WIDTH), "decrease")
        elif failure is FailureClass.OOM:
            diag = "failed"
            notes.append("The trial ran out of memory.")
            recs.add("high", "reduce the batch size: out of memory", _first(space, "batch_size"), "decrease")
            recs.add("medium", "shrink the model: out of memory", _first(space, *_WIDTH), "decrease")
        elif failure is FailureClass.MISSING_METRIC:
            diag = "failed"
            notes.append(f"The trial never reported {target.name}; check that it writes metrics.json or prints `{target.name}: value`.")
            recs.add("high", f"report the target metric: {target.name} was missing")
        elif changed_code and failure is FailureClass.CRASH:
            diag = "failed"
            notes.append(f"The code change crashed ({failure.value}): {result.message}")
            how = ("the shipped code agents hand it back for a fix (branching.max_fix_attempts = "
                   f"{cfg.branching.max_fix_attempts})" if cfg.branching.max_fix_attempts > 0
                   else "branching.max_fix_attempts = 0: no agent is handed it back")
            recs.add("high", f"fix the code change: it crashed (the error is in logs/stderr.log; {how})")
        else:
            diag = "failed"
            notes.append(f"The trial ended {result.status.value} ({failure.value}): {result.message}")
            recs.add("medium", "explore another region of the search space: this configuration failed")
        return Analysis(diagnosis=diag, summary=" ".join(notes), recommendations=recs.ranked())

    # A successful trial: look at its learning curve and at the train/val gap.
    diag = "improving" if kept else "plateau"
    if not before.cycles:
        diag = "baseline"
    last_row = progress[-1].keys() if progress else ()
    # Keras and Hugging Face name the training loss `loss` (and their validation one val_/eval_loss).
    losses = [k for k in last_row if lower_is_better(k) and k.startswith("train")] or [k for k in ("loss",) if k in last_row]
    train_loss = _series(progress, losses[0]) if losses else []
    val_loss = _series(progress, next((k for k in ("val_loss", "eval_loss") if k in last_row), "val_loss"))
    gap = _train_val_gap(result.metrics, target.name)
    overfit = False
    if gap is not None and gap > 0.03:
        overfit = True
        notes.append(f"train vs validation gap of {gap:.3f} in {_validation_base(target.name)}: over-fitting.")
    if len(val_loss) >= 4 and len(train_loss) >= 4 and val_loss[-1] > min(val_loss) * 1.1 and train_loss[-1] < train_loss[len(train_loss) // 2]:
        overfit = True
        notes.append("validation loss rose while training loss kept falling: over-fitting.")
    fits_train = _train_counterpart(result.metrics, target.name)
    saturated = fits_train is not None and fits_train >= 0.995  # the training set is already fit
    short = metric is not None and (metric < target.value if target.dir.value == "maximize" else metric > target.value)
    stopped = result.stopped_by == "target"  # the curve ends where it met the target, not at its planned end
    if stopped and short:
        notes.append(f"the trial stopped at step {result.stopped_at_step}, where its reported {target.name} met the "
                     f"target (pruning.stop_at_target), but the evaluation scored {metric:.6g}: the per-step "
                     f"{target.name} and the evaluation disagree, so the steps left were given up for nothing. "
                     "Report the evaluation's own metric each step, or set pruning.stop_at_target = false.")
    elif stopped:
        notes.append(f"the trial stopped at step {result.stopped_at_step}, where its reported {target.name} first met "
                     "the target (pruning.stop_at_target): the score is the model's at that step, not a full run's.")
    if not overfit and saturated and short:
        # Fitting the training set better cannot help any more: only generalization can.
        overfit = True
        notes.append(f"the training set is fit (train {_validation_base(target.name)} {fits_train:.3f}) while "
                     f"{target.name} is short of the target: only better generalization can close the gap.")
    if overfit:
        diag = "overfitting"
        if saturated and short:
            # A network that fits its training set generalizes better as it grows wider ("deep
            # double descent", Nakkiran et al. 2019); regularization alone rarely closes the gap.
            # On the digits template, from fit width-64 MLPs at 0.975-0.978, moved as the built-in
            # agent moves them (bench/digits_moves.py): wider and more regularized met 0.98 in 17
            # of 24 draws, more regularized alone in 8 of 24.
            recs.add("high", "widen the model: the training set is fit, and a wider network that fits it "
                     "generalizes better", _first(space, *_WIDTH), "increase")
        recs.add("high", "regularize more: over-fitting", _first(space, "dropout"), "increase")
        recs.add("high", "regularize more: over-fitting", _first(space, "weight_decay", "wd"), "increase")
        recs.add("medium", "train for fewer epochs: over-fitting", _first(space, *_LENGTH), "decrease")
    elif len(train_loss) >= 4 and not stopped:  # a stopped curve's falling loss says nothing of its end
        tail = train_loss[-max(2, len(train_loss) // 4):]
        if not saturated and all(math.isfinite(x) for x in tail) and tail[0] > 0 and (tail[0] - tail[-1]) / tail[0] > 0.05:
            diag = "underfitting" if not kept or before.cycles else diag
            notes.append("training loss was still falling at the last step: the model is under-trained.")
            recs.add("high", "train longer: loss still falling at the end", _first(space, *_LENGTH), "increase")
            recs.add("high", "raise the learning rate: slow convergence", lr, "increase")
        elif len(train_loss) >= 2 and train_loss[-1] > train_loss[0] * 0.9:
            notes.append("training loss barely moved: the learning rate may be too low or too high.")
            recs.add("medium", "tune the learning rate: training loss barely moved", lr, "increase")
    peak = _peak(progress, target.name, target.dir.value == "maximize", cfg.safeguards.min_improvement_delta)
    if peak is not None:
        notes.append(peak)
    if metric is not None:
        if before.best_seen is not None:
            notes.insert(0, f"{target.name} = {metric:.6g} (best before: {before.best_seen:.6g}; target {target.describe()}).")
        else:
            notes.insert(0, f"{target.name} = {metric:.6g} (target {target.describe()}).")
    if not recs.items:
        recs.add("low", "explore: no clear signal from the learning curve")
    return Analysis(diagnosis=diag, summary=" ".join(notes), recommendations=recs.ranked())


def _peak(progress: Sequence[Mapping[str, Any]], name: str, maximize: bool, delta: float) -> str | None:
    """A note when the trial's own curve of the target metric was better at an earlier step
    than at its end, by more than ``delta`` and 0.1% (the curve of a validation target,
    reported with ``trial.report``; smaller wobbles are noise)."""
    points = [(r["step"], float(r[name])) for r in progress
              if isinstance(r.get("step"), (int, float)) and isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]
    if len(points) < 4:
        return None
    best_step, best = (max if maximize else min)(points, key=lambda p: p[1])
    last_step, last = points[-1]
    if best_step == last_step or abs(best - last) <= max(delta, 1e-3 * abs(best)):
        return None
    return (f"{name} peaked at {best:.4g} at step {best_step:g} and ended at {last:.4g} (step {last_step:g}): "
            "the end of training lost what an earlier step had; fewer epochs or stopping at the best step would keep it.")


def _diverged(progress: Sequence[Mapping[str, Any]]) -> bool:
    for row in progress[-5:]:
        for k, v in row.items():
            if lower_is_better(k) and isinstance(v, (float, str)):
                try:
                    if not math.isfinite(float(v)):
                        return True
                except ValueError:
                    continue
    return False


_VALIDATION_PREFIXES = ("val_", "eval_", "valid_", "validation_")  # eval_: Hugging Face's Trainer


def _validation_base(name: str) -> str | None:
    """``accuracy`` for ``val_accuracy`` (or ``eval_accuracy``, ...); None for another name."""
    return next((name[len(p):] for p in _VALIDATION_PREFIXES if name.startswith(p) and len(name) > len(p)), None)


def _train_counterpart(metrics: Mapping[str, float], target_name: str) -> float | None:
    """The training value of an accuracy-like validation target, when reported: ``train_X``, or
    the bare ``X`` that Keras (and Lightning's default names) report for the training set."""
    base = _validation_base(target_name)
    if base is None or lower_is_better(target_name):
        return None
    for name in (f"train_{base}", base):
        v = metrics.get(name)
        if v is not None and math.isfinite(v):
            return v
    return None


def _train_val_gap(metrics: Mapping[str, float], target_name: str) -> float | None:
    """train_X - val_X for an accuracy-like target, when both are reported."""
    train = _train_counterpart(metrics, target_name)
    val = metrics.get(target_name)
    if train is None or val is None or not math.isfinite(val):
        return None
    return train - val


def render_markdown(cycle: int, analysis: Analysis, result: TrialResult, metric: float | None, verdict: str) -> str:
    lines = [
        f"# Cycle {cycle}: analysis",
        "",
        f"- status: **{result.status.value}**" + (f" ({result.failure.value})" if result.failure is not FailureClass.NONE else ""),
        f"- verdict: **{verdict}**",
        f"- target metric: {metric if metric is not None else 'n/a'}",
        f"- diagnosis: **{analysis.diagnosis}**"
        + (f" (by the {analysis.agent} analysis agent" + (f"; its advice: {analysis.advice}" if analysis.advice else "") + ")"
           if analysis.agent != "builtin" else ""),
        "",
        analysis.summary,
        "",
        "## Recommendations",
        "",
    ]
    for i, r in enumerate(analysis.recommendations, 1):
        lines.append(f"{i}. `{r.action}` ({r.confidence}): {r.rationale}")
    if result.message:
        lines += ["", "## Trial message", "", "```", result.message, "```"]
    return "\n".join(lines) + "\n"
