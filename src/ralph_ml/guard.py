"""Validation of an agent's patch before it runs: agents are untrusted.

:func:`guard_patch` is the one call the loop makes; it runs, in order,
:func:`check_patch` (paths and shape, no file touched), :func:`~ralph_ml.workspace.apply_patch`,
:func:`check_python_parses` and :func:`check_required_calls`. Every refusal raises
:class:`~ralph_ml.errors.GuardRejected` whose message names the offending path and the rule;
the loop appends where it saved the rejected patch.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from ralph_ml.errors import GuardRejected
from ralph_ml.workspace import apply_patch, file_paths, parse_patch, patch_paths, strip_level

__all__ = [
    "DEFAULT_MAX_PATCH_BYTES",
    "check_patch",
    "check_python_parses",
    "calls_into_ralph_ml",
    "check_required_calls",
    "guard_patch",
    "matches",
    "touched_paths",
]

DEFAULT_MAX_PATCH_BYTES = 200_000  # bytes of UTF-8; a larger patch is a rewrite, not a proposal
_SYMLINK_MODE = "120000"
_GITLINK_MODE = "160000"  # a submodule pointer


def touched_paths(patch: str) -> list[str]:
    """Sorted relative paths a unified diff touches (``a/``/``b/`` prefixes stripped).

    Both sides of a rename or copy are listed; a created file by its new name, a deleted
    one by its old name.
    """
    return patch_paths(parse_patch(patch))


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay inside one path component, ``**`` spans any number of them."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
            continue
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


def matches(path: str, patterns: Sequence[str]) -> bool:
    """True when relative ``path`` matches one of ``patterns``.

    A pattern is a name (``train.py``), a glob (``src/*.py``, ``configs/**/*.yaml``) or a
    folder ending in ``/`` (``src/``: everything below it).
    """
    for pattern in patterns:
        pattern = pattern.removeprefix("./")
        if path == pattern or (pattern.endswith("/") and path.startswith(pattern)):
            return True
        if _glob_regex(pattern).match(path):
            return True
    return False


def _path_problem(path: str) -> str | None:
    if not path:
        return "an empty file name is not a path"
    parts = path.split("/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", path) or path.startswith("\\"):
        return "absolute paths are not allowed; paths must be relative to the workspace"
    if ".." in parts or ".." in path.split("\\"):
        return "'..' components are not allowed; a patch may only change files inside the workspace"
    if ".git" in parts:
        return "files inside .git are never part of the workspace's code"
    return None


def check_patch(
    patch: str,
    *,
    mutable: Sequence[str],
    frozen: Sequence[str],
    max_bytes: int = DEFAULT_MAX_PATCH_BYTES,
) -> list[str]:
    """Refuse a patch by its text alone; return the relative paths it touches.

    Rules: not empty; at most ``max_bytes``; no absolute paths or ``..``; no frozen file
    (``files.frozen``); only files matching ``files.mutable`` (names or globs such as
    ``src/*.py``); no symlinks, submodules or binary patches.
    """
    if not patch.strip():
        raise GuardRejected("patch is empty; an agent proposing code must send a unified diff.")
    size = len(patch.encode("utf-8", errors="surrogateescape"))
    if size > max_bytes:
        raise GuardRejected(
            f"patch is {size} bytes, over the limit of {max_bytes} bytes; propose a smaller "
            "change (or raise the guard's max_bytes)."
        )
    files = parse_patch(patch)
    if not files:
        raise GuardRejected(
            "patch names no file: no 'diff --git' or '---'/'+++' headers found; send a unified "
            "diff as produced by 'git diff' or 'diff -u'."
        )
    level = strip_level(files)
    for f in files:
        for path in (p for p in file_paths(f, level) if p is not None):
            if (problem := _path_problem(path)) is not None:
                raise GuardRejected(f"patch touches {path!r}: {problem}.")
            if matches(path, frozen):
                raise GuardRejected(
                    f"patch touches frozen file {path!r}; frozen files (files.frozen) can never "
                    "be changed by an agent."
                )
            if not matches(path, mutable):
                raise GuardRejected(
                    f"patch touches {path!r}, which is not mutable; agents may only change "
                    f"files matching files.mutable = {list(mutable)}."
                )
            if f.binary:
                raise GuardRejected(
                    f"patch carries a binary change to {path!r}; binary patches are not allowed, "
                    "agents change text files only."
                )
            if _SYMLINK_MODE in f.modes:
                raise GuardRejected(
                    f"patch makes or changes a symlink at {path!r}; symlinks are not allowed "
                    "(a link could reach files outside the workspace)."
                )
            if _GITLINK_MODE in f.modes:
                raise GuardRejected(f"patch changes a submodule at {path!r}; submodules are not allowed.")
    return patch_paths(files)


def _check_no_symlinks(code_dir: Path, paths: Iterable[str]) -> None:
    """Refuse paths that are, or lie below, a symlink inside ``code_dir``."""
    for path in paths:
        current = str(code_dir)
        for part in path.split("/"):
            current = os.path.join(current, part)
            if os.path.islink(current):
                raise GuardRejected(
                    f"patch touches {path!r}, which goes through the symlink "
                    f"{os.path.relpath(current, code_dir)!r}; patches may not change files "
                    "behind symlinks (they could reach outside the workspace)."
                )


def check_python_parses(code_dir: Path, files: Iterable[str]) -> None:
    """``ast.parse`` every ``.py`` file of ``files`` that exists under ``code_dir``."""
    for name in files:
        if not name.endswith(".py"):
            continue
        path = Path(code_dir) / name
        if not path.is_file():
            continue  # deleted by the patch
        try:
            ast.parse(path.read_bytes(), filename=name)
        except SyntaxError as exc:
            where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
            text = f": {exc.text.strip()!r}" if exc.text and exc.text.strip() else ""
            raise GuardRejected(
                f"patched file {name!r} does not parse: {exc.msg} at {where}{text}; "
                f"the patched code is in {str(path)!r}."
            ) from exc
        except ValueError as exc:  # e.g. null bytes in the source
            raise GuardRejected(f"patched file {name!r} is not Python source: {exc}.") from exc


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _call_names(tree: ast.AST) -> set[str]:
    """Dotted names of every call, each also with import aliases resolved.

    ``from ralph_ml.trial import log_metrics as lm; lm(...)`` yields ``lm`` and
    ``ralph_ml.trial.log_metrics``.
    """
    aliases: dict[str, str] = {}
    calls: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Call) and (name := _dotted(node.func)) is not None:
            calls.append(name)
    names = set(calls)
    for name in calls:
        head, _, rest = name.partition(".")
        if head in aliases:
            names.add(f"{aliases[head]}.{rest}" if rest else aliases[head])
    return names


def _has_call(names: set[str], required: str) -> bool:
    """``required`` equals a call's name or is its dotted suffix (``log_metrics``)."""
    suffix = "." + required
    return any(n == required or n.endswith(suffix) for n in names)


def check_required_calls(code_dir: Path, required: Mapping[str, Sequence[str]]) -> None:
    """Every file of ``required`` must still call each listed name (checked in its AST).

    A dotted name must match after resolving imports (``ralph_ml.trial.log_metrics``
    accepts ``from ralph_ml.trial import log_metrics; log_metrics(...)``); a bare name
    matches any call ending in it.
    """
    for name, wanted in required.items():
        path = Path(code_dir) / name
        try:
            tree = ast.parse(path.read_bytes(), filename=name)
        except FileNotFoundError:
            raise GuardRejected(
                f"file {name!r} is gone after the patch but must call {list(wanted)}; "
                "the patch may not delete it."
            ) from None
        except (SyntaxError, ValueError) as exc:
            raise GuardRejected(f"file {name!r} does not parse: {exc}.") from exc
        calls = _call_names(tree)
        missing = [call for call in wanted if not _has_call(calls, call)]
        if missing:
            raise GuardRejected(
                f"patched file {name!r} no longer calls {missing[0]!r}; the loop needs that call "
                f"(required calls of {name!r}: {list(wanted)}), keep it in the code."
            )


def calls_into_ralph_ml(workspace: Path, mutable: Sequence[str]) -> dict[str, list[str]]:
    """For ``files.required_calls`` left unset: the ``ralph_ml`` calls (``trial.params``,
    ``trial.report``, an adapter's callback, ...) each mutable Python file of the workspace makes.

    A patch that drops one would cut the loop off from the trial without failing it: its
    hyperparameters ignored, no learning curve for the pruners, no stop at the target. Files
    that do not parse, and globs, are left out (a patch that creates them is not held to
    anything)."""
    out: dict[str, list[str]] = {}
    for rel in mutable:
        if not rel.endswith(".py") or any(ch in rel for ch in "*?["):
            continue
        try:
            tree = ast.parse((Path(workspace) / rel).read_bytes(), filename=rel)
        except (OSError, SyntaxError, ValueError):
            continue
        names = sorted(n for n in _call_names(tree) if n.startswith("ralph_ml."))
        if names:
            out[rel] = names
    return out


def guard_patch(
    code_dir: Path,
    patch: str,
    *,
    mutable: Sequence[str],
    frozen: Sequence[str],
    required_calls: Mapping[str, Sequence[str]] | None = None,
    max_bytes: int = DEFAULT_MAX_PATCH_BYTES,
) -> list[str]:
    """Check ``patch``, apply it in ``code_dir``, check the result; return touched paths.

    On a refusal after the patch was applied (syntax error, missing required call),
    ``code_dir`` keeps the patched code as evidence.
    """
    paths = check_patch(patch, mutable=mutable, frozen=frozen, max_bytes=max_bytes)
    _check_no_symlinks(Path(code_dir), paths)
    touched = apply_patch(Path(code_dir), patch, allowed=set(paths))
    check_python_parses(code_dir, touched)
    if required_calls:
        check_required_calls(code_dir, required_calls)
    return touched
