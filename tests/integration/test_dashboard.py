"""`ralph-ml dashboard`: a real loop, the real server, a real headless Chromium (Debian's).

`make test` installs /usr/bin/chromium when it is missing; without it these tests fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from conftest import QUADRATIC, journal_events, make_experiment, ralph, ralph_bg, recorded

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

# ~1 s per trial, with a learning curve and log lines, so cycles land while the page is open.
SLOW = """
import time
from ralph_ml import trial
p = trial.params({"x": 0.1, "epochs": 5})
for e in range(1, p["epochs"] + 1):
    time.sleep(0.2)
    print(f"epoch {e}/{p['epochs']} dashboard-marker train_loss={1.0 / e:.3f}", flush=True)
    trial.report(e, train_loss=1.0 / e + p["x"], val_accuracy=0.5 + 0.05 * e)
print(f"val_accuracy: {1 - (p['x'] - 0.7) ** 2:.6f}")
"""
SPACE = {
    "x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.1},
    "epochs": {"type": "categorical", "choices": [5], "default": 5},
}


@pytest.fixture
def dashboard() -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(*roots: Path) -> str:
        args = [sys.executable, "-m", "ralph_ml", "dashboard", "--port", "0"]
        for r in roots:
            args += ["--root", str(r)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "dashboard: http://127.0.0.1:PORT/ · ..."
        assert line.startswith("dashboard: http://127.0.0.1:"), line + (proc.stderr.read() if proc.stderr else "")
        return line.split()[1]

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait(pred: Any, timeout: float, what: str | Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what if isinstance(what, str) else what()}")


def _api_log_has(url: str, text: str) -> bool:
    code, body = _get(url + "api/runs")
    if code != 200 or not body["runs"]:
        return False
    code, d = _get(url + f"api/runs/{body['runs'][0]['key']}")
    return code == 200 and d["current"] is not None and any(text in ln for ln in d["current"]["stdout"])


def _loop_story(root: Path, loop: subprocess.Popen[str]) -> str:
    """What the loop did, for a timeout's message: exit code, journal event types, its output once it ended."""
    events = [e["type"] for e in journal_events(root)] if (root / "state" / "journal.jsonl").exists() else "no journal"
    rc = loop.poll()
    out = "" if rc is None else f"; stdout: {loop.stdout.read()[-2000:]}; stderr: {loop.stderr.read()[-2000:]}"  # type: ignore[union-attr]
    return f"loop exit code {rc}, journal events {events}{out}"


def _row_text(page: Page, cycle: int) -> str | None:
    row = page.query_selector(f'#cycles tbody tr[data-cycle="{cycle}"]')
    return row.inner_text() if row is not None else None


