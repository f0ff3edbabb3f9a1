"""Which trial commands the warm-start server runs (the rest go through /bin/sh, cold)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ralph_ml.executors.warm import WarmCommand, warm_command

PATH = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        ("python train.py", WarmCommand(("train.py",))),
        ("python3 prepare.py evaluate --split val", WarmCommand(("prepare.py", "evaluate", "--split", "val"))),
        ("python -u train.py", WarmCommand(("train.py",), unbuffered=True)),
        ("python -uB train.py", WarmCommand(("train.py",), unbuffered=True, no_bytecode=True)),
        ("python -m pkg.train --lr 0.1", WarmCommand(("pkg.train", "--lr", "0.1"), module="pkg.train")),
        ("python train.py --name 'two words'", WarmCommand(("train.py", "--name", "two words"))),
        (f"{sys.executable} train.py", WarmCommand(("train.py",))),
    ],
)
def test_plain_python_commands_of_the_loops_interpreter_run_warm(cmd: str, expected: WarmCommand) -> None:
    assert warm_command(cmd, PATH) == expected


@pytest.mark.parametrize(
    "cmd",
    [
        "python train.py && python prepare.py evaluate",  # shell operators
        "python train.py | tee log",
        "python train.py > out.log",
        "python train.py $EXTRA",  # expansion
        "python train.py *.yaml",  # glob
        "OMP_NUM_THREADS=1 python train.py",  # assignment
        "python -c 'print(1)'",  # flags a cold interpreter must apply
        "python -X importtime train.py",
        "python -O train.py",
        "python",  # interactive
        "python -m",
        "sh train.sh",  # not Python
        "python 'unbalanced",
        "",
    ],
)
def test_anything_else_runs_cold(cmd: str) -> None:
    assert warm_command(cmd, PATH) is None


def test_another_interpreter_runs_cold(tmp_path: Path) -> None:
    """A `python` found first on the trial's PATH that is not the loop's own (another venv) runs cold."""
    other = tmp_path / "bin"
    other.mkdir()
    (other / "python").symlink_to(os.path.realpath(sys.executable))  # same binary, another environment
    assert warm_command("python train.py", str(other) + os.pathsep + PATH) is None
    assert warm_command("python train.py", "/nonexistent") is None
