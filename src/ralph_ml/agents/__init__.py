"""Agents: registry by name. Only the offline `builtin` agent ships in this release."""

from __future__ import annotations

from ..config import Config
from ..errors import ConfigError
from .base import Agent, AgentContext
from .builtin import BuiltinAgent

_AGENTS = {"builtin": BuiltinAgent}

__all__ = ["Agent", "AgentContext", "BuiltinAgent", "get_agent", "available_agents"]


def available_agents() -> list[str]:
    return sorted(_AGENTS)


def get_agent(cfg: Config) -> Agent:
    name = cfg.agent_name
    try:
        cls = _AGENTS[name]
    except KeyError:
        raise ConfigError(
            f"agents.code_model = {name!r} is not an available agent; available: {', '.join(available_agents())}. "
            "Set agents.code_model = \"builtin\" to use the offline Optuna agent."
        ) from None
    return cls(cfg)
