"""The `openai` agent and analyst driving the real loop against a local OpenAI-compatible server.

The server (tests/fake_llm_server.py) answers scripted replies; the real `openai` client,
guards, executor and journal run as in production.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import QUADRATIC, make_experiment, ralph, recorded
from fake_llm_server import FakeLLM, Reply, error, ok

from ralph_ml.config import load_config
from ralph_ml.loop import Loop

# The metric is 1 - (x - 0.7)^2 + BONUS: params move x, code patches move BONUS.
TRAIN = textwrap.dedent(
    """\
    import json, os
    BONUS = 0.0
    p = json.load(open(os.environ["RALPH_PARAMS"]))
    x = p["x"]
    print(f"val_accuracy: {1 - (x - 0.7) ** 2 + BONUS:.6f}")
    print(f"key_seen: {1 if os.environ.get('OPENAI_API_KEY') else 0}")
    """
)

BONUS_PATCH = """\
--- a/train.py
+++ b/train.py
@@ -1,3 +1,3 @@
 import json, os
-BONUS = 0.0
+BONUS = 0.01
 p = json.load(open(os.environ["RALPH_PARAMS"]))
"""

FROZEN_PATCH = """\
--- a/prepare.py
+++ b/prepare.py
@@ -1,2 +1,2 @@
 # frozen evaluation of the test experiment
-THRESHOLD = 0.5
+THRESHOLD = 0.0
"""

STALE_PATCH = """\
--- a/train.py
+++ b/train.py
@@ -1,3 +1,3 @@
 import json, os
-BONUS = 0.5
+BONUS = 0.9
 p = json.load(open(os.environ["RALPH_PARAMS"]))
