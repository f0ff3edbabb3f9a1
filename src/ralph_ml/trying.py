"""``ralph-ml try``: one trial of the experiment, outside any run, and what the loop would see of it.

The trial runs as a cycle would (the workspace snapshot, the proposal's params over the search
space's defaults, an optional patch through the same guards, the configured executor, the
trial environment and time limit), in ``runs/.try/<time>-seed<S>/`` with a cycle's layout, while its
output is shown. Nothing of a run is read or written: the journal, the state and the cycles stay
as they are. Then it says what the loop would record (status, metrics and where they came
from, the target) and what the compute-saving machinery would have to work with: the learning
curve in ``progress.jsonl``, the metric the pruners read, the stop at the target.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .analysis import read_progress
from .checks import check_workspace, required_calls
from .config import Config
from .cyclefiles import classify, trial_env
from .errors import ConfigError, GuardRejected, WorkspaceError
from .executors import Executor, get_executor
from .guard import guard_patch
from .hashing import hash_files
from .live import fmt_metric
from .metrics import read_metrics
from .records import TrialResult, TrialSpec, TrialStatus
from .resources import pool_for
from .runfiles import loop_alive, read_state
from .stdout_curve import LogFollower, StdoutCurve
from .workspace import snapshot

TRY_FOLDER = ".try"  # under paths.runs: never a cycle_NNNN, so no run reads it
_POLL_S = 0.2


@dataclass
class Tried:
    """What one try gave: the result as the loop would record it, and where its files are."""

    result: TrialResult
    value: float | None  # the target metric, None when the loop would record no score
    folder: Path
    seed: int

    @property
    def exit_code(self) -> int:
        return 0 if self.result.status is TrialStatus.OK and self.value is not None else 1


def parse_params(text: str | None, cfg: Config) -> dict[str, Any]:
    """``--params`` (a JSON object) checked against the search space, over its defaults."""
    from .agents.openai_agent import baseline, validate_params
    from .agents._text import ReplyInvalid

    # The baseline's values (typed as the space says), or the defaults there are when some param has none.
    out = baseline(cfg.search_space) or {name: p.default for name, p in cfg.search_space.items() if p.default is not None}
    if not text:
        return out
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--params {text!r} is not JSON ({exc}); give an object, e.g. --params '{{\"lr\": 0.01}}'") from None
    try:
        return {**out, **validate_params(raw, cfg.search_space)}
    except ReplyInvalid as exc:
        raise ConfigError(f"--params {text!r}: {exc}") from None


def try_seeds(cfg: Config, params: dict[str, Any], patch: str | None = None, *, seeds: int = 1,
              say: Callable[[str], None] = print) -> list[Tried]:
    """``try_once`` with seeds ``project.seed + 0 .. seeds - 1`` (``RALPH_SEED``, as noise repeats
    run, on one executor), then the run-to-run noise of the target metric and what it means for keeps."""
    tried = []
    executor = _executor(cfg, cfg.path(cfg.paths.runs) / TRY_FOLDER / "preload.log")  # one warm server for all seeds
    try:
        for k in range(seeds):
            if seeds > 1:
                say(f"── seed {cfg.project.seed + k} ({k + 1} of {seeds})")
            tried.append(try_once(cfg, params, patch, seed=cfg.project.seed + k, say=say, executor=executor))
    finally:
        executor.close()
    if seeds > 1:
        for line in noise_lines(cfg, tried):
            say(line)
    return tried


def noise_lines(cfg: Config, tried: list[Tried]) -> list[str]:
    """The seeds' target metrics, their spread, and the gain a single run needs to be more than noise."""
    t = cfg.target
    seeds = ", ".join(str(x.seed) for x in tried)
    values = [x.value for x in tried if x.value is not None]
    shown = ", ".join(fmt_metric(x.value) if x.value is not None else x.result.status.value for x in tried)
    if len(values) < 2:
        return [f"seeds {seeds}: {t.name} {shown}; fewer than two scored, so no run-to-run noise to measure"]
    mean = sum(values) / len(values)
    sigma = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    bar = noise_bar(cfg, sigma)
    delta = cfg.safeguards.min_improvement_delta
    lines = [f"seeds {seeds}: {t.name} {shown} → mean {fmt_metric(mean)}, run-to-run noise σ {sigma:.4g}"]
    if bar > delta:
        lines.append(f"   between two single runs a gain under {bar:.4g} (noise.z = {cfg.noise.z:g} x σ x √2) is within the "
                     f"noise, and safeguards.min_improvement_delta = {delta:g} would keep it: set [noise] confirm_repeats "
                     "(and baseline_repeats) to keep only gains over the noise, or raise min_improvement_delta")
    else:
        lines.append(f"   safeguards.min_improvement_delta = {delta:g} is over the noise bar {bar:.4g} "
                     f"(noise.z = {cfg.noise.z:g} x σ x √2): a kept gain is more than noise")
    return lines


