"""Tracking sinks (MLflow, TensorBoard, W&B) fed by the event bus; each optional and fail-soft.

``observability.logger`` names the sinks (``"mlflow"`` or ``["mlflow", "tensorboard"]``).
Each lives behind an extra (``pip install 'ralph-ml[mlflow]'``); a named sink whose package
is missing is reported once and the run goes on without it. A sink that raises is logged by
the bus and keeps receiving events; the loop never stops for a tracker.
"""

from __future__ import annotations

import importlib.util
import logging

from ..config import Config
from ..events import EventBus
from .base import CycleData, SinkError, TrackingSink

log = logging.getLogger("ralph_ml.sinks")

__all__ = ["CycleData", "SinkError", "TrackingSink", "build_sinks"]

# logger name -> (module that must import, what to install)
REQUIRES = {
    "mlflow": ("mlflow", "pip install 'ralph-ml[mlflow]'"),
    "tensorboard": ("tensorboard", "pip install 'ralph-ml[tensorboard]'"),
    "wandb": ("wandb", "pip install 'ralph-ml[wandb]'"),
}


def _sink(name: str, cfg: Config, run_id: str) -> TrackingSink:
    if name == "mlflow":
        from .mlflow_sink import MlflowSink

        return MlflowSink(cfg, run_id)
    if name == "tensorboard":
        from .tensorboard_sink import TensorboardSink

        return TensorboardSink(cfg, run_id)
    from .wandb_sink import WandbSink

    return WandbSink(cfg, run_id)


def build_sinks(cfg: Config, run_id: str, bus: EventBus) -> list[TrackingSink]:
    """The sinks named by ``observability.logger`` whose package is installed."""
    out: list[TrackingSink] = []
    for name in dict.fromkeys(cfg.observability.logger):  # in order, once each
        if name not in REQUIRES:  # "stdout": the CLI already renders events
            continue
        module, install = REQUIRES[name]
        if importlib.util.find_spec(module) is None:
            msg = f"observability.logger includes {name!r} but {module} is not installed: {install}. The run continues without it."
            bus.failures[name] = msg
            log.warning("%s", msg)
            continue
        out.append(_sink(name, cfg, run_id))
    return out