@contextmanager
def _page(url: str) -> Iterator[Page]:
    """The dashboard at url in headless Chromium; the page must raise no script error meanwhile."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        yield page
        assert not errors, errors
        browser.close()


def test_cycles_of_a_running_loop_appear_in_chromium(tmp_path: Path, dashboard: Any) -> None:
    # Enough cycles to outlast Chromium's first start on a loaded machine (6 were not: the run had
    # ended before the page opened); the test stops the loop when it is done.
    root = make_experiment(tmp_path / "exp", SLOW, target=1.5, space=SPACE,
                           safeguards={"max_cycles": 60, "no_improvement_stop_cycles": 60})
    loop = ralph_bg(root, "start")
    try:
        url = dashboard(root)
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1440, "height": 1000},
            )
            errors: list[str] = []
            page = ctx.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("#run-name", timeout=15_000)
            assert page.inner_text("#run-name") == "t"
            # The running trial: its log tail and progress show while it runs. The server has it first
            # (a failure here is the loop's or the server's, and says which), then the page within seconds.
            _wait(lambda: _api_log_has(url, "dashboard-marker"), 60,
                  lambda: "a trial's log line in the API; " + _loop_story(root, loop))
            try:
                page.wait_for_function("document.getElementById('log').textContent.includes('dashboard-marker')", timeout=15_000)
            except PlaywrightTimeout as e:
                try:  # a page whose script hangs answers nothing: ask with a short timeout
                    conn = repr(page.inner_text("#conn-text", timeout=2_000))
                except PlaywrightTimeout:
                    conn = "unknown (the page did not answer in 2 s: its script may hang)"
                raise AssertionError(f"the page's log never showed the trial's output; page errors {errors}, "
                                     f"connection {conn}; {_loop_story(root, loop)}") from e
            # A cycle recorded by the loop after the page opened shows up within seconds.
            n0 = len(recorded(root))
            target = n0 + 1
            _wait(lambda: len(recorded(root)) >= target, 30, f"the loop to record cycle {target}")
            t_recorded = time.monotonic()
            text = _wait(lambda: _row_text(page, target), 15, f"cycle {target} in the page's table")
            latency = time.monotonic() - t_recorded
            rec = recorded(root)[target - 1]
            assert f"{rec['metric']:.4f}" in text and ("kept" in text or "discarded" in text)
            # "within a few seconds": the page polls every second; the bound leaves room for a loaded CI machine
            assert latency < 10.0, f"cycle {target} took {latency:.1f} s to appear (the page polls every second)"
            # ... and in the chart, marked by its verdict; the target line and running best are drawn.
            page.wait_for_selector(f'#metric-chart [data-cycle="{target}"]', timeout=10_000)
            assert "target 1.5" in page.inner_html("#metric-chart")
            assert page.query_selector("#metric-chart path[stroke='var(--blue)']") is not None
            # the phase card names a loop phase; the learning curve has a line
            assert page.inner_text("#phase") in ("propose", "materialize", "guard", "execute", "analyze", "decide", "stopped")
            page.wait_for_selector("#curve-chart path", timeout=5_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert not errors, errors
            ctx.close()
    finally:
        ralph(root, "stop")
        loop.wait(timeout=30)


# A diverged trial: the same huge loss at every step, a flat curve.
FLAT = """
from ralph_ml import trial
p = trial.params({"x": 0.1})
for step in range(1, 4):
    trial.report(step, train_loss=1e30)
print("flat-marker")
print(f"val_accuracy: {p['x']:.6f}")
"""


def test_a_flat_diverged_curve_draws_and_axis_ticks_end_past_float_precision(tmp_path: Path, dashboard: Any) -> None:
    root = make_experiment(tmp_path / "exp", FLAT, target=1.5, safeguards={"max_cycles": 1})
    assert ralph(root, "start").returncode == 2
    with _page(dashboard(root)) as page:
        page.wait_for_selector("#log", timeout=15_000)
        # the log is drawn after the charts: it shows only if drawing the flat curve returned
        page.wait_for_function("document.getElementById('log').textContent.includes('flat-marker')", timeout=10_000)
        page.wait_for_selector("#curve-chart path", state="attached", timeout=5_000)
        # Ticks for values whose spacing is below their float precision (a step counter past 2**53,
        # a metric of 1e17 that moves by 16): a loop that adds the step to the tick never ends and
        # freezes the page's script; counted by index they end.
        page.wait_for_function("ticks(1e17, 1e17 + 16, 5).length >= 0 && ticks(2 ** 53, 2 ** 53, 5).length >= 0", timeout=5_000)


# The curve 1 - exp(-(step + 1) / 3) first meets 0.9 at step 6, where trial.report stops it.
STOPS = """
import math
from ralph_ml import trial
for step in range(20):
    acc = 1 - math.exp(-(step + 1) / 3)
    if trial.report(step, val_accuracy=acc):
        break
trial.log_metrics(val_accuracy=acc)
"""


def test_a_cycle_stopped_at_the_target_says_so_in_the_table(tmp_path: Path, dashboard: Any) -> None:
    root = make_experiment(tmp_path / "exp", STOPS, target=0.9, safeguards={"max_cycles": 2})
    assert ralph(root, "start").returncode == 0
    with _page(dashboard(root)) as page:
        text = _wait(lambda: _row_text(page, 1), 15, "cycle 1 in the page's table")
        assert "stopped at the target (step 6)" in text and "0.9030" in text, text


# The final quality depends on x; the baseline (x = 0.7) has the best curve, and with the median
# pruner the cycles after it are stopped early at a step where they trail it.
DOOMED = """
import math, time
from ralph_ml import trial
p = trial.params({"x": 0.7})
top = 1 - (p["x"] - 0.7) ** 2
for step in range(20):
    acc = top * (1 - math.exp(-(step + 1) / 3))
    if trial.report(step, val_accuracy=acc):
        break
    time.sleep(0.03)
