"""Frozen-file hashes: what the workspace records before a trial and the executor re-checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ralph_ml.hashing import MISSING, changed_files, hash_files


def test_hash_files_matches_sha256_and_marks_missing(tmp_path: Path) -> None:
    (tmp_path / "prepare.py").write_bytes(b"print('frozen')\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "eval.py").write_bytes(b"")
    got = hash_files(tmp_path, ["prepare.py", "sub/eval.py", "gone.py", "sub"])
    assert got == {
        "prepare.py": hashlib.sha256(b"print('frozen')\n").hexdigest(),
        "sub/eval.py": hashlib.sha256(b"").hexdigest(),
        "gone.py": MISSING,
        "sub": MISSING,  # a folder is not a file
    }


def test_changed_files_names_edits_deletions_and_creations(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("a")
    (tmp_path / "b.py").write_text("b")
    before = hash_files(tmp_path, ["a.py", "b.py", "c.py"])
    assert changed_files(tmp_path, before) == []
    (tmp_path / "a.py").write_text("a2")
    (tmp_path / "b.py").unlink()
    (tmp_path / "c.py").write_text("new")
    assert changed_files(tmp_path, before) == ["a.py", "b.py", "c.py"]
