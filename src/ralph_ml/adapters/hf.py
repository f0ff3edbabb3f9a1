"""Hugging Face ``transformers.Trainer``: a ``TrainerCallback`` that reports and stops.

::

    from ralph_ml.adapters.hf import RalphCallback

    trainer = Trainer(model=model, args=TrainingArguments(..., logging_steps=10,
                      eval_strategy="epoch"), train_dataset=..., eval_dataset=...,
                      callbacks=[RalphCallback()])
    trainer.train()
    # progress.jsonl: one row per log call: {"step": global_step, "loss": ..., "eval_loss": ...}
    # metrics.json:   the latest value of every logged metric

Install: ``pip install 'ralph-ml[hf]'`` (transformers with PyTorch and accelerate).
"""

from __future__ import annotations

from typing import Any

from .. import trial
from ._common import missing_extra, scalars

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:
    raise missing_extra("transformers", "hf", exc) from exc

__all__ = ["RalphCallback"]


class RalphCallback(TrainerCallback):
    """Reports every ``Trainer.log`` call; sets ``control.should_training_stop`` on request.

    - ``trial.report(state.global_step, **logs)`` on each log: training logs every
      ``logging_steps`` (``loss``, ``learning_rate``, ``grad_norm``, ``epoch``), evaluation
      results (``eval_loss``, ``eval_<metric>``), and the end-of-training summary.
    - ``control.should_training_stop = True`` when a report says the loop asked to stop,
      and after any optimizer step once ``{"action": "stop"}`` is in
      ``$RALPH_CONTROL_PATH``; the Trainer then ends training as if it were done.
    - ``trial.log_metrics(**latest value of each logged metric)`` when training ends
      (``log_final=False``: not).

    With several processes only the main one (``state.is_world_process_zero``) writes, and
    the stop decision is combined across processes at every step end (an all-reduce of one
    number, as Lightning's ``reduce_boolean_decision``): a stop only the main process sees
    (its report met the target) stops them all at the same step, instead of leaving the
    others waiting at the next gradient sync.
    """

    def __init__(self, *, log_final: bool = True) -> None:
        self.log_final = log_final
        self.latest: dict[str, float] = {}  # the latest value of each logged metric
        self.asked = False  # a report on this process returned True

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        logs: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        metrics = scalars(logs)
        self.latest.update(metrics)
        if state.is_world_process_zero:
            self.asked = trial.report(state.global_step, **metrics) or self.asked
        if self.asked and trial.world_size() == 1:  # one process: stop at once (several: at the step end, together)
            control.should_training_stop = True

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if any_process(self.asked or trial.should_stop()):
            control.should_training_stop = True

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.log_final and self.latest and state.is_world_process_zero:
            trial.log_metrics(**self.latest)


def any_process(flag: bool) -> bool:
    """``flag`` or-ed over every process of the ``torch.distributed`` group (itself with one)."""
    return trial.any_process(flag)
