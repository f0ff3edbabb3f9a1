"""Local executor: each trial is a shell command in its own session on this machine.

- ``train_cmd`` (then ``eval_cmd``) runs with ``/bin/sh -c`` in ``spec.code_dir`` as the
  leader of a new session and process group, so one ``killpg`` reaches everything it started.
  With ``preload``, a plain ``python script.py`` command is forked from a warm-start server
  instead (``executors.warm``): same session, group, files and environment, no import cost.
- stdout/stderr go straight to ``<cycle_dir>/logs/{stdout,stderr}.log``; nothing is buffered here.
- ``<cycle_dir>/trial.json`` records pid, pgid, the /proc start time and a random token that is
  also in the trial's environment (``RALPH_TRIAL_TOKEN``): after a crash of the loop itself,
  ``reap_orphans`` finds and kills the trial, including grandchildren that left the group.
- Waiting blocks on a pidfd (no polling interval); ``<cycle_dir>/result.json`` is written
  atomically when the trial ends and read back by ``read_result`` on resume.

Linux only (/proc, pidfd); no psutil.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import ExecutorError
from ..hashing import changed_files
from ..journal import write_json_atomic
from ..metrics import DEFAULT_METRICS_PATTERN, read_metrics
from ..records import FailureClass, TrialResult, TrialSpec, TrialStatus
from ..stdout_curve import STDOUT_PROGRESS_VAR, StdoutCurve
from ..trial import STOPPED_FILE
from .base import Executor, TrialHandle
from .warm import WarmProcess, WarmStarter

log = logging.getLogger(__name__)

TOKEN_VAR = "RALPH_TRIAL_TOKEN"
TRIAL_FILE = "trial.json"  # written at each launch: who to kill if the loop dies
RESULT_FILE = "result.json"  # written once, when the trial ends

_TAIL_BYTES = 4096  # stderr_tail: at most the last 4 KB ...
_TAIL_LINES = 40  # ... and 40 lines of stderr.log
_SUSPENDED_RECHECK_S = 0.5  # while suspended, wake this often to notice a resume() from another thread
_CURVE_POLL_S = 0.2  # with execution.stdout_progress, how often train_cmd's printed lines are read
_GROUP_RECHECK_S = 0.02  # during the kill grace, how often to look for group members still alive
_SWEEP_PASSES = 5  # /proc sweeps repeat until one finds nothing new (catches forks during the sweep)
# Lower-cased stderr fragments that mean the trial ran out of host or accelerator memory.
_OOM_MARKERS = ("memoryerror", "out of memory", "std::bad_alloc", "resource_exhausted")


# --------------------------------------------------------------------------- /proc helpers


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgrp, starttime in clock ticks) from /proc/<pid>/stat; None when pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    return rest[0].decode(), int(rest[2]), int(rest[19])  # fields 3, 5 and 22


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _has_token(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return needle in b"\0" + fh.read()
    except OSError:  # gone, or another user's process
        return False


def _group_alive(pgid: int) -> bool:
    """True while a non-zombie process is in process group ``pgid``."""
    for pid in _pids():
        st = _proc_stat(pid)
        if st is not None and st[1] == pgid and st[0] != "Z":
            return True
    return False


def _sweep(token: str, pgid: int | None = None) -> set[int]:
    """SIGKILL every process carrying ``token`` in its environment (and, if given, in ``pgid``).

    Returns the pids killed. Zombies are skipped: they are already dead.
    """
    needle = f"\0{TOKEN_VAR}={token}\0".encode()
    me = os.getpid()
    killed: set[int] = set()
    for _ in range(_SWEEP_PASSES):
        found = []
        for pid in _pids():
            if pid == me or pid in killed:
                continue
            if pgid is not None:
                st = _proc_stat(pid)
                if st is not None and st[1] == pgid and st[0] != "Z":
                    found.append(pid)
                    continue
            if _has_token(pid, needle):
                found.append(pid)
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:  # exited meanwhile, or not ours to kill
                pass
    return killed


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):  # group gone (or its id reused by someone else)
        pass


# --------------------------------------------------------------------------- files


def read_tail(path: Path, max_bytes: int = _TAIL_BYTES, max_lines: int = _TAIL_LINES) -> str:
    """The last lines of a log, reading only its final ``max_bytes`` (seek, never the whole file)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and len(lines) > 1:
        lines = lines[1:]  # the first line was cut by the seek
    return "\n".join(lines[-max_lines:])


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (as users type it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except (ValueError, OSError):  # not below it, or the working directory was deleted
        return str(path)


def read_result(cycle_dir: Path) -> TrialResult | None:
    """The result a finished trial left in ``<cycle_dir>/result.json``; None if it never finished."""
    path = Path(cycle_dir) / RESULT_FILE
    try:
        with open(path, encoding="utf-8") as fh:
            return TrialResult.from_dict(json.load(fh))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExecutorError(
            f"cannot read the trial result {path}: {exc}; delete it to run cycle {Path(cycle_dir).name} again"
        ) from exc


def reap_orphans(cycle_dir: Path) -> int:
    """Kill what is left of a trial whose loop died; returns how many processes were killed.

    Uses ``<cycle_dir>/trial.json``: the recorded group is killed only when its leader is still
    the same process (same /proc start time), so a reused pid is never touched. Processes that
    carry the trial's token in their environment are killed either way.
    """
    path = Path(cycle_dir) / TRIAL_FILE
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
        pid, pgid, start, token = int(info["pid"]), int(info["pgid"]), info["start_time"], str(info["token"])
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExecutorError(
            f"cannot read {path}: {exc}; stop the trial's processes by hand "
            f"(they carry {TOKEN_VAR} in their environment) and delete the file"
        ) from exc
    st = _proc_stat(pid)
    same_leader = st is not None and st[0] != "Z" and start is not None and st[2] == int(start)
    killed = _sweep(token, pgid if same_leader else None)
    if same_leader:
        _killpg(pgid, signal.SIGKILL)
    return len(killed)


# --------------------------------------------------------------------------- executor


class LocalExecutor(Executor):
    """Runs each trial as a local subprocess group; see the module docstring.

    ``kill_grace_s``: seconds between SIGTERM and SIGKILL on timeout or cancel.
    ``metrics_pattern``: regex (group 1 name, group 2 value) for stdout metric lines.
    ``preload``: modules a warm-start server imports once (``executors.warm``); ``python
    script.py`` trial commands are then forked from it. ``workspace``: the experiment folder,
    whose own modules may not be preloaded. ``preload_log``: the server's stderr.
    A ``spec.timeout_s`` of 0, negative or infinite means no time limit.
    """

    name = "local"

    def __init__(
        self,
        kill_grace_s: float = 5.0,
        metrics_pattern: str = DEFAULT_METRICS_PATTERN,
        *,
        preload: Sequence[str] = (),
        workspace: Path | None = None,
        preload_log: Path | None = None,
    ) -> None:
        if kill_grace_s < 0:
            raise ExecutorError(f"kill_grace_s must be >= 0 seconds, got {kill_grace_s}")
        self.kill_grace_s = kill_grace_s
        self.metrics_pattern = metrics_pattern
        self.warm: WarmStarter | None = None
        if preload:
            self.warm = WarmStarter(preload, workspace=workspace, log_path=preload_log)
        self._sentinel: subprocess.Popen[bytes] | None = None  # started with the first trial
        self._sentinel_lock = threading.Lock()

    def submit(self, spec: TrialSpec) -> LocalTrialHandle:
        handle = LocalTrialHandle(spec, kill_grace_s=self.kill_grace_s, metrics_pattern=self.metrics_pattern, warm=self.warm)
        self._watch(handle.cycle_dir)
        return handle

    def _watch(self, cycle_dir: Path) -> None:
        """Tell the sentinel (``ralph_ml._sentinel``) about a trial: if this process dies, it
        stops the trial's processes. Fail soft: without it, ``resume`` still reaps them."""
        with self._sentinel_lock:
            try:
                if self._sentinel is None:
                    self._sentinel = subprocess.Popen(
                        [sys.executable, "-m", "ralph_ml._sentinel"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                        start_new_session=True,  # not in the loop's terminal group: Ctrl-C is the loop's
                    )
                assert self._sentinel.stdin is not None
                self._sentinel.stdin.write(os.fsencode(cycle_dir) + b"\n")
                self._sentinel.stdin.flush()
            except (OSError, ValueError) as exc:
                log.warning("the sentinel that stops trials if the loop dies is not running (%s); "
                            "after a crash of the loop, `ralph-ml resume` stops them", exc)

    def close(self) -> None:
        if self.warm is not None:
            self.warm.close()
        with self._sentinel_lock:
            sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:  # its stdin's EOF: it stops what did not finish (nothing, after a clean stop)
            try:
                if sentinel.stdin is not None:
                    sentinel.stdin.close()
                sentinel.wait(30)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.warning("the trial sentinel did not exit: %s", exc)


class LocalTrialHandle(TrialHandle):
    """A running local trial. ``wait``/``poll`` drive it: train → frozen check → eval → result.

    Safe to call ``cancel``/``suspend``/``resume`` from another thread than the one waiting.
    """

    def __init__(
        self, spec: TrialSpec, *, kill_grace_s: float, metrics_pattern: str, warm: WarmStarter | None = None
    ) -> None:
        self.spec = spec
        self._warm = warm
        self._grace_s = kill_grace_s
        self._pattern = metrics_pattern
        self._lock = threading.RLock()
        self._result: TrialResult | None = None

        self.cycle_dir = Path(spec.cycle_dir)
        self._code_dir = Path(spec.code_dir)
        logs = self.cycle_dir / "logs"
        self.stdout_log = logs / "stdout.log"
        self.stderr_log = logs / "stderr.log"
        metrics = Path(spec.metrics_path) if spec.metrics_path else self.cycle_dir / "metrics.json"
        self._metrics_path = metrics if metrics.is_absolute() else self._code_dir / metrics
        self._token = secrets.token_hex(16)
        self._env = {**os.environ, **spec.env, TOKEN_VAR: self._token}
        self._stopped_path = Path(spec.env.get("RALPH_RUN_DIR") or self.cycle_dir) / STOPPED_FILE
        limit = spec.timeout_s
        self._limit_s: float | None = limit if limit > 0 and math.isfinite(limit) else None

        # Time accounting (monotonic seconds): active time excludes time spent suspended.
        self._t0 = time.monotonic()
        self._suspended_total_s = 0.0
        self._suspended_since: float | None = None
        self._phase_t0 = 0.0  # active time at the start of the current phase
        self._train_s = 0.0
        self._eval_s = 0.0

        try:
            logs.mkdir(parents=True, exist_ok=True)
            (self.cycle_dir / RESULT_FILE).unlink(missing_ok=True)  # a stale result would be read on resume
            self._stopped_path.unlink(missing_ok=True)  # likewise what an interrupted attempt wrote
        except OSError as exc:
            raise ExecutorError(f"cannot prepare the cycle folder {self.cycle_dir}: {exc}") from exc
        key, progress = spec.env.get(STDOUT_PROGRESS_VAR), spec.env.get("RALPH_PROGRESS_PATH")
        # execution.stdout_progress: the curve train_cmd prints becomes progress.jsonl rows
        self._curve = StdoutCurve(self.stdout_log, Path(progress), key) if key and progress else None
        self.started_at = time.time()
        self._phase = "train"
        self._cmd = spec.train_cmd
        self._proc, self._pidfd = self._launch("train", spec.train_cmd)

    # ------------------------------------------------------------------ public API

    @property
    def pid(self) -> int:
        """Pid (and process group id) of the command running now, or of the last one."""
        return self._proc.pid

    def poll(self) -> TrialResult | None:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> TrialResult | None:
        end = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            with self._lock:
                if self._result is None:
                    self._advance()
                if self._result is not None:
                    return self._result
                slice_s = _SUSPENDED_RECHECK_S if self._suspended_since is not None else self._time_left()
                if self._curve is not None and self._phase == "train":
                    slice_s = _CURVE_POLL_S if slice_s is None else min(slice_s, _CURVE_POLL_S)
                proc, pidfd = self._proc, self._pidfd
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                slice_s = left if slice_s is None else min(slice_s, left)
            _block(proc, pidfd, slice_s)

    def cancel(self) -> None:
        with self._lock:
            if self._result is None:
                self._advance()  # it may have ended on its own already
            if self._result is not None:
                return
            rc, swept = self._kill_all()
            active = self._active_s()
            self._finish(
                TrialStatus.CANCELLED,
                FailureClass.CANCELLED,
                rc,
                f"cancelled after {active:.1f} s while running {self._phase}_cmd {self._cmd!r}"
                + _swept_note(swept),
            )

    def terminate(self, reason: str) -> TrialResult:
        """Kill the trial like ``cancel`` but write no result.json: it will run again.

        For a trial whose host is going away (a preempted Slurm job that is requeued): the
        returned ``CANCELLED`` result is for the caller's eyes only. No-op once ended.
        """
        with self._lock:
            if self._result is None:
                self._advance()
            if self._result is not None:
                return self._result
            rc, swept = self._kill_all()
            self._finish(TrialStatus.CANCELLED, FailureClass.CANCELLED, rc, reason + _swept_note(swept), write=False)
            assert self._result is not None
            return self._result

    def suspend(self) -> None:
        with self._lock:
            if self._result is not None or self._suspended_since is not None:
                return
            _killpg(self._proc.pid, signal.SIGSTOP)
            self._suspended_since = time.monotonic()

    def resume(self) -> None:
        with self._lock:
            if self._suspended_since is None:
                return
            if self._result is None:
                _killpg(self._proc.pid, signal.SIGCONT)
            self._suspended_total_s += time.monotonic() - self._suspended_since
            self._suspended_since = None

    # ------------------------------------------------------------------ internals

    def _launch(self, phase: str, cmd: str) -> tuple[subprocess.Popen[bytes] | WarmProcess, int | None]:
        """Start ``cmd`` (forked warm when it can be, else through /bin/sh) and record it in trial.json."""
        proc: subprocess.Popen[bytes] | WarmProcess | None = None
        try:
            with open(self.stdout_log, "ab") as out, open(self.stderr_log, "ab") as err:
                if self._warm is not None and (warm := self._warm.command(cmd, self._env.get("PATH", ""))):
                    proc = self._warm.launch(warm, self._code_dir, self._env, out, err)
                if proc is None:
                    proc = subprocess.Popen(
                        cmd,
                        shell=True,
                        cwd=self._code_dir,
                        env=self._env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,  # own session and process group: pgid == pid
                    )
        except OSError as exc:
            raise ExecutorError(
                f"could not start {phase}_cmd {cmd!r} in {self._code_dir}: {exc}; "
                "check that the cycle's code folder exists and is readable"
            ) from exc
        pidfd: int | None = None
        if isinstance(proc, subprocess.Popen):  # a warm process is the server's child: it reports the exit
            try:
                pidfd = os.pidfd_open(proc.pid)
            except (AttributeError, OSError):  # kernel < 5.3 or Python without pidfd: Popen.wait fallback
                pidfd = None
        st = _proc_stat(proc.pid)  # a zombie still has its stat until it is reaped
        info = {
            "pid": proc.pid,
            "pgid": proc.pid,
            "start_time": st[2] if st else None,  # /proc/<pid>/stat field 22, clock ticks
            "token": self._token,
            "phase": phase,
            "warm": isinstance(proc, WarmProcess),  # forked from the execution.preload server
            "run_id": self.spec.run_id,
            "cycle": self.spec.cycle,
            "started_at": time.time(),
        }
        try:
            # No fsync: only a crash of the loop must be survived, and the page cache does.
            write_json_atomic(self.cycle_dir / TRIAL_FILE, info, fsync=False)
        except OSError as exc:  # an untracked trial could not be reaped after a crash: do not run it
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if isinstance(proc, WarmProcess):
                proc.release()
            if pidfd is not None:
                os.close(pidfd)
            raise ExecutorError(
                f"could not record {phase}_cmd in {self.cycle_dir / TRIAL_FILE}: {exc}; "
                "the command was stopped; check free disk space and permissions"
            ) from exc
        return proc, pidfd

    def _active_s(self) -> float:
        now = time.monotonic()
        suspended = self._suspended_total_s
        if self._suspended_since is not None:
            suspended += now - self._suspended_since
        return now - self._t0 - suspended

    def _time_left(self) -> float | None:
        return None if self._limit_s is None else self._limit_s - self._active_s()

    def _exited(self) -> bool:
        if self._pidfd is None:
            return self._proc.poll() is not None
        return _block(self._proc, self._pidfd, 0.0)

    def _reap(self) -> int:
        """Collect the exited leader's status; kill what it left in its group first."""
        # The leader is still an unreaped zombie here (held by the pidfd, or by the warm-start server
        # until release), so its pgid cannot be reused.
        _killpg(self._proc.pid, signal.SIGKILL)
        rc = self._proc.wait()
        if isinstance(self._proc, WarmProcess):
            self._proc.release()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return rc

    def _end_phase(self) -> None:
        seconds = self._active_s() - self._phase_t0
        if self._phase == "train":
            self._train_s = seconds
        else:
            self._eval_s = seconds

    def _advance(self) -> None:
        """One non-blocking step of the state machine; sets ``_result`` when the trial ends."""
        self._pump_curve()
        if self._exited():
            self._pump_curve(final=True)  # what it printed between the pump above and its exit
            rc = self._reap()
            # What left the group (setsid, start_new_session) still carries the trial's token: a
            # helper that outlived its trial would keep its GPU memory into the next cycle.
            _sweep(self._token)
            self._end_phase()
            if rc != 0:
                self._finish_failed(rc)
                return
            if self._phase == "train":
                changed = changed_files(self._code_dir, self.spec.frozen_hashes) if self.spec.frozen_hashes else []
                if changed:
                    self._finish(
                        TrialStatus.INVALID,
                        FailureClass.FROZEN_MODIFIED,
                        rc,
                        f"frozen file(s) changed during train_cmd {self._cmd!r}: {', '.join(changed)}; "
                        f"eval_cmd was not run; the trial's code is in {_display(self._code_dir)}",
                    )
                    return
                if self.spec.eval_cmd:
                    self._start_eval(self.spec.eval_cmd)
                    return
            self._finish(TrialStatus.OK, FailureClass.NONE, 0, "")
            return
        left = self._time_left()
        if left is not None and left <= 0 and self._suspended_since is None:
            rc, swept = self._kill_all()
            self._finish(
                TrialStatus.TIMEOUT,
                FailureClass.TIMEOUT,
                rc,
                f"cycle {self.spec.cycle} was killed after {self._active_s():.0f} s "
                f"(timeout_s = {self._limit_s:g}) while running {self._phase}_cmd {self._cmd!r}"
                + _swept_note(swept)
                + f"; last lines of stderr below; full log: {_display(self.stderr_log)}",
            )

    def _start_eval(self, cmd: str) -> None:
        self._phase, self._cmd = "eval", cmd
        self._phase_t0 = self._active_s()
        try:
            self._proc, self._pidfd = self._launch("eval", cmd)
        except ExecutorError as exc:
            self._finish(TrialStatus.FAILED, FailureClass.CRASH, None, str(exc))
            return
        if self._suspended_since is not None:  # train ended while suspended: eval starts suspended too
            _killpg(self._proc.pid, signal.SIGSTOP)

    def _kill_all(self) -> tuple[int, set[int]]:
        """SIGTERM the group, give it ``kill_grace_s``, SIGKILL it, then sweep /proc for the token."""
        pgid = self._proc.pid
        _killpg(pgid, signal.SIGTERM)
        _killpg(pgid, signal.SIGCONT)  # a stopped group cannot act on SIGTERM until continued
        if self._suspended_since is not None:
            self._suspended_total_s += time.monotonic() - self._suspended_since
            self._suspended_since = None
        deadline = time.monotonic() + self._grace_s
        while (left := deadline - time.monotonic()) > 0 and not _block(self._proc, self._pidfd, left):
            pass
        # The leader is gone (or out of grace): give the rest of its group the remaining grace.
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(_GROUP_RECHECK_S)
        _killpg(pgid, signal.SIGKILL)
        self._pump_curve(final=True)  # its last printed rows: a pruned trial's partial result
        rc = self._reap()
        self._end_phase()
        return rc, _sweep(self._token)

    def _pump_curve(self, final: bool = False) -> None:
        """Turn train_cmd's newly printed lines into progress rows (``execution.stdout_progress``)."""
        if self._curve is None or self._phase != "train":
            return
        try:
            self._curve.pump(final=final)
        except OSError as exc:  # fail soft: the trial runs on without a curve
            log.warning("stopped reading the learning curve from %s into %s: %s", self.stdout_log, self._curve.progress, exc)
            self._curve = None

    def _finish_failed(self, rc: int) -> None:
        tail = read_tail(self.stderr_log)
        failure = FailureClass.CRASH
        why = ""
        if isinstance(self._proc, WarmProcess) and self._proc.lost:  # its server died: no exit code
            why = f" ({self._proc.lost})"
        elif rc in (-signal.SIGKILL, 128 + signal.SIGKILL):  # 137: how /bin/sh reports a child's SIGKILL
            failure = FailureClass.OOM
            why = " (SIGKILL that ralph-ml did not send: most likely the kernel's out-of-memory killer)"
        else:
            low = tail.lower()
            marker = next((m for m in _OOM_MARKERS if m in low), None)
            if marker is not None:
                failure = FailureClass.OOM
                why = f" (out of memory: stderr mentions {marker!r})"
        how = f"exited with code {rc}"
        if rc < 0:
            try:
                how = f"was killed by {signal.Signals(-rc).name} (exit code {rc})"
            except ValueError:  # not a signal this Python knows by name
                pass
        self._finish(
            TrialStatus.FAILED,
            failure,
            rc,
            f"{self._phase}_cmd {self._cmd!r} {how}{why}; last lines of stderr below; "
            f"full log: {_display(self.stderr_log)}",
            tail,
        )

    def _finish(
        self,
        status: TrialStatus,
        failure: FailureClass,
        rc: int | None,
        message: str,
        tail: str | None = None,
        *,
        write: bool = True,
    ) -> None:
        ended_at = time.time()
        reading = read_metrics(self._metrics_path, self.stdout_log, self._pattern)
        if reading.note:
            message = f"{message}; {reading.note}" if message else reading.note
        result = TrialResult(
            status=status,
            failure=failure,
            exit_code=rc,
            metrics=reading.metrics,
            started_at=self.started_at,
            ended_at=ended_at,
            train_seconds=self._train_s,  # active seconds: time suspended is not counted
            eval_seconds=self._eval_s,
            message=message,
            stderr_tail=read_tail(self.stderr_log) if tail is None else tail,
            **self._stopped_at_target(),
        )
        self._result = result
        if not write:
            return
        try:
            write_json_atomic(self.cycle_dir / RESULT_FILE, result.to_dict())  # the journal fsync follows
        except OSError as exc:  # the result is still returned; only resuming from this file is lost
            log.warning("could not write %s: %s", self.cycle_dir / RESULT_FILE, exc)

    def _stopped_at_target(self) -> dict[str, Any]:
        """``stopped_by``/``stopped_at_step`` from the stopped.json ``trial.report`` wrote when
        the reported target metric met the target; nothing when there is none (or it is unreadable)."""
        try:
            doc = json.loads(self._stopped_path.read_text(encoding="utf-8"))
            step = int(doc["step"])
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring %s, which cannot be read as the step a trial stopped at: %s", self._stopped_path, exc)
            return {}
        return {"stopped_by": "target", "stopped_at_step": step}


def _swept_note(swept: set[int]) -> str:
    if not swept:
        return ""
    return f"; {len(swept)} process(es) that had left the trial's process group were killed too"


def _block(proc: subprocess.Popen[bytes] | WarmProcess, pidfd: int | None, timeout_s: float | None) -> bool:
    """Wait up to ``timeout_s`` (None: forever) for ``proc`` to exit; True once it has."""
    if pidfd is None:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    poller = select.poll()  # a fresh poll object: they refuse concurrent use from two threads
    poller.register(pidfd, select.POLLIN)
    ms = None if timeout_s is None else max(0, math.ceil(timeout_s * 1000))
    return bool(poller.poll(ms))
