"""Cycle snapshots and git versioning against real folders and real git repositories."""

from __future__ import annotations

import hashlib
import os
import shutil
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


def test_snapshot_into_a_worktree_keeps_its_git_file_and_never_lists_it(tmp_path: Path) -> None:
    write(tmp_path / "ws", {"train.py": "lr = 1\n", ".git/HEAD": "the workspace's own repo"})
    write(tmp_path / "dest", {".git": "gitdir: /somewhere/.git/worktrees/code\n"})

    copied = snapshot(tmp_path / "ws", tmp_path / "dest", exclude=EXCLUDE)

    assert copied == ["train.py"]
    assert (tmp_path / "dest" / ".git").read_text() == "gitdir: /somewhere/.git/worktrees/code\n"
    write(tmp_path / "dest2", {".git/HEAD": "a folder named .git is not a worktree's file"})
    with pytest.raises(WorkspaceError, match="already holds files"):
        snapshot(tmp_path / "ws", tmp_path / "dest2", exclude=EXCLUDE)


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


def _cycle(versions: GitVersions, repo: Path, runs: Path, n: int, edits: dict[str, str],
           parent: str | None = None, remove: tuple[str, ...] = ()) -> Path:
    """Materialize cycle ``n`` as the loop does: worktree at the parent, snapshot, the change."""
    code = runs / f"cycle_{n:04d}" / "code"
    versions.open_worktree(code, parent)
    snapshot(repo, code, exclude=EXCLUDE, skip=[runs, repo / "state"])
    write(code, edits)
    for name in remove:
        (code / name).unlink()
    return code


