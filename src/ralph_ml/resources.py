"""The resource pool: which GPUs and how many CPU threads each concurrent trial gets.

Two trials never share a GPU by accident: each trial holds its GPU ids until it ends, and
sees only them through ``CUDA_VISIBLE_DEVICES``. CPU threads are passed as the usual
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (read by PyTorch, NumPy and friends).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Union

from .errors import ConfigError, ExecutorError


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
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [i for i, _ in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


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
