"""Plain training loops (PyTorch, JAX, numpy, anything): steps that report and stop early.

::

    from ralph_ml.adapters.loops import trial_steps

    with trial_steps(cfg["epochs"]) as steps:     # epochs 1, 2, ... cfg["epochs"]
        for epoch in steps:                       # ends early when the loop asks to stop
            loss = train_one_epoch(...)           # a float, a 0-d torch tensor or jax Array
            steps.report(train_loss=loss, val_accuracy=evaluate(...))
    # leaving the `with` block merged the last reported metrics into metrics.json

Nothing here imports a framework: metrics only need ``float(value)`` to work, which
Python numbers, numpy scalars, 0-d torch tensors and JAX arrays all support.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Iterator

from .. import trial

__all__ = ["TrialSteps", "trial_steps"]


class TrialSteps:
    """The steps ``start, start + 1, ... start + total - 1`` of a loop run by ralph-ml.

    Iterate over it to get the step numbers; call :meth:`report` inside the loop body.
    Before each step it checks whether the loop asked the trial to stop (a report that
    returned True, or ``{"action": "stop"}`` written to ``$RALPH_CONTROL_PATH`` since), and
    ends the iteration if so: :attr:`stopped_early` then says steps were skipped.

    As a context manager, a clean exit merges the latest reported value of every metric
    into metrics.json (:meth:`log_metrics`); an exception leaves metrics.json alone.
    """

    def __init__(self, total: int, *, start: int = 1) -> None:
        if total < 0:
            raise trial.TrialError(f"trial_steps(total={total}): the number of steps cannot be negative.")
        self.total = total
        self.start = start
        self.step: int | None = None  # the current step; None before the first
        self.stopped_early = False  # True when the loop's stop request skipped steps
        self.latest: dict[str, Any] = {}  # the last reported value of each metric
        self._stop = False

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.start + self.total):
            # Every process of a distributed trial iterates: they agree, and stop at the same step.
            if trial.any_process(self._stop or trial.should_stop()):
                self._stop = True
                self.stopped_early = True
                return
            self.step = step
            yield step

    def report(self, **metrics: Any) -> bool:
        """``trial.report(current step, **metrics)``; True when the loop asked to stop.

        The iteration ends before the next step either way; the return value lets a loop
        body that runs many batches per step stop at once (in a distributed trial, only
        process 0 sees a met target here: leave the stop to the iteration, which agrees).
        """
        if self.step is None:
            raise trial.TrialError("TrialSteps.report() was called before the first step; call it inside `for step in steps:`.")
        self.latest.update(trial._as_numbers(metrics))  # floats: a tensor kept here would keep its graph alive
        if trial.report(self.step, **metrics):
            self._stop = True
        return self._stop

    @property
    def stop_requested(self) -> bool:
        """Whether the loop has asked this trial to stop (checks the control file)."""
        if not self._stop and trial.should_stop():
            self._stop = True
        return self._stop

    def log_metrics(self, **extra: Any) -> None:
        """Merge the latest reported metrics, updated with ``extra``, into metrics.json."""
        trial.log_metrics(**{**self.latest, **extra})

    def __enter__(self) -> TrialSteps:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None and self.latest:
            self.log_metrics()


def trial_steps(total: int, *, start: int = 1) -> TrialSteps:
    """``total`` steps numbered from ``start`` (1: "epochs completed"), reporting to ralph-ml."""
    return TrialSteps(total, start=start)
