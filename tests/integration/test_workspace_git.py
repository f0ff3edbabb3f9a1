"""Cycle snapshots and git versioning against real folders and real git repositories."""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from ralph_ml.errors import WorkspaceError
from ralph_ml.workspace import GitVersions, snapshot

EXCLUDE = ["__pycache__", "*.pyc", ".venv", "data", ".ipynb_checkpoints"]


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no user git config leaks in
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test User")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.com")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


# -- snapshot -------------------------------------------------------------------------------


def test_snapshot_excludes_patterns_skip_dirs_git_and_outside_symlinks(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    write(ws, {
        "train.py": "lr = 0.1\n",
        "prepare.py": "EVAL = 1\n",
        "src/model.py": "x = 1\n",
        "src/__pycache__/model.cpython-311.pyc": "bytecode",
        "src/stale.pyc": "bytecode",
        "data/train.bin": "big",
        "src/data/also_excluded.txt": "patterns match any component",
        ".venv/bin/python": "",
        ".git/HEAD": "ref: refs/heads/main\n",
        "runs/cycle_0001/code/train.py": "old cycle",
        "state/ralph_state.json": "{}",
        "reports/summary.md": "",
    })
    os.symlink(outside, ws / "leak.txt")
    os.symlink("../../secret.txt", ws / "src" / "leak_relative.txt")
    os.symlink("train.py", ws / "alias.py")  # inside: kept as a link
    os.chmod(ws / "train.py", 0o755)

    dest = ws / "runs" / "cycle_0002" / "code"  # inside the workspace, as in the default layout
    copied = snapshot(ws, dest, exclude=EXCLUDE, skip=[ws / "runs", ws / "state", ws / "reports"])

    assert copied == ["alias.py", "prepare.py", "src/model.py", "train.py"]
    on_disk = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() or p.is_symlink())
    assert on_disk == copied
    assert os.path.islink(dest / "alias.py")
    assert (dest / "alias.py").read_text() == "lr = 0.1\n"
    assert os.path.realpath(dest / "alias.py") == str((dest / "train.py").resolve())  # not the original
    assert os.stat(dest / "train.py").st_mode & 0o777 == 0o755
    assert not (dest / ".git").exists()


def test_snapshot_refuses_a_folder_that_already_holds_files(tmp_path: Path) -> None:
    write(tmp_path / "ws", {"train.py": "lr = 1\n"})
    write(tmp_path / "dest", {"stale.py": "from a crashed cycle"})
    with pytest.raises(WorkspaceError, match="already holds files"):
        snapshot(tmp_path / "ws", tmp_path / "dest", exclude=EXCLUDE)
    assert not (tmp_path / "dest" / "train.py").exists()


def test_snapshot_of_a_missing_workspace_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="paths.workspace"):
        snapshot(tmp_path / "nope", tmp_path / "dest", exclude=EXCLUDE)


def test_snapshot_of_five_files_is_fast(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write(ws, {"train.py": "a\n" * 200, "prepare.py": "b\n", "src/model.py": "c\n", "README.md": "d\n",
               "cfg.yaml": "e\n"})
    timings = []
    for i in range(20):
        start = time.perf_counter()
        copied = snapshot(ws, tmp_path / f"c{i}", exclude=EXCLUDE)
        timings.append(time.perf_counter() - start)
    assert len(copied) == 5
    assert statistics.median(timings) < 0.02  # ~0.4 ms measured; generous for loaded CI machines


# -- git versioning -------------------------------------------------------------------------


@pytest.fixture()
def user_repo(tmp_path: Path) -> Path:
    """A user's repo with history, a .gitignore, and uncommitted work of every kind."""
    repo = tmp_path / "ws"
    repo.mkdir()
    git(repo, "init", "-q")
    write(repo, {"train.py": "lr = 0.1\n", "prepare.py": "EVAL = 1\n", "utils.py": "u = 1\n",
                 ".gitignore": "*.ckpt\n"})
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "user's first commit")
    write(repo, {"train.py": "lr = 0.2  # unstaged\n", "staged.py": "s = 1\n", "scratch.txt": "untracked\n"})
    git(repo, "add", "staged.py")
    write(repo, {"staged.py": "s = 2  # staged, then changed again\n"})
    return repo


def _index_digest(repo: Path) -> str:
    return hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest()