"""


def _exp(root: Path, url: str, *, llm: dict[str, Any] | None = None, safeguards: dict[str, Any] | None = None,
         agents: dict[str, Any] | None = None, train: str = TRAIN, extra: dict[str, Any] | None = None) -> Path:
    return make_experiment(
        root, train, target=0.999,
        safeguards={"max_cycles": 8, "no_improvement_stop_cycles": 10, **(safeguards or {})},
        extra={
            "agents": {"code_model": "openai", **(agents or {})},
            "agents.llm": {"base_url": url, "api_key_env": "", "retry_backoff_s": 0.01, "timeout_s": 10, **(llm or {})},
            **(extra or {}),
        },
    )


def _run(root: Path) -> Any:
    return Loop.start(load_config(root / "ralph.toml")).run()


def params(x: float, why: str = "move x", **kw: Any) -> Reply:
    return ok({"rationale": why, "params": {"x": x}}, **kw)


def test_hybrid_params_corrections_then_patches_guard_rejections_then_back_to_params(tmp_path: Path) -> None:
    script = [
        # cycle 1 is the baseline (x = 0.1): no call
        ok("Sure! {not json"), params(0.4),  # cycle 2: malformed JSON -> correction -> valid
        params(1.5), params(0.1), params(0.05),  # cycle 3: out of bounds, already tried, then a (worse) new value
        params(0.2),  # cycle 4: worse again -> streak 2 -> patches
        ok({"rationale": "tune the threshold", "patch": FROZEN_PATCH}),  # cycle 5: touches the frozen file
        ok({"rationale": "stale context", "patch": STALE_PATCH}),  # cycle 6: does not apply
        params(0.7),  # cycle 7: back to params after 2 invalid patches -> target met
    ]
    with FakeLLM(script) as srv:
        root = _exp(tmp_path / "exp", srv.url, llm={"hybrid_patch_after": 2, "max_invalid_patches": 2})
        d = _run(root)
        prompts = srv.user_prompts()
        assert len(srv.requests) == 9 and not srv.script
    assert d.reason is not None and d.reason.value == "target_met" and d.exit_code == 0
    recs = recorded(root)
    assert [r["verdict"] for r in recs] == ["kept", "kept", "discarded", "discarded", "invalid", "invalid", "kept"]
    assert [r["proposal"]["meta"]["mode"] for r in recs] == ["baseline"] + ["params"] * 3 + ["patch", "patch", "params"]
    assert recs[1]["proposal"]["params"] == {"x": 0.4} and recs[2]["proposal"]["params"] == {"x": 0.05}
    # the correction rounds sent the error back to the model
    assert "not a JSON object" in prompts[1]
    assert "outside its bounds [0, 1]" in prompts[3] and "already run at cycle 1" in prompts[4]
    # cycle 5's patch was refused by the loop's guard (never by the agent) and nothing ran
    assert recs[4]["result"]["failure"] == "guard_rejected" and "frozen file 'prepare.py'" in recs[4]["result"]["message"]
    assert (root / "runs" / "cycle_0005" / "guard_rejection.txt").exists()
    assert (root / "prepare.py").read_text().endswith("THRESHOLD = 0.5\n")
    # ...and the next prompt tells the agent why
    assert "REJECTED" in prompts[7] and "frozen file 'prepare.py'" in prompts[7]
    assert recs[5]["result"]["failure"] == "guard_rejected" and "does not apply" in recs[5]["result"]["message"]
    assert "propose the hyperparameters" in prompts[8]
    # every call's usage is counted: 9 replies x (100 prompt + 20 completion) tokens
    assert sum(r["proposal"]["tokens_used"] for r in recs) == 9 * 120
    state = json.loads((root / "state" / "ralph_state.json").read_text())
    assert state["budgets"]["tokens_used"] == 9 * 120
    assert (root / "runs" / "cycle_0002" / "agent" / "transcript.jsonl").exists()


def test_patch_mode_diff_then_whole_files_build_on_the_kept_lineage(tmp_path: Path) -> None:
    new_train = TRAIN.replace("BONUS = 0.0", "BONUS = 0.02")
    script = [
        # cycle 1 measures the code as it is (baseline, no call)
        ok({"rationale": "small bonus", "patch": "```diff\n" + BONUS_PATCH + "```"}),
        ok({"rationale": "bigger bonus", "files": {"train.py": new_train}}),
    ]
    with FakeLLM(script) as srv:
        root = _exp(tmp_path / "exp", srv.url, llm={"mode": "patch"}, safeguards={"max_cycles": 3})
        _run(root)
        patch_prompt = srv.user_prompts()[1]
    recs = recorded(root)
    assert [r["verdict"] for r in recs] == ["kept", "kept", "kept"]
    assert recs[0]["proposal"]["patch"] is None and recs[0]["metric"] == pytest.approx(0.64)
    assert recs[1]["metric"] == pytest.approx(0.64 + 0.01) and recs[2]["metric"] == pytest.approx(0.64 + 0.02)
    # cycle 3's diff was made against cycle 2's code (the kept lineage), which the prompt showed
    assert "BONUS = 0.01" in patch_prompt and "REJECTED" not in patch_prompt
    assert "-BONUS = 0.01\n+BONUS = 0.02" in recs[2]["proposal"]["patch"]
    assert "BONUS = 0.02" in (root / "runs" / "cycle_0003" / "code" / "train.py").read_text()
    assert "BONUS = 0.0\n" in (root / "train.py").read_text()  # the workspace itself is never edited


INITIAL_TRAIN = textwrap.dedent(
    """\
    from ralph_ml import trial
    from prepare import THRESHOLD
    p = trial.params()
    trial.log_metrics(val_accuracy=1 - (p["x"] - 0.7) ** 2 + THRESHOLD / 10)
    """
)


def test_initial_code_is_written_from_program_md_as_plan_and_train_py(tmp_path: Path) -> None:
    reply = {"rationale": "first version", "plan": "# Plan\n\nA quadratic toy model.", "files": {"train.py": INITIAL_TRAIN}}
    with FakeLLM([ok(reply)]) as srv:
        root = _exp(tmp_path / "exp", srv.url, safeguards={"max_cycles": 1})
        (root / "train.py").unlink()
        (root / "program.md").write_text("# Idea\nFit the quadratic toy problem.\n")
        v = ralph(root, "validate")
        assert v.returncode == 0, v.stdout + v.stderr
        assert "writes it in cycle 1" in v.stdout
        d = _run(root)
        prompt = srv.user_prompts()[0]
    assert d.reason is not None and d.reason.value == "max_cycles"
    assert "There is no training code yet: train.py" in prompt and "Fit the quadratic toy problem" in prompt
    assert "THRESHOLD = 0.5" in prompt  # the frozen evaluation is shown so the code can use it
    rec = recorded(root)[0]
    assert rec["proposal"]["meta"]["mode"] == "initial" and rec["verdict"] == "kept"
    assert rec["proposal"]["params"] == {"x": 0.1}  # the search space's defaults
    assert rec["metric"] == pytest.approx(0.64 + 0.05)
    code = root / "runs" / "cycle_0001" / "code"
    assert (code / "PLAN.md").read_text().startswith("# Plan") and (code / "train.py").read_text() == INITIAL_TRAIN
    assert "new file mode" in (root / "runs" / "cycle_0001" / "patch.diff").read_text()
    assert not (root / "train.py").exists()


CRASH_PATCH = """\
--- a/train.py
+++ b/train.py
@@ -1,3 +1,3 @@
 import json, os
