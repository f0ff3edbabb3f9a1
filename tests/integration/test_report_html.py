"""The reports a real run leaves behind: a self-contained report.html with its charts, the
progress chart, the markdown report and the Chrome-trace timeline."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest
from conftest import make_experiment, ralph, recorded

TRAIN = """from ralph_ml import trial
p = trial.params({'x': 0.1})
BONUS = 0.0
if p['x'] == 0.0:
    raise SystemExit("x = 0 diverges")
acc = 1 - (p["x"] - 0.7) ** 2 + BONUS
for step in range(1, 4):
    trial.report(step, val_accuracy=acc * step / 3)
trial.log_metrics(val_accuracy=acc)
"""

AGENT = '''
from ralph_ml.agents.base import Agent
from ralph_ml.records import Proposal

PATCH = (
    "--- a/train.py\\n+++ b/train.py\\n@@ -2,3 +2,3 @@\\n"
    " p = trial.params({'x': 0.1})\\n-BONUS = 0.0\\n+BONUS = 0.05\\n if p['x'] == 0.0:\\n"
)


class Scripted(Agent):
    name = "scripted"

    def __init__(self, cfg):
        pass

    def propose(self, ctx):
        step = {
            1: dict(params={"x": 0.1}, rationale="baseline"),
            2: dict(params={"x": 0.5}, patch=PATCH, rationale="x up, and a bonus in the code"),
            3: dict(params={"x": 0.95}, rationale="x further up"),
            4: dict(params={"x": 0.0}, rationale="x to zero"),
        }[ctx.cycle]
        return Proposal(agent=self.name, tokens_used=100, cost_usd=0.01, **step)
'''

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_experiment(tmp_path_factory.mktemp("report") / "exp", TRAIN, target=1.5,
                           safeguards={"max_cycles": 4, "no_improvement_stop_cycles": 10},
                           extra={"agents": {"code_model": "scripted_agent:Scripted"}})
    (root / "scripted_agent.py").write_text(AGENT)
    proc = ralph(root, "start", timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert [r["verdict"] for r in recorded(root)] == ["kept", "kept", "discarded", "failed"]
    return root


def _decode(png: bytes) -> tuple[int, ...]:
    from matplotlib.image import imread

    assert png[:8] == PNG
    return tuple(imread(io.BytesIO(png), format="png").shape)


def test_report_html_is_self_contained_and_has_every_chart(run: Path) -> None:
    html = (run / "reports" / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "nothing may be fetched from the network"
    assert "<script" not in html and "<link" not in html and "@import" not in html and "url(" not in html
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', html)
    assert [alt for alt, _ in images] == ["val_accuracy per cycle", "learning curves", "parameter effects", "seconds per cycle"]
    for _, data in images:
        h, w, _channels = _decode(base64.b64decode(data))
        assert h > 200 and w > 400


def test_report_html_says_what_worked_what_hurt_and_why_the_run_stopped(run: Path) -> None:
    html = (run / "reports" / "report.html").read_text()
    assert "<h2>Why the run stopped</h2><div class=stop><b>max_cycles</b> (exit code 2)" in html
    rows = re.findall(r"<tr><td class=\"n\">(\d)</td><td>([^<]*)</td><td class=\"n\">([^<]*)</td><td class=\"n\">([^<]*)</td>"
                      r"<td><span class=\"\w+\">([^<]+)</span></td></tr>", html)
    assert rows == [
        ("2", "x 0.1 → 0.5; code change", "1.01", "+0.37", "helped"),
        ("3", "x 0.5 → 0.95", "0.9875", "-0.0225", "hurt"),
        ("4", "x 0.5 → 0", "n/a", "", "failed (crash)"),
    ]
    # the kept code change, as a diff
    assert '<span class="a">+BONUS = 0.05</span>' in html and '<span class="d">-BONUS = 0.0</span>' in html
    assert "400</b><span>tokens · $0.0400" in html


def test_markdown_links_the_chart_and_lists_kept_changes(run: Path) -> None:
    md = (run / "reports" / "final_report.md").read_text()
    assert "![val_accuracy per cycle](progress.png)" in md
    assert "- stopped: **max_cycles** (exit 2)" in md and "## Why the run stopped" in md
    assert "| 4 | x 0.5 → 0 | n/a |  | failed (crash) |" in md
    assert "```diff\n--- a/train.py\n+++ b/train.py\n@@ -2,3 +2,3 @@\n p = trial.params({'x': 0.1})\n-BONUS = 0.0\n+BONUS = 0.05\n" in md
    assert "- agent usage: 400 tokens, $0.0400" in md
    h, w, _ = _decode((run / "reports" / "progress.png").read_bytes())
    assert (h, w) == (506, 990)


def test_timeline_has_a_span_per_phase_and_per_cycle(run: Path) -> None:
    events = [json.loads(line) for line in (run / "state" / "events.jsonl").read_text().splitlines()]
    trace = json.loads((run / "reports" / "timeline.json").read_text())["traceEvents"]
    spans = [e for e in trace if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and isinstance(e["ts"], int) for e in spans)
    phases = [e for e in spans if e["cat"] == "phase"]
    assert [(e["name"], e["args"]["cycle"]) for e in phases] == [(e["phase"], e["cycle"]) for e in events if e["kind"] == "phase"]
    # the loop does one thing at a time: its phases follow each other without overlap
    for a, b in zip(phases, phases[1:]):
        assert a["ts"] + a["dur"] <= b["ts"] and a["tid"] == b["tid"] == 1
    cycles = {e["name"]: e for e in spans if e["cat"] == "cycle"}
    assert sorted(cycles) == ["cycle 1", "cycle 2", "cycle 3", "cycle 4"]
    assert [cycles[f"cycle {n}"]["args"]["verdict"] for n in (1, 2, 3, 4)] == ["kept", "kept", "discarded", "failed"]
    for t in (e for e in spans if e["cat"] == "trial"):
        c = cycles[f"cycle {t['args']['cycle']}"]
        assert c["ts"] <= t["ts"] and t["ts"] + t["dur"] <= c["ts"] + c["dur"] and t["tid"] == c["tid"]
    assert [e["args"]["reason"] for e in trace if e["name"] == "run_stopped"] == ["max_cycles"]


def test_without_matplotlib_the_reports_are_written_and_say_how_to_get_charts(run: Path) -> None:
    code = "import sys; sys.modules['matplotlib'] = None; sys.argv = ['ralph-ml', 'report']; from ralph_ml.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=run, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = unescape((run / "reports" / "report.html").read_text())
    md = (run / "reports" / "final_report.md").read_text()
    hint = "pip install 'ralph-ml[report]'"
    assert hint in html and hint in md and "data:image/png" not in html
    assert "progress.png" not in md and not (run / "reports" / "progress.png").exists()  # no stale chart
    assert "x 0.1 → 0.5; code change" in md  # the rest of the report is all there
