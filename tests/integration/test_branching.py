"""Branching search: versions fork from any recorded version, siblings run in parallel in their
own folders, a failed child is handed back for a bounded number of fixes, and the tree is recorded."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from conftest import ralph, recorded

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
