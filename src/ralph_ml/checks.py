"""Workspace checks shared by `ralph-ml validate` and the start of a run (nothing runs)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def trial_path_env() -> str:
    """PATH for trials: the loop's own interpreter first, so `python` means the same Python."""
    return os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


def _check_preload(cfg: Config, rep: CheckReport) -> None:
    """Say which trial commands execution.preload speeds up (only plain `python script.py` ones)."""
    from .executors.warm import warm_command

    ex = cfg.execution
    modules = ", ".join(ex.preload)
    if ex.mode != "local":
        rep.warnings.append(f"execution.preload ({modules}) is used by mode = 'local' only; "
                            f"with mode = {ex.mode!r} every trial starts a fresh interpreter")
        return
    path = ex.env.get("PATH") or trial_path_env()  # as trial_env builds it
    cold = []
    for name, cmd in (("train_cmd", ex.train_cmd), ("eval_cmd", ex.eval_cmd)):
        if cmd is None:
            continue
        warm = warm_command(cmd, path)
        rep.info.append(f"{name} runs {'warm' if warm else 'cold'}: {cmd!r}"
                        + (f" (forked after importing {modules})" if warm else ""))
        if warm is None:
            cold.append(name)
    if len(cold) == (2 if ex.eval_cmd else 1):
        rep.warnings.append(
            f"execution.preload ({modules}) is set but no trial command can use it: only plain "
            "`python [-u] script.py args` or `python -m module args` commands run warm (no shell syntax, "
            "the loop's own python)"
        )


