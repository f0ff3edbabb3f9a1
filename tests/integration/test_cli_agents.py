"""Coding-agent CLIs (claude-code, codex, opencode, aider) driving the real loop.

The CLIs themselves are the only fake: small scripts on PATH that check they got the
non-interactive flags ralph-ml must pass, log what they received, edit files in their
working directory as scripted, and print usage in each tool's output format.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_experiment, ralph, recorded

from ralph_ml.config import load_config
from ralph_ml.loop import Loop

TRAIN = textwrap.dedent(
    """\
    import json, os
    BONUS = 0.0
    p = json.load(open(os.environ["RALPH_PARAMS"]))
    print(f"val_accuracy: {1 - (p['x'] - 0.7) ** 2 + BONUS:.6f}")
    """
)

FAKE = r'''
import json, os, subprocess, sys, time
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
log = os.environ["FAKE_AGENT_LOG"]
plan = json.load(open(os.environ["FAKE_AGENT_PLAN"]))
n = sum(1 for _ in open(log)) if os.path.exists(log) else 0
step = plan[n] if n < len(plan) else {}
if name == "aider":
    prompt = open(args[args.index("--message-file") + 1]).read()
else:
    prompt = sys.stdin.read()
with open(log, "a") as fh:
    fh.write(json.dumps({"name": name, "argv": args, "cwd": os.getcwd(), "prompt": prompt,
                         "opencode_config": os.environ.get("OPENCODE_CONFIG_CONTENT"),
                         "files": sorted(os.listdir("."))}) + "\n")
REQUIRED = {
    "claude": ["-p", "--output-format", "json", "--permission-mode", "--allowedTools", "--disallowedTools"],
    "codex": ["exec", "--json", "--skip-git-repo-check", "--sandbox", "-"],
    "opencode": ["run", "--format", "json"],
    "aider": ["--message-file", "--yes-always", "--no-auto-commits", "--no-git", "--no-suggest-shell-commands"],
}
missing = [f for f in REQUIRED[name] if f not in args]
if missing or not prompt.strip():
    print(f"fake {name}: missing flags {missing} or empty prompt", file=sys.stderr)
    sys.exit(64)
if step.get("echo_env"):
    print("env:", os.environ.get(step["echo_env"]), file=sys.stderr)
if step.get("hang"):
    child = subprocess.Popen(["sleep", "60"])
    open(step["hang"], "w").write(str(child.pid))
    time.sleep(60)
for path, pairs in step.get("edit", {}).items():
    text = open(path).read()
    for a, b in pairs:
        assert a in text, (a, path)
        text = text.replace(a, b)
    open(path, "w").write(text)
for path, text in step.get("write", {}).items():
    open(path, "w").write(text)
final = step.get("final", "I changed BONUS to help the metric.")
tin, tout, cost = step.get("usage", [1000, 200, 0.01])
if name == "claude":
    print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": final,
                      "total_cost_usd": cost, "usage": {"input_tokens": tin - 300, "cache_read_input_tokens": 300,
                                                         "output_tokens": tout}}))
elif name == "codex":
    print(json.dumps({"type": "thread.started", "thread_id": "t1"}))
    print(json.dumps({"type": "item.completed", "item": {"id": "i1", "type": "agent_message", "text": final}}))
    print(json.dumps({"type": "turn.completed", "usage": {"input_tokens": tin, "cached_input_tokens": 0, "output_tokens": tout}}))
elif name == "opencode":
    print(json.dumps({"type": "text", "part": {"type": "text", "text": final}}))
    print(json.dumps({"type": "step_finish", "part": {"type": "step-finish", "cost": cost,
                                                      "tokens": {"input": tin, "output": tout}}}))
else:
    print(f"Applied edit.\nTokens: {tin / 1000:.1f}k sent, {tout} received. Cost: ${cost:.2f} message, ${cost:.2f} session.")
    print(final)
sys.exit(step.get("exit", 0))
'''


@pytest.fixture
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Fake claude/codex/opencode/aider on PATH; returns (set_plan, read_log)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("claude", "codex", "opencode", "aider"):
        exe = bindir / name
        exe.write_text(f"#!{sys.executable}\n{FAKE}")
        exe.chmod(0o755)
    log, plan = tmp_path / "agent_log.jsonl", tmp_path / "agent_plan.json"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_AGENT_LOG", str(log))
    monkeypatch.setenv("FAKE_AGENT_PLAN", str(plan))

    def set_plan(steps: list[dict[str, Any]]) -> None:
        plan.write_text(json.dumps(steps))

    def read_log() -> list[dict[str, Any]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return set_plan, read_log


def _exp(root: Path, agent: str, *, cli: dict[str, Any] | None = None, max_cycles: int = 2, baseline_first: bool = False,
         **agents: Any) -> Path:
    return make_experiment(
        root, TRAIN, target=0.999, safeguards={"max_cycles": max_cycles, "no_improvement_stop_cycles": 10},
        extra={"agents": {"code_model": agent, **agents}, "agents.cli": {"kill_grace_s": 0.2, **(cli or {})},
               "agents.llm": {"baseline_first": baseline_first}},
    )


def _run(root: Path) -> Any:
    return Loop.start(load_config(root / "ralph.toml")).run()


BONUS_1 = {"train.py": [["BONUS = 0.0", "BONUS = 0.01"]]}
BONUS_2 = {"train.py": [["BONUS = 0.01", "BONUS = 0.02"]]}
SECRET = "sk-ant-fake-SECRET-93b1c0d2e4"


def test_claude_code_edits_are_diffed_guarded_and_the_rejection_reaches_the_next_prompt(
    tmp_path: Path, fake_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_plan, read_log = fake_cli
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    set_plan([
        {"edit": BONUS_1, "usage": [1500, 200, 0.0123], "echo_env": "ANTHROPIC_API_KEY"},
        {"write": {"prepare.py": "THRESHOLD = 0.0\n"}},
        {"edit": BONUS_2},
    ])
    root = _exp(tmp_path / "exp", "claude-code", max_cycles=3)
    proc = ralph(root, "start")  # the real CLI, as a user runs it (PATH carries the fake `claude`)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # max cycles
    recs, log = recorded(root), read_log()
    assert [r["verdict"] for r in recs] == ["kept", "invalid", "kept"]
    assert recs[0]["metric"] == pytest.approx(0.65) and recs[2]["metric"] == pytest.approx(0.66)
    assert recs[0]["proposal"]["params"] == {"x": 0.1}  # no kept cycle yet: the defaults
    assert "-BONUS = 0.0\n+BONUS = 0.01" in recs[0]["proposal"]["patch"]
    assert recs[0]["proposal"]["tokens_used"] == 1700 and recs[0]["proposal"]["cost_usd"] == pytest.approx(0.0123)
    assert recs[1]["result"]["failure"] == "guard_rejected" and "prepare.py" in recs[1]["result"]["message"]
    assert "REJECTED" in log[2]["prompt"] and "frozen file 'prepare.py'" in log[2]["prompt"]
    # ran non-interactively with the edit tools allowed and Bash denied (no allow_pip/allow_uv)
    argv = log[0]["argv"]
    allowed = argv[argv.index("--allowedTools") + 1 : argv.index("--disallowedTools")]
    assert {"Read", "Edit", "Write"} <= set(allowed) and not any("pip" in a for a in allowed)
    assert "Bash" in argv[argv.index("--disallowedTools") + 1 :]
    assert argv[argv.index("--permission-mode") + 1] == "acceptEdits"
    assert "Only edit these files: train.py, PLAN.md" in log[0]["prompt"]
    # in a scratch copy, never the workspace; the third run started from the kept lineage
    assert not log[0]["cwd"].startswith(str(root)) and "BONUS = 0.0\n" in (root / "train.py").read_text()
    agent_dir = root / "runs" / "cycle_0001" / "agent"
    for name in ("transcript.prompt.md", "transcript.stdout.log", "transcript.stderr.log", "transcript.json"):
        assert (agent_dir / name).exists(), name
    assert "[REDACTED]" in (agent_dir / "transcript.stderr.log").read_text()
    assert [p for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()] == []
    state = json.loads((root / "state" / "ralph_state.json").read_text())
    assert state["budgets"]["tokens_used"] == 1700 + 1200 + 1200


def test_a_cli_edit_that_crashes_is_handed_back_in_the_failed_version_with_its_error(tmp_path: Path, fake_cli: Any) -> None:
    set_plan, read_log = fake_cli
    set_plan([
        {"edit": {"train.py": [["BONUS = 0.0", "BONUS = 0.01 * undefined_scale"]]}},  # cycle 1: NameError
        {"edit": {"train.py": [["BONUS = 0.01 * undefined_scale", "BONUS = 0.01"]]}},  # cycle 2: only in the failed code
        {"edit": BONUS_2},  # cycle 3: on the best, the fix
    ])
    root = _exp(tmp_path / "exp", "claude-code", max_cycles=3)
    proc = ralph(root, "start", "--plain")  # the real CLI, as a user runs it
    assert proc.returncode == 2, proc.stdout + proc.stderr  # max cycles
    assert "→ fix of cycle 1, built on its failed code" in proc.stdout
    assert "→ on version 2 (improve the best version: cycle 2, 0.65)" in proc.stdout
    recs, log = recorded(root), read_log()
    assert [r["verdict"] for r in recs] == ["failed", "kept", "kept"]
    assert recs[0]["result"]["failure"] == "crash" and recs[0]["parent"] is None
    assert "FAILED" in log[1]["prompt"] and "NameError: name 'undefined_scale' is not defined" in log[1]["prompt"]
    assert "fix of cycle 1 (crash), attempt 1 of 2" in log[1]["prompt"]
    fix = recs[1]
    assert fix["proposal"]["meta"]["mode"] == "fix" and fix["proposal"]["meta"]["fix_of"] == 1 and fix["parent"] == 1
    assert fix["proposal"]["params"] == {} and fix["metric"] == pytest.approx(0.65)  # the failed version's params
    assert recs[2]["parent"] == 2 and recs[2]["proposal"]["meta"]["mode"] == "patch" and recs[2]["metric"] == pytest.approx(0.66)
    assert "The files here are the version of cycle 2 (improve the best version: cycle 2, 0.65)" in log[2]["prompt"]


def test_codex_opencode_and_aider_get_their_non_interactive_flags_and_report_usage(tmp_path: Path, fake_cli: Any) -> None:
    set_plan, read_log = fake_cli
    set_plan([{"edit": BONUS_1, "usage": [2000, 500, 0.02]}] * 3)  # one step per run, runs share the log
    for i, agent in enumerate(("codex", "opencode", "aider")):
        root = _exp(tmp_path / f"exp-{agent}", agent, max_cycles=1, cli={"price_per_1k_input": 0.01, "price_per_1k_output": 0.1})
        _run(root)
        rec = recorded(root)[0]
        call = read_log()[i]
        assert rec["verdict"] == "kept" and rec["metric"] == pytest.approx(0.65), (agent, rec["result"])
        assert rec["proposal"]["agent"] == agent and rec["proposal"]["tokens_used"] == 2500
        assert "I changed BONUS" in rec["proposal"]["rationale"] and "Tokens:" not in rec["proposal"]["rationale"]
        if agent == "codex":  # codex reports no cost: priced from agents.cli.price_per_1k_*
            assert call["argv"][call["argv"].index("--sandbox") + 1] == "workspace-write" and call["argv"][-1] == "-"
            assert rec["proposal"]["cost_usd"] == pytest.approx(2.0 * 0.01 + 0.5 * 0.1)
        elif agent == "opencode":
            permission = json.loads(call["opencode_config"])["permission"]
            assert permission == {"edit": "allow", "bash": "deny", "webfetch": "deny"}
            assert rec["proposal"]["cost_usd"] == pytest.approx(0.02)
        else:
            assert "train.py" in call["argv"] and "--dry-run" not in call["argv"]
            assert rec["proposal"]["cost_usd"] == pytest.approx(0.02)
        assert json.loads((root / "runs" / "cycle_0001" / "agent" / "transcript.json").read_text())["agent"] == agent


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_hanging_agent_is_killed_with_its_children_and_the_run_goes_on(tmp_path: Path, fake_cli: Any) -> None:
    set_plan, _ = fake_cli
    pidfile = tmp_path / "child.pid"
    set_plan([{"hang": str(pidfile)}, {"edit": BONUS_1}])
    root = _exp(tmp_path / "exp", "claude-code", cli={"timeout_s": 1.0})
    t0 = time.monotonic()
    _run(root)
    assert time.monotonic() - t0 < 20
    recs = recorded(root)
    assert [r["verdict"] for r in recs] == ["invalid", "kept"]
    assert recs[0]["result"]["failure"] == "agent_error" and "killed after 1 s (agents.cli.timeout_s)" in recs[0]["result"]["message"]
    assert not _alive(int(pidfile.read_text()))


def test_baseline_first_then_an_agent_that_changes_nothing_is_an_invalid_cycle(tmp_path: Path, fake_cli: Any) -> None:
    set_plan, read_log = fake_cli
    set_plan([{"final": "Nothing to improve."}])
    root = _exp(tmp_path / "exp", "opencode", max_cycles=2, baseline_first=True)
    _run(root)
    base, rec = recorded(root)
    assert base["proposal"]["meta"]["mode"] == "baseline" and base["metric"] == pytest.approx(0.64)
    assert len(read_log()) == 1  # the baseline cost no agent run
    assert "Cycle 1 (x=0.1) ended ok" in read_log()[0]["prompt"]
    assert rec["verdict"] == "invalid" and "without changing any text file" in rec["result"]["message"]
    assert "Nothing to improve." in rec["result"]["message"]
    assert rec["proposal"]["tokens_used"] == 1200  # the run still cost tokens


def test_cli_agent_writes_plan_and_initial_code_from_idea_md(tmp_path: Path, fake_cli: Any) -> None:
    set_plan, read_log = fake_cli
    set_plan([{"write": {"PLAN.md": "# Plan\n", "train.py": TRAIN.replace("0.0", "0.03")}}])
    root = _exp(tmp_path / "exp", "claude-code", max_cycles=1)
    (root / "train.py").unlink()
    (root / "program.md").unlink()
    (root / "IDEA.md").write_text("# Idea\nA toy quadratic.\n")
    _run(root)
    rec = recorded(root)[0]
    assert rec["verdict"] == "kept" and rec["metric"] == pytest.approx(0.67)
    assert rec["proposal"]["meta"]["mode"] == "initial"
    assert "There is no training code yet" in read_log()[0]["prompt"] and "A toy quadratic." in read_log()[0]["prompt"]
    assert (root / "runs" / "cycle_0001" / "code" / "PLAN.md").exists()


ANALYSIS = {
    "diagnosis": "underfitting",
    "summary": "x is too small.",
    "recommendations": [{"action": "increase:x", "rationale": "quadratic peak at 0.7", "confidence": "high",
                         "param": "x", "direction": "increase"}],
    "advice": "continue",
}


def test_cli_analysis_agent_runs_read_only_and_its_json_becomes_the_analysis(tmp_path: Path, fake_cli: Any) -> None:
    set_plan, read_log = fake_cli
    set_plan([{"final": "Here is my analysis:\n```json\n" + json.dumps(ANALYSIS) + "\n```", "usage": [800, 100, 0.005]}])
    root = make_experiment(
        tmp_path / "exp", TRAIN, target=0.999, safeguards={"max_cycles": 1},
        extra={"agents": {"analysis_model": "claude-code"}},
    )
    _run(root)
    rec = recorded(root)[0]
    assert rec["analysis"]["agent"] == "claude-code" and rec["analysis"]["diagnosis"] == "underfitting"
    assert rec["analysis"]["tokens_used"] == 900 and rec["analysis"]["cost_usd"] == pytest.approx(0.005)
    c1 = root / "runs" / "cycle_0001"
    assert json.loads((c1 / "recommendations.json").read_text())[0]["action"] == "increase:x"
    assert (c1 / "agent" / "analysis_transcript.json").exists()
    argv = read_log()[0]["argv"]
    denied = argv[argv.index("--disallowedTools") + 1 :]
    assert {"Edit", "Write", "Bash"} <= set(denied) and argv[argv.index("--permission-mode") + 1] == "default"
    assert "val_accuracy: 0.64" in read_log()[0]["prompt"]  # the stdout tail reached the agent


def test_validate_names_a_missing_cli_and_start_refuses_before_any_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin")
    root = _exp(tmp_path / "exp", "codex", cli={"command": "codex-not-installed"})
    v = ralph(root, "validate")
    assert v.returncode != 0 and "`codex-not-installed` on PATH" in v.stdout + v.stderr
    s = ralph(root, "start")
    assert s.returncode == 4 and "codex-not-installed" in s.stdout + s.stderr
    assert not (root / "runs" / "cycle_0001").exists()
