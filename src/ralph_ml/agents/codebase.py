"""The code an agent works on: a recorded version's code, rebuilt as the loop builds it, and diffs.

:func:`materialize` copies the workspace and re-applies the patches of a version's chain of
parents (:func:`ralph_ml.versions.chain`), exactly as the loop does before applying a new
cycle's patch on that version, so a diff taken against it applies to the child's code.
:func:`materialize_best` does it for the best version. :func:`diff_texts` turns before/after
file contents into one git-style unified diff (created and deleted files included).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..config import Config
from ..errors import AgentError, GuardRejected, WorkspaceError
from ..guard import matches
from ..records import CycleRecord
from ..versions import chain
from ..workspace import apply_patch, snapshot

PLAN_FILE = "PLAN.md"
PROGRAM_FILES = ("program.md", "IDEA.md")
JUNK = ("__pycache__", "*.pyc", ".git", ".ipynb_checkpoints", ".aider*", ".claude", ".opencode", ".codex")
MAX_TEXT_FILE_BYTES = 1_000_000  # larger files are data, not code: never diffed


def workspace(cfg: Config) -> Path:
    return cfg.path(cfg.paths.workspace)


def materialize(cfg: Config, history: Sequence[CycleRecord], version: int | None, dest: Path) -> None:
    """Copy the workspace into ``dest`` and apply the patches from the workspace down to ``version``."""
    ws = workspace(cfg)
    skip = [cfg.path(cfg.paths.runs), cfg.path(cfg.paths.reports), cfg.path(cfg.paths.state)]
    try:
        snapshot(ws, dest, exclude=cfg.files.exclude, skip=skip)
        for patch in chain(version, {r.cycle: r for r in history}):
            apply_patch(dest, patch)
    except (GuardRejected, WorkspaceError) as exc:
        which = "the workspace" if version is None else f"version {version} (cycle {version}'s code)"
        raise AgentError(
            f"could not rebuild {which} for the agent in {dest}: {exc}. "
            "Check that the workspace still matches the run (`git status`), or start a new run."
        ) from None


def best_version(history: Sequence[CycleRecord]) -> int | None:
    """The cycle of the best version: the last kept one (None: the workspace)."""
    return next((r.cycle for r in reversed(history) if r.kept), None)


def materialize_best(cfg: Config, history: Sequence[CycleRecord], dest: Path) -> None:
    """The best version's code in ``dest`` (the workspace when nothing was kept)."""
    materialize(cfg, history, best_version(history), dest)


def program_text(cfg: Config) -> tuple[str, str]:
    """(file name, text) of program.md or IDEA.md in the workspace; ("", "") when neither exists."""
    ws = workspace(cfg)
    for name in PROGRAM_FILES:
        path = ws / name
        if path.is_file():
            return name, path.read_text(encoding="utf-8", errors="replace")
    return "", ""


def _excluded(rel: str, exclude: Sequence[str]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(part, pat) for part in rel.split("/") for pat in (*exclude, *JUNK))


def read_tree(root: Path, exclude: Sequence[str] = ()) -> dict[str, bytes]:
    """Relative path -> bytes of every regular file under ``root`` (junk and excluded names skipped)."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        dirnames[:] = [d for d in dirnames if not _excluded(f"{rel_dir}/{d}" if rel_dir else d, exclude)]
        for name in filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = os.path.join(dirpath, name)
            if _excluded(rel, exclude) or os.path.islink(path) or not os.path.isfile(path):
                continue
            if os.path.getsize(path) > MAX_TEXT_FILE_BYTES:
                continue
            with open(path, "rb") as fh:
                out[rel] = fh.read()
    return out


def code_files(root: Path, cfg: Config) -> dict[str, str]:
    """The mutable files (and PLAN.md) of the code at ``root`` as text, sorted by path."""
    patterns = [*cfg.files.mutable, PLAN_FILE]
    out: dict[str, str] = {}
    for rel, data in sorted(read_tree(root, cfg.files.exclude).items()):
        if matches(rel, patterns) and not matches(rel, cfg.files.frozen):
            try:
                out[rel] = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
    return out


def missing_mutable(root: Path, cfg: Config) -> list[str]:
    """Mutable files named literally (no glob) that do not exist under ``root``."""
    return [m for m in cfg.files.mutable if not any(c in m for c in "*?[") and not m.endswith("/") and not (root / m).is_file()]


def _file_diff(path: str, old: str | None, new: str | None) -> str:
    a = [] if old is None else old.splitlines(keepends=True)
    b = [] if new is None else new.splitlines(keepends=True)
    head = [f"diff --git a/{path} b/{path}\n"]
    if old is None:
        head.append("new file mode 100644\n")
    elif new is None:
        head.append("deleted file mode 100644\n")
    body = list(
        difflib.unified_diff(
            a, b, fromfile="/dev/null" if old is None else f"a/{path}", tofile="/dev/null" if new is None else f"b/{path}", n=3
        )
    )
    if not body:
        return ""
    out: list[str] = []
    for line in body:
        if line.endswith("\n"):
            out.append(line)
        else:  # only the last line of a file lacks its newline
            out.append(line + "\n\\ No newline at end of file\n")
    return "".join(head + out)


def diff_texts(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """One unified diff (``git apply -p1`` format) turning ``before`` into ``after``."""
    parts = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        parts.append(_file_diff(path, old, new))
    return "".join(parts)


def diff_trees(before: Mapping[str, bytes], after: Mapping[str, bytes]) -> tuple[str, list[str]]:
    """(unified diff of the text files that changed, paths of changed files that are not text)."""
    b_txt: dict[str, str] = {}
    a_txt: dict[str, str] = {}
    binary: list[str] = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        try:
            if old is not None:
                b_txt[path] = old.decode("utf-8")
            if new is not None:
                a_txt[path] = new.decode("utf-8")
        except UnicodeDecodeError:
            binary.append(path)
            b_txt.pop(path, None)
            a_txt.pop(path, None)
    return diff_texts(b_txt, a_txt), binary
