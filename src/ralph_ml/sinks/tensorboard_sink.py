"""TensorBoard (written with tensorboardX: no TensorFlow, no torch) under
``<observability.tensorboard.log_dir>/<run_id>/``:

- ``cycles/<metric>``        every result metric per cycle (x = cycle), plus
  ``cycles/best_<target>``, ``cycles/duration_s`` and ``cycles/kept``
- ``cycle_NNNN/<metric>``    each progress.jsonl row of that cycle (x = reported step)
- text ``cycle_NNNN``         verdict, status, params

View: ``tensorboard --logdir runs/tensorboard`` (``pip install tensorboard``).
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from .base import CycleData, MarkerFile, TrackingSink


class TensorboardSink(TrackingSink):
    name = "tensorboard"
    extra = "tensorboard"

    def __init__(self, cfg: Config, run_id: str) -> None:
        super().__init__(cfg, run_id)
        self.log_dir = cfg.path(cfg.observability.tensorboard.log_dir) / run_id
        self.marker = MarkerFile(self.log_dir / ".ralph_logged.json")
        self.writer: Any = None

    def open(self, resumed: bool) -> None:
        from tensorboardX import SummaryWriter  # type: ignore[import-untyped,unused-ignore]

        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(logdir=str(self.log_dir), flush_secs=30)

    def logged_cycles(self) -> set[int]:
        return self.marker.read()

    def log_cycle(self, d: CycleData) -> None:
        w, r, t = self.writer, d.record, self.cfg.target
        wall = r.result.ended_at or None
        for k, v in d.finite_metrics().items():
            w.add_scalar(f"cycles/{k}", v, d.cycle, walltime=wall)
        if d.best is not None and d.best.metric is not None:
            w.add_scalar(f"cycles/best_{t.name}", float(d.best.metric), d.cycle, walltime=wall)
        w.add_scalar("cycles/duration_s", r.result.duration_s, d.cycle, walltime=wall)
        w.add_scalar("cycles/kept", float(r.kept), d.cycle, walltime=wall)
        for step, ts, vals in d.steps():
            for k, v in vals.items():
                w.add_scalar(f"{d.tag}/{k}", v, step, walltime=ts)
        params = ", ".join(f"{k}={v}" for k, v in d.params.items())
        metric = "n/a" if r.metric is None else f"{r.metric:.6g}"
        w.add_text(d.tag, f"**{r.verdict}** ({r.result.status.value}) {t.name} = {metric}  \nparams: {params}", d.cycle, walltime=wall)
        w.flush()
        self.marker.add(d.cycle)

    def stopped(self, decision: dict[str, Any], exit_code: int | None) -> None:
        self.writer.add_text("run", f"stopped: **{decision.get('reason')}** (exit {exit_code}): {decision.get('message', '')}")
        self.writer.flush()

    def shutdown(self, finished: bool) -> None:
        self.writer.close()
