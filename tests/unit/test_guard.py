"""The patch guard: each rule refuses with a message naming the path; good patches apply."""

from __future__ import annotations

import difflib
import os
import subprocess
from pathlib import Path

import pytest

from ralph_ml.errors import GuardRejected
from ralph_ml.guard import (
    check_patch,
    check_python_parses,
    check_required_calls,
    guard_patch,
    touched_paths,
)
from ralph_ml.workspace import apply_patch

TRAIN = "import torch\nfrom ralph_ml.trial import log_metrics\n\nlr = 0.1\nlog_metrics({'loss': lr})\n"
MODEL = "def build():\n    return 1\n"
PREPARE = "def evaluate():\n    return 0.5\n"
MUTABLE = ["train.py", "src/*.py"]
FROZEN = ["prepare.py"]


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no user git config leaks in
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test User")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.com")


@pytest.fixture()
def code(tmp_path: Path) -> Path:
    """A cycle's code folder with a trial script, a module and a frozen evaluation."""
    root = tmp_path / "code"
    (root / "src").mkdir(parents=True)
    (root / "train.py").write_text(TRAIN)
    (root / "src" / "model.py").write_text(MODEL)
    (root / "prepare.py").write_text(PREPARE)
    return root


def git_diff(tmp_path: Path, before: dict[str, str], after: dict[str, str | None], *args: str) -> str:
    """A patch as `git diff` writes it: commit ``before``, apply ``after`` (None deletes)."""
    repo = tmp_path / "patchmaker"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for name, text in before.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "before"], cwd=repo, check=True)
    for name, text in after.items():
        if text is None:
            (repo / name).unlink()
        else:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_text(text)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    out = subprocess.run(["git", "diff", "--cached", "-M", *args], cwd=repo, check=True, capture_output=True, text=True)
    return out.stdout


