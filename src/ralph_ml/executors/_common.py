"""Pieces the remote executors share: the trial runs the local executor's code on the far side.

A Ray actor or a Slurm job runs ``LocalTrialHandle`` exactly as the local executor does (own
process group, timeout honouring suspended time, SIGTERM -> grace -> SIGKILL, /proc sweep by
token, metrics, frozen-file check, result.json), driven to its end by a thread of its own:
the trial ends, times out and writes its result even while no loop is watching it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..journal import write_json_atomic
from ..records import FailureClass, TrialResult, TrialSpec, TrialStatus
from .local import LocalTrialHandle

# Variables the cluster's scheduler sets on the worker (Ray: num_gpus, Slurm: --gpus-per-node);
# the loop's own GPU pool describes the driver's machine and must not override them.
_SCHEDULER_OWNED = ("CUDA_VISIBLE_DEVICES",)


def for_remote(spec: TrialSpec) -> TrialSpec:
    """``spec`` without the environment the remote scheduler owns (the GPUs it assigned)."""
    if not any(k in spec.env for k in _SCHEDULER_OWNED):
        return spec
    return replace(spec, env={k: v for k, v in spec.env.items() if k not in _SCHEDULER_OWNED})


def spec_from_dict(d: dict[str, Any]) -> TrialSpec:
    """The inverse of ``TrialSpec.to_dict`` (a non-finite ``timeout_s`` travels as a string)."""
    return TrialSpec(
        run_id=str(d["run_id"]),
        cycle=int(d["cycle"]),
        cycle_dir=str(d["cycle_dir"]),
        code_dir=str(d["code_dir"]),
        train_cmd=str(d["train_cmd"]),
        eval_cmd=d.get("eval_cmd"),
        params=dict(d.get("params", {})),
        seed=int(d.get("seed", 0)),
        timeout_s=float(d["timeout_s"]),
        env={str(k): str(v) for k, v in d.get("env", {}).items()},
        frozen_hashes=dict(d.get("frozen_hashes", {})),
    )


def error_result(message: str, started_at: float | None = None) -> TrialResult:
    """A trial the executor lost (not a failure of the trial's own code): a crash with ``message``."""
    now = time.time()
    return TrialResult(
        status=TrialStatus.FAILED,
        failure=FailureClass.CRASH,
        started_at=now if started_at is None else started_at,
        ended_at=now,
        message=message,
    )


class BackgroundTrial:
    """A ``LocalTrialHandle`` waited on by its own thread until it ends.

    ``wait``/``cancel``/``suspend``/``resume`` may be called from any thread; ``result`` is set
    once (the same object ``LocalTrialHandle`` returns, also written to result.json).
    """

    def __init__(self, spec: TrialSpec, *, kill_grace_s: float, metrics_pattern: str) -> None:
        self.spec = spec
        self.handle = LocalTrialHandle(spec, kill_grace_s=kill_grace_s, metrics_pattern=metrics_pattern)
        self.result: TrialResult | None = None
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ralph-trial-{spec.cycle}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self.handle.wait(None)
        except BaseException as exc:  # noqa: BLE001 - reported as the trial's result, never lost
            self.result = error_result(f"the trial could not be observed: {type(exc).__name__}: {exc}")
        finally:
            self._ended.set()

    def wait(self, timeout: float | None = None) -> TrialResult | None:
        self._ended.wait(timeout)
        return self.result

    def cancel(self) -> TrialResult:
        self.handle.cancel()
        self._ended.wait()
        assert self.result is not None
        return self.result

    def suspend(self) -> None:
        self.handle.suspend()

    def resume(self) -> None:
        self.handle.resume()


class ControlFile:
    """Declarative requests from the loop to a trial running elsewhere on a shared filesystem.

    The loop writes ``{"cancel": bool, "suspended": bool}`` atomically; the far side reads it
    when it changed. (Separate from the trial's own ``control.json``, which asks the trial's
    code to stop cooperatively.)
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._state: dict[str, bool] = {"cancel": False, "suspended": False}

    def write(self, **state: bool) -> None:
        merged = {**self.read(force=True), **state}
        write_json_atomic(self.path, merged)
        self._state = merged

    def read(self, *, force: bool = False) -> dict[str, bool]:
        try:
            st = os.stat(self.path)
        except OSError:
            return dict(self._state)
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if force or key != self._key:
            try:
                data: Any = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return dict(self._state)  # half-written by another host: read it next time
            if isinstance(data, dict):
                self._state = {"cancel": bool(data.get("cancel")), "suspended": bool(data.get("suspended"))}
                self._key = key
        return dict(self._state)
