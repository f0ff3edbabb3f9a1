"""The resource pool: which GPUs and how many CPU threads each concurrent trial gets.

Two trials never share a GPU by accident: each trial holds its GPU ids until it ends, and
sees only them through ``CUDA_VISIBLE_DEVICES``. CPU threads are passed as the usual
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (read by PyTorch, NumPy and friends).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

from .errors import ConfigError, ExecutorError

if TYPE_CHECKING:
    from .config import Config


log = logging.getLogger(__name__)

GpuId = Union[int, str]  # an index (0, 1, ...) or a UUID (GPU-..., MIG-...), as CUDA_VISIBLE_DEVICES takes them


def is_gpu_id(text: str) -> bool:
    """An index (``"0"``) or a UUID (``"GPU-..."``, ``"MIG-..."``), as CUDA_VISIBLE_DEVICES takes them."""
    return text.isdigit() or text.startswith(("GPU-", "MIG-"))


def parse_visible_devices(visible: str) -> list[GpuId]:
    """The GPUs a ``CUDA_VISIBLE_DEVICES`` value makes visible, as CUDA reads it: indices and
    ``GPU-``/``MIG-`` UUIDs, up to the first entry that is neither (``-1`` hides the rest)."""
    out: list[GpuId] = []
    for raw in visible.split(","):
        x = raw.strip()
        if not is_gpu_id(x):
            break
        out.append(int(x) if x.isdigit() else x)
    return out


def detect_gpus() -> list[GpuId]:
    """GPU ids visible to this process: CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return parse_visible_devices(visible)
    if shutil.which("nvidia-smi") is None:
        if os.path.exists("/dev/nvidia0"):
            log.warning("execution.gpus = \"auto\": this machine has NVIDIA devices (/dev/nvidia0) but no nvidia-smi "
                        "to list them, so trials get no GPU from the pool; list them in execution.gpus")
        return []
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = f"{type(exc).__name__}: {exc}"
    else:
        if proc.returncode == 0:
            return [i for i, _ in enumerate(ln for ln in proc.stdout.splitlines() if ln.startswith("GPU "))]
        why = f"exit code {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}"
    log.warning("execution.gpus = \"auto\": `nvidia-smi -L` failed (%s), so the pool has no GPU and trials are not "
                "pinned to one (CUDA_VISIBLE_DEVICES unset); fix the driver or list the GPUs in execution.gpus", why)
    return []


def default_cpus_per_trial(concurrency: int) -> int | None:
    """Threads per trial when ``execution.cpus_per_trial`` is unset: none set for one trial at a
    time (the libraries take every core), this machine's cores split evenly for K > 1 (K trials
    with a thread per core each would oversubscribe the cores K times)."""
    if concurrency <= 1:
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // concurrency)


@dataclass(frozen=True)
class Allocation:
    gpus: tuple[GpuId, ...] = ()
    cpus: int | None = None

    def env(self, pool_has_gpus: bool) -> dict[str, str]:
        out: dict[str, str] = {}
        if pool_has_gpus:
            # A trial that asked for no GPU sees none, rather than all of them.
            out["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in self.gpus)
        if self.cpus is not None:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RALPH_NUM_THREADS"):
                out[var] = str(self.cpus)
        return out


@dataclass
class ResourcePool:
    gpus: list[GpuId] = field(default_factory=list)
    gpus_per_trial: int = 0
    cpus_per_trial: int | None = None
    _free: list[GpuId] = field(default_factory=list, init=False)
    _held: dict[int, Allocation] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if len(set(self.gpus)) != len(self.gpus):
            raise ConfigError(f"execution.gpus lists a GPU twice: {self.gpus}")
        self._free = list(self.gpus)

    @classmethod
    def for_concurrency(
        cls, gpus: list[GpuId], gpus_per_trial: int | None, cpus_per_trial: int | None, concurrency: int
    ) -> ResourcePool:
        per = (1 if gpus else 0) if gpus_per_trial is None else gpus_per_trial
        if per > 0 and per * concurrency > len(gpus):
            raise ConfigError(
                f"execution.max_concurrency = {concurrency} trials x execution.gpus_per_trial = {per} needs "
                f"{per * concurrency} GPUs, but the pool has {len(gpus)} (execution.gpus = {gpus}). "
                "Lower max_concurrency or gpus_per_trial, or list more GPUs."
            )
        return cls(gpus=list(gpus), gpus_per_trial=per, cpus_per_trial=cpus_per_trial)

    def allocate(self, cycle: int) -> Allocation:
        if cycle in self._held:  # a second allocation would lose the first's GPUs for the rest of the run
            raise ExecutorError(f"cycle {cycle} already holds {list(self._held[cycle].gpus)} from the resource pool")
        if len(self._free) < self.gpus_per_trial:
            raise ExecutorError(
                f"no free GPU for cycle {cycle}: {self.gpus_per_trial} needed, free {self._free}, "
                f"held {{{', '.join(f'{c}: {list(a.gpus)}' for c, a in self._held.items())}}}"
            )
        take, self._free = self._free[: self.gpus_per_trial], self._free[self.gpus_per_trial :]
        alloc = Allocation(gpus=tuple(take), cpus=self.cpus_per_trial)
        self._held[cycle] = alloc
        return alloc

    def release(self, cycle: int) -> None:
        alloc = self._held.pop(cycle, None)
        if alloc is not None:
            self._free = sorted(self._free + list(alloc.gpus), key=self.gpus.index)

    @property
    def has_gpus(self) -> bool:
        return bool(self.gpus)


def pool_for(cfg: Config) -> ResourcePool:
    """The pool of GPUs and CPU threads the trials of ``cfg`` are given (``[execution]``)."""
    ex = cfg.execution
    # GPUs "auto" means this machine's; with ray/slurm the cluster assigns the trial's GPUs.
    local_gpus = detect_gpus() if ex.mode == "local" else []
    cpus = ex.cpus_per_trial
    if cpus is None and ex.mode == "local":  # on a cluster, the trial's node has cores of its own
        cpus = default_cpus_per_trial(ex.max_concurrency)
    return ResourcePool.for_concurrency(local_gpus if ex.gpus == "auto" else list(ex.gpus), ex.gpus_per_trial, cpus,
                                        ex.max_concurrency)