def required_calls(cfg: Config, ws: Path, found: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """``files.required_calls``, or when unset the ``ralph_ml`` calls each mutable Python file of
    the workspace makes now (``guard.calls_into_ralph_ml``, or ``found`` when already read):
    what every code change must keep."""
    if cfg.files.required_calls is not None:
        return {name: list(calls) for name, calls in cfg.files.required_calls.items()}
    if found is not None:
        return found
    from .guard import calls_into_ralph_ml

    return calls_into_ralph_ml(ws, cfg.files.mutable)


def _check_progress_source(cfg: Config, ws: Path, found: dict[str, list[str]], rep: CheckReport) -> None:
    """A pruner needs a learning curve: from trial.report (or an adapter), or the printed one.
    ``found``: the ralph_ml calls of the mutable files (``guard.calls_into_ralph_ml``)."""
    calls = {c for names in found.values() for c in names}
    reports = any(c.startswith("ralph_ml.adapters.") or c.endswith((".report", ".trial_steps")) for c in calls)
    python = [rel for rel in cfg.files.mutable if rel.endswith(".py") and (ws / rel).is_file()]
    if cfg.execution.stdout_progress:
        if reports:
            rep.warnings.append(
                f"execution.stdout_progress = {cfg.execution.stdout_progress!r} is set and {', '.join(python)} also "
                "reports its curve (trial.report or an adapter): each step would be recorded twice; keep one of the two")
        return
    if cfg.pruning.pruner == "none" or reports or not python:
        return
    rep.warnings.append(
        f"pruning.pruner = {cfg.pruning.pruner!r}, but {', '.join(python)} never calls trial.report or a ralph_ml "
        "adapter, so no trial will have a learning curve to prune on. Report one each epoch "
        "(trial.report(epoch, val_accuracy=...)), or, if the script prints it (`epoch 3 val_accuracy=0.8`), set "
        "execution.stdout_progress = \"epoch\"")


def _check_pruning(cfg: Config, rep: CheckReport) -> None:
    """A pruner fed a training metric works against regularization: say so before it runs."""
    metric = cfg.pruning_metric
    if cfg.pruning.pruner == "none" or not metric.lower().startswith("train"):
        return
    rep.warnings.append(
        f"pruning.metric = {metric!r} is a training metric: the pruner will stop configurations that regularize "
        "(more dropout or weight decay raise the training loss at every step) however well they generalize. "
        "Report a validation metric from train.py (trial.report(step, val_loss=...)) and prune on it; "
        "the README's search benchmark shows what pruning on train_loss cost")


def _check_cmd(name: str, cmd: str, ws: Path, rep: CheckReport, will_write: tuple[str, ...] = ()) -> None:
    try:
        argv = shlex.split(cmd)
    except ValueError as exc:
        rep.errors.append(f"execution.{name} = {cmd!r} cannot be parsed as a shell command: {exc}")
        return
    if not argv:
        rep.errors.append(f"execution.{name} is empty")
        return
    prog = argv[0]
    if "=" in prog and not prog.startswith(("/", ".")):
        return  # VAR=value prefix: leave it to the shell
    found = (ws / prog).exists() if "/" in prog else shutil.which(prog, path=trial_path_env()) is not None
    if not found:
        rep.errors.append(
            f"execution.{name}: program {prog!r} is not on PATH and not a file in the workspace {ws}. "
            "Install it or fix the command."
        )
    for arg in argv[1:]:
        if arg.endswith((".py", ".sh")) and not arg.startswith("-") and not (ws / arg).exists():
            if arg in will_write:
                rep.info.append(f"execution.{name}: {arg} does not exist yet; the code agent writes it in cycle 1")
                continue
            rep.errors.append(f"execution.{name}: script {arg!r} does not exist in the workspace {ws}")
    rep.info.append(f"execution.{name}: {cmd}")


def _check_history(cfg: Config, rep: CheckReport) -> None:
    """A run already recorded here whose best cycle lies outside the search space as it is now
    (edited since): say what `resume` will do with it."""
    from .agents.builtin import outside
    from .decision import best_of
    from .errors import StateError
    from .journal import replay

    journal = cfg.path(cfg.paths.state) / "journal.jsonl"
    if not journal.is_file() or not cfg.search_space:
        return
    try:
        records = replay(journal).records
    except (StateError, OSError, ValueError):
        return  # no run to speak of; `resume` says what is wrong with the journal
    n_outside = sum(bool(outside(cfg.search_space, r.proposal.params)) for r in records)
    best = best_of(records)
    moved = outside(cfg.search_space, best.proposal.params) if best is not None else {}
    if best is None or not moved:
        return
    rep.warnings.append(
        f"the best cycle so far ({best.cycle}) lies outside the search space as edited "
        f"({'; '.join(f'{k} = {v!r} -> {to!r}' for k, (v, to) in moved.items())}): "
        f"on `resume` the built-in agent starts from it moved inside, and its TPE leaves out the "
        f"{n_outside} of {len(records)} recorded cycles outside the space"
    )


def check_workspace(cfg: Config, *, history: bool = False) -> CheckReport:
    """What is wrong with the workspace, and what to know; ``history`` (validate's) adds what
    the run already recorded here means for `resume` (it reads the journal)."""
    rep = CheckReport()
    ws = cfg.path(cfg.paths.workspace)
    if not ws.is_dir():
        rep.errors.append(f"paths.workspace = {cfg.paths.workspace!r} resolves to {ws}, which is not a folder")
        return rep
    rep.info.append(f"workspace: {ws}")
    for rel in cfg.files.frozen:
        if not (ws / rel).is_file():
            rep.errors.append(
                f"frozen file {rel!r} (files.frozen) is missing from {ws}: the evaluation must exist before a run starts"
            )
    for rel in cfg.files.mutable:
        if "*" not in rel and not (ws / rel).is_file():
            rep.warnings.append(f"mutable file {rel!r} (files.mutable) does not exist yet in {ws}")
    overlap = set(cfg.files.frozen) & set(cfg.files.mutable)
    if overlap:
        rep.errors.append(f"files listed both frozen and mutable: {sorted(overlap)}; a file is one or the other")
    from .agents import agent_checks, writes_code

    # An LLM/CLI code agent writes missing mutable files from program.md (or IDEA.md) in cycle 1.
    has_program = any((ws / n).is_file() for n in ("program.md", "IDEA.md"))
    will_write = tuple(cfg.files.mutable) if writes_code(cfg) and has_program else ()
    _check_cmd("train_cmd", cfg.execution.train_cmd, ws, rep, will_write)
    if cfg.execution.eval_cmd:
        _check_cmd("eval_cmd", cfg.execution.eval_cmd, ws, rep, will_write)
    if cfg.execution.prepare_cmd:
        _check_cmd("prepare_cmd", cfg.execution.prepare_cmd, ws, rep)
    if cfg.execution.preload:
        _check_preload(cfg, rep)
    _check_pruning(cfg, rep)
    from .guard import calls_into_ralph_ml

    found = calls_into_ralph_ml(ws, cfg.files.mutable)  # read once for both checks below
    _check_progress_source(cfg, ws, found, rep)
    if cfg.agent_name != "builtin":  # the built-in agent only sets hyperparameters
        kept = required_calls(cfg, ws, found)
        if kept:
            rep.info.append("every code change must keep these calls (files.required_calls): "
                            + "; ".join(f"{name}: {', '.join(calls)}" for name, calls in kept.items()))
    if history:
        _check_history(cfg, rep)
    if not cfg.search_space:
        rep.warnings.append("search_space is empty: the builtin agent can only run the code once")
    if cfg.agents.code_model not in ("builtin",) and not cfg.agents.opencode_model:
        from .agents import available_agents

        if cfg.agent_name not in available_agents() and ":" not in cfg.agent_name:
            rep.errors.append(
                f"agents.code_model = {cfg.agent_name!r} is not available in this release "
                f"(available: {', '.join(available_agents())})"
            )
    errors, warnings = agent_checks(cfg)
    rep.errors += errors
    rep.warnings += warnings
    return rep
