"""PyTorch Lightning: a ``Callback`` that reports to ralph-ml and stops when asked.

::

    import lightning.pytorch as pl               # or: import pytorch_lightning as pl
    from ralph_ml.adapters.lightning import RalphCallback

    trainer = pl.Trainer(max_epochs=cfg["epochs"], callbacks=[RalphCallback()])
    trainer.fit(model, train_loader, val_loader)
    # progress.jsonl: one row per epoch with everything logged via self.log(...)
    # metrics.json:   the final logged metrics (val_loss, val_acc, ...)

Install: ``pip install 'ralph-ml[lightning]'``. Works with the ``lightning`` package
(``lightning.pytorch``) and with the older ``pytorch_lightning`` one: the trainer calls
callbacks' hooks by name.
"""

from __future__ import annotations

from typing import Any, Literal

from .. import trial
from ._common import missing_extra, scalars

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as first:  # the standalone package of Lightning < 2 (still published)
    try:
        from pytorch_lightning import Callback, LightningModule, Trainer  # type: ignore[assignment]
    except ImportError as exc:
        # Both named: `lightning` may be installed and fail to import (say, against another torch).
        raise missing_extra("Lightning (`lightning` or `pytorch_lightning`)", "lightning",
                            ImportError(f"lightning.pytorch: {first}; pytorch_lightning: {exc}")) from exc

__all__ = ["RalphCallback"]


class RalphCallback(Callback):
    """Reports ``trainer.callback_metrics`` each epoch; sets ``trainer.should_stop`` on request.

    - ``trial.report(step, **metrics)`` at the end of every training epoch, after that
      epoch's validation, so a row holds the epoch's train *and* val metrics. ``step`` is
      the number of epochs completed (1, 2, ...), or ``trainer.global_step`` with
      ``step="global_step"``, which also reports after each validation that runs in the
      middle of an epoch (``val_check_interval`` below one epoch).
    - ``trainer.should_stop = True`` when the report says the loop asked to stop, and after
      any batch once ``{"action": "stop"}`` is in ``$RALPH_CONTROL_PATH``: training ends
      at the next batch, and the fit still ends normally (checkpoints, ``on_fit_end``).
    - ``trial.log_metrics(**final metrics)`` when ``fit`` ends (``log_final=False``: not).

    With several processes (DDP) only global rank 0 writes; every rank reads the stop
    request, and the decision is reduced across ranks.
    """

    def __init__(self, *, step: Literal["epoch", "global_step"] = "epoch", log_final: bool = True) -> None:
        super().__init__()
        if step not in ("epoch", "global_step"):
            raise trial.TrialError(f"RalphCallback(step={step!r}): use 'epoch' or 'global_step'.")
        self.step = step
        self.log_final = log_final

    def _report(self, trainer: Trainer) -> None:
        metrics = scalars(trainer.callback_metrics)
        step = trainer.current_epoch + 1 if self.step == "epoch" else trainer.global_step
        stop = trial.report(step, **metrics) if trainer.is_global_zero else trial.should_stop()
        if trainer.strategy.reduce_boolean_decision(stop, all=False):
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Reduced across ranks (a no-op on one device) so that all DDP ranks stop together.
        if trainer.strategy.reduce_boolean_decision(trial.should_stop(), all=False):
            trainer.should_stop = True

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The validation at the end of an epoch is reported with the epoch, just after.
        if trainer.sanity_checking or trainer.state.fn != "fit":  # not trainer.validate()
            return
        if self.step == "global_step" and not trainer.is_last_batch:
            self._report(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.log_final and trainer.is_global_zero:
            final = scalars(trainer.callback_metrics)
            if final:
                trial.log_metrics(**final)
