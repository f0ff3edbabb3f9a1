"""Slurm executor: one Slurm job per trial, submitted with submitit.

- The job runs ``SlurmTrial`` on the node: the local executor's ``LocalTrialHandle`` driven by
  a thread of its own (own process group, timeout excluding suspended time, group kill,
  metrics, frozen-file check), writing logs, progress and result.json straight into the cycle
  folder, which the nodes share with the loop.
- The job id is recorded in ``<cycle_dir>/slurm_job.json`` at submit: ``recover`` rebuilds the
  ``submitit`` job from it and re-attaches while it is queued or running.
- Requests go to the job through ``<cycle_dir>/slurm_control.json`` (cancel, suspend/resume,
  applied within ~0.2 s), so a cancel kills the trial's process group and records
  ``cancelled`` exactly as ``local`` does; ``scancel`` removes queued jobs and is the fallback
  for a job that does not answer.
- Preemption: Slurm (or ``scancel --signal USR2``) signals the job; submitit calls
  ``SlurmTrial.checkpoint``, which kills the trial without recording a result, and requeues
  the job (``execution.slurm.max_requeues`` times); the trial runs again from its
  ``RALPH_CHECKPOINT_DIR``. A job that Slurm requeues itself (``scontrol requeue``, a
  preemption without the signal, a node failure) gets SIGTERM like a cancelled one: the job
  asks ``scontrol`` whether its restart count went up and, if so, gives no answer either. A
  requeued job whose trial had already ended (result.json) answers with that result instead of
  running the trial again.
- The queue's state comes from ``sacct`` (through submitit's watcher); where ``sacct`` has no
  answer (a cluster without accounting: "Slurm accounting storage is disabled", or a job
  the database has not seen yet) ``squeue --states=all`` gives it.
- ``backend = "local"`` runs the same job through submitit's ``LocalExecutor`` on this machine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import DelayedSubmission, UncompletedJobError

from ..errors import ExecutorError
from ..journal import write_json_atomic
from ..metrics import DEFAULT_METRICS_PATTERN
from ..records import FailureClass, TrialResult, TrialSpec, TrialStatus
from ._common import BackgroundTrial, ControlFile, error_result, for_remote, spec_from_dict
from .base import Executor, TrialHandle
from .local import RESULT_FILE, read_result, read_tail, reap_orphans

log = logging.getLogger(__name__)

JOB_FILE = "slurm_job.json"  # job id, folder, backend, spec: what recover needs
CONTROL_FILE = "slurm_control.json"  # loop -> job: {"cancel": bool, "suspended": bool}
_CONTROL_POLL_S = 0.2  # how often the job looks at its control file
_RESULT_POLL_S = 0.25  # how often the loop looks for the job's result file (a stat)
_CANCEL_MARGIN_S = 30.0  # on top of kill_grace_s before a job that ignores a cancel is scancel'ed
_TIME_MARGIN_MIN = 5  # default job time limit: the per-cycle limit plus this
_NO_LIMIT_MIN = 7 * 24 * 60  # job time limit when the cycle has none
_SLURM_CMD_TIMEOUT_S = 60  # squeue/sacct/scontrol calls: a busy controller answers slowly
# Job states (sacct/squeue) of a job that may still run: submitit's unfinished ones, plus those
# of a job held, suspended or stopped by an operator, which continues once released.
_ACTIVE = ("READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED", "CONFIGURING", "RESIZING",
           "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
           "SPECIAL_EXIT")
_QUEUED = ("PENDING", "REQUEUED", "CONFIGURING", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT")
_SUSPENDED = ("SUSPENDED", "STOPPED")  # its processes cannot read a cancel request: scancel'ed at once
_GONE = "GONE"  # neither sacct nor squeue knows the job: it ended and was purged without accounting


# --------------------------------------------------------------------------- on the node


class SlurmTrial(submitit.helpers.Checkpointable):
    """The job's function: run one trial to its end; checkpointable for requeue on preemption."""

    def __init__(self, spec: dict[str, Any], kill_grace_s: float, metrics_pattern: str, attempt: int = 1) -> None:
        self.spec = spec
        self.kill_grace_s = kill_grace_s
        self.metrics_pattern = metrics_pattern
        self.attempt = attempt
        self._trial: BackgroundTrial | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_trial"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._trial = None

    def __call__(self) -> dict[str, Any]:
        spec = for_remote(spec_from_dict(self.spec))
        control = ControlFile(Path(spec.cycle_dir) / CONTROL_FILE)
        if control.read(force=True)["cancel"]:  # cancelled while queued: never start it
            now = time.time()
            return TrialResult(
                status=TrialStatus.CANCELLED, failure=FailureClass.CANCELLED, started_at=now, ended_at=now,
                message="cancelled before the Slurm job started the trial",
            ).to_dict()
        if _restart_count() and (done := read_result(Path(spec.cycle_dir))) is not None:
            # Requeued after the trial had ended (an operator's requeue of a finished job, or the
            # job died between the trial's end and its answer): answer that, never run it twice.
            return done.to_dict()
        terminated = threading.Event()  # Slurm's SIGTERM: scancel, time limit, or a requeue
        previous = _on_sigterm(terminated)
        try:
            trial = self._trial = BackgroundTrial(spec, kill_grace_s=self.kill_grace_s, metrics_pattern=self.metrics_pattern)
            suspended = False
            while (result := trial.wait(_CONTROL_POLL_S)) is None:
                state = control.read()
                if state["cancel"]:
                    trial.cancel()
                elif state["suspended"] != suspended:
                    suspended = state["suspended"]
                    (trial.suspend if suspended else trial.resume)()
        finally:
            self._trial = None
            _restore_sigterm(previous)
        if terminated.is_set() and _being_requeued():
            # Slurm is putting the job back in the queue: this run's end (its trial got the same
            # SIGTERM) is not the trial's result. No answer, no result.json: the job runs again.
            (Path(spec.cycle_dir) / RESULT_FILE).unlink(missing_ok=True)
            raise SystemExit(f"Slurm job {os.environ.get('SLURM_JOB_ID')} is being requeued; cycle {spec.cycle} runs again")
        requeues = max(self.attempt - 1, _restart_count())
        if requeues:
            why = "preempted and requeued" if self.attempt > 1 else "requeued"
            note = f"ran {requeues + 1} times: the Slurm job was {why} {requeues} time(s)"
            result = TrialResult.from_dict({**result.to_dict(), "message": f"{result.message}; {note}" if result.message else note})
        return result.to_dict()

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Preempted (or out of time): stop the trial's processes, requeue the same trial."""
        trial = self._trial
        if trial is not None:
            trial.handle.terminate(f"preempted on attempt {self.attempt}; the Slurm job is requeued")
        # What this run's trial may have written (Slurm's signal reaches its processes too, and
        # may have ended it first) is not the result: the requeued run decides.
        (Path(self.spec["cycle_dir"]) / RESULT_FILE).unlink(missing_ok=True)
        return DelayedSubmission(SlurmTrial(self.spec, self.kill_grace_s, self.metrics_pattern, self.attempt + 1))


