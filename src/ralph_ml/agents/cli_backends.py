"""How each coding-agent CLI is run non-interactively, and how its usage is read back.

Flags follow each tool's documented non-interactive mode:

* claude-code: ``claude -p --output-format json --permission-mode acceptEdits
  --allowedTools ... --disallowedTools ...``, prompt on stdin; the JSON result carries
  ``usage`` and ``total_cost_usd``.
* codex: ``codex exec --json --skip-git-repo-check --sandbox workspace-write -`` (``-``:
  prompt on stdin); JSONL events, ``turn.completed`` carries ``usage``.
* opencode: ``opencode run --format json "<instruction>"`` with the prompt on stdin
  (appended to the message) and the permission rules in ``OPENCODE_CONFIG_CONTENT``;
  ``step_finish`` events carry ``part.tokens`` and ``part.cost``.
* aider: ``aider --message-file FILE --yes-always --no-auto-commits --no-git ... FILES``;
  usage from its ``Tokens: 1.2k sent, 340 received. Cost: $0.01 message`` lines. Aider
  never runs shell commands here (``--no-suggest-shell-commands``), so allow_pip/allow_uv
  do not apply to it.
"""

from __future__ import annotations

import abc
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..config import CLIAgents


@dataclass(frozen=True)
class CLIUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None  # None: the CLI did not say; priced from agents.cli.price_per_1k_*
    text: str = ""  # the agent's final message
    error: str = ""  # the CLI reported a failure in its output

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


