"""The executor contract: ``submit(spec) -> handle``, a futures-shaped handle per trial.

An executor runs one ``TrialSpec`` somewhere (a local subprocess, a Ray task, a Slurm job)
and hands back a ``TrialHandle``. The loop only ever talks to the handle:

    handle = executor.submit(spec)
    while (result := handle.wait(0.25)) is None:
        ...  # check stop/pause requests, progress for the pruner
    # result: TrialResult

A handle never raises for a failure *of the trial* (crash, timeout, OOM): those are
``TrialResult``s. ``ExecutorError`` means the executor itself could not start or observe it.
"""

from __future__ import annotations

import abc
from pathlib import Path

from ..records import TrialResult, TrialSpec


class TrialHandle(abc.ABC):
    """One submitted trial. ``poll``/``wait`` return the same ``TrialResult`` once it ended."""

    spec: TrialSpec

    @abc.abstractmethod
    def poll(self) -> TrialResult | None:
        """The result if the trial has ended, else None; never blocks."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> TrialResult | None:
        """Block until the trial ends or ``timeout`` seconds pass (None: no limit).

        Returns the result as soon as the trial ends, or None if it is still running.
        """

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the trial (and everything it started); its result is ``CANCELLED``. No-op once ended."""

    @abc.abstractmethod
    def suspend(self) -> None:
        """Pause the trial; time spent suspended does not count toward ``spec.timeout_s``."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Continue a suspended trial. No-op when it is not suspended."""

    def done(self) -> bool:
        """True once the trial has ended."""
        return self.poll() is not None


class Executor(abc.ABC):
    """Runs trials. Implementations are chosen by name through ``ralph_ml.executors.get_executor``."""

    name: str = ""

    @abc.abstractmethod
    def submit(self, spec: TrialSpec) -> TrialHandle:
        """Start ``spec`` and return its handle without waiting for it to end."""

    def recover(self, cycle_dir: Path) -> TrialResult | TrialHandle | None:
        """After the loop itself died: what became of the trial submitted for ``cycle_dir``?

        A ``TrialResult`` when it finished and its result is still reachable (collected, not
        re-run); a ``TrialHandle`` re-attached to it when it still runs (Ray, Slurm); None
        when it must be run again (anything it left running has been stopped first).
        The default: stop leftovers on this machine, collect a finished ``result.json``.
        """
        from .local import read_result, reap_orphans

        if not cycle_dir.exists():
            return None
        reap_orphans(cycle_dir)
        return read_result(cycle_dir)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the executor holds (a Ray connection, ...); the loop calls it at the end."""
