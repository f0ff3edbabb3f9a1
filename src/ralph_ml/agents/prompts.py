"""Prompt templates: packaged files in ``ralph_ml/prompts``, overridable per experiment.

A template is a ``string.Template`` (``$name`` placeholders, ``$$`` for a dollar). The
folder named by ``agents.llm.prompts_dir`` (relative to the experiment root) may hold any
of the files; the others come from the package. Templates are checked when the agent is
created, so a typo in an override fails the run's start, not cycle 12.
"""

from __future__ import annotations

import string
from importlib import resources
from pathlib import Path
from typing import Mapping

from ..config import Config
from ..errors import ConfigError

TEMPLATES = (
    "system.md",
    "propose_params.md",
    "propose_patch.md",
    "fix_patch.md",
    "initial_code.md",
    "analyze.md",
    "cli_code.md",
    "cli_analyze.md",
)


class Prompts:
    def __init__(self, cfg: Config) -> None:
        rel = cfg.agents.llm.prompts_dir
        self.override: Path | None = cfg.path(rel) if rel else None
        if self.override is not None and not self.override.is_dir():
            raise ConfigError(
                f"agents.llm.prompts_dir = {rel!r} resolves to {self.override}, which is not a folder. "
                "Create it with the templates to override (copy them from the ralph_ml/prompts package), or remove the key."
            )
        self._cache: dict[str, tuple[str, string.Template]] = {}

    def source(self, name: str) -> str:
        """Where template ``name`` comes from (for error messages)."""
        if self.override is not None and (self.override / name).is_file():
            return str(self.override / name)
        return f"ralph_ml/prompts/{name} (packaged)"

    def template(self, name: str) -> string.Template:
        if name not in self._cache:
            if self.override is not None and (self.override / name).is_file():
                text = (self.override / name).read_text(encoding="utf-8")
            else:
                text = resources.files("ralph_ml.prompts").joinpath(name).read_text(encoding="utf-8")
            self._cache[name] = (text, string.Template(text))
        return self._cache[name][1]

    def render(self, name: str, values: Mapping[str, object]) -> str:
        try:
            return self.template(name).substitute({k: str(v) for k, v in values.items()})
        except KeyError as exc:
            raise ConfigError(
                f"prompt template {self.source(name)} uses ${exc.args[0]}, which is not a known placeholder "
                f"(known: {', '.join(sorted(values))}). Fix the template or write $$ for a literal dollar."
            ) from None
        except ValueError as exc:
            raise ConfigError(f"prompt template {self.source(name)} is malformed: {exc}. Write $$ for a literal dollar.") from None

    def check(self, names: tuple[str, ...], placeholders: tuple[str, ...]) -> None:
        """Render each template with dummy values: a ConfigError now instead of mid-run."""
        dummy = {k: "" for k in placeholders}
        for name in names:
            self.render(name, dummy)


# Every placeholder any template may use (the agents fill all of them).
PLACEHOLDERS = (
    "cycle", "target", "target_name", "direction", "program", "program_name", "space", "best", "history",
    "experience", "feedback", "code", "mutable", "frozen", "missing", "train_cmd", "task", "change", "status",
    "verdict", "metric", "metrics", "message", "curve", "stdout_tail", "stderr_tail", "builtin", "analysis",
    "failed", "base", "in_flight", "keep",
)
