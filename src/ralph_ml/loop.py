"""The cycle state machine: propose → guard → materialize → execute → analyze → decide → record.

Boring, deterministic code. It owns the safeguards, persistence and the best-so-far;
agents and executors receive frozen records. The journal is appended and fsynced before
and after every trial, so a ``kill -9`` at any instant followed by ``resume`` loses no
recorded cycle and records none twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import secrets
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from . import decision as dec
from . import materialize, recording
from .agents import Agent, AgentContext, Analyst, get_agent, get_analyst
from .agents.base import InFlight
from .analysis import read_progress
from .checks import check_workspace, required_calls, trial_path_env
from .config import Config
from .control import ControlReader
from .cyclefiles import TRIAL_CONTROL_FILE, trial_env
from .errors import AgentError, StateError, WorkspaceError
from .events import CallbackSink, EventBus, EventLog
from .executors import TrialHandle, get_executor
from .executors.local import TRIAL_FILE
from .hashing import hash_files
from .journal import Journal, cycle_folder, dumps, replay, write_json_atomic
from .noise import NoiseCheck
from .pruning import ProgressReader, PruneSession, PruneVerdict, TrialPruner, last_reported
from .records import (
    CycleRecord,
    Decision,
    FailureClass,
    Proposal,
    StopReason,
    TrialResult,
    TrialSpec,
    TrialStatus,
)
from .resources import Allocation, pool_for
from .sinks import build_sinks
from .workspace import GitVersions

EventSink = Callable[[str, dict[str, Any]], None]  # on_event(kind, event)

log = logging.getLogger(__name__)
POLL_S = 0.25  # how often the loop looks at the control file while a trial runs


def _new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


@dataclass(eq=False)
class Flight:
    """A cycle in flight: started (journalled), not yet recorded."""

    cycle: int
    proposal: Proposal
    cdir: Path
    params: dict[str, Any]
    result: TrialResult | None = None  # set when the trial ended (or never needed to run)
    code_hashes: dict[str, str] = field(default_factory=dict)
    commit: str | None = None
    handle: TrialHandle | None = None  # the running trial
    alloc: Allocation | None = None
    prune: PruneSession | None = None
    reader: ProgressReader | None = None
    prune_verdict: PruneVerdict | None = None
    prune_at: float = 0.0
    prune_rows_seen: int = 0  # progress rows the pruner had read when it asked the trial to stop
    pruner_saw: bool = False
    parent: int | None = None  # the version this cycle's code derives from
    settled: bool = False  # its end was handled (_settle); it may wait in ``flights`` to be recorded
    repeats: list[float] | None = None  # its noise repeats' metrics, once they ran
    repeating: bool = False  # its noise repeats run (in a thread of their own, on its resources)
    waiting: bool = False  # its repeats wait for another cycle's to be recorded (both judge against the best)
    said_waiting: bool = False  # the `repeats` event said so
    cancel: threading.Event = field(default_factory=threading.Event)  # stops its repeats


class Loop:
    """One run of the loop over one experiment folder. Use ``Loop.start`` or ``Loop.resume``."""

    def __init__(self, cfg: Config, on_event: Optional[EventSink] = None) -> None:
        self.cfg = cfg
        self.bus = EventBus([CallbackSink(on_event)] if on_event else [])
        self.ws = cfg.path(cfg.paths.workspace)
        self.runs_dir = cfg.path(cfg.paths.runs)
        self.reports_dir = cfg.path(cfg.paths.reports)
        self.state_dir = cfg.path(cfg.paths.state)
        self._flights: dict[int, Flight] = {}  # the cycles started and not yet recorded (run() or step() sets it)
        self.journal_path = self.state_dir / "journal.jsonl"
        self.state_path = self.state_dir / "ralph_state.json"
        self.control = ControlReader(self.state_dir / "control.json")
        self.executor = get_executor(
            cfg.execution.mode,
            kill_grace_s=cfg.execution.kill_grace_s,
            metrics_pattern=cfg.execution.metrics_pattern,
            **cfg.executor_options(),  # [execution.ray] / [execution.slurm] for those modes
        )
        self.history: list[CycleRecord] = []
        self._repeaters: dict[int, tuple[threading.Thread, threading.Event]] = {}  # noise repeats running
        self.run_id = ""
        self.frozen_hashes: dict[str, str] = {}
        self.required_calls: dict[str, list[str]] = {}  # files.required_calls, as fixed when the run started
        self.base_elapsed = 0.0
        self.t0 = time.monotonic()
        self.phase = "idle"
        self.cycle = 0
        self.git: GitVersions | None = None
        self.agent: Agent | None = None
        self.analyst: Analyst | None = None  # None: the built-in analysis only
        self.journal: Journal | None = None
        self.last_decision: Decision | None = None
        self._lock_fd: int | None = None
        self._paused = False
        # Running totals, so per-cycle work does not grow with the history.
        self.totals = dec.Totals()
        self._by_cycle: dict[int, CycleRecord] = {}
        self._config_bytes = dumps(cfg.model_dump(mode="json"))
        self._safeguards_dump = cfg.safeguards.model_dump()  # static for the run: dumped once
        self.pruner: TrialPruner | None = None
        self.pool = pool_for(cfg)
        self._done: queue.Queue[int] = queue.Queue()  # cycles whose trial just ended
        self._noise = NoiseCheck(cfg, self.executor, self.control, self.bus, self._phase, poll_s=POLL_S)

    @property
    def _best(self) -> CycleRecord | None:
        return self.totals.best

    def _apply(self, record: CycleRecord) -> None:
        """Add a recorded cycle to the in-memory history and the running totals."""
        self.history.append(record)
        self._by_cycle[record.cycle] = record
        self.totals.add(record, self.cfg)

    def _lock(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / "loop.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateError(
                f"another ralph-ml loop (pid {other}) is running this experiment ({self.state_dir}). "
                "Watch it with `ralph-ml status`, or stop it with `ralph-ml stop`."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _setup_git(self, in_flight: tuple[int, ...] = ()) -> None:
        mode = self.cfg.versioning.git
        if mode is False:
            return
        if not GitVersions.is_repo(self.ws):
            if mode == "auto":
                return
            rel = [str(p.relative_to(self.ws)) + "/" for p in (self.runs_dir, self.reports_dir, self.state_dir) if p.is_relative_to(self.ws)]
            GitVersions.init_repo(self.ws, exclude=[*self.cfg.files.exclude, *rel])
        self.git = GitVersions(self.ws, self.run_id)
        # The commit root versions derive from (kept across resume), and no worktree left
        # registered by a crash except those of the cycles still in flight.
        first = next((r.commit for r in sorted(self.history, key=lambda r: r.cycle) if r.commit), None)
        self.git.begin(first_commit=first, runs_dir=self.runs_dir,
                       keep=[self.cycle_dir(c) / "code" for c in in_flight])
        best = self._best
        if best is not None and best.commit:  # a crash between journalling a kept cycle and tagging it
            self.git.mark_best(best.commit)

    @classmethod
    def start(cls, cfg: Config, on_event: Optional[EventSink] = None) -> Loop:
        loop = cls(cfg, on_event)
        loop._lock()
        try:
            if loop.journal_path.exists() and loop.journal_path.stat().st_size > 0:
                rp = replay(loop.journal_path)
                raise StateError(
                    f"this experiment already has run {rp.run.get('run_id')} with {len(rp.records)} recorded cycle(s) "
                    f"in {loop.state_dir}. Continue it with `ralph-ml resume`, or move runs/, reports/ and state/ "
                    "aside to start a new run."
                )
            rep = check_workspace(cfg)
            if not rep.ok:
                raise WorkspaceError("the workspace is not ready:\n  - " + "\n  - ".join(rep.errors))
            loop.run_id = _new_run_id()
            loop.frozen_hashes = hash_files(loop.ws, cfg.files.frozen)
            loop.required_calls = required_calls(cfg, loop.ws)
            loop._setup_git()
            loop.control.clear()
            loop._write_run_env()
            loop._prepare()
            loop.agent = get_agent(cfg)
            loop.analyst = get_analyst(cfg)
            if cfg.pruning.pruner != "none":
                loop.pruner = TrialPruner(cfg, [], loop.runs_dir)
            loop._open_sinks()
            loop.journal = Journal(loop.journal_path)
            loop.journal.append(
                {
                    "type": "run_started",
                    "ts": time.time(),
                    "run_id": loop.run_id,
                    "config_path": str(cfg.source),
                    "frozen_hashes": loop.frozen_hashes,
                    "required_calls": loop.required_calls,
                    "target": {"name": cfg.target.name, "value": cfg.target.value, "direction": cfg.target.dir.value},
                    "seed": cfg.project.seed,
                    "git_branch": loop.git.branch if loop.git else None,
                }
            )
        except BaseException:
            loop._unlock()
            raise
        loop.emit("run_started", {"run_id": loop.run_id, "target": cfg.target.describe(), "resumed": False})
        return loop

    @classmethod
    def resume(cls, cfg: Config, on_event: Optional[EventSink] = None) -> Loop:
        loop = cls(cfg, on_event)
        loop._lock()
        try:
            if not loop.journal_path.exists():
                raise StateError(
                    f"nothing to resume: no journal at {loop.journal_path}. Start a run with `ralph-ml start`."
                )
            loop.journal = Journal(loop.journal_path)  # truncates a torn tail first
            rp = replay(loop.journal_path)
            loop.run_id = rp.run["run_id"]
            loop.frozen_hashes = dict(rp.run.get("frozen_hashes", {}))
            # The calls the run started with; the config's files.required_calls, when it names
            # them; none for a run recorded before the guard kept them.
            if cfg.files.required_calls is not None:
                loop.required_calls = required_calls(cfg, loop.ws)
            else:
                loop.required_calls = dict(rp.run.get("required_calls") or {})
            for rec in rp.records:
                loop._apply(rec)
            loop.base_elapsed = rp.elapsed_s
            loop._setup_git(tuple(c for c, _ in rp.in_flight))
            loop.control.clear()
            loop.agent = get_agent(cfg)
            loop.analyst = get_analyst(cfg)
            for rec in loop.history:
                loop.agent.observe(rec)
            if cfg.pruning.pruner != "none":
                loop.pruner = TrialPruner(cfg, loop.history, loop.runs_dir)
            loop._open_sinks()
            loop.journal.append({"type": "run_resumed", "ts": time.time(), "cycles_recorded": len(loop.history)})
            loop._pending = list(rp.in_flight)
        except BaseException:
            loop._unlock()
            raise
        loop.emit(
            "run_started",
            {"run_id": loop.run_id, "target": cfg.target.describe(), "resumed": True, "cycles": len(loop.history)},
        )
        return loop

    _pending: list[tuple[int, Proposal]] = []

    def _prepare(self) -> None:
        cmd = self.cfg.execution.prepare_cmd
        if not cmd:
            return
        log = self.state_dir / "prepare.log"
        self._phase("prepare")
        env = {**os.environ, "PATH": trial_path_env(), "RALPH_DATA_DIR": str(self.cfg.path(self.cfg.data.root))}
        with open(log, "wb") as fh:
            rc = subprocess.run(cmd, shell=True, cwd=self.ws, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise WorkspaceError(
                f"execution.prepare_cmd {cmd!r} exited with code {rc}; nothing was run. Full log: {log}"
            )

    def _write_run_env(self) -> None:
        if self.cfg.execution.env_capture:
            recording.write_run_env(self.state_dir / "env.json")

    # ------------------------------------------------------------------ helpers
    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.bus.emit(kind, data, cycle=data.get("cycle", self.cycle or None))

    def _open_sinks(self) -> None:
        """events.jsonl plus the tracking sinks named in ``observability`` (all fail soft)."""
        self.bus.run_id = self.run_id
        if self.cfg.observability.emit_events_jsonl:
            self.bus.add(EventLog(self.state_dir / "events.jsonl"))
        for sink in build_sinks(self.cfg, self.run_id, self.bus):
            self.bus.add(sink)

    @property
    def elapsed_s(self) -> float:
        return self.base_elapsed + (time.monotonic() - self.t0)

    def _time_left_s(self) -> float | None:
        """Seconds left of safeguards.total_time_limit_minutes (None: no limit)."""
        limit = self.cfg.safeguards.total_time_limit_minutes
        return None if limit is None else limit * 60 - self.elapsed_s

    def usage(self) -> dec.Usage:
        return dec.Usage(elapsed_s=self.elapsed_s, tokens=self.totals.tokens, cost_usd=self.totals.cost_usd)

    def cycle_dir(self, cycle: int) -> Path:
        return self.runs_dir / cycle_folder(cycle)

    def _phase(self, phase: str, *, persist: bool = False) -> None:
        """Enter a phase; ``persist`` writes the state file (for phases that can last)."""
        self.phase = phase
        if persist:
            self.write_state()
        self.emit("phase", {"cycle": self.cycle, "phase": phase})

    def write_state(self, status: str | None = None) -> None:
        stop = self.last_decision if (self.last_decision and self.last_decision.stop) else None
        running = {c for c, f in self._flights.items() if f.result is None}
        if self.phase == "execute":
            running.add(self.cycle)  # written just before its trial is submitted
        state = recording.run_state(
            self.cfg,
            run_id=self.run_id,
            status=status or ("paused" if self._paused else ("stopped" if stop else "running")),
            phase=self.phase,
            cycle=self.cycle,
            cycles_recorded=len(self.history),
            totals=self.totals,
            usage=self.usage(),
            stop=stop,
            git=self.git,
            safeguards=self._safeguards_dump,
            sink_failures=self.bus.all_failures(),  # tracking sinks switched off (fail soft), and why
            in_flight=sorted(running),
        )
        write_json_atomic(self.state_path, state, indent=None)  # read by machines and `ralph-ml status`

    # ------------------------------------------------------------------ the run
    def run(self) -> Decision:
        """Run cycles, up to ``execution.max_concurrency`` at once, until a stop rule fires."""
        try:
            flights: dict[int, Flight] = {}
            self._flights = flights  # the state file names the cycles in flight
            for cycle, proposal in self._pending:
                flights[cycle] = self._recover(cycle, proposal)
            self._pending = []
            if self.history:
                # A resumed run stops where the recorded history says so, with cycles in flight
                # too: a crash while the stop cancelled them must not start new ones.
                d = dec.after_cycle(self._tail(), self.cfg, self.usage(), self.totals)
                if d.stop:
                    self._drain(flights)
                    return self._finish(d)
            while True:
                no_more = self._fill(flights)
                if not flights:
                    if no_more is not None:
                        return self._finish(no_more)
                    continue  # paused between cycles: _fill waited a poll interval
                for f in self._wait_any(flights):
                    if not self._recordable(f, flights):
                        continue
                    del flights[f.cycle]
                    d = self._collect(f)
                    self._wake_waiting(flights)
                    if d.stop:
                        self._drain(flights)
                        return self._finish(d)
        finally:
            self._stop_repeaters()
            if self.journal:
                self.journal.close()
            self.bus.close()
            self.executor.close()
            self._unlock()

    def _stop_repeaters(self) -> None:
        """The run is over (or crashed): cancel the noise repeats still running, before the
        executor closes under them (their cycles stay unrecorded: a resume re-runs them)."""
        for _, cancel in list(self._repeaters.values()):
            cancel.set()
        for thread, _ in list(self._repeaters.values()):
            thread.join(30)

    def step(self) -> Decision:
        """Run exactly one cycle to its end (or refuse to start one a budget cannot pay for).

        The public step API: ``run`` is this, with up to K cycles in flight.
        """
        flights: dict[int, Flight] = {}
        self._flights = flights
        no_more = self._fill(flights, limit=1)
        if not flights:
            return no_more or Decision(action="continue", message="paused")
        while flights:
            for f in self._wait_any(flights):
                if self._recordable(f, flights):
                    return self._collect(f)
        raise AssertionError("unreachable")  # pragma: no cover

    def _fill(self, flights: dict[int, Flight], limit: int | None = None) -> Decision | None:
        """Start cycles until K are in flight. Returns the reason no more can start, if any."""
        k = limit or self.cfg.execution.max_concurrency
        while len(flights) < k:
            action = self.control.action()
            if action == "stop":
                return self._manual_stop()
            if action == "pause":
                if not self._paused:
                    self._set_paused(True, flights)
                if not flights:
                    time.sleep(POLL_S)
                return None
            if self._paused:
                self._set_paused(False, flights)
            started = len(self.history) + len(flights)
            d = dec.before_cycle(self.history, self.cfg, self.usage(), started=started)
            if d.stop:
                return d
            cycle = max(self.totals.last_cycle, *flights, 0) + 1
            self._exhausted, self._agent_stop = "", None
            proposal = self._propose(cycle, flights)
            if proposal is None:
                if self._agent_stop is not None:
                    return self._agent_stop
                if flights and not self._exhausted:
                    return None  # the agent waits for a result in flight
                message = self._exhausted or "the agent had nothing to propose and no cycle is in flight"
                return Decision(action="stop", reason=StopReason.SEARCH_EXHAUSTED, message=message)
            assert self.journal is not None
            self.journal.append({"type": "cycle_started", "ts": time.time(), "cycle": cycle, "proposal": proposal.to_dict()})
            flights[cycle] = self._launch(cycle, proposal)
        return None

    _exhausted = ""
    _agent_stop: Decision | None = None  # set when the agent cannot afford a call (budgets)

    def _propose(self, cycle: int, flights: dict[int, Flight]) -> Proposal | None:
        self.cycle = cycle
        self._phase("propose", persist=True)
        assert self.agent is not None
        usage = self.usage()
        sg = self.cfg.safeguards
        ctx = AgentContext(
            cycle=cycle,
            history=tuple(self.history),
            best=self._best,
            last_analysis=self.history[-1].analysis if self.history else None,
            search_space=self.cfg.search_space,
            target_name=self.cfg.target.name,
            direction=self.cfg.target.dir.value,
            # Tokens of proposals in flight are spent too, though their cycles are not recorded yet.
            tokens_left=None if sg.token_budget_total is None
            else sg.token_budget_total - usage.tokens - sum(f.proposal.tokens_used for f in flights.values()),
            cost_left_usd=None if sg.cost_budget_usd is None
            else sg.cost_budget_usd - usage.cost_usd - sum(f.proposal.cost_usd for f in flights.values()),
            pending=tuple(f.proposal for f in flights.values()),
            in_flight=tuple(self._how_far(f) for f in flights.values()),
            tokens_left_cycle=sg.token_budget_per_cycle,
            cycle_dir=str(self.cycle_dir(cycle)),
            required_calls={name: tuple(calls) for name, calls in self.required_calls.items()},
        )
        try:
            return self.agent.propose(ctx)
        except AgentError as exc:
            if "exhausted" in str(exc):
                self._exhausted = str(exc)
                return None
            budget = exc.meta.get("budget_stop")
            if budget in ("tokens", "cost"):  # the agent cannot afford a single call: stop, record nothing
                reason = StopReason.TOKEN_BUDGET if budget == "tokens" else StopReason.COST_BUDGET
                self._agent_stop = Decision(action="stop", reason=reason, message=str(exc), evidence={"cycle": cycle})
                return None
            return Proposal(
                agent=self.agent.name, rationale="agent error", tokens_used=exc.tokens_used, cost_usd=exc.cost_usd,
                meta={**exc.meta, "agent_error": str(exc)},
            )
        except Exception as exc:  # agents are untrusted: a bug in one is a recorded cycle, not a crash
            where = "".join(traceback.format_exception(exc)[-3:]).strip()
            return Proposal(
                agent=self.agent.name,
                rationale="agent error",
                meta={"agent_error": f"{type(exc).__name__}: {exc} (in the agent's propose(); last frames:\n{where})"},
            )

    def _recover(self, cycle: int, proposal: Proposal) -> Flight:
        """A cycle the journal says started but never recorded: collect it once, or re-run it once."""
        cdir = self.cycle_dir(cycle)
        self.cycle = cycle
        self.emit("cycle_started", {"cycle": cycle, "proposal": proposal.to_dict(), "recovering": True})
        found = self.executor.recover(cdir)
        if found is not None:  # finished (collect it) or still running elsewhere, a cluster (wait again)
            version = json.loads((cdir / "version.json").read_text()) if (cdir / "version.json").exists() else {}
            params = json.loads((cdir / "params.json").read_text()) if (cdir / "params.json").exists() else proposal.params
            flight = Flight(cycle, proposal, cdir, params, commit=version.get("commit"), parent=version.get("parent"),
                            code_hashes=hash_files(cdir / "code", self.cfg.files.frozen))
            self._restore_prune_request(flight)
            if isinstance(found, TrialHandle):
                self.emit("recovered", {"cycle": cycle, "how": "re-attached"})
                flight.handle = found
                flight.alloc = self.pool.allocate(cycle)
                if self.pruner is not None:  # its curve so far is in progress.jsonl: the pruner reads it from the start
                    flight.prune = self.pruner.start(params)
                    flight.reader = ProgressReader(cdir / "progress.jsonl")
                threading.Thread(target=self._waiter, args=(flight,), name=f"ralph-trial-{cycle}", daemon=True).start()
            else:
                self.emit("recovered", {"cycle": cycle, "how": "collected", "status": found.status.value})
                flight.result = found
            return flight
        if cdir.exists():
            # Built on the version it was built on: the best may have moved since it started.
            if "parent" not in proposal.meta and (cdir / "version.json").exists():
                try:
                    parent = json.loads((cdir / "version.json").read_text())["parent"]
                except (OSError, ValueError, KeyError, TypeError):
                    pass
                else:
                    proposal = replace(proposal, meta={**proposal.meta, "parent": parent})
            # The trial did not finish: keep its partial files as evidence, then re-run it once.
            attic = self.runs_dir / ".interrupted"
            attic.mkdir(parents=True, exist_ok=True)
            n = 1
            while (attic / f"{cdir.name}-attempt{n}").exists():
                n += 1
            aside = attic / f"{cdir.name}-attempt{n}"
            if self.git is not None:
                self.git.release(cdir / "code")  # the evidence keeps its files, not a registration
            os.replace(cdir, aside)
            self.emit("recovered", {"cycle": cycle, "how": "re-run", "evidence": str(aside)})
        return self._launch(cycle, proposal, announce=False)

    def _code_site(self) -> materialize.CodeSite:
        return materialize.CodeSite(cfg=self.cfg, workspace=self.ws, cycle_dir=self.cycle_dir,
                                    skip=(self.runs_dir, self.reports_dir, self.state_dir), git=self.git,
                                    frozen_hashes=self.frozen_hashes, config_bytes=self._config_bytes,
                                    required_calls=self.required_calls)

    def _launch(self, cycle: int, proposal: Proposal, *, announce: bool = True) -> Flight:
        """Materialize the cycle's code, guard it, and submit the trial (or settle it as invalid)."""
        cfg = self.cfg
        cdir = self.cycle_dir(cycle)
        self.cycle = cycle
        if announce:
            self.emit("cycle_started", {"cycle": cycle, "proposal": proposal.to_dict(), "recovering": False})
        built = materialize.build(self._code_site(), cycle, proposal, best=self._best, by_cycle=self._by_cycle,
                                  phase=self._phase, emit=self.emit)
        params = built.params
        flight = Flight(cycle, proposal, cdir, params, parent=built.parent, commit=built.commit,
                        code_hashes=built.code_hashes, result=built.invalid)
        if built.invalid is not None:
            return flight
        code = cdir / "code"
        timeout_s = cfg.safeguards.time_limit_per_cycle_minutes * 60
        left = self._time_left_s()
        if left is not None:
            timeout_s = max(1.0, min(timeout_s, left))
        flight.alloc = self.pool.allocate(cycle)
        spec = TrialSpec(
            run_id=self.run_id,
            cycle=cycle,
            cycle_dir=str(cdir),
            code_dir=str(code),
            train_cmd=cfg.execution.train_cmd,
            eval_cmd=cfg.execution.eval_cmd,
            params=params,
            seed=cfg.project.seed,
            timeout_s=timeout_s,
            env={**trial_env(self.cfg, self.run_id, cycle, cdir, params), **flight.alloc.env(self.pool.has_gpus)},
            frozen_hashes=flight.code_hashes,
        )
        self._phase("execute", persist=True)
        self.emit("trial_started", {"cycle": cycle, "params": params, "timeout_s": timeout_s, "gpus": list(flight.alloc.gpus)})
        try:
            flight.handle = self.executor.submit(spec)
        except BaseException:
            self.pool.release(cycle)
            raise
        if self.pruner is not None:
            flight.prune = self.pruner.start(params)
            flight.reader = ProgressReader(cdir / "progress.jsonl")
        threading.Thread(target=self._waiter, args=(flight,), name=f"ralph-trial-{cycle}", daemon=True).start()
        return flight

    def _waiter(self, flight: Flight) -> None:
        assert flight.handle is not None
        try:
            flight.result = flight.handle.wait(None)
        except BaseException as exc:  # an executor bug must not hang the loop
            flight.result = TrialResult(status=TrialStatus.FAILED, failure=FailureClass.CRASH, message=f"executor error: {exc}")
        self._done.put(flight.cycle)

    def _wait_any(self, flights: dict[int, Flight]) -> list[Flight]:
        """Wait up to a poll interval for trials to end; apply manual control and pruning meanwhile."""
        ready = [f for f in flights.values() if f.result is not None and f.handle is None and not (f.repeating or f.waiting)]
        if not ready:
            cycles: list[int] = []
            try:
                cycles.append(self._done.get(timeout=POLL_S))
                while True:
                    cycles.append(self._done.get_nowait())
            except queue.Empty:
                pass
            # One cycle may be queued twice. Cycles that ended within one poll are recorded in
            # cycle order, not in the order their reaper threads got to the queue.
            ready = [flights[c] for c in sorted(set(cycles)) if c in flights]
        running = [f for f in flights.values() if f.handle is not None and f not in ready]
        action = self.control.action()
        if action == "stop" and running:
            self.emit("manual", {"action": "stop", "cycle": self.cycle})
            for f in running:
                f.handle.cancel()  # type: ignore[union-attr]
        elif action == "pause" and not self._paused:
            self._set_paused(True, flights)
        elif action != "pause" and self._paused:
            self._set_paused(False, flights)
        if self.pruner is not None and not self._paused:
            for f in running:
                self._prune_check(f)
        for f in ready:
            if not f.settled:  # one ended beside a cycle whose record stopped the run comes back in _drain
                self._settle(f)
        return ready

    def _prune_check(self, f: Flight) -> None:
        assert self.pruner is not None and f.prune is not None and f.reader is not None and f.handle is not None
        if f.prune_verdict is None:
            verdict = self.pruner.update(f.prune, f.reader.new_rows())
            if verdict.prune:
                f.prune_verdict, f.prune_at, f.prune_rows_seen = verdict, time.monotonic(), f.reader.count
                # Ask the trial to stop (trial.report() returns True); terminate it after the grace.
                # The request keeps the verdict: a resume collecting the trial (a cluster's trial
                # outlives the loop) records it pruned, not as a trial that ran to its end.
                write_json_atomic(f.cdir / TRIAL_CONTROL_FILE, {"action": "stop", "reason": verdict.reason, "by": "pruner",
                                                          "step": verdict.step, "rows_seen": f.prune_rows_seen})
                self.emit("prune", {"cycle": f.cycle, "step": verdict.step, "reason": verdict.reason})
        elif time.monotonic() - f.prune_at > self.cfg.pruning.grace_s and not self._training_ended(f):
            f.handle.cancel()  # it did not listen: still training after the grace

    @staticmethod
    def _training_ended(f: Flight) -> bool:
        """The trial's train_cmd has ended and its eval_cmd runs (the executor's trial.json says
        so): it listened to the stop request, and its evaluation is left to finish (within the
        cycle's time limit) so the pruned cycle keeps its metrics."""
        try:
            return bool(json.loads((f.cdir / TRIAL_FILE).read_text()).get("phase") == "eval")
        except (OSError, ValueError, AttributeError):
            return False

    def _settle(self, f: Flight) -> None:
        """A trial ended: free its resources, apply the pruning verdict, close its pruner session."""
        assert f.result is not None
        f.settled = True
        f.handle = None
        if f.prune_verdict is not None and (self._finished_first(f) or self._stopped_at_target(f)):
            # Every step it reported was in before the stop request: it ran to its own end
            # (a trial faster than the pruner's poll), so its complete result is recorded.
            # Likewise a trial that stopped itself at the target: its evaluation decides.
            self.emit("prune_late", {"cycle": f.cycle, "step": f.prune_verdict.step})
            f.prune_verdict = None
        if f.prune_verdict is not None:
            last_step, partial = self._last_progress(f)
            at = f.prune_verdict.step
            went_on = f"; it stopped after step {last_step}" if last_step is not None and at is not None and last_step > at else ""
            f.result = replace(
                f.result,
                status=TrialStatus.PRUNED,
                failure=FailureClass.NONE,
                # The steps it trained before it heard the request explain a partial metric past the verdict's.
                message=f"pruned at step {f.prune_verdict.step}: {f.prune_verdict.reason}{went_on}",
                stopped_by="pruner",
                stopped_at_step=f.prune_verdict.step,
                metrics={**partial, **f.result.metrics},  # terminated ones wrote no metrics.json
            )
        if self.pruner is not None and f.prune is not None:
            final = f.result.metrics.get(self.pruner.metric) if f.result.status is TrialStatus.OK else None
            self.pruner.finish(f.prune, f.prune_verdict is not None, final)
            f.pruner_saw = True
        if f.alloc is not None:  # the trial really ran (its resources are freed once it is recorded)
            # After the verdict: a pruned trial that exited cleanly ends "pruned", not "ok".
            self.emit("trial_ended", {"cycle": f.cycle, "status": f.result.status.value, "duration_s": f.result.duration_s})

    @staticmethod
    def _last_progress(f: Flight) -> tuple[int | None, dict[str, float]]:
        """A pruned trial's last progress row: its step (None without one) and its metrics (step and time aside)."""
        rows = read_progress(f.cdir / "progress.jsonl")
        last = rows[-1] if rows else {}
        step = last.get("step")
        return (step if isinstance(step, int) and not isinstance(step, bool) else None,
                {k: float(v) for k, v in last.items()
                 if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)})

    @staticmethod
    def _stopped_at_target(f: Flight) -> bool:
        """A trial that went on past a stop request and then stopped itself, ok, where its
        reported target metric met the target: the pruner was wrong about it."""
        assert f.result is not None
        return f.result.status is TrialStatus.OK and f.result.stopped_by == "target"

    @staticmethod
    def _finished_first(f: Flight) -> bool:
        """A trial asked to stop that ended ok without reporting another step had already
        finished its steps when the request came (a stopped trial leaves at a report).
        Terminated trials, which did not listen, are never ok."""
        assert f.result is not None
        if f.result.status is not TrialStatus.OK:
            return False
        # A live trial's reader stopped at the verdict; a collected one (resume) has none.
        rows = f.reader if f.reader is not None else ProgressReader(f.cdir / "progress.jsonl")
        rows.new_rows()
        return rows.count <= f.prune_rows_seen

    @staticmethod
    def _restore_prune_request(f: Flight) -> None:
        """A recovered cycle that the pruner had asked to stop before the loop died (its
        control.json says so) keeps that verdict, and its grace starts again."""
        try:
            req = json.loads((f.cdir / TRIAL_CONTROL_FILE).read_text())
        except (OSError, ValueError):
            return
        if not isinstance(req, dict) or req.get("action") != "stop" or req.get("by") != "pruner":
            return
        step = req.get("step")
        rows = req.get("rows_seen")
        f.prune_verdict = PruneVerdict(True, str(req.get("reason") or "asked to stop by the pruner"),
                                       step if isinstance(step, int) and not isinstance(step, bool) else None)
        f.prune_rows_seen = rows if isinstance(rows, int) and not isinstance(rows, bool) else 0
        f.prune_at = time.monotonic()

    def _recordable(self, f: Flight, flights: dict[int, Flight]) -> bool:
        """True when the ended cycle ``f`` can be recorded now. A cycle that needs noise repeats
        (``noise``) gets them first, in a thread of their own on its resources, while the other
        cycles in flight go on and new ones start: it comes back from ``_wait_any`` when they
        are done. Two cycles' repeats never run at once (each judges against the best, which
        the other may change): the second waits until the first is recorded."""
        if f.repeating or f.repeats is not None or not self._noise.enabled or f.result is None:
            return not f.repeating
        _, metric, kept, _ = recording.first_judgement(self.cfg, f.result, self.totals, self._noise)
        n = self._noise.wanted(kept, self.totals) if metric is not None else 0
        if n == 0 or metric is None:
            return True
        busy = next((o.cycle for o in flights.values() if o is not f and (o.repeating or o.repeats is not None)), None)
        if busy is not None:
            if not f.said_waiting:  # _wake_waiting brings it back here, maybe to wait again: said once
                self._repeats_event(f, metric, n, busy)
            f.waiting = f.said_waiting = True
            return False
        self._repeats_event(f, metric, n, None)
        f.waiting, f.repeating = False, True
        self.cycle = f.cycle
        self._phase("confirm")
        if f.alloc is None:  # collected on resume: its repeats take resources of the pool too
            f.alloc = self.pool.allocate(f.cycle)
        resources = f.alloc.env(self.pool.has_gpus)  # the repeats run on its GPUs (_collect frees them)
        thread = threading.Thread(target=self._repeater, args=(f, n, resources, self._time_left_s()),
                                  name=f"ralph-repeats-{f.cycle}", daemon=True)
        self._repeaters[f.cycle] = (thread, f.cancel)
        thread.start()
        return False

    def _how_far(self, f: Flight) -> InFlight:
        """A cycle in flight for the agent: its first run's target metric once it ended (ok),
        else the last value its progress rows report (a pruned or failed one: none)."""
        name = self.cfg.target.name
        if f.prune_verdict is not None:  # asked to stop: doomed, whatever it had reached
            return InFlight(f.cycle, f.proposal, None)
        if f.result is not None:
            value = f.result.metrics.get(name) if f.result.status is TrialStatus.OK else None
            return InFlight(f.cycle, f.proposal, value if isinstance(value, (int, float)) else None)
        seen = last_reported(f.cdir / "progress.jsonl", name)
        return InFlight(f.cycle, f.proposal, None) if seen is None else InFlight(f.cycle, f.proposal, seen[1], seen[0])

    def _repeats_event(self, f: Flight, metric: float, n: int, waiting_for: int | None) -> None:
        """``repeats``: cycle ``f`` (first run ``metric``) is re-run with ``n`` more seeds, now
        or once ``waiting_for``'s repeats are recorded; ``reason`` "noise" when it measures the
        run-to-run noise (the first result), "confirm" when it is a candidate new best."""
        best = self.totals.best if self.totals.best_seen is not None else None
        self.emit("repeats", {"cycle": f.cycle, "first": metric, "n": n, "reason": "confirm" if best else "noise",
                              "best": best.metric if best else None, "best_cycle": best.cycle if best else None,
                              "waiting_for": waiting_for})

    def _repeater(self, f: Flight, n: int, resources: dict[str, str] | None, time_left_s: float | None) -> None:
        try:
            f.repeats = self._noise.repeats(run_id=self.run_id, cycle=f.cycle, cdir=f.cdir, n=n, resources=resources,
                                            time_left_s=time_left_s, cancel=f.cancel)
        except BaseException as exc:  # an executor bug must not hang the loop: judged on no repeat
            log.warning("cycle %d: its noise repeats failed: %s: %s", f.cycle, type(exc).__name__, exc)
            f.repeats = []
        f.repeating = False
        self._repeaters.pop(f.cycle, None)
        self._done.put(f.cycle)

    def _wake_waiting(self, flights: dict[int, Flight]) -> None:
        """A cycle was recorded: the ones whose repeats waited for it are looked at again."""
        for o in flights.values():
            if o.waiting:
                o.waiting = False
                self._done.put(o.cycle)

    def _collect(self, f: Flight) -> Decision:
        assert f.result is not None
        self.cycle = f.cycle
        try:
            d = self._record(f)
        finally:
            self.pool.release(f.cycle)
        if self.git is not None:
            self.git.release(f.cdir / "code")  # recorded: no longer a registered worktree, files kept
        return d

    def _drain(self, flights: dict[int, Flight]) -> None:
        """The run is stopping: cancel what still runs and record it as cancelled (never lost)."""
        for f in flights.values():
            if f.handle is not None:
                f.handle.cancel()
        while flights:
            for f in self._wait_any(flights):
                if not self._recordable(f, flights):
                    continue
                del flights[f.cycle]
                try:
                    self._record(f, final=True)
                finally:
                    self.pool.release(f.cycle)
                if self.git is not None:
                    self.git.release(f.cdir / "code")
                self._wake_waiting(flights)

    def _set_paused(self, paused: bool, flights: dict[int, Flight]) -> None:
        self._paused = paused
        for f in flights.values():
            if f.handle is not None:
                (f.handle.suspend if paused else f.handle.resume)()
                if not paused and f.prune_verdict is not None:
                    f.prune_at = time.monotonic()  # a paused trial could not listen: its grace starts again
        self._phase("paused" if paused else ("execute" if flights else "propose"), persist=True)
        self.emit("manual", {"action": "pause" if paused else "unpause", "cycle": self.cycle})

    def _manual_stop(self) -> Decision:
        return Decision(
            action="stop",
            reason=StopReason.MANUAL_STOP,
            message=f"stopped by `ralph-ml stop` (control file {self.control.path})",
            evidence={"control_file": str(self.control.path)},
        )

    # ------------------------------------------------------------------ record
    def _record(self, f: Flight, *, final: bool = False) -> Decision:
        """Analyze, decide and journal one finished cycle. ``final``: the run is already stopping."""
        assert f.result is not None
        self._phase("analyze")
        record = recording.assess(
            self.cfg, run_id=self.run_id, cycle=f.cycle, cdir=f.cdir, proposal=f.proposal, result=f.result,
            code_hashes=f.code_hashes, commit=f.commit, parent=f.parent, history=self.history, totals=self.totals,
            analyst=self.analyst, noise=self._noise,
            resources=f.alloc.env(self.pool.has_gpus) if f.alloc is not None else None,  # repeats run on its GPUs
            time_left_s=self._time_left_s(), repeats=f.repeats,
        )
        self._phase("decide")
        d = self._decide(record)
        if final and not d.stop:
            d = Decision(action="stop", reason=self.last_decision.reason if self.last_decision else None,
                         message="cancelled: the run stopped while this trial was in flight"
                         if record.result.status is TrialStatus.CANCELLED
                         else "the run stopped as this trial ended: its result is recorded as it is")
        recording.write_decision(f.cdir, record, d)
        assert self.journal is not None
        entry = recording.journal_entry(record, d, self.elapsed_s)
        self.journal.append(entry)
        self._apply(record)
        if self.pruner is not None:
            if not f.pruner_saw:
                self.pruner.observe(record)  # a cycle collected on resume: add its curve
            self.pruner.note_kept(record)
        self.last_decision = d
        assert self.agent is not None
        self.agent.observe(record)
        if record.kept and f.commit and self.git is not None:
            self.git.mark_best(f.commit)
        self.write_state()
        self.emit("cycle_recorded", recording.recorded_event(record, d, f.cdir, entry["record"], entry["decision"]))
        return d

    def _tail(self, record: CycleRecord | None = None) -> list[CycleRecord]:
        """The last records the stop rules look at (the rest of the history is in ``self.totals``)."""
        k = self.cfg.safeguards.max_consecutive_failures
        if record is None:
            return self.history[-k:]
        return [*self.history[-(k - 1):], record] if k > 1 else [record]

    def _decide(self, record: CycleRecord) -> Decision:
        result = record.result
        if result.failure is FailureClass.FROZEN_MODIFIED:
            ws_now = hash_files(self.ws, self.cfg.files.frozen)
            broken = [f for f, h in ws_now.items() if self.frozen_hashes.get(f) != h]
            if broken:
                return Decision(
                    action="stop",
                    reason=StopReason.FROZEN_BROKEN,
                    message=f"frozen evaluation broken: {broken} changed in the workspace {self.ws} since the run "
                    "started. Restore the original file(s) and `ralph-ml resume`, or start a new run.",
                    evidence={"files": broken, "expected": {f: self.frozen_hashes.get(f) for f in broken}, "found": {f: ws_now[f] for f in broken}},
                )
        if result.status is TrialStatus.CANCELLED and self.control.action() == "stop":
            return self._manual_stop()
        usage = dec.Usage(
            elapsed_s=self.elapsed_s,
            tokens=self.totals.tokens + record.tokens_used,
            cost_usd=self.totals.cost_usd + record.cost_usd,
        )
        return dec.after_cycle(self._tail(record), self.cfg, usage, self.totals.plus(record, self.cfg))

    def _finish(self, d: Decision) -> Decision:
        self.last_decision = d
        self.phase = "stopped"
        assert self.journal is not None
        self.journal.append(
            {"type": "run_stopped", "ts": time.time(), "decision": d.to_dict(), "exit_code": d.exit_code, "elapsed_s": round(self.elapsed_s, 3)}
        )
        write_json_atomic(self.state_dir / "stop.json", {**d.to_dict(), "exit_code": d.exit_code, "cycles": len(self.history)})
        self.write_state(status="stopped")
        self.control.clear()
        from .report import write_report

        paths = write_report(self.cfg)
        self.emit("run_stopped", {"decision": d.to_dict(), "exit_code": d.exit_code, "report": str(paths[0])})
        return d