def _on_sigterm(flag: threading.Event) -> Any:
    """Note SIGTERM in ``flag`` and pass it on to the handler before (submitit's: log and carry on)."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        flag.set()
        if callable(previous):
            previous(signum, frame)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: nothing to watch with
        return None
    return previous


def _restore_sigterm(previous: Any) -> None:
    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except ValueError:
            pass


def _restart_count() -> int:
    """How many times Slurm restarted this job before this run (0 outside a Slurm job)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) if _in_slurm_job() else 0
    except ValueError:
        return 0


def _in_slurm_job() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and bool(os.environ.get("SLURM_JOB_ID"))


def _being_requeued() -> bool:
    """Whether Slurm requeued this job since it started: its ``Restarts`` went up (scontrol)."""
    if not _in_slurm_job():
        return False
    try:
        out = subprocess.run(
            ["scontrol", "-o", "show", "job", os.environ["SLURM_JOB_ID"]],
            capture_output=True, text=True, timeout=_SLURM_CMD_TIMEOUT_S, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    found = re.search(r"\bRestarts=(\d+)", out)
    return found is not None and int(found.group(1)) > _restart_count()


# --------------------------------------------------------------------------- the loop's side


class SlurmExecutor(Executor):
    """Trials as Slurm jobs through submitit; keyword arguments mirror ``[execution.slurm]``."""

    name = "slurm"

    def __init__(
        self,
        *,
        kill_grace_s: float = 5.0,
        metrics_pattern: str = DEFAULT_METRICS_PATTERN,
        backend: str = "slurm",
        folder: str = "runs/slurm",
        partition: str | None = None,
        time_min: int | None = None,
        gpus_per_node: int = 0,
        cpus_per_task: int = 1,
        mem_gb: float | None = None,
        additional_parameters: dict[str, Any] | None = None,
        setup: list[str] | None = None,
        max_requeues: int = 3,
        signal_delay_s: int = 90,
        python: str | None = None,
        poll_s: float = 15.0,
    ) -> None:
        self.kill_grace_s = kill_grace_s
        self.metrics_pattern = metrics_pattern
        self.backend = backend
        self.folder = Path(folder).expanduser().absolute()
        self.partition, self.time_min = partition, time_min
        self.gpus_per_node, self.cpus_per_task, self.mem_gb = gpus_per_node, cpus_per_task, mem_gb
        self.additional_parameters = dict(additional_parameters or {})
        self.setup = list(setup or [])
        self.signal_delay_s = signal_delay_s
        self.poll_s = poll_s
        self.lock = threading.Lock()  # submitit's status watcher is shared and not thread-safe
        self.sacct_enabled: bool | None = None  # whether this cluster keeps accounting; None: not asked yet
        self._ex: submitit.SlurmExecutor | submitit.LocalExecutor
        try:
            if backend == "slurm":
                self._ex = submitit.SlurmExecutor(self.folder, max_num_timeout=max_requeues, python=python)
            elif backend == "local":
                self._ex = submitit.LocalExecutor(self.folder, max_num_timeout=max_requeues, python=python)
            else:
                raise ExecutorError(f"execution.slurm.backend must be 'slurm' or 'local', got {backend!r}")
        except RuntimeError as exc:  # submitit: "Could not detect "srun", are you indeed on a slurm cluster?"
            raise ExecutorError(
                f"cannot submit Slurm jobs from this machine: {exc}; run ralph-ml on a login node (sbatch, "
                "sacct and srun on PATH), or set execution.slurm.backend = \"local\" to try the jobs here"
            ) from exc
        except OSError as exc:
            raise ExecutorError(f"cannot use execution.slurm.folder = {str(self.folder)!r}: {exc}") from exc

    def job_parameters(self, spec: TrialSpec) -> dict[str, Any]:
        """submitit parameters for ``spec``'s job (the #SBATCH lines, for the slurm backend)."""
        limit = spec.timeout_s
        minutes = self.time_min or (
            math.ceil(limit / 60) + _TIME_MARGIN_MIN if 0 < limit and math.isfinite(limit) else _NO_LIMIT_MIN
        )
        if self.backend == "local":
            return {"timeout_min": minutes, "gpus_per_node": self.gpus_per_node, "signal_delay_s": self.signal_delay_s,
                    "setup": self.setup}
        params: dict[str, Any] = {
            "job_name": f"ralph-{spec.run_id}-c{spec.cycle:04d}",
            "time": minutes,
            "cpus_per_task": self.cpus_per_task,
            "signal_delay_s": self.signal_delay_s,
            "additional_parameters": self.additional_parameters,
        }
        if self.partition:
            params["partition"] = self.partition
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb:
            params["mem"] = f"{int(self.mem_gb)}GB" if self.mem_gb == int(self.mem_gb) else f"{int(self.mem_gb * 1024)}MB"
        if self.setup:
            params["setup"] = self.setup
        return params

    def submit(self, spec: TrialSpec) -> SlurmTrialHandle:
        cycle_dir = Path(spec.cycle_dir)
        try:
            (cycle_dir / "logs").mkdir(parents=True, exist_ok=True)
            for stale in (RESULT_FILE, CONTROL_FILE, JOB_FILE):
                (cycle_dir / stale).unlink(missing_ok=True)
        except OSError as exc:
            raise ExecutorError(f"cannot prepare the cycle folder {cycle_dir}: {exc}") from exc
        fn = SlurmTrial(spec.to_dict(), self.kill_grace_s, self.metrics_pattern)
        with self.lock:
            try:
                self._ex.update_parameters(**self.job_parameters(spec))
                job = self._ex.submit(fn)
            except (ValueError, RuntimeError, OSError, UncompletedJobError) as exc:
                raise ExecutorError(
                    f"could not submit cycle {spec.cycle} to Slurm ({self.backend} backend): {exc}; "
                    f"check [execution.slurm] and the job folder {self.folder}"
                ) from exc
        try:
            write_json_atomic(
                cycle_dir / JOB_FILE,
                {"job_id": job.job_id, "folder": str(self.folder), "backend": self.backend, "spec": spec.to_dict(),
                 "submitted_at": time.time(), "submission_file": str(job.paths.submission_file)},
            )
        except OSError as exc:
            job.cancel(check=False)
            raise ExecutorError(f"could not record job {job.job_id} in {cycle_dir / JOB_FILE}: {exc}; it was cancelled") from exc
        return SlurmTrialHandle(spec, job, self)

    def queue_state(self, job: submitit.Job[Any], *, force: bool) -> str:
        """The job's state from sacct, or from squeue where sacct has none. Call with ``lock`` held."""
        if self.sacct_enabled is not False:
            state = str(job.watcher.get_state(job.job_id, mode="force" if force else "cache")).upper()
            if state != "UNKNOWN" or not force:
                return state
            if self.sacct_enabled is None:
                self.sacct_enabled = _sacct_enabled()
                if not self.sacct_enabled:
                    log.info("sacct: Slurm accounting storage is disabled on this cluster; asking squeue for job states")
        state = _squeue_state(str(job.job_id))
        # Unknown to the controller: with accounting, sacct will know it (its database may lag).
        return "UNKNOWN" if state == _GONE and self.sacct_enabled is not False else state

    def rebuild_job(self, job_id: str, folder: str) -> submitit.Job[Any]:
        if self.backend == "local":
            return submitit.LocalJob(folder=folder, job_id=job_id)
        return submitit.SlurmJob(folder=folder, job_id=job_id)

    def recover(self, cycle_dir: Path) -> TrialResult | TrialHandle | None:
        """Re-attach to the cycle's job while it is queued or running; collect it once it ended."""
        path = Path(cycle_dir) / JOB_FILE
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            spec = spec_from_dict(info["spec"])
            job_id, folder = str(info["job_id"]), str(info["folder"])
        except FileNotFoundError:  # died before sbatch answered: nothing was queued for it
            return super().recover(cycle_dir)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ExecutorError(f"cannot read {path}: {exc}; delete it to run cycle {Path(cycle_dir).name} again") from exc
        with self.lock:
            job = self.rebuild_job(job_id, folder)
        handle = SlurmTrialHandle(spec, job, self, attached=True)
        return handle.poll() or handle


class SlurmTrialHandle(TrialHandle):
    """The loop's side of one job: the job's result file, the queue's state, the control file."""

    def __init__(self, spec: TrialSpec, job: submitit.Job[Any], ex: SlurmExecutor, *, attached: bool = False) -> None:
        self.spec = spec
        self.job = job
        self._ex = ex
        self.cycle_dir = Path(spec.cycle_dir)
        self._control = ControlFile(self.cycle_dir / CONTROL_FILE)
        self._result: TrialResult | None = None
        self._cancelling = False
        # Ask the queue at once on a re-attach, after poll_s for a fresh submission.
        self._asked_at = float("-inf") if attached else time.monotonic()

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)

    def poll(self) -> TrialResult | None:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> TrialResult | None:
        end = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            found = self._check()
            if found is not None:
                return found
            if end is not None and time.monotonic() >= end:
                return None
            time.sleep(_RESULT_POLL_S if end is None else max(0.0, min(_RESULT_POLL_S, end - time.monotonic())))

    def cancel(self) -> None:
        if self._check() is not None:
            return
        self._cancelling = True
        self._control.write(cancel=True)  # a job that starts later will not run the trial either
        state = self.state(force=True).split()[0]
        if state in _QUEUED:
            self._scancel("cancelled while queued in Slurm")
            return
        if state in _SUSPENDED:
            self._scancel(f"cancelled while {state.lower()} by Slurm")
            return
        deadline = time.monotonic() + self._ex.kill_grace_s + _CANCEL_MARGIN_S
        while time.monotonic() < deadline:
            if self._check(ask_queue=False) is not None:
                return
            time.sleep(0.1)
        self._scancel(f"the job did not stop within {self._ex.kill_grace_s + _CANCEL_MARGIN_S:.0f} s; scancel'ed")

    def suspend(self) -> None:
        if self._result is None:
            self._control.write(suspended=True)

    def resume(self) -> None:
        if self._result is None:
            self._control.write(suspended=False)

    # ------------------------------------------------------------------ internals

    def state(self, *, force: bool = False) -> str:
        """The job's state: Slurm's (sacct) or, for the local backend, its process."""
        with self._ex.lock:
            if self._ex.backend == "local":
                proc = getattr(self.job, "_process", None)
                if proc is not None:
                    return "RUNNING" if proc.poll() is None else "COMPLETED"
                return "RUNNING" if _pid_alive(int(self.job.job_id)) else "COMPLETED"
            return self._ex.queue_state(self.job, force=force)

    def _check(self, *, ask_queue: bool = True) -> TrialResult | None:
        """The result once the job ended: its own answer, or what the queue says happened."""
        if self._result is not None:
            return self._result
        if self.job.paths.result_pickle.exists():
            return self._settle(self._from_job())
        if not ask_queue or time.monotonic() - self._asked_at < (0 if self._ex.backend == "local" else self._ex.poll_s):
            return None
        self._asked_at = time.monotonic()
        state = self.state(force=True)
        if state.split()[0] in _ACTIVE:
            return None
        if self.job.paths.result_pickle.exists():  # ended between the two looks
            return self._settle(self._from_job())
        return self._settle(self._from_state(state))

    def _from_job(self) -> TrialResult:
        try:
            with self._ex.lock:
                raw = self.job.result()
            return TrialResult.from_dict(raw)
        except UncompletedJobError as exc:  # the job's function raised: a bug or a broken node
            return error_result(
                f"Slurm job {self.job_id} failed outside the trial: {str(exc)[-2000:]}; "
                f"job logs: {self.job.paths.stderr}"
            )

    def _from_state(self, state: str) -> TrialResult:
        """The job ended without its own result (killed by Slurm, scancel by hand, node failure)."""
        found = read_result(self.cycle_dir)  # the trial ended and wrote it; only the job's reply was lost
        if found is not None:
            return found
        reap_orphans(self.cycle_dir)  # local backend: what the dead job left on this machine
        word = state.split()[0] if state else "UNKNOWN"
        where = f"; job logs: {self.job.paths.stdout} and {self.job.paths.stderr}"
        now = time.time()
        if word == "CANCELLED" and self._cancelling:
            return TrialResult(status=TrialStatus.CANCELLED, failure=FailureClass.CANCELLED, started_at=now,
                               ended_at=now, message=f"Slurm job {self.job_id} cancelled")
        if word == "TIMEOUT":
            status, failure = TrialStatus.TIMEOUT, FailureClass.TIMEOUT
            why = f"hit its Slurm time limit ({self._ex.job_parameters(self.spec).get('time', '?')} min, execution.slurm.time_min)"
        elif word == "OUT_OF_MEMORY":
            status, failure, why = TrialStatus.FAILED, FailureClass.OOM, "ran out of memory (execution.slurm.mem_gb)"
        elif word == _GONE:
            status, failure = TrialStatus.FAILED, FailureClass.CRASH
            why = "left no result, and Slurm no longer knows the job (not in squeue; no accounting to ask)"
        else:
            status, failure, why = TrialStatus.FAILED, FailureClass.CRASH, f"ended as {state} without a result"
        return TrialResult(status=status, failure=failure, started_at=now, ended_at=now,
                           message=f"Slurm job {self.job_id} for cycle {self.spec.cycle} {why}{where}",
                           stderr_tail=read_tail(self.cycle_dir / "logs" / "stderr.log"))

    def _scancel(self, message: str) -> None:
        with self._ex.lock:
            self.job.cancel(check=False)
        if self._ex.backend == "local":
            reap_orphans(self.cycle_dir)
        found = self._check(ask_queue=False)
        if found is None:
            now = time.time()
            self._settle(TrialResult(status=TrialStatus.CANCELLED, failure=FailureClass.CANCELLED,
                                     started_at=now, ended_at=now, message=f"Slurm job {self.job_id} {message}"))

    def _settle(self, result: TrialResult) -> TrialResult:
        if self._result is None:
            self._result = result
            if read_result(self.cycle_dir) != result:
                try:
                    write_json_atomic(self.cycle_dir / RESULT_FILE, result.to_dict())
                except OSError as exc:
                    log.warning("could not write %s: %s", self.cycle_dir / RESULT_FILE, exc)
        return self._result


def _sacct_enabled() -> bool:
    """False where sacct says the cluster keeps no accounting (no slurmdbd); True otherwise."""
    try:
        proc = subprocess.run(["sacct", "-n", "-X", "-j", "1", "-o", "JobID"], capture_output=True, text=True,
                              timeout=_SLURM_CMD_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return True  # no verdict: keep asking sacct through submitit
    return not (proc.returncode != 0 and "accounting storage is disabled" in proc.stderr)


def _squeue_state(job_id: str) -> str:
    """The job's state from the controller (finished jobs stay there for MinJobAge, 300 s by default)."""
    try:
        proc = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%i|%T"], capture_output=True,
                              text=True, timeout=_SLURM_CMD_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("squeue about Slurm job %s failed: %s", job_id, exc)
        return "UNKNOWN"
    for line in proc.stdout.splitlines():
        found, _, state = line.strip().partition("|")
        if found == job_id and state:
            return state.strip().upper()
    if "Invalid job id" in proc.stderr:
        return _GONE
    if proc.returncode != 0:
        log.warning("squeue about Slurm job %s failed: %s", job_id, proc.stderr.strip()[-500:])
    return "UNKNOWN"


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] != b"Z"
