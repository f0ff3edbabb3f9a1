"""Per-cycle code folders and patch application.

* :func:`snapshot` copies the experiment's workspace into ``runs/cycle_NNNN/code``.
* :class:`GitVersions` (from :mod:`ralph_ml.gitversions`) makes each cycle's code folder a git
  worktree at its parent version's commit and commits it there; the user's working tree,
  index and HEAD are never touched.
* :func:`apply_patch` applies an agent's unified diff inside a cycle's code folder.
* :func:`hash_files` (from :mod:`ralph_ml.hashing`) hashes the frozen files.

The unified-diff header parser lives here too (:func:`parse_patch`): applying a patch and
guarding it (:mod:`ralph_ml.guard`) must agree on which paths a patch touches.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ralph_ml.errors import GuardRejected, WorkspaceError
from ralph_ml.gitversions import GitVersions, _git_env, _run_git
from ralph_ml.hashing import hash_files

__all__ = [
    "FileDiff",
    "GitVersions",
    "apply_patch",
    "hash_files",
    "parse_patch",
    "snapshot",
]

ALWAYS_EXCLUDED = (".git",)  # never copied, whatever files.exclude says

# --------------------------------------------------------------------------------------
# snapshot


def snapshot(src: Path, dest: Path, *, exclude: Sequence[str], skip: Sequence[Path] = ()) -> list[str]:
    """Copy the workspace ``src`` into ``dest`` (created); return the sorted relative paths copied.

    ``exclude`` holds glob patterns matched against every path component's name
    (``__pycache__``, ``*.pyc``, ``data``); ``.git`` is always excluded. ``skip`` holds
    absolute folders left out (runs/, reports/, state/ when they live inside ``src``);
    ``dest`` itself is always skipped. A symlink is copied as a (relative) symlink when its
    target lies inside ``src`` and skipped otherwise: links out of the workspace are never
    followed. Files keep their mode and mtime (``shutil.copy2``). ``dest`` must be empty but
    for a ``.git`` file (a registered git worktree, see :class:`GitVersions`), which is never
    copied over, listed or removed.
    """
    src_real = os.path.realpath(src)
    if not os.path.isdir(src_real):
        raise WorkspaceError(
            f"workspace folder {str(src)!r} does not exist or is not a folder; "
            "set paths.workspace in the config to the folder holding the experiment's files"
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with os.scandir(dest) as present:
        if any(e.name != ".git" or not e.is_file(follow_symlinks=False) for e in present):
            raise WorkspaceError(
                f"snapshot folder {str(dest)!r} already holds files; a cycle's code folder must "
                "start empty (stale files would be committed and run): remove it and retry"
            )
    dest_real = os.path.realpath(dest)
    # Skipped folders as paths relative to src: compared per directory without more syscalls.
    skip_rel = {
        rel
        for folder in (*[os.fspath(p) for p in skip], dest_real)
        if (rel := _relative_inside(os.path.realpath(folder), src_real)) is not None
    }
    if "" in skip_rel:
        raise WorkspaceError(
            f"cannot snapshot {src_real!r} into {str(dest)!r}: the workspace itself is skipped; "
            "point paths.runs/reports/state at folders inside or beside the workspace, not at it"
        )
    patterns = tuple(dict.fromkeys((*exclude, *ALWAYS_EXCLUDED)))
    copied: list[str] = []
    _copy_tree(src_real, str(dest), "", src_real, patterns, skip_rel, copied)
    copied.sort()
    return copied


def _relative_inside(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` in posix form ('' for root itself), or None if outside."""
    if path == root:
        return ""
    prefix = root.rstrip(os.sep) + os.sep
    if not path.startswith(prefix):
        return None
    return path[len(prefix) :].replace(os.sep, "/")