def _worktrees(repo: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def test_commit_cycle_chains_commits_without_touching_the_users_repo(user_repo: Path) -> None:
    repo, runs = user_repo, user_repo / "runs"
    write(repo, {"runs/.keep": "", "state/.keep": ""})  # the loop's folders exist before cycles
    before = _user_state(repo)
    head = before[2].strip()
    versions = GitVersions(repo, "run-a")
    assert versions.begin() == head  # root versions derive from the user's HEAD

    code1 = _cycle(versions, repo, runs, 1, {"train.py": "lr = 0.01\n", "big.ckpt": "ignored by .gitignore"})
    sha1 = versions.commit_cycle(1, code1, "cycle 1: lr 0.01")
    (code1 / "model.ckpt").write_text("the trial's checkpoint")
    (code1 / "metrics.json").write_text("{}")  # trial output written after the commit
    code2 = _cycle(versions, repo, runs, 2, {"train.py": "lr = 0.003\n"}, parent=sha1, remove=("utils.py",))
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
    # the snapshot's content, uncommitted user work included; ignored, later and .git files not
    assert files1 == [".gitignore", "prepare.py", "scratch.txt", "staged.py", "train.py", "utils.py"]
    assert git(repo, "show", f"{sha1}:staged.py") == "s = 2  # staged, then changed again\n"
    assert "utils.py" not in git(repo, "ls-tree", "-r", "--name-only", sha2).split()
    assert git(repo, "log", "-1", "--format=%an <%ae>%n%B", sha2).startswith(
        "ralph-ml <ralph-ml@localhost>\ncycle 2: lr 0.003\n\nRalph-Run: run-a\nRalph-Cycle: 2"
    )
    # in its folder, git shows the cycle's change against its parent version
    assert git(code2, "rev-parse", "HEAD").strip() == sha2
    assert git(code2, "diff", "--name-only", "HEAD~1").split() == ["train.py", "utils.py"]
    assert git(code2, "status", "--porcelain") == ""


def test_parallel_children_of_one_version_get_their_own_worktree_ref_and_index(user_repo: Path) -> None:
    repo, runs = user_repo, user_repo.parent / "runs"
    before = _user_state(repo)
    versions = GitVersions(repo, "run-p")
    parent = versions.commit_cycle(1, _cycle(versions, repo, runs, 1, {"train.py": "lr = 1\n"}), "cycle 1")
    versions.release(runs / "cycle_0001" / "code")

    # two children of cycle 1 materialized side by side, committed, then run at the same time
    code2 = _cycle(versions, repo, runs, 2, {"train.py": "lr = 2\n"}, parent=parent)
    code3 = _cycle(versions, repo, runs, 3, {"train.py": "lr = 1\n", "utils.py": "u = 3\n"}, parent=parent)
    sha3 = versions.commit_cycle(3, code3, "cycle 3")
    sha2 = versions.commit_cycle(2, code2, "cycle 2")

    assert _worktrees(repo) == [str(repo), str(code2), str(code3)]
    index2, index3 = (git(c, "rev-parse", "--path-format=absolute", "--git-path", "index").strip() for c in (code2, code3))
    assert index2 != index3 and os.path.isfile(index2) and os.path.isfile(index3)
    for cycle, sha in ((1, parent), (2, sha2), (3, sha3)):
        assert git(repo, "rev-parse", versions.cycle_ref(cycle)).strip() == sha
    assert git(repo, "rev-parse", f"{sha2}^").strip() == parent == git(repo, "rev-parse", f"{sha3}^").strip()
    assert git(repo, "rev-parse", "ralph/run-p").strip() == sha2  # the most recently committed cycle
    assert git(code3, "diff", "--name-only", "HEAD~1").split() == ["utils.py"]
    branches = git(repo, "branch", "--format=%(refname:short)").split()
    assert len(branches) == 2 and "ralph/run-p" in branches  # cycle refs do not clutter `git branch`
    graph = git(repo, "log", "--graph", "--oneline", "--all")
    assert all(sha[:7] in graph for sha in (parent, sha2, sha3))

    assert versions.release(code2) and versions.release(code3)
    assert not versions.release(code3)  # again: nothing left to do
    assert _worktrees(repo) == [str(repo)]
    assert not list((repo / ".git" / "worktrees").iterdir())
    assert (code2 / "train.py").read_text() == "lr = 2\n" and not (code2 / ".git").exists()
    assert _user_state(repo) == before


def test_best_tag_moves_and_checkout_restores_that_version(user_repo: Path) -> None:
    repo, runs = user_repo, user_repo.parent / "runs"
    versions = GitVersions(repo, "run-b")
    shas = [
        versions.commit_cycle(n, _cycle(versions, repo, runs, n, {"train.py": f"lr = {lr}\n"}), f"cycle {n}")
        for n, lr in ((1, 0.05), (2, 0.02), (3, 0.5))
    ]

    versions.mark_best(shas[0])
    assert git(repo, "rev-parse", versions.best_tag).strip() == shas[0]
    versions.mark_best(shas[1])
    assert git(repo, "rev-parse", "ralph/run-b/best").strip() == shas[1]
    assert versions.best_tag == "ralph/run-b/best" and versions.branch == "ralph/run-b"

    git(repo, "checkout", "ralph/run-b/best", "--", "train.py")
    assert (repo / "train.py").read_text() == "lr = 0.02\n"


def test_a_new_instance_keeps_the_runs_base_and_continues_its_branch(user_repo: Path) -> None:
    repo, runs = user_repo, user_repo.parent / "runs"
    head = git(repo, "rev-parse", "HEAD").strip()
    first = GitVersions(repo, "run-c")
    sha1 = first.commit_cycle(1, _cycle(first, repo, runs, 1, {}), "cycle 1")
    git(repo, "commit", "-qam", "the user commits while the run is paused")

    resumed = GitVersions(repo, "run-c")  # a resumed run
    assert resumed.begin() == head
    sha2 = resumed.commit_cycle(2, _cycle(resumed, repo, runs, 2, {"train.py": "lr = 9\n"}), "cycle 2")

    assert git(repo, "rev-parse", f"{sha2}^").strip() == head  # a root version, like cycle 1
    assert git(repo, "rev-parse", "ralph/run-c").strip() == sha2
    assert git(repo, "show", f"{sha2}:prepare.py") == "EVAL = 1\n"
    # a run started before the base ref existed: its first cycle's git parent is the base
    git(repo, "update-ref", "-d", "refs/ralph/run-c/base")
    assert GitVersions(repo, "run-c").begin(first_commit=sha1) == head


def test_stale_worktrees_of_a_crashed_run_are_dropped_and_their_folders_reused(user_repo: Path) -> None:
    repo, runs = user_repo, user_repo.parent / "runs"
    crashed = GitVersions(repo, "run-s")
    code1 = _cycle(crashed, repo, runs, 1, {"train.py": "lr = 1\n"})
    crashed.commit_cycle(1, code1, "cycle 1")
    code2 = _cycle(crashed, repo, runs, 2, {"train.py": "lr = 2\n"})  # in flight at the crash
    code3 = _cycle(crashed, repo, runs, 3, {})
    (runs / ".interrupted").mkdir()
    os.replace(runs / "cycle_0003", runs / ".interrupted" / "cycle_0003-attempt1")  # moved aside
    mine = repo.parent / "users-own-worktree"
    git(repo, "worktree", "add", "-q", "--detach", str(mine))

    resumed = GitVersions(repo, "run-s")
    resumed.begin(runs_dir=runs, keep=[code2])

    assert _worktrees(repo) == [str(repo), str(code2), str(mine)]
    assert not (code1 / ".git").exists() and (code1 / "train.py").read_text() == "lr = 1\n"
    code3 = _cycle(resumed, repo, runs, 3, {"train.py": "lr = 3\n"})  # re-materialized
    assert resumed.commit_cycle(3, code3, "cycle 3 again")
    # a registration left for a folder that vanished is replaced when the folder is reused
    shutil.rmtree(code3)
    assert _cycle(resumed, repo, runs, 3, {}).joinpath(".git").is_file()
    assert len(_worktrees(repo)) == 4


def test_files_tracked_despite_gitignore_stay_in_cycle_commits(user_repo: Path) -> None:
    repo = user_repo
    write(repo, {"baseline.ckpt": "tracked on purpose"})
    git(repo, "add", "-f", "baseline.ckpt")
    git(repo, "commit", "-qm", "force-add a checkpoint")
    versions = GitVersions(repo, "run-d")

    sha = versions.commit_cycle(1, _cycle(versions, repo, repo.parent / "runs", 1, {"baseline.ckpt": "v2"}), "c1")

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

    versions = GitVersions(ws, "run-e")
    code = _cycle(versions, ws, ws / "runs", 1, {"train.py": "lr = 2\n", "data/y.bin": "excluded"})
    sha = versions.commit_cycle(1, code, "cycle 1")
    assert git(ws, "show", f"{sha}:train.py") == "lr = 2\n"
    assert git(ws, "ls-tree", "-r", "--name-only", sha).split() == ["prepare.py", "train.py"]  # info/exclude applies
    assert git(ws, "status", "--porcelain") == ""


def test_init_repo_works_without_any_git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.delenv(f"GIT_{who}_NAME")
        monkeypatch.delenv(f"GIT_{who}_EMAIL")
    ws = tmp_path / "plain"
    write(ws, {"train.py": "lr = 1\n"})

    GitVersions.init_repo(ws)

    assert git(ws, "show", "HEAD:train.py") == "lr = 1\n"


def test_a_repo_without_commits_gets_an_empty_base_and_stays_unborn(tmp_path: Path) -> None:
    ws = tmp_path / "unborn"
    write(ws, {"train.py": "lr = 1\n"})
    git(ws, "init", "-q")
    versions = GitVersions(ws, "run-f")

    sha = versions.commit_cycle(1, _cycle(versions, ws, tmp_path / "runs", 1, {}), "cycle 1")

    base = git(ws, "rev-parse", "refs/ralph/run-f/base").strip()
    assert git(ws, "rev-list", "--parents", "-n1", sha).split() == [sha, base]
    assert git(ws, "rev-list", "--parents", "-n1", base).split() == [base]  # a root commit
    assert git(ws, "ls-tree", base) == ""  # of the empty tree
    assert git(ws, "show", f"{sha}:train.py") == "lr = 1\n"
    assert git(ws, "status", "--porcelain") == "?? train.py\n"  # still unborn, nothing staged


def test_commit_cycle_outside_a_repo_raises_with_the_git_command(tmp_path: Path) -> None:
    ws = tmp_path / "no-repo"
    write(ws, {"train.py": "lr = 1\n"})
    versions = GitVersions(ws, "run-g")

    with pytest.raises(WorkspaceError) as exc:
        _cycle(versions, ws, tmp_path / "runs", 1, {})

    message = str(exc.value)
    assert "git --git-dir" in message and str(ws / ".git") in message
    assert "stderr:" in message and "versioning.git = false" in message


def test_commit_cycle_refuses_a_folder_that_is_not_an_open_worktree(user_repo: Path) -> None:
    versions = GitVersions(user_repo, "run-h")
    code = user_repo / "runs" / "cycle_0001" / "code"  # inside the user's work tree
    snapshot(user_repo, code, exclude=EXCLUDE, skip=[user_repo / "runs"])
    before = _user_state(user_repo)

    with pytest.raises(WorkspaceError, match="open_worktree"):
        versions.commit_cycle(1, code, "cycle 1")

    assert _user_state(user_repo) == before  # never committed into the user's index
    assert not versions.release(code)


def test_run_id_that_cannot_be_a_branch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="'bad run..id'"):
        GitVersions(tmp_path, "bad run..id")


def test_a_cycle_costs_six_git_processes(user_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted with git's own trace: worktree add (+ the update-ref it runs), read-tree, add,
    write-tree, commit-tree, update-ref; unregistering the worktree runs none."""
    repo, runs = user_repo, user_repo.parent / "runs"
    versions = GitVersions(repo, "run-i")
    versions.begin()
    trace = tmp_path / "trace.log"
    monkeypatch.setenv("GIT_TRACE", str(trace))

    code = _cycle(versions, repo, runs, 1, {"train.py": "lr = 3\n"})
    versions.commit_cycle(1, code, "cycle 1")
    versions.release(code)

    builtins = [line for line in trace.read_text().splitlines() if "trace: built-in: git" in line]
    assert len(builtins) == 7, "\n".join(builtins)
