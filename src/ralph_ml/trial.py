"""The in-trial helper API: what a training script calls to talk to the loop.

A trial is a plain script. The loop runs it with ``RALPH_*`` environment variables; this
module turns them into a few calls::

    from ralph_ml import trial

    cfg = trial.params({"lr": 1e-3, "epochs": 20})   # the baseline, overridden per cycle
    torch.manual_seed(trial.seed())
    for epoch in range(cfg["epochs"]):
        ...
        if trial.report(epoch, train_loss=loss):     # progress.jsonl; True = asked to stop
            break
    trial.log_metrics(val_accuracy=acc)              # metrics.json {"result": {...}}

Outside the loop (``python train.py``) every call still works: ``params`` returns the
defaults, ``report`` does nothing, ``log_metrics`` writes ``./metrics.json``.

Environment contract (set by the executor for each trial):

=====================  ==========================================================
RALPH_RUN_ID           id of the run (``ralph-ml start``)
RALPH_CYCLE            cycle number, 1-based
RALPH_RUN_DIR          the cycle folder, ``runs/cycle_NNNN``
RALPH_PARAMS           path to ``params.json``: a JSON object, name -> value
RALPH_PARAM_<NAME>     each parameter as a string (for shell scripts)
RALPH_SEED             the seed to use
RALPH_METRICS_PATH     where ``metrics.json`` goes
RALPH_CHECKPOINT_DIR   where checkpoints go
RALPH_DATA_DIR         shared data folder (downloads, caches)
RALPH_PROGRESS_PATH    ``progress.jsonl``, one JSON object per ``report`` call
RALPH_CONTROL_PATH     a JSON file the loop writes ``{"action": "stop"}`` into
RALPH_STOP_AT_TARGET   ``{"name", "value", "direction"}`` of the target, when
                       ``pruning.stop_at_target`` is on: ``report`` returns True
                       once the reported target metric meets it, and writes
                       ``stopped.json`` into ``$RALPH_RUN_DIR`` (the step, the
                       metric and its value), which the executor records
=====================  ==========================================================

This module is imported by every trial, so it uses the standard library only (no torch,
no numpy, no pydantic) and imports in milliseconds.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from .errors import RalphError

__all__ = [
    "TrialError",
    "any_process",
    "checkpoint_dir",
    "cycle",
    "data_dir",
    "log_metrics",
    "params",
    "rank",
    "report",
    "seed",
    "should_stop",
    "world_size",
]

# Outside the loop the helpers fall back to these paths, relative to the working directory.
_STANDALONE_METRICS = "metrics.json"
_STANDALONE_CHECKPOINTS = "checkpoints"
_STANDALONE_DATA = "data"
STOPPED_FILE = "stopped.json"  # in $RALPH_RUN_DIR: the step where report() saw the target met


class TrialError(RalphError):
    """The trial's environment or arguments cannot be used (bad params.json, bad metric value)."""


# --------------------------------------------------------------------------- parameters