trial.log_metrics(val_accuracy=acc)
"""


def test_a_pruned_cycle_is_drawn_as_stopped_early_with_the_value_it_reached(tmp_path: Path, dashboard: Any) -> None:
    root = make_experiment(tmp_path / "exp", DOOMED, target=1.5, space={"x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.7}},
                           safeguards={"max_cycles": 5, "no_improvement_stop_cycles": 10},
                           extra={"pruning": {"pruner": "median", "n_startup_trials": 1, "n_warmup_steps": 3}})
    assert ralph(root, "start").returncode == 2
    pruned = [r for r in recorded(root) if r["verdict"] == "pruned"]
    assert pruned, [(r["cycle"], r["verdict"]) for r in recorded(root)]
    with _page(dashboard(root)) as page:
        for r in pruned:
            text = _wait(lambda: _row_text(page, r["cycle"]), 15, f"cycle {r['cycle']} in the page's table")
            part = r["result"]["metrics"]["val_accuracy"]
            assert f"▽ pruned at step {r['result']['stopped_at_step']}" in text and "stopped at the target" not in text, text
            assert f"{part:.4f} (partial)" in text, text
        marks = page.eval_on_selector_all("#metric-points text", "els => els.map(e => [e.getAttribute('class'), e.firstChild.textContent, e.querySelector('title').textContent])")
        assert [m[:2] for m in marks] == [["mark-stopped", "▽"]] * len(pruned), marks  # none drawn as failed (✕)
        r = pruned[0]
        assert marks[0][2] == f"cycle {r['cycle']} · pruned, reached {r['result']['metrics']['val_accuracy']:.4f}", marks
        assert page.query_selector(f'#cycles tbody tr[data-cycle="{pruned[0]["cycle"]}"] .badge.b-stopped') is not None


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_api_lists_several_runs_and_never_writes(tmp_path: Path, dashboard: Any) -> None:
    done = make_experiment(tmp_path / "runs" / "a-done", QUADRATIC, target=1.5, safeguards={"max_cycles": 2})
    assert ralph(done, "start").returncode == 2
    make_experiment(tmp_path / "runs" / "b-new", QUADRATIC)  # configured, never started
    (tmp_path / "runs" / "not-an-experiment").mkdir()
    before = _tree(tmp_path)
    url = dashboard(tmp_path / "runs")

    code, body = _get(url + "api/runs")
    assert code == 200
    runs = {r["folder"]: r for r in body["runs"]}
    assert set(runs) == {str(done.resolve()), str((tmp_path / "runs" / "b-new").resolve())}
    a = runs[str(done.resolve())]
    assert a["status"] == "stopped" and a["cycles"] == 2 and a["max_cycles"] == 2
    assert runs[str((tmp_path / "runs" / "b-new").resolve())]["status"] == "no run yet"

    code, d = _get(url + f"api/runs/{a['key']}")
    assert code == 200
    recs = recorded(done)
    assert [c["cycle"] for c in d["cycles"]] == [1, 2]
    assert d["cycles"][0]["metric"] == pytest.approx(recs[0]["metric"])
    assert d["state"]["stop"]["reason"] == "max_cycles"
    assert d["current"]["cycle"] == 2 and d["current"]["running"] is False
    assert any("val_accuracy" in ln for ln in d["current"]["stdout"])
    code, d2 = _get(url + f"api/runs/{a['key']}?since=1")
    assert [c["cycle"] for c in d2["cycles"]] == [2] and d2["cycles_total"] == 2

    assert _get(url + "api/runs/nope")[0] == 404
    assert _get(url + "api/nothing")[0] == 404
    with urllib.request.urlopen(url, timeout=10) as r:
        html = r.read().decode()
    # one self-contained page: inline script and styles, no CDN, nothing fetched but the API
    assert "<script>" in html and "/api/runs" in html
    assert not re.findall(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", html)
    assert "http" not in html.replace("http://www.w3.org/2000/svg", "")
    assert _tree(tmp_path) == before  # the dashboard only reads
