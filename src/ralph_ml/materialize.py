"""The materialize and guard phases of a cycle: its code folder, made and checked.

``build`` makes ``runs/cycle_NNNN/code`` (a git worktree at the parent version's commit when
the run is versioned, the workspace copied over it), writes ``params.json``,
``version.json`` and ``config.json``, applies the parent chain's patches and then the
proposal's patch through the guard, hashes the frozen files and commits the cycle. What
comes back is a ``CycleCode``; when its ``invalid`` is set the cycle must not run and is
recorded with that result (agent error, guard rejection, a changed frozen file).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import recording, versions
from .config import Config
from .errors import GuardRejected
from .gitversions import GitVersions
from .guard import guard_patch
from .hashing import hash_files
from .journal import write_bytes_atomic, write_json_atomic, write_text_atomic
from .records import CycleRecord, FailureClass, Proposal, TrialResult, TrialStatus
from .workspace import apply_patch, snapshot

__all__ = ["CodeSite", "CycleCode", "build", "invalid", "params_of"]


@dataclass(frozen=True)
class CodeSite:
    """What every cycle's code is made from and checked against: fixed for a run."""

    cfg: Config
    workspace: Path
    cycle_dir: Callable[[int], Path]  # the loop's runs/cycle_NNNN of a cycle
    skip: tuple[Path, ...]  # folders of the workspace that are never copied (runs/, reports/, state/)
    git: GitVersions | None
    frozen_hashes: Mapping[str, str]  # of the frozen files when the run started
    config_bytes: bytes  # config.json of every cycle
    required_calls: Mapping[str, Sequence[str]] = field(default_factory=dict)  # kept by every patch (files.required_calls)


@dataclass
class CycleCode:
    """The outcome of ``build``: the trial's params and version, or why it cannot run."""

    params: dict[str, Any]
    parent: int | None  # the version (cycle) the code derives from; None: the workspace
    code_hashes: dict[str, str] = field(default_factory=dict)
    commit: str | None = None
    invalid: TrialResult | None = None


def invalid(failure: FailureClass, message: str) -> TrialResult:
    now = time.time()
    return TrialResult(status=TrialStatus.INVALID, failure=failure, message=message, started_at=now, ended_at=now)


def params_of(site: CodeSite, version: int | None, by_cycle: Mapping[int, CycleRecord]) -> dict[str, Any]:
    """The full params of a version (its params.json; the proposal's when that file is gone)."""
    if version is None:
        return {}
    try:
        loaded = json.loads((site.cycle_dir(version) / "params.json").read_text())
    except (FileNotFoundError, ValueError):
        rec = by_cycle.get(version)
        return dict(rec.proposal.params) if rec else {}
    return loaded if isinstance(loaded, dict) else {}


def build(
    site: CodeSite,
    cycle: int,
    proposal: Proposal,
    *,
    best: CycleRecord | None,
    by_cycle: Mapping[int, CycleRecord],
    phase: Callable[[str], None],
    emit: Callable[[str, dict[str, Any]], None],
) -> CycleCode:
    """Make and check the code folder of ``cycle`` (see the module doc)."""
    cfg, git = site.cfg, site.git
    cdir = site.cycle_dir(cycle)
    phase("materialize")
    code = cdir / "code"
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / "logs").mkdir(exist_ok=True)
    (cdir / "checkpoints").mkdir(exist_ok=True)
    if code.exists():  # a leftover from an interrupted attempt: start clean
        if git is not None:
            git.release(code)
        shutil.rmtree(code)
    parent, refused = versions.parent_of(proposal, best, by_cycle, cfg.branching.max_fix_attempts)
    if git is not None and not refused and "agent_error" not in proposal.meta:
        # The code folder is a git worktree at the parent version's commit (None: the run's
        # base) from here until the cycle is recorded: parallel cycles never share an index.
        parent_rec = by_cycle.get(parent) if parent is not None else None
        git.open_worktree(code, parent_rec.commit if parent_rec else None)
    snapshot(site.workspace, code, exclude=cfg.files.exclude, skip=list(site.skip))
    out = CycleCode(params={**params_of(site, parent, by_cycle), **proposal.params}, parent=parent)
    write_json_atomic(cdir / "params.json", out.params)
    write_json_atomic(cdir / "version.json", {"parent": parent})
    write_bytes_atomic(cdir / "config.json", site.config_bytes)
    if "agent_error" in proposal.meta:
        out.invalid = invalid(FailureClass.AGENT_ERROR, f"the agent could not propose: {proposal.meta['agent_error']}")
        return out
    if refused:
        out.invalid = invalid(FailureClass.AGENT_ERROR, refused)
        return out
    # The parent version's code: its ancestors' patches from the workspace down, in order.
    for patch in versions.chain(parent, by_cycle):
        apply_patch(code, patch)
    if proposal.patch:
        write_text_atomic(cdir / "patch.diff", proposal.patch)
        phase("guard")
        try:
            # PLAN.md is the code agent's plan (seed 003): writable like the mutable files.
            touched = guard_patch(code, proposal.patch, mutable=[*cfg.files.mutable, "PLAN.md"], frozen=cfg.files.frozen,
                                  required_calls=site.required_calls)
        except GuardRejected as exc:
            msg = f"{exc} Rejected patch saved at {cdir / 'patch.diff'}"
            write_text_atomic(cdir / "guard_rejection.txt", msg + "\n")
            emit("guard", {"cycle": cycle, "verdict": "rejected", "reason": msg})
            out.invalid = invalid(FailureClass.GUARD_REJECTED, msg)
            return out
        emit("guard", {"cycle": cycle, "verdict": "accepted", "files": touched})
    out.code_hashes = hash_files(code, cfg.files.frozen)
    changed = [f for f, h in out.code_hashes.items() if site.frozen_hashes.get(f) != h]
    if changed:
        out.invalid = invalid(
            FailureClass.FROZEN_MODIFIED,
            f"frozen file(s) {changed} differ from the version hashed when the run started; "
            "the evaluation can no longer be trusted. Restore them (e.g. `git checkout -- "
            + " ".join(changed)
            + "`) and `ralph-ml resume`.",
        )
        return out
    if git is not None:
        out.commit = git.commit_cycle(cycle, code, recording.commit_message(cycle, proposal, out.params))
        write_json_atomic(cdir / "version.json", {"parent": parent, "commit": out.commit, "branch": git.branch})
    return out