def _int(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


class CLIBackend(abc.ABC):
    name: str = ""
    binary: str = ""
    stdin_prompt: bool = True  # else the prompt goes in a file named on the command line

    @abc.abstractmethod
    def argv(self, exe: str, cli: CLIAgents, *, read_only: bool, prompt_file: Path, files: list[str]) -> list[str]:
        """The command line."""

    def env(self, cli: CLIAgents, *, read_only: bool) -> dict[str, str]:
        return {}

    @abc.abstractmethod
    def parse(self, stdout: str) -> CLIUsage:
        """Tokens, cost and final text from what the CLI printed."""


class ClaudeCode(CLIBackend):
    name = "claude-code"
    binary = "claude"

    def argv(self, exe: str, cli: CLIAgents, *, read_only: bool, prompt_file: Path, files: list[str]) -> list[str]:
        if read_only:
            allowed = ["Read", "Glob", "Grep", "LS"]
            denied = ["Edit", "MultiEdit", "Write", "NotebookEdit", "Bash", "WebFetch", "WebSearch"]
        else:
            allowed = ["Read", "Edit", "MultiEdit", "Write", "Glob", "Grep", "LS"]
            if cli.allow_pip:
                allowed += ["Bash(pip install:*)", "Bash(python -m pip install:*)"]
            if cli.allow_uv:
                allowed += ["Bash(uv pip install:*)"]
            denied = ["WebFetch", "WebSearch"] + ([] if (cli.allow_pip or cli.allow_uv) else ["Bash"])
        argv = [exe, "-p", "--output-format", "json", "--permission-mode", "default" if read_only else "acceptEdits"]
        if cli.model:
            argv += ["--model", cli.model]
        if cli.max_turns:
            argv += ["--max-turns", str(cli.max_turns)]
        return [*argv, *cli.extra_args, "--allowedTools", *allowed, "--disallowedTools", *denied]

    def parse(self, stdout: str) -> CLIUsage:
        doc: dict[str, Any] | None = None
        try:
            loaded = json.loads(stdout)
            doc = loaded if isinstance(loaded, dict) else None
        except ValueError:
            for obj in _json_lines(stdout):  # stream-json or noise around the result
                if obj.get("type") == "result":
                    doc = obj
        if doc is None:
            return CLIUsage(text=stdout[-4000:])
        usage = doc.get("usage") or {}
        cost = doc.get("total_cost_usd", doc.get("cost_usd"))
        return CLIUsage(
            input_tokens=_int(usage.get("input_tokens"))
            + _int(usage.get("cache_creation_input_tokens"))
            + _int(usage.get("cache_read_input_tokens")),
            output_tokens=_int(usage.get("output_tokens")),
            cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
            text=str(doc.get("result") or ""),
            error=str(doc.get("result") or doc.get("subtype") or "error") if doc.get("is_error") else "",
        )


class Codex(CLIBackend):
    name = "codex"
    binary = "codex"

    def argv(self, exe: str, cli: CLIAgents, *, read_only: bool, prompt_file: Path, files: list[str]) -> list[str]:
        argv = [exe, "exec", "--json", "--skip-git-repo-check", "--sandbox", "read-only" if read_only else "workspace-write"]
        if not read_only and (cli.allow_pip or cli.allow_uv):
            argv += ["-c", "sandbox_workspace_write.network_access=true"]  # package installs need the network
        if cli.model:
            argv += ["--model", cli.model]
        return [*argv, *cli.extra_args, "-"]

    def parse(self, stdout: str) -> CLIUsage:
        inp = out = 0
        text = error = ""
        for ev in _json_lines(stdout):
            kind = ev.get("type")
            if kind in ("turn.completed", "turn.failed") and isinstance(ev.get("usage"), dict):
                inp += _int(ev["usage"].get("input_tokens"))
                out += _int(ev["usage"].get("output_tokens"))
            if kind == "item.completed" and isinstance(ev.get("item"), dict):
                item = ev["item"]
                if item.get("type") in ("agent_message", "assistant_message") and item.get("text"):
                    text = str(item["text"])
            if kind in ("turn.failed", "error"):
                err = ev.get("error") or ev.get("message") or kind
                error = str(err.get("message", err) if isinstance(err, dict) else err)
        return CLIUsage(inp, out, None, text, error)


class OpenCode(CLIBackend):
    name = "opencode"
    binary = "opencode"

    def argv(self, exe: str, cli: CLIAgents, *, read_only: bool, prompt_file: Path, files: list[str]) -> list[str]:
        argv = [exe, "run", "--format", "json"]
        if cli.model:
            argv += ["--model", cli.model]
        return [*argv, *cli.extra_args, "Follow the instructions given on standard input."]

    def env(self, cli: CLIAgents, *, read_only: bool) -> dict[str, str]:
        bash: str | dict[str, str] = "deny"
        if not read_only and (cli.allow_pip or cli.allow_uv):
            rules = {"*": "deny"}
            if cli.allow_pip:
                rules.update({"pip install *": "allow", "python -m pip install *": "allow"})
            if cli.allow_uv:
                rules["uv pip install *"] = "allow"
            bash = rules
        permission = {"edit": "deny" if read_only else "allow", "bash": bash, "webfetch": "deny"}
        return {"OPENCODE_CONFIG_CONTENT": json.dumps({"permission": permission})}

    def parse(self, stdout: str) -> CLIUsage:
        inp = out = 0
        cost: float | None = None
        texts: list[str] = []
        error = ""
        for ev in _json_lines(stdout):
            part = ev.get("part") if isinstance(ev.get("part"), dict) else {}
            assert isinstance(part, dict)
            if ev.get("type") == "step_finish":
                tokens = part.get("tokens") or {}
                inp += _int(tokens.get("input"))
                out += _int(tokens.get("output")) + _int(tokens.get("reasoning"))
                if isinstance(part.get("cost"), (int, float)):
                    cost = (cost or 0.0) + float(part["cost"])
            elif ev.get("type") == "text" and part.get("text"):
                texts.append(str(part["text"]))
            elif ev.get("type") == "error":
                error = str(ev.get("error") or ev.get("message") or "error")
        return CLIUsage(inp, out, cost, texts[-1] if texts else "", error)


_AIDER_TOKENS = re.compile(
    r"Tokens:\s*([\d.,]+)\s*([kKmM]?)\s*sent,\s*([\d.,]+)\s*([kKmM]?)\s*received\.?(?:\s*Cost:\s*\$([\d.]+)\s*message)?"
)


def _count(num: str, suffix: str) -> int:
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[suffix.lower()]
    return int(float(num.replace(",", "")) * scale)


class Aider(CLIBackend):
    name = "aider"
    binary = "aider"
    stdin_prompt = False

    def argv(self, exe: str, cli: CLIAgents, *, read_only: bool, prompt_file: Path, files: list[str]) -> list[str]:
        argv = [
            exe, "--message-file", str(prompt_file), "--yes-always", "--no-auto-commits", "--no-git",
            "--no-stream", "--no-pretty", "--no-check-update", "--no-show-model-warnings",
            "--no-suggest-shell-commands", "--no-detect-urls",
        ]
        if read_only:
            argv.append("--dry-run")
        if cli.model:
            argv += ["--model", cli.model]
        return [*argv, *cli.extra_args, *([] if read_only else files)]

    def parse(self, stdout: str) -> CLIUsage:
        inp = out = 0
        cost: float | None = None
        for m in _AIDER_TOKENS.finditer(stdout):
            inp += _count(m.group(1), m.group(2))
            out += _count(m.group(3), m.group(4))
            if m.group(5):
                cost = (cost or 0.0) + float(m.group(5))
        text = "\n".join(ln for ln in stdout.splitlines() if not _AIDER_TOKENS.search(ln)).strip()
        return CLIUsage(inp, out, cost, text[-4000:], "")


BACKENDS: dict[str, type[CLIBackend]] = {b.name: b for b in (ClaudeCode, Codex, OpenCode, Aider)}
