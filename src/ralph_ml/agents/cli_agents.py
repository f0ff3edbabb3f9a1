"""Coding-agent CLIs (claude-code, opencode, codex, aider) as ralph-ml agents.

Each proposal runs the CLI non-interactively in a scratch copy of the current best code
(rebuilt as the loop rebuilds it), with a tool allow-list and a time limit (the whole
process group is killed). What the agent changed is diffed into a unified patch, which the
loop guards like any other. The prompt, the CLI's output and a summary are kept per cycle
in ``runs/cycle_NNNN/agent/transcript.*`` (secrets redacted).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import CLIAgents, Config
from ..errors import AgentError, ConfigError
from ..guard import matches
from ..records import Proposal
from ._text import clip, redact, secret_values
from .base import Agent, AgentContext
from .briefing import base_values, render
from .cli_backends import BACKENDS, CLIBackend, CLIUsage
from . import branching
from .codebase import PLAN_FILE, diff_trees, materialize, missing_mutable, read_tree
from .openai_agent import baseline, baseline_proposal
from .prompts import PLACEHOLDERS, Prompts


def resolve_exe(cfg: Config, backend: CLIBackend, role: str) -> str:
    cmd = cfg.agents.cli.command or backend.binary
    exe = shutil.which(cmd)
    if exe is None:
        raise ConfigError(
            f"agents.{role} = {backend.name!r} needs the `{cmd}` executable, which is not on PATH. "
            f"Install {backend.name}, or set agents.cli.command to its path."
        )
    return exe


@dataclass(frozen=True)
class CLIRun:
    argv: list[str]
    returncode: int | None
    timed_out: bool
    duration_s: float
    stdout: str
    stderr: str
    usage: CLIUsage
    transcript: Path  # the summary JSON; the prompt and output lie beside it

    def failure(self, timeout_s: float) -> str | None:
        if self.timed_out:
            return f"was killed after {timeout_s:g} s (agents.cli.timeout_s)"
        if self.returncode != 0:
            tail = clip(self.stderr.strip() or self.stdout.strip(), 600, keep_tail=True)
            return f"exited with code {self.returncode}: {tail or '(no output)'}"
        if self.usage.error:
            return f"reported an error: {clip(self.usage.error, 600)}"
        return None


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_cli(
    backend: CLIBackend,
    exe: str,
    cli: CLIAgents,
    *,
    cwd: Path,
    prompt: str,
    agent_dir: Path,
    read_only: bool,
    files: list[str],
    stem: str = "transcript",
    secret_names: tuple[str, ...] = (),
) -> CLIRun:
    """Run the CLI once in ``cwd``; its outputs go to ``agent_dir/<stem>.*`` (redacted)."""
    agent_dir.mkdir(parents=True, exist_ok=True)
    prompt_file = agent_dir / f"{stem}.prompt.md"
    prompt_file.write_text(prompt, encoding="utf-8")
    argv = backend.argv(exe, cli, read_only=read_only, prompt_file=prompt_file, files=files)
    env = {**os.environ, **backend.env(cli, read_only=read_only)}
    out_path, err_path = agent_dir / f"{stem}.stdout.log", agent_dir / f"{stem}.stderr.log"
    timed_out = False
    t0 = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True,
                stdin=subprocess.PIPE if backend.stdin_prompt else subprocess.DEVNULL,
            )
        except OSError as exc:
            raise AgentError(f"could not start {backend.name} ({argv[0]}): {exc}") from None
        try:
            proc.communicate(input=prompt.encode("utf-8") if backend.stdin_prompt else None, timeout=cli.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(cli.kill_grace_s)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(proc.pid, signal.SIGKILL)  # nothing the agent started outlives it
        proc.wait()
    duration = time.monotonic() - t0
    secrets = secret_values(secret_names)
    texts = []
    for path in (out_path, err_path):
        text = redact(path.read_text(encoding="utf-8", errors="replace"), secrets)
        path.write_text(text, encoding="utf-8")
        texts.append(text)
    usage = backend.parse(texts[0])
    summary = agent_dir / f"{stem}.json"
    summary.write_text(
        json.dumps(
            {
                "agent": backend.name, "argv": [redact(a, secrets) for a in argv], "cwd": str(cwd),
                "returncode": proc.returncode, "timed_out": timed_out, "duration_s": round(duration, 3),
                "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens, "cost_usd": usage.cost_usd,
                "final_message": clip(usage.text, 4000), "error": usage.error,
            },
            indent=2,
        ) + "\n",
        encoding="utf-8",
    )
    return CLIRun(argv, proc.returncode, timed_out, duration, texts[0], texts[1], usage, summary)


def usage_cost(cli: CLIAgents, usage: CLIUsage) -> float:
    if usage.cost_usd is not None:
        return usage.cost_usd
    return usage.input_tokens / 1000 * cli.price_per_1k_input + usage.output_tokens / 1000 * cli.price_per_1k_output


def budget_gate(ctx_tokens_left: int | None, ctx_cost_left: float | None, name: str) -> None:
    """A CLI run cannot be capped mid-way: refuse to start one when a budget is already spent."""
    if ctx_tokens_left is not None and ctx_tokens_left <= 0:
        raise AgentError(f"not starting {name}: no token budget left (safeguards.token_budget_total)", meta={"budget_stop": "tokens"})
    if ctx_cost_left is not None and ctx_cost_left <= 0:
        raise AgentError(f"not starting {name}: no cost budget left (safeguards.cost_budget_usd)", meta={"budget_stop": "cost"})


INITIAL_TASK = (
    "\nThere is no training code yet: first write {plan} (a short plan: model, data, training, how the metric "
    "is reported), then create {missing}. Read the frozen files ({frozen}) to see how data and evaluation work.\n"
)


FIX_TASK = (
    "\nThe files here are a version whose change FAILED when it ran. Find the cause in the error below and fix it "
    "so the training runs and reports its metric; keep the idea of the change and change nothing else.\n\n{failed}\n"
)


class CLIAgent(Agent):
    """A coding-agent CLI proposing patches (``agents.code_model`` = claude-code/opencode/codex/aider)."""

    def __init__(self, cfg: Config, backend: CLIBackend) -> None:
        self.cfg = cfg
        self.backend = backend
        self.name = backend.name
        self.exe = resolve_exe(cfg, backend, "code_model")
        self.prompts = Prompts(cfg)
        self.prompts.check(("cli_code.md",), PLACEHOLDERS)

    def propose(self, ctx: AgentContext) -> Proposal:
        cfg, cli = self.cfg, self.cfg.agents.cli
        budget_gate(ctx.tokens_left, ctx.cost_left_usd, self.name)
        with tempfile.TemporaryDirectory(prefix=f"ralph-{self.name}-") as tmp:
            code = Path(tmp) / "code"
            on = branching.choose(cfg, ctx)  # a failed change to fix, or the version to improve
            materialize(cfg, ctx.history, on.cycle, code)
            agent_dir = Path(ctx.cycle_dir) / "agent" if ctx.cycle_dir else Path(tmp) / "agent"
            before = read_tree(code, cfg.files.exclude)
            missing = missing_mutable(code, cfg)
            mode = "initial" if missing else ("fix" if on.fix_of is not None else "patch")
            if mode == "patch" and (first := baseline_proposal(cfg, ctx, self.name)) is not None:
                return first  # measure the code as it is before paying for an agent run
            values = base_values(cfg, ctx.history, cycle=ctx.cycle, best=ctx.best, code={}, in_flight=ctx.in_flight,
                                 required_calls=ctx.required_calls)
            if missing:
                values["task"] = INITIAL_TASK.format(plan=PLAN_FILE, missing=", ".join(missing), frozen=values["frozen"])
            elif on.fix_of is not None:
                failed = next(r for r in ctx.history if r.cycle == on.fix_of)
                values["task"] = FIX_TASK.format(failed=branching.failure_brief(failed, on.why, history=ctx.history))
            elif on.cycle is not None:
                values["task"] = f"\nThe files here are the version of cycle {on.cycle} ({on.why}); your change builds on it.\n"
            prompt = render(self.prompts, "cli_code.md", values, cfg.agents.llm.prompt_budget_chars)
            files = sorted({*(p for p in before if matches(p, cfg.files.mutable)), *missing})
            run = run_cli(
                self.backend, self.exe, cli, cwd=code, prompt=prompt, agent_dir=agent_dir, read_only=False,
                files=files, secret_names=(cfg.agents.llm.api_key_env,),
            )
            after = read_tree(code, cfg.files.exclude)
        patch, binary = diff_trees(before, after)
        tokens, cost = run.usage.tokens, usage_cost(cli, run.usage)
        meta: dict[str, object] = {"mode": mode, "transcript": str(run.transcript), "duration_s": round(run.duration_s, 3)}
        if mode != "initial":
            meta.update(on.meta)  # built on the version the agent edited
            meta["base"] = on.why
        problem = run.failure(cli.timeout_s)
        if problem is not None:
            raise AgentError(
                f"{self.name} {problem}. Transcript: {run.transcript.parent}", tokens_used=tokens, cost_usd=cost, meta=meta
            )
        if not patch:
            raise AgentError(
                f"{self.name} finished without changing any text file"
                + (f" (binary changes ignored: {binary})" if binary else "")
                + f". Its last message: {clip(run.usage.text, 300) or '(none)'}. Transcript: {run.transcript.parent}",
                tokens_used=tokens, cost_usd=cost, meta=meta,
            )
        if binary:
            meta["binary_ignored"] = binary
        rationale = " ".join(run.usage.text.split())[:300] or f"{self.name} edit"
        params = (baseline(cfg.search_space) or {}) if on.cycle is None else {}  # on the workspace: the defaults
        return Proposal(params=params, patch=patch, rationale=rationale, agent=self.name, tokens_used=tokens, cost_usd=cost, meta=meta)


def cli_agent_factory(name: str) -> type[Agent]:
    backend_cls = BACKENDS[name]

    class _Named(CLIAgent):
        def __init__(self, cfg: Config) -> None:
            super().__init__(cfg, backend_cls())

    _Named.name = name
    _Named.__name__ = _Named.__qualname__ = "CLIAgent_" + name.replace("-", "_")
    return _Named
