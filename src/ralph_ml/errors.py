"""The one exception hierarchy of ralph-ml.

Every message says what happened, the offending value, what to do, and where the
evidence is. ``cli.py`` maps these to exit codes; library code never calls ``sys.exit``.
"""

from __future__ import annotations


class RalphError(Exception):
    """Root of every error ralph-ml raises on purpose."""

    exit_code: int = 4


class ConfigError(RalphError):
    """The configuration file is missing, malformed, or has impossible values."""


class WorkspaceError(RalphError):
    """The experiment folder is not usable (missing files, broken frozen evaluation, ...)."""


class StateError(RalphError):
    """The persisted run state cannot be used (no run to resume, run already exists, lock held)."""


class AgentError(RalphError):
    """An agent could not produce a proposal (or an analysis).

    ``tokens_used``/``cost_usd`` are what the failed attempt still spent (counted in the
    budgets); ``meta`` lands in the invalid cycle's proposal (e.g. the mode it was in).
    """

    def __init__(
        self, message: str, *, tokens_used: int = 0, cost_usd: float = 0.0, meta: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.tokens_used = tokens_used
        self.cost_usd = cost_usd
        self.meta: dict[str, object] = dict(meta or {})


class ExecutorError(RalphError):
    """An executor could not start or observe a trial (not a failure of the trial itself)."""


class GuardRejected(RalphError):
    """A proposal was refused by a guard; recorded as an invalid cycle, the loop goes on."""