-BONUS = 0.0
+BONUS = 0.01 * undefined_scale
 p = json.load(open(os.environ["RALPH_PARAMS"]))
"""


def _fix(bad: str, good: str) -> str:
    """A diff against the failed version's train.py (CRASH_PATCH applied)."""
    return (f"--- a/train.py\n+++ b/train.py\n@@ -1,3 +1,3 @@\n import json, os\n-BONUS = {bad}\n+BONUS = {good}\n"
            ' p = json.load(open(os.environ["RALPH_PARAMS"]))\n')


def test_a_change_that_crashes_is_handed_back_with_its_error_and_the_fix_builds_on_it(tmp_path: Path) -> None:
    script = [
        # cycle 1 measures the code as it is (baseline, no call)
        ok({"rationale": "scale the bonus", "patch": CRASH_PATCH}),  # cycle 2: NameError when it runs
        ok({"rationale": "define the scale", "patch": _fix("0.01 * undefined_scale", "0.01")}),  # cycle 3: the fix
        ok({"rationale": "bigger bonus", "files": {"train.py": TRAIN.replace("BONUS = 0.0", "BONUS = 0.02")}}),  # cycle 4
    ]
    with FakeLLM(script) as srv:
        root = _exp(tmp_path / "exp", srv.url, llm={"mode": "patch"}, safeguards={"max_cycles": 4})
        _run(root)
        prompts = srv.user_prompts()
    recs = recorded(root)
    assert [r["verdict"] for r in recs] == ["kept", "failed", "kept", "kept"]
    assert recs[1]["result"]["failure"] == "crash" and "undefined_scale" in recs[1]["result"]["stderr_tail"]
    # cycle 3 was asked to fix cycle 2, shown the failed version's code and its error
    assert prompts[1].startswith("# Task: fix the code change that failed, for cycle 3")
    assert "BONUS = 0.01 * undefined_scale" in prompts[1] and "NameError: name 'undefined_scale' is not defined" in prompts[1]
    assert "fix of cycle 2 (crash), attempt 1 of 2" in prompts[1]
    fix = recs[2]
    assert fix["proposal"]["meta"]["mode"] == "fix" and fix["proposal"]["meta"]["fix_of"] == 2
    assert fix["parent"] == 2 and fix["metric"] == pytest.approx(0.65)
    # cycle 4 improves the best (the fix), whose code is cycle 2's change plus its fix
    assert prompts[2].startswith("# Task: propose a code change for cycle 4") and "BONUS = 0.01\n" in prompts[2]
    assert "## The code to change (improve the best version: cycle 3, 0.65;" in prompts[2]
    assert recs[3]["parent"] == 3 and recs[3]["proposal"]["meta"]["mode"] == "patch"
    assert "-BONUS = 0.01\n+BONUS = 0.02" in recs[3]["proposal"]["patch"] and recs[3]["metric"] == pytest.approx(0.66)
    tree = json.loads((root / "reports" / "versions.json").read_text())
    assert {n["cycle"]: n["parent"] for n in tree} == {1: None, 2: 1, 3: 2, 4: 3}
    assert "cycle 3 [kept] val_accuracy 0.65 · fix of 2: patch train.py" in (root / "reports" / "final_report.md").read_text()


