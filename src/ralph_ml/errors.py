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
    """An agent could not produce a proposal."""


class ExecutorError(RalphError):
    """An executor could not start or observe a trial (not a failure of the trial itself)."""


class GuardRejected(RalphError):
    """A proposal was refused by a guard; recorded as an invalid cycle, the loop goes on."""
