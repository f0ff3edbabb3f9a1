"""Git versioning of a run: one commit per cycle, in a git DAG mirroring the version tree.

While a cycle is in flight its code folder ``runs/cycle_NNNN/code`` is a linked
``git worktree`` of the experiment's repository, detached at the commit of the cycle's parent
version (for a root version: the commit the run started from). The snapshot and the patches
are written into it, the cycle is committed there, and the worktree's HEAD moves to the new
commit, so ``git -C runs/cycle_0007/code diff HEAD~1`` shows the cycle's change against its
parent version. Parallel cycles each have their own worktree, hence their own index. Once the
cycle is recorded the worktree is unregistered and its files stay where they are.

Refs written; the user's HEAD, index and working tree are never touched:

* ``refs/ralph/<run_id>/cycles/NNNN``: each cycle's commit (hidden from ``git branch``, kept
  from garbage collection, drawn by ``git log --graph --oneline --all``);
* ``refs/ralph/<run_id>/base``: the commit the run started from (the workspace's HEAD);
* ``refs/heads/ralph/<run_id>``: the most recently committed cycle;
* ``refs/tags/ralph/<run_id>/best``: the best cycle.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Collection, Sequence
from pathlib import Path

from ralph_ml.errors import WorkspaceError

__all__ = ["GitVersions"]

_IDENTITY = {
    "GIT_AUTHOR_NAME": "ralph-ml",
    "GIT_AUTHOR_EMAIL": "ralph-ml@localhost",
    "GIT_COMMITTER_NAME": "ralph-ml",
    "GIT_COMMITTER_EMAIL": "ralph-ml@localhost",
}
# Inherited variables that would redirect git away from the repository we name explicitly.
_REPO_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_PREFIX",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
)
# Per-command settings: no filesystem monitor daemon or untracked cache for a cycle's work
# tree (both belong to the user's own work tree); files are compared by inode and ctime too,
# so a copied file with the same size and mtime is never taken as unchanged.
_SAFE_CONFIG = (
    "-c", "core.fsmonitor=false",
    "-c", "core.untrackedCache=false",
    "-c", "core.checkStat=default",
    "-c", "core.trustctime=true",
    "-c", "core.ignoreStat=false",
)
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_GITFILE_PREFIX = "gitdir: "


def _git_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _REPO_ENV}
    env.update(_IDENTITY)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.update(extra)
    return env


def _git_exe() -> str:
    exe = shutil.which("git")
    if exe is None:
        raise WorkspaceError(
            "git is not installed (not found on PATH) but versioning.git asks for it; "
            "install git (e.g. 'apt-get install git') or set versioning.git = false in the config"
        )
    return exe


def _run_git(
    args: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path | str | None = None,
    input_text: str | None = None,
    check: bool = True,
    hint: str,
) -> subprocess.CompletedProcess[str]:
    cmd = [_git_exe(), *args]
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, input=input_text, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise WorkspaceError(f"could not start {' '.join(cmd)!r}: {exc}; {hint}") from exc
    if check and proc.returncode != 0:
        raise WorkspaceError(
            f"git command failed (exit {proc.returncode}): git {' '.join(args)}\n"
            f"stderr: {proc.stderr.strip() or '(empty)'}\n{hint}"
        )
    return proc


def _read_line(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _gitfile(dot_git: Path) -> Path | None:
    """The admin folder a worktree's ``.git`` file names (None: no such file)."""
    if dot_git.is_symlink() or not dot_git.is_file():
        return None
    text = _read_line(dot_git) or ""
    if not text.startswith(_GITFILE_PREFIX):
        return None
    return dot_git.parent / text[len(_GITFILE_PREFIX):]  # an absolute name replaces the folder


def _points_back(admin: Path) -> Path | None:
    """The ``.git`` file an admin folder's ``gitdir`` names (None: none recorded)."""
    text = _read_line(admin / "gitdir")
    return admin / text if text else None  # relative with worktree.useRelativePaths


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


