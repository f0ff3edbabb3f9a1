"""Tracking sinks (MLflow, TensorBoard, W&B) fed by the event bus; each optional and fail-soft."""

from __future__ import annotations

import logging
from typing import Any

from ..config import Config
from ..events import EventBus

log = logging.getLogger("ralph_ml.sinks")

__all__ = ["build_sinks"]


def build_sinks(cfg: Config, run_id: str, bus: EventBus) -> list[Any]:
    """The sinks named by ``observability.logger``. None ship in this release: a named one is
    reported once in the event stream and the run goes on without it."""
    name = cfg.observability.logger
    if name in ("none", "", "stdout"):
        return []
    bus.failures[name] = f"observability.logger = {name!r} is not available in this release; the run continues without it"
    log.warning(bus.failures[name])
    return []