def test_a_failed_fix_is_handed_back_until_max_fix_attempts_then_the_best_is_improved(tmp_path: Path) -> None:
    script = [
        ok({"rationale": "scale the bonus", "patch": CRASH_PATCH}),  # cycle 2: crashes
        ok({"rationale": "another name", "patch": _fix("0.01 * undefined_scale", "0.01 * still_undefined")}),  # 3: crashes
        ok({"rationale": "small bonus", "patch": BONUS_PATCH}),  # cycle 4: chain of fixes used up: on the best (cycle 1)
    ]
    with FakeLLM(script) as srv:
        root = _exp(tmp_path / "exp", srv.url, llm={"mode": "patch"}, safeguards={"max_cycles": 4},
                    extra={"branching": {"max_fix_attempts": 1}})
        _run(root)
        prompts = srv.user_prompts()
    recs = recorded(root)
    assert [r["verdict"] for r in recs] == ["kept", "failed", "failed", "kept"]
    assert recs[2]["parent"] == 2 and recs[2]["proposal"]["meta"]["fix_of"] == 2
    assert "still_undefined" in recs[2]["result"]["stderr_tail"]
    assert "attempt 1 of 1" in prompts[1]
    assert prompts[2].startswith("# Task: propose a code change for cycle 4") and "undefined_scale" not in prompts[2].split("## Program")[0]
    assert recs[3]["parent"] == 1 and recs[3]["proposal"]["meta"]["mode"] == "patch" and recs[3]["metric"] == pytest.approx(0.65)


def test_a_fix_the_guard_rejects_hands_the_failure_back_again_with_the_rejection(tmp_path: Path) -> None:
    script = [
        ok({"rationale": "scale the bonus", "patch": CRASH_PATCH}),  # cycle 2: crashes
        ok({"rationale": "define the scale", "patch": _fix("0.5", "0.01")}),  # cycle 3: context not in the code
        ok({"rationale": "define the scale", "patch": _fix("0.01 * undefined_scale", "0.01")}),  # cycle 4: the fix
    ]
    with FakeLLM(script) as srv:
        root = _exp(tmp_path / "exp", srv.url, llm={"mode": "patch"}, safeguards={"max_cycles": 4})
        _run(root)
        prompts = srv.user_prompts()
    recs = recorded(root)
    assert [r["result"]["failure"] for r in recs] == ["none", "crash", "guard_rejected", "none"]
    assert recs[2]["proposal"]["meta"]["fix_of"] == 2
    # the rejected fix never ran, so cycle 2 is handed back again, with the guard's reason
    assert prompts[2].startswith("# Task: fix the code change that failed, for cycle 4")
    assert "An earlier fix of it (cycle 3) never ran: guard_rejected: " in prompts[2]
    assert recs[3]["proposal"]["meta"]["fix_of"] == 2 and recs[3]["parent"] == 2 and recs[3]["verdict"] == "kept"
    assert recs[3]["metric"] == pytest.approx(0.65)


SLOW_TRAIN = TRAIN + "import time; time.sleep(0.3)  # long enough for the two trials in flight to overlap\n"


def _delta(cycle: int) -> float:
    return -0.002 * cycle if cycle % 3 == 0 else 0.001 * cycle  # every third change makes things worse


def _bump(body: dict[str, Any]) -> Reply:
    """The fake LLM's reply to any patch prompt: the code it was shown, its BONUS moved by _delta(cycle)."""
    prompt = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    bonus = float(re.search(r"^BONUS = (-?[0-9.]+)$", prompt, re.M).group(1))  # type: ignore[union-attr]
    cycle = int(re.search(r"for cycle (\d+)", prompt).group(1))  # type: ignore[union-attr]
    new = SLOW_TRAIN.replace("BONUS = 0.0", f"BONUS = {bonus + _delta(cycle):.3f}")
    return ok({"rationale": f"bonus {_delta(cycle):+.3f}", "files": {"train.py": new}})


