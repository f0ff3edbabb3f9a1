"""Keras 3: a ``keras.callbacks.Callback`` that reports to ralph-ml and stops when asked.

::

    from ralph_ml.adapters.keras import RalphCallback

    model.fit(x, y, validation_data=(x_val, y_val), epochs=cfg["epochs"],
              callbacks=[RalphCallback()])
    # progress.jsonl: one row per epoch: loss, accuracy, val_loss, val_accuracy, ...
    # metrics.json:   the last epoch's logs

Install: ``pip install 'ralph-ml[keras]'``. Any Keras 3 backend works (TensorFlow, JAX,
or PyTorch with ``KERAS_BACKEND=torch``); the callback only sees the logs dict.
"""

from __future__ import annotations

from typing import Any

from .. import trial
from ._common import missing_extra, scalars

try:
    import keras
except ImportError as exc:
    raise missing_extra("Keras 3 (`keras`)", "keras", exc) from exc

__all__ = ["RalphCallback"]


class RalphCallback(keras.callbacks.Callback):  # type: ignore[misc]  # keras ships no type hints
    """Reports each epoch's logs; sets ``model.stop_training`` when the loop asks to stop.

    - ``trial.report(epoch + 1, **logs)`` at the end of every epoch (step = epochs
      completed, 1-based), with every scalar in the logs (``loss``, ``val_accuracy``, ...).
    - ``model.stop_training = True`` when that report says the loop asked to stop, and
      after any batch once ``{"action": "stop"}`` is in ``$RALPH_CONTROL_PATH``: Keras
      then ends the epoch early (still validating and calling ``on_epoch_end``) and stops.
    - ``trial.log_metrics(**last epoch's logs)`` when ``fit`` ends (``log_final=False``: not).

    In a distributed trial (``jax.distributed`` under ``keras.distribution.initialize``, or
    ``torch.distributed`` on the torch backend) only process 0 reports and sees a met
    target; every stop decision goes through ``trial.any_process``, so all processes stop
    at the same batch or epoch and none is left waiting at a gradient sync. That agreement
    is a collective, which waits for the device, so within an epoch the processes agree
    every ``sync_every`` batches (default 20) rather than after each one; one process
    alone checks the control file after every batch.
    """

    def __init__(self, *, log_final: bool = True, sync_every: int = 20) -> None:
        super().__init__()
        if sync_every < 1:
            raise trial.TrialError(f"RalphCallback(sync_every={sync_every}): agree at least every batch (1) or less often (> 1).")
        self.log_final = log_final
        self.sync_every = sync_every
        self.latest: dict[str, float] = {}  # the last epoch's scalar logs
        self.batches = 0  # training batches seen, over all epochs
        self._alone = True  # one process (set when fit starts: the process group is up by then)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._alone = trial.world_size() == 1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.batches += 1
        if self._alone:
            stop = trial.should_stop()
        elif self.batches % self.sync_every == 0:  # every process counts the same batches
            stop = trial.any_process(trial.should_stop())
        else:
            return
        if stop:
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.latest = scalars(logs)
        if trial.any_process(trial.report(epoch + 1, **self.latest)):
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.log_final and self.latest:
            trial.log_metrics(**self.latest)
