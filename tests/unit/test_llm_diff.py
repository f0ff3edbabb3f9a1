"""Diffs built by agents (from whole files or a CLI's edits) apply with the loop's own patch path."""

from __future__ import annotations

from pathlib import Path

from ralph_ml.agents.codebase import diff_texts, diff_trees
from ralph_ml.guard import guard_patch
from ralph_ml.workspace import apply_patch


def test_modify_create_delete_and_missing_final_newline_apply_with_git(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("a = 1\nb = 2\nc = 3")  # no final newline
    (code / "old.py").write_text("x = 1\n")
    before = {"train.py": "a = 1\nb = 2\nc = 3", "old.py": "x = 1\n"}
    after = {"train.py": "a = 1\nb = 20\nc = 3\n", "sub/new.py": "y = 2\n"}
    patch = diff_texts(before, after)
    assert "new file mode 100644" in patch and "deleted file mode 100644" in patch
    assert "\\ No newline at end of file" in patch
    touched = apply_patch(code, patch)
    assert touched == ["old.py", "sub/new.py", "train.py"]
    assert (code / "train.py").read_text() == "a = 1\nb = 20\nc = 3\n"
    assert (code / "sub" / "new.py").read_text() == "y = 2\n" and not (code / "old.py").exists()


def test_unchanged_files_give_an_empty_diff_and_binary_changes_are_reported() -> None:
    assert diff_texts({"a.py": "x\n"}, {"a.py": "x\n"}) == ""
    patch, binary = diff_trees({"a.py": b"x\n", "w.bin": b"\x00\xff"}, {"a.py": b"y\n", "w.bin": b"\x00\xfe\xff"})
    assert binary == ["w.bin"] and "+y" in patch and "w.bin" not in patch


def test_a_plan_and_new_training_code_pass_the_guard_when_plan_md_is_allowed(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "prepare.py").write_text("DATA = 1\n")
    patch = diff_texts({}, {"PLAN.md": "# Plan\n", "train.py": "print('val_accuracy: 0.5')\n"})
    touched = guard_patch(code, patch, mutable=["train.py", "PLAN.md"], frozen=["prepare.py"])
    assert touched == ["PLAN.md", "train.py"] and (code / "train.py").exists()