def test_with_two_trials_at_once_and_top_k_2_parallel_changes_build_on_different_top_versions(tmp_path: Path) -> None:
    with FakeLLM(default=_bump) as srv:
        root = make_experiment(
            tmp_path / "exp", SLOW_TRAIN, target=0.999, safeguards={"max_cycles": 8, "no_improvement_stop_cycles": 10},
            execution={"max_concurrency": 2},
            extra={"agents": {"code_model": "openai"}, "branching": {"top_k": 2},
                   "agents.llm": {"base_url": srv.url, "api_key_env": "", "mode": "patch", "timeout_s": 10}},
        )
        d = _run(root)
    assert d.reason is not None and d.reason.value == "max_cycles"
    recs = {r["cycle"]: r for r in recorded(root)}
    assert len(recs) == 8 and all(r["result"]["status"] == "ok" for r in recs.values())
    assert recs[1]["proposal"]["meta"]["mode"] == "baseline"
    assert recs[2]["proposal"]["meta"]["mode"] == "patch"  # not a second baseline while the first is in flight
    # replay the journal: each patch started while another cycle was in flight builds on a
    # different version than that one, once two versions have run
    in_flight: dict[int, Any] = {}
    scored: list[int] = []
    overlapped = 0
    for line in (root / "state" / "journal.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["type"] == "cycle_started":
            c = e["cycle"]
            parent = recs[c]["parent"]
            if len(scored) >= 2 and in_flight:
                overlapped += 1
                assert parent not in in_flight.values(), (c, parent, in_flight)
                assert parent in sorted(scored, key=lambda s: -recs[s]["metric"])[:2]
            if e["proposal"]["patch"]:
                assert e["proposal"]["meta"]["parent"] == parent  # the version the agent was shown is the one built
            in_flight[c] = parent
        elif e["type"] == "cycle_recorded":
            in_flight.pop(e["record"]["cycle"])
            scored.append(e["record"]["cycle"])
    assert overlapped >= 3
    assert len({recs[c]["parent"] for c in range(3, 9)}) >= 3  # a tree, not a chain on the best
    # every child's code is its parent's plus its own change
    for c in range(2, 9):
        p = recs[c]["parent"]
        shown = 0.0 if p is None else float(re.search(r"BONUS = (-?[0-9.]+)", (root / "runs" / f"cycle_{p:04d}" / "code" / "train.py").read_text()).group(1))  # type: ignore[union-attr]
        assert f"BONUS = {shown + _delta(c):.3f}" in (root / "runs" / f"cycle_{c:04d}" / "code" / "train.py").read_text()


SECRET = "sk-ralph-test-SECRET-4f9c2b7e1d"


def test_schema_fallback_429_retry_after_5xx_and_the_key_never_lands_in_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)

    def reject_schema(body: dict[str, Any]) -> Reply:
        assert body["response_format"]["type"] == "json_schema"
        return error(400, "response_format of type json_schema is not supported by this server")

    script = [
        reject_schema,
        error(429, "rate limited", headers={"retry-after": "0.05"}),
        error(500, f"upstream failed for Authorization: Bearer {SECRET}"),
        params(0.4),
        params(0.6),
    ]
    with FakeLLM(script) as srv:
        root = _exp(tmp_path / "exp", srv.url, llm={"api_key_env": "OPENAI_API_KEY"}, safeguards={"max_cycles": 3})
        _run(root)
        kinds = [r["body"].get("response_format", {}).get("type") for r in srv.requests]
        auth = {r["headers"].get("authorization") for r in srv.requests}
    # json_schema refused once, then json_object for the rest of the run (remembered)
    assert kinds == ["json_schema", "json_object", "json_object", "json_object", "json_object"]
    assert auth == {f"Bearer {SECRET}"}  # read from the environment at call time
    recs = recorded(root)
    assert [r["proposal"]["params"] for r in recs] == [{"x": 0.1}, {"x": 0.4}, {"x": 0.6}]
    assert all(r["result"]["metrics"]["key_seen"] == 0 for r in recs)  # trials never see the key
    events = [json.loads(line) for line in (root / "runs" / "cycle_0002" / "agent" / "transcript.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("retry") == 2 and any(e["event"] == "fallback" for e in events)
    assert any("[REDACTED]" in json.dumps(e) for e in events)
    leaked = [p for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_a_provider_that_keeps_timing_out_makes_the_cycle_invalid_and_the_run_goes_on(tmp_path: Path) -> None:
    slow = Reply(content="{}", sleep_s=1.5)
    with FakeLLM([slow, slow, params(0.5)]) as srv:
        root = _exp(tmp_path / "exp", srv.url, llm={"timeout_s": 0.3, "max_retries": 1}, safeguards={"max_cycles": 3})
        d = _run(root)
        assert len(srv.requests) == 3
    assert d.reason is not None and d.reason.value == "max_cycles"
    recs = recorded(root)
    assert [r["verdict"] for r in recs] == ["kept", "invalid", "kept"]
    assert recs[1]["result"]["failure"] == "agent_error"
    assert "timed out on 2 attempt(s)" in recs[1]["result"]["message"]
    assert recs[1]["proposal"]["meta"]["mode"] == "params"


def test_token_budgets_cap_max_tokens_and_stop_before_a_call_that_cannot_be_paid(tmp_path: Path) -> None:
    with FakeLLM([params(0.4, usage=(900, 100)), params(0.5, usage=(900, 50))]) as srv:
        root = _exp(
            tmp_path / "exp", srv.url, safeguards={"token_budget_total": 2000, "cost_budget_usd": 10.0},
            llm={"price_per_1k_input": 0.5, "price_per_1k_output": 1.0},
        )
        d = _run(root)
        reqs = [r["body"] for r in srv.requests]
    assert len(reqs) == 2
    for body, spent in zip(reqs, (0, 1000)):
        chars = sum(len(m["content"]) for m in body["messages"])
        assert body["max_tokens"] == min(4096, 2000 - spent - (int(chars / 3.0) + 1))
    assert d.reason is not None and d.reason.value == "token_budget" and d.exit_code == 2
    assert "token_budget_total" in d.message
    recs = recorded(root)
    assert len(recs) == 3  # the 4th cycle was never started
    assert [r["proposal"]["tokens_used"] for r in recs] == [0, 1000, 950]
    assert recs[1]["proposal"]["cost_usd"] == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)
    st = json.loads(ralph(root, "status", "--json", check=True).stdout)
    assert st["budgets"]["tokens_used"] == 1950 and st["budgets"]["tokens_left"] == 50
    assert st["budgets"]["cost_used_usd"] == pytest.approx(0.55 + 0.45 + 0.05)


def test_per_cycle_budget_refuses_a_correction_it_cannot_pay_for(tmp_path: Path) -> None:
    with FakeLLM([ok("no json here", usage=(700, 100))]) as srv:
        root = _exp(tmp_path / "exp", srv.url, safeguards={"token_budget_per_cycle": 1100, "max_cycles": 2})
        _run(root)
        assert len(srv.requests) == 1  # the correction round was not affordable: no second call
    rec = recorded(root)[1]
    assert rec["verdict"] == "invalid" and rec["result"]["failure"] == "agent_error"
    assert "token_budget_per_cycle" in rec["result"]["message"]
    assert rec["proposal"]["tokens_used"] == 800  # what the failed attempt spent still counts


ANALYSIS_HIGH = {
    "diagnosis": "underfitting",
    "summary": "x is far from its optimum; the curve is smooth.",
    "recommendations": [
        {"action": "increase:x", "rationale": "metric rises with x", "confidence": "high", "param": "x", "direction": "increase"},
        {"action": "try a wider model", "rationale": "cheap", "confidence": "low", "param": None, "direction": None},
    ],
    "advice": "stop",
}


def _router(analysis: Any, proposals: list[Reply] | None = None) -> Any:
    queue = list(proposals or [])

    def route(body: dict[str, Any]) -> Reply:
        if any("Task: analyse cycle" in m["content"] for m in body["messages"]):
            return analysis(body) if callable(analysis) else ok(analysis)
        return queue.pop(0)

    return route


def test_analysis_agent_replaces_the_builtin_analysis_and_its_stop_is_only_advice(tmp_path: Path) -> None:
    with FakeLLM(default=_router(ANALYSIS_HIGH)) as srv:
        root = make_experiment(
            tmp_path / "exp", QUADRATIC, target=0.9999, safeguards={"max_cycles": 3, "no_improvement_stop_cycles": 10},
            extra={"agents": {"analysis_model": "openai"}, "agents.llm": {"base_url": srv.url, "api_key_env": ""}},
        )
        d = _run(root)
        prompt = srv.user_prompts()[0]
    assert d.reason is not None and d.reason.value == "max_cycles"  # the decision engine stays the authority
    assert len(recorded(root)) == 3
    assert "Built-in diagnosis" in prompt and "val_accuracy: 0.64" in prompt  # log tail given to the agent
    c1 = root / "runs" / "cycle_0001"
    assert json.loads((c1 / "recommendations.json").read_text())[0]["action"] == "increase:x"
    md = (c1 / "analysis.md").read_text()
    assert "x is far from its optimum" in md and "by the openai analysis agent; its advice: stop" in md
    evidence = json.loads((c1 / "decision.json").read_text())["evidence"]
    assert evidence["analysis_advice"] == {"agent": "openai", "advice": "stop", "diagnosis": "underfitting"}
    rec = recorded(root)[0]
    assert rec["analysis"]["agent"] == "openai" and rec["analysis"]["tokens_used"] == 120
    state = json.loads((root / "state" / "ralph_state.json").read_text())
    assert state["budgets"]["tokens_used"] == 3 * 120  # analysis tokens count in the budgets


def test_failing_analysis_agent_falls_back_to_builtin_and_seed_rule_stops_without_high_confidence(tmp_path: Path) -> None:
    medium = {**ANALYSIS_HIGH, "recommendations": [{"action": "explore", "rationale": "unclear", "confidence": "medium"}],
              "advice": "continue"}
    answers = [ok("garbage"), ok("garbage"), ok("garbage"), ok(medium)]

    with FakeLLM(default=_router(lambda body: answers.pop(0), [params(0.05)])) as srv:
        root = _exp(tmp_path / "exp", srv.url, agents={"analysis_model": "openai"})
        d = _run(root)
        assert not answers
    recs = recorded(root)
    # cycle 1: the analyst failed 3 times (2 corrections): the built-in analysis is kept, its tokens counted
    a1 = recs[0]["analysis"]
    assert a1["agent"] == "builtin" and "analysis agent openai failed" in a1["summary"] and a1["tokens_used"] == 360
    # cycle 2 got worse and its analysis has no high-confidence recommendation: seed 000's rule stops (plateau)
    assert len(recs) == 2 and recs[1]["verdict"] == "discarded"
    assert d.reason is not None and d.reason.value == "plateau" and d.exit_code == 3
    assert "no high-confidence recommendation" in d.message
    assert d.evidence["analysis_advice"]["advice"] == "continue"


def test_missing_api_key_fails_fast_naming_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RALPH_TEST_KEY", raising=False)
    root = _exp(tmp_path / "exp", "http://127.0.0.1:9/v1", llm={"api_key_env": "RALPH_TEST_KEY"})
    proc = ralph(root, "start")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "RALPH_TEST_KEY" in proc.stdout + proc.stderr and "agents.llm.api_key_env" in proc.stdout + proc.stderr
    assert not (root / "runs" / "cycle_0001").exists()


REPORTING_TRAIN = textwrap.dedent(
    """\
    from ralph_ml import trial
    BONUS = 0.0
    p = trial.params({"x": 0.1})
    acc = 1 - (p["x"] - 0.7) ** 2 + BONUS
    trial.report(0, val_accuracy=acc)
    print(f"val_accuracy: {acc:.6f}")
    """
)


def test_the_prompt_names_the_calls_to_keep_and_a_change_that_drops_one_is_rejected(tmp_path: Path) -> None:
    no_curve = REPORTING_TRAIN.replace("trial.report(0, val_accuracy=acc)\n", "").replace("BONUS = 0.0", "BONUS = 0.2")
    script = [
        ok({"rationale": "skip the curve", "files": {"train.py": no_curve}}),
        ok({"rationale": "small bonus", "files": {"train.py": REPORTING_TRAIN.replace("BONUS = 0.0", "BONUS = 0.01")}}),
    ]
    with FakeLLM(script) as srv:
        root = _exp(tmp_path / "exp", srv.url, llm={"mode": "patch"}, safeguards={"max_cycles": 3}, train=REPORTING_TRAIN)
        _run(root)
        systems = [r["body"]["messages"][0]["content"] for r in srv.requests]
        prompts = srv.user_prompts()
    keep = ("- Keep these calls in the code (a change without one of them is rejected): "
            "train.py: ralph_ml.trial.params, ralph_ml.trial.report.")
    assert all(keep in s.splitlines() for s in systems), systems[0]
    base, dropped, kept = recorded(root)
    assert dropped["result"]["failure"] == "guard_rejected"
    assert "patched file 'train.py' no longer calls 'ralph_ml.trial.report'" in dropped["result"]["message"]
    assert "REJECTED" in prompts[1] and "no longer calls 'ralph_ml.trial.report'" in prompts[1]
    assert kept["kept"] and kept["metric"] == pytest.approx(base["metric"] + 0.01)
