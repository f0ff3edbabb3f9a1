"""Shared fixtures: tiny experiment folders and a way to run the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

PREPARE = "# frozen evaluation of the test experiment\nTHRESHOLD = 0.5\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def write_config(root: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            if isinstance(v, dict):
                inner = ", ".join(f"{ik} = {_toml_value(iv)}" for ik, iv in v.items())
                lines.append(f"{k} = {{ {inner} }}")
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    path = root / "ralph.toml"
    path.write_text("\n".join(lines))
    return path


def make_experiment(
    root: Path,
    train_py: str,
    *,
    target: float = 0.99,
    metric: str = "val_accuracy",
    safeguards: dict[str, Any] | None = None,
    execution: dict[str, Any] | None = None,
    space: dict[str, dict[str, Any]] | None = None,
    extra: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """An experiment folder with prepare.py (frozen), train.py and ralph.toml."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "prepare.py").write_text(PREPARE)
    (root / "train.py").write_text(textwrap.dedent(train_py))
    (root / "program.md").write_text("# goal\nmaximize the metric\n")
    sections: dict[str, dict[str, Any]] = {
        "project": {"name": "t", "seed": 0, "target_metric": {"name": metric, "value": target}},
        "safeguards": {"max_cycles": 5, "no_improvement_stop_cycles": 5, "time_limit_per_cycle_minutes": 1, **(safeguards or {})},
        "execution": {"train_cmd": "python train.py", "kill_grace_s": 1.0, **(execution or {})},
    }
    for name, p in (space if space is not None else {"x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.1}}).items():
        sections[f"search_space.{name}"] = p
    for k, v in (extra or {}).items():
        sections[k] = v
    write_config(root, sections)
    return root


def ralph(cwd: Path, *args: str, timeout: float = 120, check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a user would."""
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "ralph_ml", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ralph-ml {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def ralph_bg(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ralph_ml", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def journal_events(root: Path) -> list[dict[str, Any]]:
    path = root / "state" / "journal.jsonl"
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def recorded(root: Path) -> list[dict[str, Any]]:
    return [e["record"] for e in journal_events(root) if e["type"] == "cycle_recorded"]


@pytest.fixture
def exp(tmp_path: Path):  # type: ignore[no-untyped-def]
    def _make(train_py: str, **kw: Any) -> Path:
        return make_experiment(tmp_path / "exp", train_py, **kw)

    return _make


# A trial whose metric is a smooth function of the param x (peak 1.0 at x = 0.7).
QUADRATIC = """
import json, os
p = json.load(open(os.environ["RALPH_PARAMS"]))
x = p["x"]
print(f"val_accuracy: {1 - (x - 0.7) ** 2:.6f}")
"""