def diff_u(name: str, old: str, new: str, *, old_name: str | None = None) -> str:
    """A patch as `diff -u` writes it: no a/ b/ prefixes."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), old_name or name, name
    )
    return "".join(lines)


# -- good patches -----------------------------------------------------------------------


def test_git_patch_applies_and_returns_touched_paths(tmp_path: Path, code: Path) -> None:
    new_train = TRAIN.replace("lr = 0.1", "lr = 0.03")
    new_model = MODEL.replace("return 1", "return 2")
    patch = git_diff(
        tmp_path,
        {"train.py": TRAIN, "src/model.py": MODEL},
        {"train.py": new_train, "src/model.py": new_model},
    )
    assert patch.startswith("diff --git a/")

    touched = guard_patch(
        code, patch, mutable=MUTABLE, frozen=FROZEN,
        required_calls={"train.py": ["ralph_ml.trial.log_metrics"]},
    )

    assert touched == ["src/model.py", "train.py"]
    assert (code / "train.py").read_text() == new_train
    assert (code / "src" / "model.py").read_text() == new_model
    assert (code / "prepare.py").read_text() == PREPARE


def test_diff_u_patch_without_prefixes_applies(code: Path) -> None:
    new_train = TRAIN.replace("lr = 0.1", "lr = 0.5")
    patch = diff_u("train.py", TRAIN, new_train, old_name="train.py.orig")

    assert touched_paths(patch) == ["train.py"]
    assert guard_patch(code, patch, mutable=MUTABLE, frozen=FROZEN) == ["train.py"]
    assert (code / "train.py").read_text() == new_train


def test_no_prefix_git_diff_applies(tmp_path: Path, code: Path) -> None:
    new_model = MODEL + "\n\nSIZE = 3\n"
    patch = git_diff(tmp_path, {"src/model.py": MODEL}, {"src/model.py": new_model}, "--no-prefix")
    assert "--- src/model.py" in patch

    assert guard_patch(code, patch, mutable=MUTABLE, frozen=FROZEN) == ["src/model.py"]
    assert (code / "src" / "model.py").read_text() == new_model


def test_patch_applies_in_code_dir_that_lives_inside_a_git_repo(tmp_path: Path) -> None:
    # runs/cycle_0001/code inside the user's repo: plain `git apply` would resolve paths
    # from the repo root and silently skip every file.
    repo = tmp_path / "ws"
    code = repo / "runs" / "cycle_0001" / "code"
    code.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "train.py").write_text(TRAIN)
    (code / "train.py").write_text(TRAIN)
    new_train = TRAIN.replace("lr = 0.1", "lr = 0.7")
    patch = git_diff(tmp_path, {"train.py": TRAIN}, {"train.py": new_train})

    assert apply_patch(code, patch) == ["train.py"]

    assert (code / "train.py").read_text() == new_train
    assert (repo / "train.py").read_text() == TRAIN


def test_patch_whose_headers_disagree_with_git_is_refused(code: Path) -> None:
    # A dangling "---/+++" pair with no hunk names src/util.py, but git ignores it: what
    # git would do and what the guard checked must be the same set of files.
    patch = diff_u("train.py", TRAIN, TRAIN.replace("0.1", "0.2")) + "--- src/util.py\n+++ src/util.py\n"

    with pytest.raises(GuardRejected, match="2 file section.*git reads 1"):
        guard_patch(code, patch, mutable=MUTABLE, frozen=FROZEN)
    assert (code / "train.py").read_text() == TRAIN


def test_touched_paths_lists_both_sides_of_renames_and_new_and_deleted_files(tmp_path: Path) -> None:
    body = "".join(f"line {i}\n" for i in range(20))
    patch = git_diff(
        tmp_path,
        {"old_name.py": body, "gone.py": "x = 1\n", "keep.py": "y = 1\n"},
        {"old_name.py": None, "new_name.py": body + "extra\n", "gone.py": None, "added.py": "z = 1\n"},
    )
    assert "rename from old_name.py" in patch

    assert touched_paths(patch) == ["added.py", "gone.py", "new_name.py", "old_name.py"]


def test_hunk_lines_that_look_like_headers_are_not_taken_for_files(code: Path) -> None:
    # Removing "-- a/prepare.py" and adding "++ b/prepare.py" gives body lines
    # "--- a/prepare.py" / "+++ b/prepare.py": content, not a header naming prefix.py.
    (code / "notes.txt").write_text("intro\n-- a/prepare.py\nend\n")
    patch = diff_u("notes.txt", "intro\n-- a/prepare.py\nend\n", "intro\n++ b/prepare.py\nend\n")
    assert "\n--- a/prepare.py\n+++ b/prepare.py\n" in patch

    assert guard_patch(code, patch, mutable=["notes.txt"], frozen=FROZEN) == ["notes.txt"]
    assert (code / "notes.txt").read_text() == "intro\n++ b/prepare.py\nend\n"


# -- rules --------------------------------------------------------------------------------


def _edit(name: str, old: str = "a = 1\n", new: str = "a = 2\n") -> str:
    return f"--- a/{name}\n+++ b/{name}\n@@ -1 +1 @@\n-{old.rstrip()}\n+{new.rstrip()}\n"


@pytest.mark.parametrize(
    ("patch", "path", "rule"),
    [
        (_edit("prepare.py"), "prepare.py", "frozen file 'prepare.py'"),
        (_edit("data/loader.py"), "data/loader.py", "not mutable"),
        (_edit("src/deep/model.py"), "src/deep/model.py", "not mutable"),  # * stays in src/
        ("--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "/etc/passwd", "absolute paths"),
        (_edit("src/../prepare.py"), "src/../prepare.py", "'..' components"),
        (_edit("../outside.py"), "../outside.py", "'..' components"),
        (_edit(".git/hooks/pre-commit"), ".git/hooks/pre-commit", ".git"),
        (
            "diff --git a/train.py b/train.py\nnew file mode 120000\nindex 0000000..1111111\n"
            "--- /dev/null\n+++ b/train.py\n@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n",
            "train.py",
            "symlink",
        ),
        (
            "diff --git a/train.py b/train.py\nindex 1111111..2222222 100644\nGIT binary patch\n"
            "literal 3\nKcmZ>9;{pHx0RR91\n\nliteral 0\nKcmV+b0RR6000031\n\n",
            "train.py",
            "binary",
        ),
        (
            "diff --git a/train.py b/renamed.py\nsimilarity index 100%\nrename from prepare.py\n"
            "rename to train.py\n",
            "prepare.py",
            "frozen file",
        ),
    ],
    ids=["frozen", "not-mutable", "glob-depth", "absolute", "dotdot-inner", "dotdot", "dot-git",
         "symlink", "binary", "rename-frozen"],
)
def test_rules_reject_naming_the_path(code: Path, patch: str, path: str, rule: str) -> None:
    before = {p: p.read_bytes() for p in code.rglob("*") if p.is_file()}

    with pytest.raises(GuardRejected) as exc:
        guard_patch(code, patch, mutable=MUTABLE, frozen=FROZEN)

    assert repr(path) in str(exc.value)
    assert rule in str(exc.value)
    assert {p: p.read_bytes() for p in code.rglob("*") if p.is_file()} == before


def test_not_mutable_message_names_the_setting() -> None:
    with pytest.raises(GuardRejected, match=r"'utils\.py', which is not mutable.*files\.mutable"):
        check_patch(_edit("utils.py"), mutable=MUTABLE, frozen=FROZEN)


def test_frozen_message_says_frozen_files_can_never_change() -> None:
    with pytest.raises(GuardRejected) as exc:
        check_patch(_edit("prepare.py"), mutable=["*.py"], frozen=FROZEN)
    assert str(exc.value).startswith(
        "patch touches frozen file 'prepare.py'; frozen files (files.frozen) can never be changed by an agent."
    )


@pytest.mark.parametrize(("patch", "needle"), [("", "empty"), ("   \n", "empty"), ("just prose\n", "no file")])
def test_empty_or_headerless_patch_is_rejected(patch: str, needle: str) -> None:
    with pytest.raises(GuardRejected, match=needle):
        check_patch(patch, mutable=MUTABLE, frozen=FROZEN)


def test_oversized_patch_is_rejected_with_both_sizes() -> None:
    patch = _edit("train.py", "a = 1", "a = '" + "x" * 500 + "'")
    assert check_patch(patch, mutable=MUTABLE, frozen=FROZEN, max_bytes=10_000) == ["train.py"]
    with pytest.raises(GuardRejected, match=rf"{len(patch)} bytes, over the limit of 100 bytes"):
        check_patch(patch, mutable=MUTABLE, frozen=FROZEN, max_bytes=100)


def test_patch_through_an_existing_symlink_is_rejected(code: Path) -> None:
    os.symlink("prepare.py", code / "alias.py")  # a mutable name that reaches a frozen file
    patch = diff_u("alias.py", PREPARE, PREPARE.replace("0.5", "0.99"))

    with pytest.raises(GuardRejected, match="'alias.py'.*symlink"):
        guard_patch(code, patch, mutable=["*.py"], frozen=FROZEN)
    assert (code / "prepare.py").read_text() == PREPARE


def test_patch_that_does_not_apply_reports_gits_message(code: Path) -> None:
    patch = diff_u("train.py", "something else\n", "entirely\n")

    with pytest.raises(GuardRejected, match="does not apply.*train.py"):
        guard_patch(code, patch, mutable=MUTABLE, frozen=FROZEN)
    assert (code / "train.py").read_text() == TRAIN


# -- after applying --------------------------------------------------------------------------


def test_syntax_error_reports_file_and_line(code: Path) -> None:
    broken = TRAIN.replace("lr = 0.1", "lr = (0.1")
    patch = diff_u("train.py", TRAIN, broken)

    with pytest.raises(GuardRejected) as exc:
        guard_patch(code, patch, mutable=MUTABLE, frozen=FROZEN)

    message = str(exc.value)
    assert "'train.py' does not parse" in message
    assert "line 4" in message  # the unclosed '(' opened on line 4


def test_check_python_parses_skips_deleted_and_non_python_files(code: Path) -> None:
    (code / "notes.txt").write_text("not ( python")
    check_python_parses(code, ["notes.txt", "deleted.py", "train.py"])
    (code / "train.py").write_text("def f(:\n")
    with pytest.raises(GuardRejected, match="'train.py'.*line 1"):
        check_python_parses(code, ["train.py"])


def test_removing_a_required_call_is_rejected(code: Path) -> None:
    without = TRAIN.replace("log_metrics({'loss': lr})\n", "print(lr)\n")
    patch = diff_u("train.py", TRAIN, without)

    with pytest.raises(GuardRejected, match="'train.py' no longer calls 'log_metrics'"):
        guard_patch(code, patch, mutable=MUTABLE, frozen=FROZEN, required_calls={"train.py": ["log_metrics"]})


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("from ralph_ml.trial import log_metrics\nlog_metrics({})\n", True),
        ("from ralph_ml.trial import log_metrics as lm\nlm({})\n", True),
        ("import ralph_ml.trial as t\nt.log_metrics({})\n", True),
        ("import ralph_ml.trial\nralph_ml.trial.log_metrics({})\n", True),
        ("from ralph_ml import trial\ntrial.log_metrics({})\n", True),
        # a local stand-in with the same bare name does not satisfy the dotted requirement
        ("def log_metrics(m):\n    pass\nlog_metrics({})\n", False),
        # named but never called
        ("from ralph_ml.trial import log_metrics\nf = log_metrics\n", False),
    ],
)
def test_required_dotted_call_resolves_imports(tmp_path: Path, source: str, ok: bool) -> None:
    (tmp_path / "train.py").write_text(source)
    required = {"train.py": ["ralph_ml.trial.log_metrics"]}
    if ok:
        check_required_calls(tmp_path, required)
    else:
        with pytest.raises(GuardRejected, match="ralph_ml.trial.log_metrics"):
            check_required_calls(tmp_path, required)


def test_required_call_in_deleted_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(GuardRejected, match="'train.py' is gone"):
        check_required_calls(tmp_path, {"train.py": ["log_metrics"]})