def noise_bar(cfg: Config, sigma: float) -> float:
    """z x the noise of the difference of two single runs."""
    return cfg.noise.z * sigma * math.sqrt(2.0)


def _executor(cfg: Config, preload_log: Path) -> Executor:
    """The configured executor, its warm-start server's log (if any) at ``preload_log``, not the run's."""
    ex = cfg.execution
    options = cfg.executor_options()
    if "preload_log" in options:
        options["preload_log"] = preload_log
        preload_log.parent.mkdir(parents=True, exist_ok=True)
    return get_executor(ex.mode, kill_grace_s=ex.kill_grace_s, metrics_pattern=ex.metrics_pattern, **options)


def try_once(cfg: Config, params: dict[str, Any], patch: str | None = None, *, seed: int | None = None,
             say: Callable[[str], None] = print, stream: Callable[[str], None] | None = None,
             executor: Executor | None = None) -> Tried:
    """Run one trial with ``params`` (and ``patch``) and describe it through ``say``.

    ``seed``: its ``RALPH_SEED`` (default ``project.seed``). ``stream`` gets the trial's
    stdout/stderr lines as they are written (default: ``say``). Raises ``WorkspaceError`` when
    the workspace is not ready and ``GuardRejected`` for a patch the guard refuses (nothing has
    run then)."""
    stream = stream or say
    seed = cfg.project.seed if seed is None else seed
    rep = check_workspace(cfg)
    if not rep.ok:
        raise WorkspaceError("the workspace is not ready:\n  - " + "\n  - ".join(rep.errors))
    ws = cfg.path(cfg.paths.workspace)
    runs = cfg.path(cfg.paths.runs)
    state = read_state(cfg.path(cfg.paths.state))
    if state.get("status") in ("running", "paused") and loop_alive(state):
        say("warning: a run of this experiment is in progress: this trial shares its machine, CPUs and GPUs")
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}"
    folder = runs / TRY_FOLDER / stamp
    n = 1
    while folder.exists():
        n += 1
        folder = runs / TRY_FOLDER / f"{stamp}-{n}"
    code = folder / "code"
    (folder / "logs").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    snapshot(ws, code, exclude=cfg.files.exclude,
             skip=[runs, cfg.path(cfg.paths.reports), cfg.path(cfg.paths.state)])
    if patch:
        (folder / "patch.diff").write_text(patch)
        try:
            guard_patch(code, patch, mutable=[*cfg.files.mutable, "PLAN.md"], frozen=cfg.files.frozen,
                        required_calls=required_calls(cfg, ws))
        except GuardRejected as exc:
            raise GuardRejected(f"{exc} The patch is in {folder / 'patch.diff'}; nothing ran.") from None
    (folder / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    ex = cfg.execution
    own = executor is None
    if executor is None:
        executor = _executor(cfg, folder / "logs" / "preload.log")
    pool = pool_for(cfg)
    alloc = pool.allocate(0)
    spec = TrialSpec(
        run_id=f"try-{folder.name}", cycle=0, cycle_dir=str(folder), code_dir=str(code),
        train_cmd=ex.train_cmd, eval_cmd=ex.eval_cmd, params=params, seed=seed,
        timeout_s=cfg.safeguards.time_limit_per_cycle_minutes * 60,
        env={**trial_env(cfg, f"try-{folder.name}", 0, folder, params), **alloc.env(pool.has_gpus), "RALPH_SEED": str(seed)},
        frozen_hashes=hash_files(code, cfg.files.frozen),
    )
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "none"
    say(f"trying one trial in {folder} ({ex.mode} executor, time limit {spec.timeout_s:g} s)")
    say(f"   params: {shown}" + ("; patch: " + str(folder / "patch.diff") if patch else ""))
    tails = [(LogFollower(folder / "logs" / "stdout.log"), "│ "), (LogFollower(folder / "logs" / "stderr.log"), "┆ ")]
    handle = executor.submit(spec)
    try:
        while (result := handle.wait(_POLL_S)) is None:
            for follower, prefix in tails:
                for line in follower.lines():
                    stream(prefix + line)
    except KeyboardInterrupt:
        handle.cancel()
        result = handle.wait()
        assert result is not None
    finally:
        for follower, prefix in tails:
            for line in follower.lines(final=True):
                stream(prefix + line)
        if own:
            executor.close()
        pool.release(0)
    result, value = classify(result, cfg.target.name)
    tried = Tried(result, value, folder, seed)
    for line in describe(cfg, tried):
        say(line)
    return tried


def describe(cfg: Config, tried: Tried) -> list[str]:
    """What the loop would record of the trial, and what pruning could work with."""
    r, folder, t = tried.result, tried.folder, cfg.target
    took = f"{r.duration_s:.1f} s (train {r.train_seconds:.1f} s" + (f", eval {r.eval_seconds:.1f} s)" if r.eval_seconds else ")")
    lines = [f"trial {r.status_text()} in {took}"]
    if r.message:
        lines.append(f"   {r.message}")
    if r.status is not TrialStatus.OK and r.stderr_tail.strip():
        lines += ["   stderr (last lines):"] + [f"   ┆ {x}" for x in r.stderr_tail.rstrip().splitlines()[-8:]]
    source = read_metrics(folder / "metrics.json", folder / "logs" / "stdout.log", cfg.execution.metrics_pattern).source
    if r.metrics:
        shown = ", ".join(f"{k} = {_number(v)}" for k, v in sorted(r.metrics.items()))
        lines.append(f"metrics (from {source}): {shown}")
    else:
        lines.append("metrics: none found (no metrics.json with numbers, no `name: value` line on stdout)")
    if tried.value is not None:
        met = t.dir.meets(tried.value, t.value)
        lines.append(f"target {t.describe()}: {'met' if met else 'not met'} ({t.name} = {fmt_metric(tried.value)})")
    elif r.status is TrialStatus.OK or t.name not in r.metrics:
        lines.append(f"target {t.describe()}: no score; the loop would record this trial as "
                     f"{r.status.value} ({r.failure.value}), never as a score of 0")
    lines += _curve_lines(cfg, folder, r)
    kept = [f for f in ("logs/stdout.log", "logs/stderr.log", "progress.jsonl", "metrics.json") if (folder / f).exists()]
    lines.append(f"files: {folder} ({', '.join(kept) or 'no output'}); `rm -r {folder.parent}` removes every try")
    return lines


def _printed_curve(stdout_log: Path) -> tuple[str, int] | None:
    """The step key (epoch, step, ...) under which the printed output reads as the most curve
    rows, and how many, when ``execution.stdout_progress`` would find one."""
    lines = LogFollower(stdout_log).lines(final=True)
    best: tuple[str, int] | None = None
    for key in ("epoch", "step", "iteration", "iter"):
        curve = StdoutCurve(stdout_log, stdout_log, key)  # parse() only: nothing is written
        n = sum(1 for line in lines if curve.parse(line) is not None)
        if n >= 2 and (best is None or n > best[1]):
            best = (key, n)
    return best


def _number(v: float) -> str:
    """A metric as the plain output shows it, a count (epochs_run, num_params) without decimals."""
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else fmt_metric(v)


def _curve_lines(cfg: Config, folder: Path, r: TrialResult) -> list[str]:
    rows = read_progress(folder / "progress.jsonl")
    metric = cfg.pruning_metric
    pruner = cfg.pruning.pruner != "none"
    if not rows:
        why = ("a pruner would never stop it, and it" if pruner else "It")
        printed = _printed_curve(folder / "logs" / "stdout.log")
        hint = (f"its stdout has one: execution.stdout_progress = \"{printed[0]}\" would read {printed[1]} rows of it"
                if printed else "or set execution.stdout_progress if the script prints it")
        return [f"learning curve: none (no progress.jsonl rows). {why} cannot be stopped at the target either: "
                f"report one with trial.report(step, ...) or an adapter, {hint}"]
    steps = [int(row["step"]) for row in rows if isinstance(row.get("step"), (int, float))]
    names = sorted({k for row in rows for k in row} - {"step", "time"})
    lines = [f"learning curve: {len(rows)} rows in progress.jsonl"
             + (f", steps {min(steps)}-{max(steps)}" if steps else "") + f": {', '.join(names)}"]
    seen = [(row.get("step"), row[metric]) for row in rows if metric in row]
    if seen:
        step, last = seen[-1]
        shown = fmt_metric(float(last)) if isinstance(last, (int, float)) else str(last)
        lines.append(f"   {metric} (what {'the pruner' if pruner else 'a pruner'} reads) at {len(seen)} steps, "
                     f"last {shown} at step {step}")
    else:
        lines.append(f"   no row reports {metric} (pruning.metric, else the target metric): "
                     f"{'the pruner' if pruner else 'a pruner'} would have nothing to judge this trial on")
    if r.stopped_by == "target":
        lines.append(f"   it stopped at step {r.stopped_at_step}, where its reported {cfg.target.name} met the target "
                     "(pruning.stop_at_target)")
    return lines