def _user_state(repo: Path) -> tuple[str, str, str, str]:
    """Status first (it may refresh the index file), then the index's exact bytes."""
    status = git(repo, "status", "--porcelain")
    return status, _index_digest(repo), git(repo, "rev-parse", "HEAD"), git(repo, "symbolic-ref", "HEAD")


def _cycle(repo: Path, runs: Path, n: int, edits: dict[str, str], remove: tuple[str, ...] = ()) -> Path:
    code = runs / f"cycle_{n:04d}" / "code"
    snapshot(repo, code, exclude=EXCLUDE, skip=[runs, repo / "state"])
    write(code, edits)
    for name in remove:
        (code / name).unlink()
    return code


def test_commit_cycle_chains_commits_without_touching_the_users_repo(user_repo: Path) -> None:
    repo, runs = user_repo, user_repo / "runs"
    write(repo, {"runs/.keep": "", "state/.keep": ""})  # the loop's folders exist before cycles
    before = _user_state(repo)
    head = before[2].strip()
    versions = GitVersions(repo, "run-a", repo / "state" / "git-index")

    code1 = _cycle(repo, runs, 1, {"train.py": "lr = 0.01\n", "big.ckpt": "ignored by .gitignore"})
    sha1 = versions.commit_cycle(1, code1, "cycle 1: lr 0.01")
    (code1 / "model.ckpt").write_text("the trial's checkpoint")
    (code1 / "metrics.json").write_text("{}")  # trial output written after the commit
    code2 = _cycle(repo, runs, 2, {"train.py": "lr = 0.003\n"}, remove=("utils.py",))
    sha2 = versions.commit_cycle(2, code2, "cycle 2: lr 0.003")

    assert _index_digest(repo) == before[1]  # the user's index file, byte for byte
    assert _user_state(repo) == before  # status, HEAD, current branch
    assert (repo / "train.py").read_text() == "lr = 0.2  # unstaged\n"
    assert git(repo, "rev-parse", "ralph/run-a").strip() == sha2
    assert git(repo, "rev-list", "--parents", "-n1", sha1).split() == [sha1, head]
    assert git(repo, "rev-list", "--parents", "-n1", sha2).split() == [sha2, sha1]
    assert git(repo, "show", f"{sha1}:train.py") == "lr = 0.01\n"
    assert git(repo, "show", f"{sha2}:train.py") == "lr = 0.003\n"
    files1 = git(repo, "ls-tree", "-r", "--name-only", sha1).split()
    # the snapshot's content, uncommitted user work included; ignored and later files not
    assert files1 == [".gitignore", "prepare.py", "scratch.txt", "staged.py", "train.py", "utils.py"]
    assert git(repo, "show", f"{sha1}:staged.py") == "s = 2  # staged, then changed again\n"
    assert "utils.py" not in git(repo, "ls-tree", "-r", "--name-only", sha2).split()
    assert git(repo, "log", "-1", "--format=%an <%ae>%n%B", sha2).startswith(
        "ralph-ml <ralph-ml@localhost>\ncycle 2: lr 0.003\n\nRalph-Run: run-a\nRalph-Cycle: 2"
    )


def test_best_tag_moves_and_checkout_restores_that_version(user_repo: Path) -> None:
    repo, runs = user_repo, user_repo.parent / "runs"
    versions = GitVersions(repo, "run-b", user_repo.parent / "state" / "git-index")
    shas = [
        versions.commit_cycle(n, _cycle(repo, runs, n, {"train.py": f"lr = {lr}\n"}), f"cycle {n}")
        for n, lr in ((1, 0.05), (2, 0.02), (3, 0.5))
    ]

    versions.mark_best(shas[0])
    assert git(repo, "rev-parse", versions.best_tag).strip() == shas[0]
    versions.mark_best(shas[1])
    assert git(repo, "rev-parse", "ralph/run-b/best").strip() == shas[1]
    assert versions.best_tag == "ralph/run-b/best" and versions.branch == "ralph/run-b"

    git(repo, "checkout", "ralph/run-b/best", "--", "train.py")
    assert (repo / "train.py").read_text() == "lr = 0.02\n"


