"""Branching search: versions fork from any recorded version, siblings run in parallel in their
own folders, a failed child is handed back for a bounded number of fixes, and the tree is recorded."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

from conftest import journal_events, ralph, recorded

TRAIN = """
import re
src = open("train.py").read()
bonus = float(re.search(r"BONUS = ([0-9.]+)", src).group(1))
if "# " + "BROKEN" in src:  # (spelled apart so this line does not match itself)
    raise SystemExit("a bug in the new code")
print(f"val_accuracy: {0.5 + bonus:.4f}")
BONUS = 0.0
"""


def patch(old: str, new: str) -> str:
    return textwrap.dedent(f"""\
        --- a/train.py
        +++ b/train.py
        @@ -7 +7 @@
        -{old}
        +{new}
        """)


AGENT = '''
from ralph_ml.agents.base import Agent
from ralph_ml.records import Proposal


def patch(old, new):
    return f"--- a/train.py\\n+++ b/train.py\\n@@ -7 +7 @@\\n-{old}\\n+{new}\\n"


class Scripted(Agent):
    """Follows a fixed script; cycles are matched by the order of proposals."""
    name = "scripted"

    def __init__(self, cfg):
        self.n = 0

    def propose(self, ctx):
        self.n = ctx.cycle
        by_change = {r.proposal.rationale: r.cycle for r in ctx.history}
        script = {
            1: ("A", patch("BONUS = 0.0", "BONUS = 0.1"), None, None),
            2: ("B", patch("BONUS = 0.0", "BONUS = 0.05"), None, None),    # a sibling of A, in parallel
            3: ("C", patch("BONUS = 0.1", "BONUS = 0.2  # BROKEN"), "A", None),  # builds on A, crashes
            4: ("fix C", patch("BONUS = 0.2  # BROKEN", "BONUS = 0.2"), "C", "C"),  # handed back for a fix
            5: ("fix C again", patch("BONUS = 0.2  # BROKEN", "BONUS = 0.3"), "C", "C"),  # over the limit
        }
        if ctx.pending and ctx.cycle >= 3:
            return None  # C builds on A, the fixes on C: wait until they are recorded
        name, diff, parent, fix = script[len(ctx.history) + len(ctx.pending) + 1]
        meta = {"parent": by_change.get(parent) if parent else None}
        if fix:
            meta["fix_of"] = by_change[fix]
        return Proposal(patch=diff, rationale=name, agent=self.name, meta=meta)
'''


def test_a_version_tree_with_parallel_siblings_and_a_bounded_fix(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(TRAIN, target=1.5, space={},
               safeguards={"max_cycles": 5, "no_improvement_stop_cycles": 10, "max_consecutive_failures": 5},
               execution={"max_concurrency": 2},
               extra={"agents": {"code_model": "scripted_agent:Scripted"}, "branching": {"max_fix_attempts": 1}})
    (root / "scripted_agent.py").write_text(AGENT)
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    recs = {r["proposal"]["rationale"]: r for r in recorded(root)}
    a, b, c, fix, again = recs["A"], recs["B"], recs["C"], recs["fix C"], recs["fix C again"]
    assert a["parent"] is None and b["parent"] is None  # siblings of the workspace
    assert a["metric"] == 0.6 and b["metric"] == 0.55
    assert c["parent"] == a["cycle"] and c["result"]["failure"] == "crash"
    assert fix["parent"] == c["cycle"] and fix["metric"] == 0.7 and fix["kept"]
    assert again["result"]["status"] == "invalid" and "max_fix_attempts = 1" in again["result"]["message"]
    assert again["parent"] == c["cycle"]  # drawn as a refused attempt on C
    # each version's code is its own chain of patches, in its own folder
    code = lambda r: (root / "runs" / f"cycle_{r['cycle']:04d}" / "code" / "train.py").read_text()  # noqa: E731
    assert "BONUS = 0.05" in code(b) and "BONUS = 0.1" not in code(b)
    assert "BONUS = 0.2\n" in code(fix) and "BONUS = 0.2  # BROKEN" not in code(fix)
    # the tree is drawn in the report
    report = (root / "reports" / "final_report.md").read_text()
    assert f"cycle {fix['cycle']} [kept]" in report and "fix of" in report
    tree = json.loads((root / "reports" / "versions.json").read_text())
    assert {n["cycle"]: n["parent"] for n in tree}[fix["cycle"]] == c["cycle"]


BUGGY = '''
from ralph_ml.agents.base import Agent


class Buggy(Agent):
    name = "buggy"

    def __init__(self, cfg):
        pass

    def propose(self, ctx):
        return {}["no such key"]
'''


def test_an_agent_that_raises_is_a_recorded_invalid_cycle_not_a_crash(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(TRAIN, target=1.5, space={}, safeguards={"max_cycles": 2, "max_consecutive_failures": 5},
               extra={"agents": {"code_model": "buggy_agent:Buggy"}})
    (root / "buggy_agent.py").write_text(BUGGY)
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    recs = recorded(root)
    assert len(recs) == 2
    for r in recs:
        assert r["result"]["status"] == "invalid" and r["result"]["failure"] == "agent_error"
        assert "KeyError" in r["result"]["message"] and "buggy_agent.py" in r["result"]["message"]


# Run before train.py in each trial, inside the cycle's code folder: what git sees there.
PROBE = """
import json, os, subprocess, time
def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()
cycle = int(os.environ["RALPH_CYCLE"])
deadline = time.monotonic() + 30
while True:  # the siblings of cycles 1 and 2 wait to see each other's worktree registered
    listed = git("worktree", "list", "--porcelain").splitlines()
    codes = sorted(line[len("worktree "):] for line in listed if line.startswith("worktree ") and line.endswith("/code"))
    if cycle > 2 or len(codes) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.05)
