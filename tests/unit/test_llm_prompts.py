"""Prompt templates ship with the package and can be overridden per experiment."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import QUADRATIC, make_experiment
from fake_llm_server import FakeLLM, ok

from ralph_ml.agents import OpenAIAgent, get_agent
from ralph_ml.agents.base import AgentContext
from ralph_ml.config import load_config
from ralph_ml.errors import ConfigError


def _root(tmp_path: Path, url: str, prompts_dir: str | None = None) -> Path:
    llm = {"base_url": url, "api_key_env": "", "baseline_first": False}
    if prompts_dir:
        llm["prompts_dir"] = prompts_dir
    return make_experiment(tmp_path / "exp", QUADRATIC, extra={"agents": {"code_model": "openai"}, "agents.llm": llm})


def test_an_override_folder_replaces_one_template_and_keeps_the_others(tmp_path: Path) -> None:
    with FakeLLM([ok({"rationale": "r", "params": {"x": 0.3}})]) as srv:
        root = _root(tmp_path, srv.url, "my_prompts")
        (root / "my_prompts").mkdir()
        (root / "my_prompts" / "propose_params.md").write_text("CUSTOM for $target_name, cycle $cycle. Costs $$0.\n")
        agent = get_agent(load_config(root / "ralph.toml"))
        assert isinstance(agent, OpenAIAgent)
        cfg = load_config(root / "ralph.toml")
        p = agent.propose(AgentContext(cycle=1, history=(), best=None, last_analysis=None,
                                       search_space=cfg.search_space, target_name="val_accuracy", direction="maximize"))
        msgs = srv.requests[0]["body"]["messages"]
    assert p.params == {"x": 0.3}
    assert msgs[1]["content"] == "CUSTOM for val_accuracy, cycle 1. Costs $0.\n"
    assert msgs[0]["content"].startswith("You are the code and experiment agent")  # packaged system.md


def test_a_template_typo_fails_when_the_agent_is_created(tmp_path: Path) -> None:
    root = _root(tmp_path, "http://127.0.0.1:9/v1", "my_prompts")
    (root / "my_prompts").mkdir()
    (root / "my_prompts" / "propose_patch.md").write_text("Improve $progam now\n")
    with pytest.raises(ConfigError) as ei:
        get_agent(load_config(root / "ralph.toml"))
    assert "propose_patch.md" in str(ei.value) and "$progam" in str(ei.value)


def test_the_prompt_shows_the_trials_in_flight_and_how_far_each_has_got(tmp_path: Path) -> None:
    from ralph_ml.agents.base import InFlight
    from ralph_ml.records import Proposal

    running = (InFlight(2, Proposal(params={"x": 0.6}), 0.93, 4), InFlight(3, Proposal(params={"x": 0.2}), 0.71, None),
               InFlight(4, Proposal(params={"x": 0.9})))
    with FakeLLM([ok({"rationale": "r", "params": {"x": 0.3}}), ok({"rationale": "r", "params": {"x": 0.4}})]) as srv:
        cfg = load_config(_root(tmp_path, srv.url) / "ralph.toml")
        agent = get_agent(cfg)
        ctx = AgentContext(cycle=5, history=(), best=None, last_analysis=None, search_space=cfg.search_space,
                           target_name="val_accuracy", direction="maximize", pending=tuple(f.proposal for f in running),
                           in_flight=running)
        agent.propose(ctx)
        agent.propose(AgentContext(cycle=1, history=(), best=None, last_analysis=None, search_space=cfg.search_space,
                                   target_name="val_accuracy", direction="maximize"))
        prompts = [r["body"]["messages"][1]["content"] for r in srv.requests]
    section = prompts[0].split("## Running now (parallel trials; their configurations are taken)\n")[1]
    assert section.splitlines()[:3] == [
        "- cycle 2 (x=0.6): val_accuracy 0.93 at step 4 so far (still training)",
        "- cycle 3 (x=0.2): val_accuracy 0.71 on its first run (it has ended; not recorded yet)",
        "- cycle 4 (x=0.9): nothing reported yet",
    ]
    assert "## Running now (parallel trials; their configurations are taken)\n(none: no other trial is running)" in prompts[1]
