"""Agents: registry by name.

* ``builtin``: offline Optuna TPE over the search space (default).
* ``openai``: an LLM behind any OpenAI-compatible endpoint (needs ``ralph-ml[openai]``).
* ``claude-code``, ``opencode``, ``codex``, ``aider``: coding-agent CLIs run in a scratch copy.

Analysis agents (``agents.analysis_model``): ``builtin`` (no agent), ``openai`` or a CLI name.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable

from ..config import Config
from ..errors import ConfigError
from .analyst import get_analyst, run_analyst
from .base import Agent, AgentContext, AnalysisContext, Analyst
from .builtin import BuiltinAgent
from .cli_agents import cli_agent_factory
from .cli_backends import BACKENDS
from .openai_agent import OpenAIAgent

_AGENTS: dict[str, Callable[[Config], Agent]] = {
    "builtin": BuiltinAgent,
    "openai": OpenAIAgent,
    **{name: cli_agent_factory(name) for name in BACKENDS},
}

__all__ = [
    "Agent",
    "AgentContext",
    "AnalysisContext",
    "Analyst",
    "BuiltinAgent",
    "OpenAIAgent",
    "agent_checks",
    "available_agents",
    "get_agent",
    "get_analyst",
    "run_analyst",
]


def available_agents() -> list[str]:
    return sorted(_AGENTS)


def _plugin(cfg: Config, spec: str) -> Agent:
    """``module:Class`` — an Agent subclass importable from the experiment folder or sys.path."""
    import importlib
    import sys

    module_name, _, attr = spec.partition(":")
    root = str(cfg.root)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"agents.code_model = {spec!r}: cannot import {attr!r} from module {module_name!r} ({exc}). "
            f"Put {module_name}.py in {root} or on PYTHONPATH."
        ) from None
    agent = factory(cfg)
    if not isinstance(agent, Agent):
        raise ConfigError(f"agents.code_model = {spec!r} made a {type(agent).__name__}, not a ralph_ml Agent subclass")
    return agent


def get_agent(cfg: Config) -> Agent:
    name = cfg.agent_name
    if ":" in name:
        return _plugin(cfg, name)
    try:
        factory = _AGENTS[name]
    except KeyError:
        raise ConfigError(
            f"agents.code_model = {name!r} is not an available agent; available: {', '.join(available_agents())}. "
            "Set agents.code_model = \"builtin\" to use the offline Optuna agent."
        ) from None
    return factory(cfg)


def writes_code(cfg: Config) -> bool:
    """True when the code agent can write the training code itself (all but builtin)."""
    return cfg.agent_name != "builtin" and cfg.agent_name in _AGENTS


def agent_checks(cfg: Config) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the configured agents, for `ralph-ml validate` (nothing is called)."""
    errors: list[str] = []
    warnings: list[str] = []
    roles = [("code_model", cfg.agent_name), ("analysis_model", cfg.agents.analysis_model)]
    for role, name in roles:
        if name == "builtin":
            continue
        if name == "openai":
            try:
                import openai  # noqa: F401
            except ImportError:
                errors.append(f"agents.{role} = \"openai\" needs the OpenAI client: pip install 'ralph-ml[openai]'")
            env = cfg.agents.llm.api_key_env
            if env and not os.environ.get(env):
                errors.append(
                    f"agents.{role} = \"openai\": the environment variable {env} (agents.llm.api_key_env) is not set; "
                    "export it, or set agents.llm.api_key_env = \"\" for a local server without keys"
                )
        elif name in BACKENDS:
            cmd = cfg.agents.cli.command or BACKENDS[name].binary
            if shutil.which(cmd) is None:
                errors.append(f"agents.{role} = {name!r} needs `{cmd}` on PATH; install it or set agents.cli.command")
        elif role == "analysis_model":
            errors.append(f"agents.analysis_model = {name!r} is not an analysis agent (builtin, openai, {', '.join(sorted(BACKENDS))})")
    if cfg.agents.llm.prompts_dir and not cfg.path(cfg.agents.llm.prompts_dir).is_dir():
        errors.append(f"agents.llm.prompts_dir = {cfg.agents.llm.prompts_dir!r} is not a folder")
    if cfg.agent_name in BACKENDS and (cfg.safeguards.token_budget_per_cycle is not None):
        warnings.append(
            f"{cfg.agent_name} runs cannot be capped mid-run: safeguards.token_budget_per_cycle is checked before "
            "a run starts and the run's real usage is counted after it"
        )
    return errors, warnings