class GitVersions:
    """A run's cycles as commits whose git parents mirror the version tree; the best one tagged.

    Per cycle: :meth:`open_worktree` registers the (empty) code folder as a worktree at the
    parent version's commit, the caller copies the snapshot in and applies the patches,
    :meth:`commit_cycle` commits it, the trial runs, and :meth:`release` unregisters the
    worktree once the cycle is recorded (the files stay). Commits are built with plumbing
    (``read-tree``, ``add -A``, ``write-tree``, ``commit-tree``, ``update-ref``) in the
    worktree's own index; the repo's ``.gitignore`` rules (as snapshotted into the code folder)
    and ``.git/info/exclude`` apply. ``repo`` must be the top level of the work tree holding the
    workspace's files (the workspace itself): the code folder's files land at the root of each
    commit.

    ``git checkout ralph/<run_id>/best -- train.py`` brings the best version back.
    """

    def __init__(self, repo: Path, run_id: str) -> None:
        if not _RUN_ID_RE.match(run_id) or run_id.endswith(".lock") or ".." in run_id:
            raise WorkspaceError(
                f"run id {run_id!r} cannot name a git branch; use letters, digits, '.', '_' "
                "and '-' (not starting with '.' or '-', no '..', not ending in '.lock')"
            )
        self.repo = Path(repo)
        self.run_id = run_id
        self._git_dir = str(self.repo / ".git")
        self._common: Path | None = None  # the repository's common git folder (holds worktrees/)
        self._base: str | None = None  # the commit root versions derive from, once begin() ran
        self._tip: str | None = None  # the branch tip as of our last commit (None: no branch yet)

    @property
    def branch(self) -> str:
        """Short branch name, ``ralph/<run_id>`` (full ref ``refs/heads/ralph/<run_id>``)."""
        return f"ralph/{self.run_id}"

    @property
    def best_tag(self) -> str:
        """Short tag name, ``ralph/<run_id>/best`` (full ref ``refs/tags/ralph/<run_id>/best``)."""
        return f"ralph/{self.run_id}/best"

    @property
    def base_ref(self) -> str:
        """``refs/ralph/<run_id>/base``: the commit the run started from."""
        return f"refs/ralph/{self.run_id}/base"

    def cycle_ref(self, cycle: int) -> str:
        """``refs/ralph/<run_id>/cycles/NNNN``: the commit of cycle ``cycle``."""
        return f"refs/ralph/{self.run_id}/cycles/{cycle:04d}"

    # -- repository setup -------------------------------------------------------------

    @staticmethod
    def is_repo(path: Path) -> bool:
        """True when ``path`` is the top level of a git work tree (False without git)."""
        if shutil.which("git") is None or not os.path.exists(os.path.join(path, ".git")):
            return False
        proc = _run_git(
            ["-C", str(path), "rev-parse", "--show-toplevel"], env=_git_env(), check=False, hint=""
        )
        top = proc.stdout.strip()
        return proc.returncode == 0 and bool(top) and os.path.realpath(top) == os.path.realpath(path)

    @staticmethod
    def init_repo(path: Path, *, exclude: Sequence[str] = ()) -> None:
        """``git init`` ``path`` and commit its current files when the repo has no commit yet.

        ``exclude`` patterns (``data/``, ``runs/``, ``*.pyc``) are appended to the repo's
        ``.git/info/exclude`` first, so the initial commit holds code, not data or outputs,
        without writing a ``.gitignore`` into the user's folder. The commit is authored by
        ``ralph-ml <ralph-ml@localhost>``: no user git config is needed.
        """
        path = Path(path)
        env = _git_env()
        hint = f"check that {str(path)!r} is a writable folder, or set versioning.git = false"
        _run_git(["init", "-q", str(path)], env=env, hint=hint)
        has_commit = _run_git(
            ["-C", str(path), "rev-parse", "-q", "--verify", "HEAD^{commit}"],
            env=env, check=False, hint=hint,
        )
        if has_commit.returncode == 0:
            return
        if exclude:
            info = path / ".git" / "info"
            info.mkdir(parents=True, exist_ok=True)
            existing = (info / "exclude").read_text() if (info / "exclude").exists() else ""
            new = [p for p in exclude if p not in existing.splitlines()]
            if new:
                sep = "" if not existing or existing.endswith("\n") else "\n"
                body = "# added by ralph-ml: not versioned\n" + "\n".join(new) + "\n"
                (info / "exclude").write_text(existing + sep + body)
        _run_git(["-C", str(path), *_SAFE_CONFIG, "add", "-A"], env=env, hint=hint)
        _run_git(
            ["-C", str(path), "commit", "-q", "--no-verify", "--no-gpg-sign", "--allow-empty",
             "-m", "ralph-ml: initial commit of the experiment workspace"],
            env=env, hint=hint,
        )

    def begin(
        self, *, first_commit: str | None = None, runs_dir: Path | None = None, keep: Collection[Path] = ()
    ) -> str:
        """Get ready for cycles; return the run's base, the commit root versions derive from.

        The base is read from ``refs/ralph/<run_id>/base``, so a resumed run keeps the one it
        started with. A new run records the workspace's HEAD there; in a repository without a
        commit yet, an empty root commit (the user's HEAD stays unborn). ``first_commit``, for
        a run started before the base ref existed: a cycle commit whose git parent is the base.
        With ``runs_dir``, worktrees registered for code folders under it are unregistered
        (their files kept) unless named in ``keep`` (the code folders of cycles still in
        flight): leftovers of a crash. Two git processes on resume, four on a new run; called
        again, none.
        """
        if self._base is not None:
            return self._base
        hint = self._hint(None)
        env = _git_env()
        if runs_dir is not None:
            self._release_stale(Path(runs_dir), keep)
        listed = _run_git(
            ["--git-dir", self._git_dir, "for-each-ref", "--format=%(objectname) %(refname)",
             self.base_ref, f"refs/heads/{self.branch}"],
            env=env, hint=hint,
        ).stdout
        refs = {name: sha for sha, _, name in (line.partition(" ") for line in listed.splitlines())}
        self._tip = refs.get(f"refs/heads/{self.branch}")
        base = refs.get(self.base_ref)
        if base is None:
            if first_commit is not None:
                base = self._rev(f"{first_commit}^", env, hint)
            base = base or self._rev("HEAD", env, hint) or self._empty_root(env, hint)
            # "" as the old value: refuse to overwrite a base someone else recorded meanwhile.
            _run_git(["--git-dir", self._git_dir, "update-ref", "-m", "ralph-ml: run base", self.base_ref, base, ""],
                     env=env, hint=hint)
        self._base = base
        return base

    # -- per cycle --------------------------------------------------------------------

    def open_worktree(self, code_dir: Path, commit: str | None) -> None:
        """Register ``code_dir`` (absent or empty) as a worktree detached at ``commit``.

        ``commit``: the parent version's commit; None for a root version (the run's base).
        Nothing is checked out: copy the snapshot in next (:func:`ralph_ml.workspace.snapshot`
        leaves the ``.git`` file git writes there alone). One git process (``worktree add``,
        which runs ``update-ref`` itself); a stale registration of the same folder (a crash)
        is dropped and the add retried.
        """
        code_dir = Path(os.path.abspath(code_dir))
        start = commit or self.begin()
        code_dir.parent.mkdir(parents=True, exist_ok=True)
        args = ["--git-dir", self._git_dir, "worktree", "add", "--detach", "--no-checkout", str(code_dir), start]
        proc = _run_git(args, env=_git_env(), check=False, hint="")
        if proc.returncode != 0 and "already registered" in proc.stderr:
            for admin, dot_git in self._registrations():
                if _same(dot_git.parent, code_dir):
                    shutil.rmtree(admin, ignore_errors=True)
            proc = _run_git(args, env=_git_env(), check=False, hint="")
        if proc.returncode != 0:
            raise WorkspaceError(
                f"git command failed (exit {proc.returncode}): git {' '.join(args)}\n"
                f"stderr: {proc.stderr.strip() or '(empty)'}\n{self._hint(code_dir)}"
            )

    def commit_cycle(self, cycle: int, code_dir: Path, message: str) -> str:
        """Commit the worktree ``code_dir`` as cycle ``cycle``; return the commit sha.

        Call it right after the snapshot is materialized and before the trial runs, so
        checkpoints and logs the trial writes are never part of the commit. The commit's parent
        is the commit :meth:`open_worktree` detached the worktree at; the worktree's HEAD, the
        ref ``refs/ralph/<run_id>/cycles/NNNN`` and the branch ``ralph/<run_id>`` move to it in
        one ref transaction. Five git processes (``read-tree`` of the parent, so files tracked
        despite ``.gitignore`` stay tracked; ``add -A``; ``write-tree``; ``commit-tree``;
        ``update-ref``); two more on an instance's first call (:meth:`begin`).
        """
        code_dir = Path(os.path.abspath(code_dir))
        hint = self._hint(code_dir)
        admin = self._admin_of(code_dir)
        parent = _read_line(admin / "HEAD") if admin is not None else None
        if admin is None or parent is None or parent.startswith("ref:"):
            raise WorkspaceError(
                f"{str(code_dir)!r} is not a worktree opened by GitVersions.open_worktree in "
                f"{self._git_dir!r}; open it before the snapshot is copied in"
            )
        self.begin()
        env = _git_env()
        base = ["--git-dir", str(admin), "--work-tree", str(code_dir), *_SAFE_CONFIG]
        _run_git([*base, "read-tree", parent], env=env, cwd=code_dir, hint=hint)
        _run_git([*base, "add", "-A"], env=env, cwd=code_dir, hint=hint)
        tree = _run_git([*base, "write-tree"], env=env, cwd=code_dir, hint=hint).stdout.strip()
        body = f"{message.rstrip()}\n\nRalph-Run: {self.run_id}\nRalph-Cycle: {cycle}\n"
        sha = _run_git([*base, "commit-tree", "--no-gpg-sign", tree, "-p", parent],
                       env=env, cwd=code_dir, input_text=body, hint=hint).stdout.strip()
        branch_ref = f"refs/heads/{self.branch}"
        # The expected old values make git refuse to move a branch someone else moved meanwhile.
        # A re-run cycle (after a crash) moves its cycle ref to the new attempt's commit.
        moves = (
            f"update HEAD {sha} {parent}\n"
            f"update {self.cycle_ref(cycle)} {sha}\n"
            + (f"update {branch_ref} {sha} {self._tip}\n" if self._tip else f"create {branch_ref} {sha}\n")
        )
        _run_git([*base, "update-ref", "--no-deref", "-m", f"ralph-ml: cycle {cycle}", "--stdin"],
                 env=env, cwd=code_dir, input_text=moves, hint=hint)
        self._tip = sha
        return sha

    def release(self, code_dir: Path) -> bool:
        """Unregister the worktree ``code_dir`` and keep its files; False if it is not one of ours.

        Removes ``code_dir/.git`` and the repository's ``.git/worktrees/<name>`` folder, as
        ``git worktree prune`` does for a vanished folder. No git process. Safe to repeat.
        """
        dot_git = Path(os.path.abspath(code_dir)) / ".git"
        admin = _gitfile(dot_git)
        if admin is None or not _same(admin.parent, self._common_dir() / "worktrees"):
            return False  # not a worktree, or some other repository's: not ours to drop
        back = _points_back(admin)
        dot_git.unlink()  # first: a crash before the rmtree leaves a registration git can prune
        if back is None or _same(back, dot_git):
            shutil.rmtree(admin, ignore_errors=True)
        return True

    def mark_best(self, sha: str) -> None:
        """Point the lightweight tag ``ralph/<run_id>/best`` at ``sha`` (moved if it exists)."""
        _run_git(
            ["--git-dir", self._git_dir, "update-ref", "-m", "ralph-ml: new best",
             f"refs/tags/{self.best_tag}", f"{sha}^{{commit}}"],
            env=_git_env(),
            hint=f"{sha!r} should be a commit returned by commit_cycle in {self._git_dir!r}",
        )

    # -- helpers ----------------------------------------------------------------------

    def _hint(self, code_dir: Path | None) -> str:
        where = f"the cycle's code is still in {str(code_dir)!r}; " if code_dir is not None else ""
        return (
            f"{where}check that {self._git_dir!r} is a healthy git repository ('git fsck', "
            "'git worktree list') and that no other ralph-ml process runs this experiment, "
            "or set versioning.git = false"
        )

    def _common_dir(self) -> Path:
        """The git folder shared by all worktrees (``.git`` unless the workspace is itself a linked one)."""
        if self._common is None:
            if os.path.isdir(self._git_dir):
                self._common = Path(self._git_dir)
            else:
                out = _run_git(["--git-dir", self._git_dir, "rev-parse", "--git-common-dir"],
                               env=_git_env(), hint=self._hint(None)).stdout.strip()
                self._common = Path(out) if os.path.isabs(out) else self.repo / out
        return self._common

    def _registrations(self) -> list[tuple[Path, Path]]:
        """(admin folder, the ``.git`` file it names) for each linked worktree of the repository."""
        try:
            admins = [Path(e.path) for e in os.scandir(self._common_dir() / "worktrees") if e.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [(admin, back) for admin in admins if (back := _points_back(admin)) is not None]

    def _admin_of(self, code_dir: Path) -> Path | None:
        """The admin folder of ``code_dir`` if it is a registered worktree of this repository."""
        admin = _gitfile(code_dir / ".git")
        if admin is None or not _same(admin.parent, self._common_dir() / "worktrees"):
            return None
        back = _points_back(admin)
        return admin if back is not None and _same(back, code_dir / ".git") else None

    def _release_stale(self, runs_dir: Path, keep: Collection[Path]) -> None:
        """Unregister worktrees of code folders under ``runs_dir`` except ``keep`` (files kept)."""
        runs = os.path.realpath(runs_dir) + os.sep
        kept = {os.path.realpath(p) for p in keep}
        for admin, dot_git in self._registrations():
            folder = os.path.realpath(dot_git.parent)
            if not folder.startswith(runs) or folder in kept:
                continue  # the user's own worktrees, or a cycle still in flight
            named = _gitfile(dot_git)
            if named is not None and _same(named, admin):
                dot_git.unlink()
            shutil.rmtree(admin, ignore_errors=True)  # also when the folder vanished (moved aside)

    def _empty_root(self, env: dict[str, str], hint: str) -> str:
        """A parentless commit of the empty tree: the base of a run in a repo with no commit."""
        tree = _run_git(["--git-dir", self._git_dir, "mktree"], env=env, input_text="", hint=hint).stdout.strip()
        body = f"ralph-ml: empty base (the repository had no commit when run {self.run_id} started)\n"
        args = ["--git-dir", self._git_dir, "commit-tree", "--no-gpg-sign", tree]
        return _run_git(args, env=env, input_text=body, hint=hint).stdout.strip()

    def _rev(self, ref: str, env: dict[str, str], hint: str) -> str | None:
        """The commit ``ref`` names, or None when it does not exist (unborn HEAD included)."""
        args = ["--git-dir", self._git_dir, "rev-parse", "-q", "--verify", f"{ref}^{{commit}}"]
        proc = _run_git(args, env=env, check=False, hint=hint)
        if proc.returncode == 0:
            return proc.stdout.strip()
        if proc.returncode == 1 and not proc.stderr.strip():
            return None
        raise WorkspaceError(
            f"git command failed (exit {proc.returncode}): git {' '.join(args)}\n"
            f"stderr: {proc.stderr.strip() or '(empty)'}\n{hint}"
        )