def test_a_new_instance_continues_the_runs_branch(user_repo: Path) -> None:
    repo, runs, index = user_repo, user_repo.parent / "runs", user_repo.parent / "state" / "git-index"
    first = GitVersions(repo, "run-c", index).commit_cycle(1, _cycle(repo, runs, 1, {}), "cycle 1")
    index.unlink()  # a resumed run may have lost its private index

    resumed = GitVersions(repo, "run-c", index)
    second = resumed.commit_cycle(2, _cycle(repo, runs, 2, {"train.py": "lr = 9\n"}), "cycle 2")

    assert git(repo, "rev-list", "--parents", "-n1", second).split() == [second, first]
    assert git(repo, "show", f"{second}:prepare.py") == "EVAL = 1\n"


def test_files_tracked_despite_gitignore_stay_in_cycle_commits(user_repo: Path) -> None:
    repo = user_repo
    write(repo, {"baseline.ckpt": "tracked on purpose"})
    git(repo, "add", "-f", "baseline.ckpt")
    git(repo, "commit", "-qm", "force-add a checkpoint")
    versions = GitVersions(repo, "run-d", repo.parent / "state" / "git-index")

    sha = versions.commit_cycle(1, _cycle(repo, repo.parent / "runs", 1, {"baseline.ckpt": "v2"}), "c1")

    assert git(repo, "show", f"{sha}:baseline.ckpt") == "v2"


def test_init_repo_on_a_plain_folder_commits_code_not_data(tmp_path: Path) -> None:
    ws = tmp_path / "plain"
    write(ws, {"train.py": "lr = 1\n", "prepare.py": "E = 1\n", "data/x.bin": "data", "runs/old.txt": "out"})
    assert not GitVersions.is_repo(ws)

    GitVersions.init_repo(ws, exclude=["data/", "runs/"])

    assert GitVersions.is_repo(ws)
    assert not GitVersions.is_repo(ws / "data")  # inside a work tree, not its top level
    assert git(ws, "ls-tree", "-r", "--name-only", "HEAD").split() == ["prepare.py", "train.py"]
    assert git(ws, "log", "-1", "--format=%an <%ae>").strip() == "ralph-ml <ralph-ml@localhost>"
    assert git(ws, "status", "--porcelain") == ""
    GitVersions.init_repo(ws, exclude=["data/", "runs/"])  # again: no second commit
    assert git(ws, "rev-list", "--count", "HEAD").strip() == "1"

    versions = GitVersions(ws, "run-e", tmp_path / "state" / "git-index")
    sha = versions.commit_cycle(1, _cycle(ws, ws / "runs", 1, {"train.py": "lr = 2\n"}), "cycle 1")
    assert git(ws, "show", f"{sha}:train.py") == "lr = 2\n"


def test_init_repo_works_without_any_git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.delenv(f"GIT_{who}_NAME")
        monkeypatch.delenv(f"GIT_{who}_EMAIL")
    ws = tmp_path / "plain"
    write(ws, {"train.py": "lr = 1\n"})

    GitVersions.init_repo(ws)

    assert git(ws, "show", "HEAD:train.py") == "lr = 1\n"


def test_first_commit_in_an_unborn_repo_has_no_parent(tmp_path: Path) -> None:
    ws = tmp_path / "unborn"
    write(ws, {"train.py": "lr = 1\n"})
    git(ws, "init", "-q")
    versions = GitVersions(ws, "run-f", tmp_path / "state" / "git-index")

    sha = versions.commit_cycle(1, _cycle(ws, tmp_path / "runs", 1, {}), "cycle 1")

    assert git(ws, "rev-list", "--parents", "-n1", sha).split() == [sha]
    assert git(ws, "status", "--porcelain") == "?? train.py\n"  # still unborn, nothing staged


def test_commit_cycle_outside_a_repo_raises_with_the_git_command(tmp_path: Path) -> None:
    ws = tmp_path / "no-repo"
    write(ws, {"train.py": "lr = 1\n"})
    versions = GitVersions(ws, "run-g", tmp_path / "state" / "git-index")

    with pytest.raises(WorkspaceError) as exc:
        versions.commit_cycle(1, _cycle(ws, tmp_path / "runs", 1, {}), "cycle 1")

    message = str(exc.value)
    assert "git --git-dir" in message and str(ws / ".git") in message
    assert "stderr:" in message and "versioning.git = false" in message


def test_run_id_that_cannot_be_a_branch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="'bad run..id'"):
        GitVersions(tmp_path, "bad run..id", tmp_path / "git-index")