seen = os.environ["PROBE_LOG"] + ".seen"
if cycle <= 2:  # and each waits until the other has looked too, so neither is recorded first
    open(f"{seen}{cycle}", "w").close()
    while not os.path.exists(f"{seen}{3 - cycle}") and time.monotonic() < deadline:
        time.sleep(0.05)
with open(os.environ["PROBE_LOG"], "a") as fh:
    fh.write(json.dumps({"cycle": cycle, "worktrees": codes, "head": git("rev-parse", "HEAD"),
                         "index": os.path.abspath(git("rev-parse", "--git-path", "index")),
                         "changed": git("diff", "--name-only", "HEAD~1").split()}) + "\\n")
"""


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def test_the_git_history_is_the_version_tree_with_a_worktree_per_cycle_in_flight(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    probe_log = tmp_path / "probe.log"
    root = exp(TRAIN, target=1.5, space={},
               safeguards={"max_cycles": 5, "no_improvement_stop_cycles": 10, "max_consecutive_failures": 5},
               execution={"max_concurrency": 2, "train_cmd": "python probe.py && python train.py",
                          "env": {"PROBE_LOG": str(probe_log)}},
               extra={"agents": {"code_model": "scripted_agent:Scripted"}, "branching": {"max_fix_attempts": 1}})
    (root / "scripted_agent.py").write_text(AGENT)
    (root / "probe.py").write_text(PROBE)
    (root / ".gitignore").write_text("runs/\nreports/\nstate/\n__pycache__/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@u", "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@u"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the user's code"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env, capture_output=True)
    (root / "notes.txt").write_text("uncommitted work of the user\n")
    head, index = _git(root, "rev-parse", "HEAD"), (root / ".git" / "index").read_bytes()

    proc = ralph(root, "start")

    assert proc.returncode == 2, proc.stdout + proc.stderr
    run_id = journal_events(root)[0]["run_id"]
    recs = {r["cycle"]: r for r in recorded(root)}
    committed = {c: r for c, r in recs.items() if r["commit"]}
    assert sorted(committed) == [1, 2, 3, 4]  # cycle 5 was refused before any code existed
    for c, r in committed.items():  # git parent == the parent version's commit (root: the user's HEAD)
        want = head if r["parent"] is None else recs[r["parent"]]["commit"]
        assert _git(root, "rev-parse", f"{r['commit']}^") == want, f"cycle {c}"
        assert _git(root, "rev-parse", f"refs/ralph/{run_id}/cycles/{c:04d}") == r["commit"]
    assert _git(root, "rev-parse", f"ralph/{run_id}") == committed[4]["commit"]  # the latest cycle
    assert _git(root, "rev-parse", f"ralph/{run_id}/best") == committed[4]["commit"]  # "fix C", kept
    graph = _git(root, "log", "--graph", "--oneline", "--all")
    assert all(r["commit"][:7] in graph for r in committed.values())
    # while each trial ran, its folder was a registered worktree at its own commit
    probes = {p["cycle"]: p for p in map(json.loads, probe_log.read_text().splitlines())}
    assert sorted(probes) == [1, 2, 3, 4]
    code = {c: str((root / "runs" / f"cycle_{c:04d}" / "code").resolve()) for c in committed}
    assert probes[1]["worktrees"] == probes[2]["worktrees"] == [code[1], code[2]]  # the siblings, in parallel
    assert probes[1]["index"] != probes[2]["index"]  # never one index for two children
    for c, p in probes.items():
        assert code[c] in p["worktrees"] and p["head"] == committed[c]["commit"]
        # the change against the parent version (a root version also carries the user's uncommitted work)
        assert p["changed"] == (["notes.txt"] if committed[c]["parent"] is None else []) + ["train.py"], c
    # after the run: no worktree left registered, every code folder keeps its files
    assert _git(root, "worktree", "list", "--porcelain").count("worktree ") == 1
    for c in recs:
        folder = root / "runs" / f"cycle_{c:04d}" / "code"
        assert (folder / "train.py").is_file() and not (folder / ".git").exists()
    # the user's HEAD, index and working tree are untouched
    assert _git(root, "rev-parse", "HEAD") == head and (root / ".git" / "index").read_bytes() == index
    assert _git(root, "status", "--porcelain") == "?? notes.txt"


REPORTING = """
from ralph_ml import trial
BONUS = 0.0
trial.report(0, val_accuracy=0.5 + BONUS)
VALUE = 0.5 + BONUS
print(f"val_accuracy: {VALUE:.4f}")
"""

KEEPER = '''
from ralph_ml.agents.base import Agent
from ralph_ml.records import Proposal

SCRIPT = [
    ("tune", "@@ -2,3 +2,3 @@\\n from ralph_ml import trial\\n-BONUS = 0.0\\n+BONUS = 0.1\\n trial.report(0, val_accuracy=0.5 + BONUS)\\n"),
    ("drop the curve", "@@ -3,3 +3,3 @@\\n BONUS = 0.0\\n-trial.report(0, val_accuracy=0.5 + BONUS)\\n+pass  # no curve any more\\n VALUE = 0.5 + BONUS\\n"),
    ("drop the seed call", "@@ -7 +6,0 @@\\n-trial.seed()\\n"),
]


class Keeper(Agent):
    name = "keeper"

    def __init__(self, cfg):
        pass

    def propose(self, ctx):
        why, hunk = SCRIPT[len(ctx.history)]
        return Proposal(patch="--- a/train.py\\n+++ b/train.py\\n" + hunk, rationale=why, agent=self.name, meta={"parent": None})
'''


def test_a_change_that_drops_a_call_into_ralph_ml_is_rejected_by_the_guard(exp) -> None:  # type: ignore[no-untyped-def]
    """files.required_calls unset: every change must keep the ralph_ml calls train.py made when
    the run started; the set is fixed for the run, a resume included."""
    root = exp(REPORTING, target=1.5, space={}, safeguards={"max_cycles": 2, "no_improvement_stop_cycles": 10},
               extra={"agents": {"code_model": "keeper_agent:Keeper"}})
    (root / "keeper_agent.py").write_text(KEEPER)
    assert "every code change must keep these calls (files.required_calls): train.py: ralph_ml.trial.report" in ralph(root, "validate").stdout
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    tune, drop = recorded(root)
    assert tune["metric"] == 0.6 and tune["kept"]
    assert drop["result"]["status"] == "invalid" and drop["result"]["failure"] == "guard_rejected"
    assert "no longer calls 'ralph_ml.trial.report'" in drop["result"]["message"], drop["result"]["message"]
    assert not (root / "runs" / "cycle_0002" / "logs" / "stdout.log").exists()  # it never ran
    started = next(e for e in journal_events(root) if e["type"] == "run_started")
    assert started["required_calls"] == {"train.py": ["ralph_ml.trial.report"]}
    # The workspace gains a call; the resumed run keeps the rules it started with, so a change
    # that drops the new call is accepted (a fresh run would hold it to trial.seed too).
    (root / "train.py").write_text((root / "train.py").read_text() + "trial.seed()\n")
    toml = (root / "ralph.toml").read_text().replace("max_cycles = 2", "max_cycles = 3")
    (root / "ralph.toml").write_text(toml)
    proc = ralph(root, "resume")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    third = recorded(root)[2]
    assert third["proposal"]["rationale"] == "drop the seed call" and third["result"]["status"] == "ok", third["result"]
    assert "ralph_ml.trial.report, ralph_ml.trial.seed" in ralph(root, "validate").stdout  # what a new run would keep


def test_required_calls_can_be_named_or_switched_off(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(REPORTING, target=1.5, space={}, safeguards={"max_cycles": 2, "no_improvement_stop_cycles": 10},
               extra={"agents": {"code_model": "keeper_agent:Keeper"}, "files": {"required_calls": {}}})
    (root / "keeper_agent.py").write_text(KEEPER)
    proc = ralph(root, "start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert [r["result"]["status"] for r in recorded(root)] == ["ok", "ok"]  # {}: nothing is required


def test_a_run_recorded_before_the_guard_kept_calls_is_resumed_without_them(exp) -> None:  # type: ignore[no-untyped-def]
    root = exp(REPORTING, target=1.5, space={}, safeguards={"max_cycles": 1, "no_improvement_stop_cycles": 10},
               extra={"agents": {"code_model": "keeper_agent:Keeper"}})
    (root / "keeper_agent.py").write_text(KEEPER)
    assert ralph(root, "start").returncode == 2
    journal = root / "state" / "journal.jsonl"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert lines[0]["type"] == "run_started" and lines[0].pop("required_calls") == {"train.py": ["ralph_ml.trial.report"]}
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))  # as an older release wrote it
    (root / "ralph.toml").write_text((root / "ralph.toml").read_text().replace("max_cycles = 1", "max_cycles = 2"))
    proc = ralph(root, "resume")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    dropped = recorded(root)[1]
    assert dropped["proposal"]["rationale"] == "drop the curve" and dropped["result"]["status"] == "ok", dropped["result"]