def _excluded(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _copy_tree(
    src_dir: str,
    dest_dir: str,
    rel_dir: str,
    src_root: str,
    patterns: Sequence[str],
    skip_rel: Collection[str],
    copied: list[str],
) -> None:
    with os.scandir(src_dir) as entries:
        for entry in entries:
            name = entry.name
            if _excluded(name, patterns):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            target = os.path.join(dest_dir, name)
            if entry.is_symlink():
                resolved = os.path.realpath(entry.path)
                inside = _relative_inside(resolved, src_root)
                if inside is None or inside == "":
                    continue  # points out of the workspace (or at its root): never followed
                link = os.path.relpath(resolved, src_dir)  # src_dir is real: links are not descended
                os.symlink(link, target)
                copied.append(rel)
            elif entry.is_dir(follow_symlinks=False):
                if rel in skip_rel:
                    continue
                os.mkdir(target)
                _copy_tree(entry.path, target, rel, src_root, patterns, skip_rel, copied)
            elif entry.is_file(follow_symlinks=False):
                shutil.copy2(entry.path, target, follow_symlinks=False)
                copied.append(rel)
            # sockets, fifos, devices: not part of an experiment's code


# --------------------------------------------------------------------------------------
# unified diffs


@dataclass(frozen=True)
class FileDiff:
    """One file section of a unified diff.

    ``header_old``/``header_new`` are the names of the ``diff --git`` and ``---``/``+++``
    lines as written (``a/``/``b/`` prefixes not stripped; None for /dev/null);
    ``rename_from``/``rename_to`` come from git's rename/copy lines, written without prefix.
    """

    header_old: str | None
    header_new: str | None
    rename_from: str | None = None
    rename_to: str | None = None
    created: bool = False
    deleted: bool = False
    git: bool = False  # a `diff --git` section, else a traditional `diff -u` one
    binary: bool = False  # carries "GIT binary patch" or "Binary files ... differ"
    modes: tuple[str, ...] = ()  # file modes named in the headers ("100644", "120000")


_HUNK_RE = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_DATE_RE = re.compile(r"\s+\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:\s*[+-]\d{4})?\s*$")
_MODE_RE = re.compile(r"^(?:new file mode|deleted file mode|old mode|new mode|index \S+) (\d{6})\s*$")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", '"': '"', "\\": "\\"}


def _unquote(name: str) -> str:
    """Undo git's C-style quoting of a path (``"t\\303\\251st.py"`` -> ``tést.py``)."""
    if not (len(name) >= 2 and name.startswith('"') and name.endswith('"')):
        return name
    body, out, i = name[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            octal = body[i + 1 : i + 4]
            if re.fullmatch(r"[0-7]{3}", octal):
                out.append(int(octal, 8) & 0xFF)
                i += 4
                continue
            out += _ESCAPES.get(body[i + 1], body[i + 1]).encode()
            i += 2
            continue
        out += ch.encode()
        i += 1
    return out.decode("utf-8", errors="surrogateescape")


def _quoted_prefix(text: str) -> int:
    """Index just past the closing quote of a C-quoted name at the start of ``text``, or -1."""
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i + 1
        i += 1
    return -1


def _header_name(rest: str) -> str | None:
    """The path of a ``---``/``+++`` line (text after the marker); None for /dev/null."""
    rest = rest.rstrip("\r\n")
    if rest.startswith('"') and (end := _quoted_prefix(rest)) != -1:
        name = _unquote(rest[:end])
    else:
        name = _DATE_RE.sub("", rest.split("\t", 1)[0]).rstrip()
    return None if name == "/dev/null" else name


def _split_git_line(rest: str) -> tuple[str, str]:
    """The two names of ``diff --git A B`` (unquoted names may hold spaces: halves must match)."""
    rest = rest.rstrip("\r\n")
    if rest.startswith('"') and (end := _quoted_prefix(rest)) != -1:
        return _unquote(rest[:end]), _unquote(rest[end:].strip())
    parts = rest.split(" ")
    for i in range(1, len(parts)):
        left, right = " ".join(parts[:i]), " ".join(parts[i:])
        if left.partition("/")[2] == right.partition("/")[2]:
            return left, _unquote(right)
    return parts[0], _unquote(" ".join(parts[1:]))


def _is_binary_line(line: str) -> bool:
    return line.startswith("GIT binary patch") or (
        line.startswith("Binary files ") and line.rstrip().endswith(" differ")
    )


def parse_patch(patch: str) -> list[FileDiff]:
    """File sections of a unified diff (``git diff`` or ``diff -u``), in order.

    Hunk bodies are skipped by their ``@@`` line counts, as ``git apply`` does, so a
    removed line starting with ``-- `` is never mistaken for a header.
    """
    lines = patch.splitlines()
    files: list[FileDiff] = []
    cur: dict[str, Any] | None = None

    def flush() -> None:
        if cur is not None:
            files.append(FileDiff(**{k: v for k, v in cur.items() if k != "saw_hunk"}))

    def fresh(git: bool) -> dict[str, Any]:
        flush()
        return {"header_old": None, "header_new": None, "git": git, "modes": (), "saw_hunk": False}

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            cur = fresh(True)
            cur["header_old"], cur["header_new"] = _split_git_line(line[len("diff --git ") :])
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            if cur is None or not cur["git"] or cur["saw_hunk"]:
                cur = fresh(False)
            cur["header_old"], cur["header_new"] = _header_name(line[4:]), _header_name(lines[i + 1][4:])
            if not cur["git"]:
                cur["created"] = cur["header_old"] is None
                cur["deleted"] = cur["header_new"] is None
            i += 1
        elif cur is not None and (m := _HUNK_RE.match(line)):
            cur["saw_hunk"] = True
            old_left = int(m.group(1)) if m.group(1) is not None else 1
            new_left = int(m.group(2)) if m.group(2) is not None else 1
            while (old_left > 0 or new_left > 0) and i + 1 < len(lines):
                tag = lines[i + 1][:1]
                if tag in (" ", ""):
                    old_left, new_left = old_left - 1, new_left - 1
                elif tag == "-":
                    old_left -= 1
                elif tag == "+":
                    new_left -= 1
                elif tag != "\\":
                    break
                i += 1
            if i + 1 < len(lines) and lines[i + 1].startswith("\\"):
                i += 1  # "\ No newline at end of file" after the last line
        elif cur is not None and cur["git"] and not cur["saw_hunk"]:
            if line.startswith(("rename from ", "copy from ")):
                cur["rename_from"] = _unquote(line.split(" ", 2)[2].rstrip("\r\n"))
            elif line.startswith(("rename to ", "copy to ")):
                cur["rename_to"] = _unquote(line.split(" ", 2)[2].rstrip("\r\n"))
            elif line.startswith("new file mode"):
                cur["created"] = True
            elif line.startswith("deleted file mode"):
                cur["deleted"] = True
            if _is_binary_line(line):
                cur["binary"] = True
            if mode := _MODE_RE.match(line):
                cur["modes"] = (*cur["modes"], mode.group(1))
        elif _is_binary_line(line):
            cur = fresh(False)
            cur["binary"] = True
            names = line.rstrip()[len("Binary files ") : -len(" differ")].split(" and ", 1)
            cur["header_old"], cur["header_new"] = names[0], names[-1]
        i += 1
    flush()
    return files


def strip_level(files: Sequence[FileDiff]) -> int:
    """1 when every header name carries git's ``a/`` (old) / ``b/`` (new) prefix, else 0."""
    return int(
        bool(files)
        and all(
            (f.header_old is None or f.header_old.startswith("a/"))
            and (f.header_new is None or f.header_new.startswith("b/"))
            for f in files
        )
    )


def normalize_path(name: str) -> str:
    """``./src//x.py`` -> ``src/x.py``; names with ``..`` or a leading ``/`` are kept as is."""
    if name.startswith("/") or ".." in name.split("/"):
        return name
    norm = posixpath.normpath(name)
    return "" if norm == "." else norm


def file_paths(f: FileDiff, level: int) -> tuple[str | None, str | None]:
    """(old, new) relative paths of one section after stripping ``level`` prefixes.

    None for the missing side of a created or deleted file. For a traditional diff whose
    names differ only by a suffix (``train.py.orig`` vs ``train.py``), both sides are the
    shorter name, as git picks it.
    """

    def side(literal: str | None, header: str | None) -> str | None:
        if literal is not None:  # rename/copy lines carry no a/ b/ prefix
            return normalize_path(literal)
        if header is None:
            return None
        return normalize_path(header[2:] if level == 1 else header)

    old = side(f.rename_from, f.header_old)
    new = side(f.rename_to, f.header_new)
    if f.created:
        old = None
    if f.deleted:
        new = None
    if not f.git and old is not None and new is not None and old != new:
        shorter, longer = sorted((old, new), key=len)
        if longer.startswith(shorter):
            old = new = shorter
    return old, new


def patch_paths(files: Sequence[FileDiff]) -> list[str]:
    """Sorted relative paths a patch touches: both sides of a rename, prefixes stripped."""
    level = strip_level(files)
    return sorted({p for f in files for p in file_paths(f, level) if p is not None})


def apply_patch(code_dir: Path, patch: str, *, allowed: Collection[str] | None = None) -> list[str]:
    """Apply unified diff ``patch`` inside ``code_dir`` with ``git apply``; return touched paths.

    Works whether or not ``code_dir`` lies in a git repository (discovery is stopped at
    ``code_dir``, so paths are always relative to it). ``git apply --check`` runs first:
    nothing is written unless every hunk applies. When ``allowed`` is given, the patch is
    refused before any write if git would touch a path outside it (a guard's checked set).
    Names with or without ``a/``/``b/`` prefixes are accepted. Failures raise
    :class:`GuardRejected` with git's message.
    """
    code_dir = Path(code_dir)
    files = parse_patch(patch)
    level = strip_level(files)
    real = os.path.realpath(code_dir)
    env = _git_env(GIT_CEILING_DIRECTORIES=os.path.dirname(real))
    args = ["apply", f"-p{level}", "--whitespace=nowarn"]
    if not patch.endswith("\n"):
        patch += "\n"
    check = _run_git(
        [*args, "--check", "--numstat", "-z", "-"], env=env, cwd=real, input_text=patch,
        check=False, hint="",
    )
    if check.returncode != 0:
        raise GuardRejected(
            f"patch does not apply to the cycle's code in {str(code_dir)!r}: "
            f"{check.stderr.strip() or 'git apply --check failed'}; the agent must produce a "
            "unified diff against the current best code."
        )
    # One "added<TAB>deleted<TAB>path" record per file section git read (new name of a rename).
    records = [r.split("\t", 2)[2] for r in check.stdout.split("\0") if r.count("\t") >= 2]
    git_paths = sorted({normalize_path(r) for r in records})
    if len(records) != len(files):
        raise GuardRejected(
            f"patch has {len(files)} file section(s) by its headers but git reads {len(records)} "
            f"({git_paths}); the diff is malformed (hunk line counts?), not applied."
        )
    if allowed is not None:
        unexpected = [p for p in git_paths if p not in allowed]
        if unexpected:
            raise GuardRejected(
                f"patch would change {unexpected[0]!r}, which its headers do not name "
                f"(checked: {sorted(allowed)}); the patch is malformed or disguised, not applied."
            )
    done = _run_git([*args, "-"], env=env, cwd=real, input_text=patch, check=False, hint="")
    if done.returncode != 0:
        raise GuardRejected(
            f"git apply failed in {str(code_dir)!r} after its check passed: "
            f"{done.stderr.strip() or '(no message)'}; the code folder may be partly patched."
        )
    return sorted(set(git_paths) | set(patch_paths(files)))
