"""Weights & Biases: one W&B run per ralph-ml run (its id is the ralph run id, so ``resume``
continues it), offline by default (no network, no API key; ``wandb sync`` uploads later).

- ``cycles/<metric>`` per cycle with ``cycle`` as the x axis (plus best, duration, kept)
- ``cycle_NNNN/<metric>`` per progress.jsonl row with ``cycle_NNNN/step`` as its x axis
- summary: best value and cycle, stop reason, exit code
"""

from __future__ import annotations

import re
from typing import Any

from ..config import Config
from .base import CycleData, MarkerFile, TrackingSink


class WandbSink(TrackingSink):
    name = "wandb"
    extra = "wandb"

    def __init__(self, cfg: Config, run_id: str) -> None:
        super().__init__(cfg, run_id)
        o = cfg.observability.wandb
        self.dir = cfg.path(o.dir) if o.dir else self.state_dir
        self.wandb_id = re.sub(r"[^A-Za-z0-9_-]", "-", run_id)
        self.marker = MarkerFile(self.dir / f".wandb_logged_{self.wandb_id}.json")
        self.run: Any = None

    def open(self, resumed: bool) -> None:
        import wandb

        o, t = self.cfg.observability.wandb, self.cfg.target
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True, x_save_requirements=False)
        self.run = wandb.init(
            project=o.project or self.cfg.project.name,
            entity=o.entity,
            mode=o.mode,
            dir=str(self.dir),
            id=self.wandb_id,
            name=self.run_id,
            resume="allow",
            reinit="create_new",
            config={"target": t.describe(), "target_metric": t.name, "target_value": t.value, "direction": t.dir.value,
                    "search_space": {k: p.model_dump(exclude_none=True) for k, p in self.cfg.search_space.items()}},
            settings=settings,
        )
        self.run.define_metric("cycle")
        self.run.define_metric("cycles/*", step_metric="cycle")

    def logged_cycles(self) -> set[int]:
        return self.marker.read()

    def log_cycle(self, d: CycleData) -> None:
        run, r, t = self.run, d.record, self.cfg.target
        row: dict[str, Any] = {"cycle": d.cycle}
        row.update({f"cycles/{k}": v for k, v in d.finite_metrics().items()})
        if d.best is not None and d.best.metric is not None:
            row[f"cycles/best_{t.name}"] = float(d.best.metric)
        row["cycles/duration_s"] = r.result.duration_s
        row["cycles/kept"] = int(r.kept)
        run.log(row)
        steps = d.steps()
        if steps:
            run.define_metric(f"{d.tag}/*", step_metric=f"{d.tag}/step")
            for step, _, vals in steps:
                run.log({f"{d.tag}/step": step, **{f"{d.tag}/{k}": v for k, v in vals.items()}})
        if r.kept and r.metric is not None:
            run.summary[f"best_{t.name}"] = float(r.metric)
            run.summary["best_cycle"] = d.cycle
        self.marker.add(d.cycle)

    def stopped(self, decision: dict[str, Any], exit_code: int | None) -> None:
        self.run.summary["stop_reason"] = str(decision.get("reason"))
        self.run.summary["stop_message"] = str(decision.get("message", ""))
        self.run.summary["exit_code"] = exit_code

    def shutdown(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)