def params(defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The hyperparameters of this trial: ``defaults`` updated with ``$RALPH_PARAMS``.

    A value whose name has a default is cast to the default's type (``64.0`` -> ``64`` when
    the default is an int; ``"true"`` -> ``True`` when it is a bool). Names without a default
    are passed through as the JSON holds them. Outside the loop: a copy of ``defaults``.
    """
    out: dict[str, Any] = dict(defaults or {})
    path = os.environ.get("RALPH_PARAMS")
    if not path:
        return out
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrialError(
            f"RALPH_PARAMS points to {path}, which does not exist. Unset RALPH_PARAMS to run "
            "with the defaults, or point it to a params.json file."
        ) from None
    except json.JSONDecodeError as exc:
        raise TrialError(f"{path} (RALPH_PARAMS) is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise TrialError(f"{path} (RALPH_PARAMS) must hold a JSON object name -> value, got {type(raw).__name__}")
    for name, value in raw.items():
        out[name] = _cast(name, value, out[name]) if out.get(name) is not None else value
    return out


def _cast(name: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default``; TrialError when that would lose data."""
    kind = type(default)
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)) or (isinstance(value, float) and value in (0.0, 1.0)):
                return bool(value)
            raise ValueError(value)
        if isinstance(default, int):
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float):
                if not number.is_integer():
                    raise ValueError(value)
                return kind(int(number))
            if isinstance(number, int) and not isinstance(number, bool):
                return kind(number)
            raise ValueError(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return kind(value)
        if isinstance(default, str):
            return value if isinstance(value, str) else str(value)
    except (TypeError, ValueError):
        raise TrialError(
            f"parameter {name!r} = {value!r} cannot be used as {kind.__name__} (the type of its "
            f"default {default!r}). Fix the search space or the default in train.py."
        ) from None
    return value  # lists, dicts and other defaults: taken as the JSON holds it


def seed() -> int:
    """The seed of this trial (``$RALPH_SEED``), 0 outside the loop."""
    return _int_env("RALPH_SEED") or 0


def cycle() -> int | None:
    """The cycle number (``$RALPH_CYCLE``), None outside the loop."""
    return _int_env("RALPH_CYCLE")


def checkpoint_dir() -> Path:
    """Where to save checkpoints (``$RALPH_CHECKPOINT_DIR``, else ``./checkpoints``); created."""
    path = Path(os.environ.get("RALPH_CHECKPOINT_DIR") or _STANDALONE_CHECKPOINTS)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """The shared data folder (``$RALPH_DATA_DIR``, else ``./data``); not created."""
    return Path(os.environ.get("RALPH_DATA_DIR") or _STANDALONE_DATA)


def _int_env(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise TrialError(f"${name} = {raw!r} is not an integer; unset it or set a whole number.") from None


# --------------------------------------------------------------------------- progress


def rank() -> int:
    """This process's rank in a distributed trial, 0 when it runs alone: ``torch.distributed``'s
    when it is initialized, else JAX's (``jax.process_index()`` once ``jax.distributed`` is
    initialized, as ``keras.distribution.initialize`` does on the JAX backend), else the
    MPI's (``COMM_WORLD`` once ``mpi4py.MPI`` is imported), else the launcher's (``RANK`` of
    torchrun, ``OMPI_COMM_WORLD_RANK``, ``PMI_RANK``, ``SLURM_PROCID`` of srun)."""
    return _process_number("get_rank", "process_index", "Get_rank", ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"), 0)


def world_size() -> int:
    """How many processes the trial runs as, 1 when it runs alone: ``torch.distributed``'s
    world size when it is initialized, else ``jax.process_count()`` once ``jax.distributed``
    is, else MPI's ``COMM_WORLD`` size once ``mpi4py.MPI`` is imported, else the launcher's
    (``WORLD_SIZE`` of torchrun, ``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE``, ``SLURM_NTASKS`` of
    srun). Asks no other process."""
    return _process_number("get_world_size", "process_count", "Get_size", ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"), 1)


def _process_number(torch_fn: str, jax_fn: str, mpi_fn: str, launcher_vars: tuple[str, ...], alone: int) -> int:
    """A rank or a size: from torch.distributed, else jax.distributed, else MPI, else the first
    launcher variable that holds one (a size must be at least 1), else ``alone``."""
    dist = _torch_distributed()
    if dist is not None:
        return int(getattr(dist, torch_fn)())
    jax = _jax_distributed()
    if jax is not None:
        return int(getattr(jax, jax_fn)())
    mpi = _mpi()
    if mpi is not None:
        return int(getattr(mpi.COMM_WORLD, mpi_fn)())
    for var in launcher_vars:
        raw = os.environ.get(var, "").strip()
        if raw.isdigit() and int(raw) >= alone:
            return int(raw)
    return alone


def any_process(flag: bool) -> bool:
    """``flag`` or-ed over every process of the trial, so that all of them stop at the same
    step (one that stops alone leaves the others waiting at their next gradient sync): over
    the ``torch.distributed`` group when it is initialized, else over the processes of
    ``jax.distributed``, else over MPI's ``COMM_WORLD`` when the trial imported ``mpi4py.MPI``
    (``mpiexec -n 4 python train.py``; Horovod on MPI). A collective: every process must call
    it at the same point. Without any of them (one process, or another framework) it returns
    ``flag``."""
    dist = _torch_distributed()
    if dist is not None:
        if dist.get_world_size() == 1:
            return flag
        torch = sys.modules["torch"]  # loaded: torch.distributed is (this module imports nothing beyond the stdlib)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)
    jax = _jax_distributed()
    if jax is not None and jax.process_count() > 1:
        np = sys.modules["numpy"]  # loaded: jax is (numpy is a dependency of jax)
        multihost_utils = importlib.import_module("jax.experimental.multihost_utils")
        return bool(np.asarray(multihost_utils.process_allgather(np.array([flag]))).any())
    mpi = _mpi()
    if mpi is not None and mpi.COMM_WORLD.Get_size() > 1:
        return bool(mpi.COMM_WORLD.allreduce(bool(flag), op=mpi.LOR))
    return flag


def _torch_distributed() -> Any | None:
    """``torch.distributed`` when it is loaded and its process group initialized (never imports torch)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def _jax_distributed() -> Any | None:
    """``jax`` when it is loaded and ``jax.distributed`` is initialized (never imports jax, and
    never starts a backend: ``is_initialized`` only looks at the coordinator client)."""
    jax = sys.modules.get("jax")
    is_initialized = getattr(getattr(jax, "distributed", None), "is_initialized", None)
    if jax is None or is_initialized is None or not is_initialized():
        return None
    return jax


def _mpi() -> Any | None:
    """``mpi4py.MPI`` when the trial imported it and MPI is initialized and not finalized (never
    imports it: ``from mpi4py import MPI`` initializes MPI, which a plain trial must not do)."""
    mpi = sys.modules.get("mpi4py.MPI")
    try:
        if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
            return None
    except AttributeError:  # a partly imported module
        return None
    return mpi


def report(step: int, /, **metrics: float) -> bool:
    """Append ``{"step", "time", **metrics}`` to progress.jsonl; True when asked to stop.

    Call it once per epoch (or every N steps) and stop training when it returns True: the
    loop asks a trial to stop when it is pruned (``ralph-ml stop`` terminates trials instead,
    after ``execution.kill_grace_s``), and it returns True at once (no round trip to the loop)
    when ``metrics`` holds the target metric at a value that meets the target
    (``$RALPH_STOP_AT_TARGET``, ``pruning.stop_at_target``). Outside the loop nothing is
    written and it returns False.

    In a distributed trial only process 0 (``rank()``) writes and checks the target; the
    others only read the stop request. To stop them all at the same step, pass the answer
    through ``any_process`` on every process (``adapters.loops.trial_steps`` does).
    Metrics named ``step`` or ``time`` give way to the row's own.
    """
    path = os.environ.get("RALPH_PROGRESS_PATH")
    if path and rank() == 0:
        append_progress(Path(path), json.dumps(progress_row(step, metrics), allow_nan=False) + "\n")
        if _stopped_at is None:
            _check_target(int(step), metrics)
    return should_stop()


def progress_row(step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One progress.jsonl row: the metrics as JSON-safe numbers, then the row's own step and time."""
    return {**_clean(metrics), "step": int(step), "time": time.time()}


def append_progress(path: Path, lines: str) -> None:
    """Append whole lines to progress.jsonl. Open, append, close every time: the loop tails the
    file while the trial runs, and a trial killed mid-way leaves every finished line readable."""
    try:
        fh = open(path, "a+b")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+b")
    with fh:
        end = fh.seek(0, os.SEEK_END)
        if end and os.pread(fh.fileno(), 1, end - 1) != b"\n":
            lines = "\n" + lines  # a line cut off by a killed attempt (then resumed): it stays on its own
        fh.write(lines.encode("utf-8"))
        fh.flush()


_stopped_at: str | None = None  # why report() asked this trial to stop at its target, once it did


def _check_target(step: int, metrics: Mapping[str, Any]) -> None:
    global _stopped_at
    raw = os.environ.get("RALPH_STOP_AT_TARGET")
    if not raw:
        return
    try:
        spec = json.loads(raw)
        name, goal, maximize = str(spec["name"]), float(spec["value"]), {"maximize": True, "minimize": False}[spec["direction"]]
    except (ValueError, TypeError, KeyError):
        raise TrialError(
            f"$RALPH_STOP_AT_TARGET = {raw!r} is not a target ({{\"name\": ..., \"value\": ..., \"direction\": ...}}); "
            "unset it to train to the end."
        ) from None
    if name not in metrics:
        return
    value = float(metrics[name])  # a number: report's _clean has refused anything else
    # records.Direction.meets, written out: importing records (dataclasses) would double this module's import time
    if not math.isfinite(value) or not (value >= goal if maximize else value <= goal):
        return
    op = ">=" if maximize else "<="
    _stopped_at = f"{name} = {value:.6g} at step {step} meets the target ({name} {op} {goal:g})"
    run_dir = os.environ.get("RALPH_RUN_DIR")
    if run_dir:  # the executor puts it in the trial's result: stopped_by = "target", stopped_at_step
        doc = {"by": "target", "step": step, "metric": name, "value": value, "target": goal,
               "direction": spec["direction"], "time": time.time()}
        try:
            _write_atomic(Path(run_dir) / STOPPED_FILE, json.dumps(doc, allow_nan=False) + "\n")
        except OSError as exc:  # the stop itself must not fail: only its record in result.json is lost
            print(f"ralph_ml.trial: could not write {Path(run_dir) / STOPPED_FILE}: {exc}", file=sys.stderr, flush=True)
    print(
        f"ralph_ml.trial: {_stopped_at}: asking this trial to stop here (pruning.stop_at_target = false "
        "trains every trial to its end)",
        file=sys.stderr,
        flush=True,
    )


# (path, inode, mtime_ns, size, answer): the control file is read again only when it changed.
_control_cache: tuple[str, int, int, int, bool] | None = None


def should_stop() -> bool:
    """True when the loop wrote ``{"action": "stop"}`` to ``$RALPH_CONTROL_PATH``.

    Also True from the moment ``report`` saw the target met (``$RALPH_STOP_AT_TARGET``).
    Cheap enough to call every step: one ``os.stat``, and a read only when the file changed.
    """
    global _control_cache
    if _stopped_at is not None:
        return True
    path = os.environ.get("RALPH_CONTROL_PATH")
    if not path:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (path, st.st_ino, st.st_mtime_ns, st.st_size)
    if _control_cache is not None and _control_cache[:4] == key:
        return _control_cache[4]
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return False  # half-written or unreadable: ask again next time, do not cache
    answer = isinstance(data, dict) and data.get("action") == "stop"
    _control_cache = (*key, answer)
    return answer


# --------------------------------------------------------------------------- results


def log_metrics(**metrics: float) -> None:
    """Merge ``metrics`` into the ``"result"`` of metrics.json, written atomically.

    Earlier results and other top-level keys (``"runtime"``, ...) are kept, so training and
    a separate evaluation script can each add theirs. NaN and infinities are written as the
    strings ``"nan"``, ``"inf"``, ``"-inf"`` so the file stays valid JSON. Outside the loop
    the file is ``./metrics.json``. In a distributed trial only process 0 writes it.
    """
    if rank() != 0:
        return
    path = Path(os.environ.get("RALPH_METRICS_PATH") or _STANDALONE_METRICS)
    doc: dict[str, Any] = {}
    if path.exists():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TrialError(f"{path} exists but is not valid JSON ({exc}); delete it or fix it, then rerun.") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("result", {}), dict):
            raise TrialError(
                f"{path} does not have the metrics.json shape {{\"result\": {{...}}}}; delete it or fix it, then rerun."
            )
    result = dict(doc.get("result", {}))
    result.update(_clean(metrics))
    doc["result"] = result
    _write_atomic(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def _as_numbers(metrics: Mapping[str, Any]) -> dict[str, int | float]:
    """Metric values as plain Python numbers (ints and bools as ints): no tensor, nor its graph, kept."""
    out: dict[str, int | float] = {}
    for name, value in metrics.items():
        if isinstance(value, int):  # bool too
            out[name] = int(value)
            continue
        detach = getattr(value, "detach", None)  # a torch loss keeps its graph: float() of it warns
        if callable(detach) and getattr(value, "requires_grad", False):
            value = detach()
        try:
            out[name] = float(value)  # numpy scalars and 0-d tensors have __float__
        except (TypeError, ValueError):
            raise TrialError(f"metric {name!r} = {value!r} is not a number; pass a float (e.g. loss.item()).") from None
    return out


def _clean(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metric values as JSON-safe numbers: ints stay ints, NaN/inf become strings."""
    out: dict[str, Any] = {}
    for name, number in _as_numbers(metrics).items():
        if isinstance(number, float) and math.isnan(number):
            out[name] = "nan"
        elif isinstance(number, float) and math.isinf(number):
            out[name] = "inf" if number > 0 else "-inf"
        else:
            out[name] = number
    return out


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
