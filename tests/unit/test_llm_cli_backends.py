"""Each coding-agent CLI gets its documented non-interactive flags; usage is read from its output."""

from __future__ import annotations

import json
from pathlib import Path

from ralph_ml.agents.cli_backends import Aider, ClaudeCode, Codex, OpenCode
from ralph_ml.config import CLIAgents

PF = Path("/tmp/prompt.md")


def test_claude_tool_allow_list_follows_allow_pip_and_allow_uv() -> None:
    argv = ClaudeCode().argv("claude", CLIAgents(allow_pip=True, allow_uv=True, model="sonnet", max_turns=5),
                             read_only=False, prompt_file=PF, files=[])
    allowed = argv[argv.index("--allowedTools") + 1 : argv.index("--disallowedTools")]
    assert "Bash(pip install:*)" in allowed and "Bash(uv pip install:*)" in allowed
    assert "Bash" not in argv[argv.index("--disallowedTools") + 1 :]  # a bare deny would override the allow
    assert argv[:6] == ["claude", "-p", "--output-format", "json", "--permission-mode", "acceptEdits"]
    assert argv[argv.index("--model") + 1] == "sonnet" and argv[argv.index("--max-turns") + 1] == "5"


def test_claude_json_result_usage_and_cost() -> None:
    out = json.dumps({"type": "result", "is_error": False, "result": "done", "total_cost_usd": 0.42,
                      "usage": {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100,
                                "output_tokens": 7}})
    u = ClaudeCode().parse(out)
    assert (u.input_tokens, u.output_tokens, u.cost_usd, u.text, u.error) == (115, 7, 0.42, "done", "")
    assert ClaudeCode().parse(json.dumps({"is_error": True, "result": "Credit balance too low"})).error == "Credit balance too low"


def test_codex_sandbox_network_only_with_package_installs_and_usage_from_turn_events() -> None:
    plain = Codex().argv("codex", CLIAgents(), read_only=False, prompt_file=PF, files=[])
    assert plain == ["codex", "exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write", "-"]
    pip = Codex().argv("codex", CLIAgents(allow_pip=True), read_only=False, prompt_file=PF, files=[])
    assert "sandbox_workspace_write.network_access=true" in pip
    ro = Codex().argv("codex", CLIAgents(allow_pip=True), read_only=True, prompt_file=PF, files=[])
    assert ro[ro.index("--sandbox") + 1] == "read-only" and "sandbox_workspace_write.network_access=true" not in ro
    events = "\n".join(json.dumps(e) for e in [
        {"type": "turn.completed", "usage": {"input_tokens": 100, "cached_input_tokens": 50, "output_tokens": 20}},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "all done"}},
        {"type": "turn.completed", "usage": {"input_tokens": 30, "output_tokens": 5}},
    ])
    u = Codex().parse("progress noise\n" + events)
    assert (u.input_tokens, u.output_tokens, u.cost_usd, u.text) == (130, 25, None, "all done")


def test_opencode_permissions_and_step_finish_usage() -> None:
    env = OpenCode().env(CLIAgents(allow_uv=True), read_only=False)
    perm = json.loads(env["OPENCODE_CONFIG_CONTENT"])["permission"]
    assert perm["edit"] == "allow" and perm["bash"] == {"*": "deny", "uv pip install *": "allow"}
    ro = json.loads(OpenCode().env(CLIAgents(allow_pip=True), read_only=True)["OPENCODE_CONFIG_CONTENT"])["permission"]
    assert ro == {"edit": "deny", "bash": "deny", "webfetch": "deny"}
    out = "\n".join(json.dumps(e) for e in [
        {"type": "step_finish", "part": {"cost": 0.01, "tokens": {"input": 50, "output": 5, "reasoning": 3}}},
        {"type": "text", "part": {"text": "final words"}},
        {"type": "step_finish", "part": {"cost": 0.02, "tokens": {"input": 60, "output": 6}}},
    ])
    u = OpenCode().parse(out)
    assert (u.input_tokens, u.output_tokens, u.text) == (110, 14, "final words") and abs((u.cost_usd or 0) - 0.03) < 1e-9


def test_aider_message_file_files_and_token_lines() -> None:
    argv = Aider().argv("aider", CLIAgents(), read_only=False, prompt_file=PF, files=["train.py"])
    assert argv[argv.index("--message-file") + 1] == str(PF) and argv[-1] == "train.py"
    assert {"--yes-always", "--no-auto-commits", "--no-git", "--no-suggest-shell-commands"} <= set(argv)
    assert "--dry-run" in Aider().argv("aider", CLIAgents(), read_only=True, prompt_file=PF, files=["train.py"])
    u = Aider().parse("Tokens: 2.5k sent, 312 received. Cost: $0.01 message, $0.01 session.\n"
                      "Tokens: 1,200 sent, 1.1k received. Cost: $0.02 message, $0.03 session.\nEdited train.py")
    assert (u.input_tokens, u.output_tokens, u.text) == (3700, 1412, "Edited train.py") and abs((u.cost_usd or 0) - 0.03) < 1e-9
