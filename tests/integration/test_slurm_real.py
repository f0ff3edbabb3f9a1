"""The Slurm executor against a real Slurm: a private single-node Slurm 22.05 cluster.

The cluster (``tests/executors/real_slurm.py``): this machine as one node with 2 CPUs, one
partition ``debug``, no accounting database (``sacct`` is disabled: the executor asks
``squeue``). The contract suite runs on it too (``slurm-real`` in test_executor_contract.py);
this module covers what only a real Slurm does: allocations, ``squeue``'s view, ``scancel``,
``scontrol requeue``, and the CLI's kill -9 / resume with two jobs running at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ralph_bg, recorded
from executors.real_slurm import RealSlurm, real_slurm, why_unavailable
from executors.support import PY, alive, kill_strays, make_spec, proc_state, wait_for
from ralph_ml.executors import get_executor
from ralph_ml.executors.slurm import SlurmExecutor
from ralph_ml.records import FailureClass, TrialResult, TrialStatus

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="executors need /proc"),
    pytest.mark.skipif(why_unavailable() is not None, reason=str(why_unavailable())),
]


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RealSlurm]:
    """The session's cluster, with ``SLURM_CONF`` set for this process and the ralph-ml it starts."""
    cluster = real_slurm()
    for k, v in cluster.env.items():
        monkeypatch.setenv(k, v)
    yield cluster
    cluster.cancel_all()
    kill_strays(tmp_path)


def _ex(tmp_path: Path, **kw: object) -> SlurmExecutor:
    ex = get_executor("slurm", **{"kill_grace_s": 1.0, "folder": str(tmp_path / "jobs"), "poll_s": 0.5,
                                  "partition": "debug", **kw})
    assert isinstance(ex, SlurmExecutor)
    return ex


def _squeue(cluster: RealSlurm, job_id: str) -> str:
    """The job's state as Slurm's controller has it (``--states=all``: finished ones too)."""
    return cluster.run("squeue", "-h", "--states=all", "-j", job_id, "-o", "%T", check=False).stdout.strip()


def _scontrol(cluster: RealSlurm, job_id: str) -> dict[str, str]:
    out = cluster.run("scontrol", "-o", "show", "job", job_id).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


SHOW_ENV = f"{PY} -c \"import os, json; print(json.dumps(dict(os.environ))); print('val_accuracy: 0.9')\""
SLEEPY = f"{PY} -c \"import os, time; open(os.environ['MARKS'] + '/ran_' + os.environ['RALPH_CYCLE'], 'w'); " \
    "time.sleep(600)\""


def test_the_job_runs_in_a_slurm_allocation_of_the_requested_size(slurm: RealSlurm, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, SHOW_ENV)
    handle = _ex(tmp_path, cpus_per_task=2, mem_gb=0.5, time_min=3).submit(spec)
    result = handle.wait(60)
    assert result is not None and result.status is TrialStatus.OK, result
    env = json.loads(_read(Path(spec.cycle_dir) / "logs" / "stdout.log").splitlines()[0])
    assert env["SLURM_JOB_ID"] == handle.job_id and env["SLURM_JOB_PARTITION"] == "debug"
    assert env["SLURM_CPUS_PER_TASK"] == "2" and env["SLURMD_NODENAME"] == slurm.node
    # What the controller granted (the answer comes before the job's own end).
    wait_for(lambda: _squeue(slurm, handle.job_id) == "COMPLETED", 30, "job completed")
    job = _scontrol(slurm, handle.job_id)
    assert job["NumCPUs"] == "2" and job["TimeLimit"] == "00:03:00"
    assert job["JobName"] == "ralph-run-test-c0001" and job["MinMemoryNode"] == "512M"


def test_a_queued_job_is_cancelled_at_once_and_never_runs(slurm: RealSlurm, tmp_path: Path) -> None:
    ex = _ex(tmp_path, cpus_per_task=2)  # each job takes the node's two CPUs: the second one waits
    running = ex.submit(make_spec(tmp_path, SLEEPY, cycle=1))
    queued = ex.submit(make_spec(tmp_path, SLEEPY, cycle=2))
    wait_for(lambda: (tmp_path / "ran_1").exists(), 60, "job 1 running")
    assert _squeue(slurm, queued.job_id) == "PENDING"
    assert queued.state(force=True) == "PENDING" and queued.poll() is None
    t0 = time.monotonic()
    queued.cancel()
    result = queued.wait(5)
    assert time.monotonic() - t0 < 10  # scancel'ed in the queue, not waited on as a running job
    assert result is not None and result.status is TrialStatus.CANCELLED and "cancelled while queued" in result.message
    wait_for(lambda: _squeue(slurm, queued.job_id) == "CANCELLED", 30, "the queue dropped the job")
    running.cancel()
    assert (res := running.wait(10)) is not None and res.status is TrialStatus.CANCELLED
    assert not (tmp_path / "ran_2").exists()


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    return int(data[data.rindex(b")") + 2 :].split()[1])


def test_a_job_that_dies_without_answering_is_recorded_with_the_queues_verdict(slurm: RealSlurm, tmp_path: Path) -> None:
    # No accounting on this cluster: sacct cannot say how the job ended, squeue must.
    handle = _ex(tmp_path).submit(make_spec(tmp_path, f"echo $$ > \"$MARKS/pid\"; exec {SLEEPY}"))
    wait_for(lambda: (tmp_path / "ran_1").exists(), 60, "job running")
    trial_pid = int(_read(tmp_path / "pid"))
    job_python = _parent(trial_pid)  # the job's process (submitit), which would write the answer
    assert f"SLURM_JOB_ID={handle.job_id}".encode() in Path(f"/proc/{job_python}/environ").read_bytes()
    os.kill(job_python, signal.SIGKILL)  # what the OOM killer or a broken node does
    result = handle.wait(60)
    assert result is not None and result.status is TrialStatus.FAILED and result.failure is FailureClass.CRASH
    assert f"Slurm job {handle.job_id} for cycle 1 ended as FAILED without a result" in result.message
    assert "_log.err" in result.message  # where to look
    assert _squeue(slurm, handle.job_id) == "FAILED"
    wait_for(lambda: not alive(trial_pid), 30, "the orphaned trial killed by slurmstepd")


def test_a_job_slurm_no_longer_knows_is_recorded_as_lost_on_resume(slurm: RealSlurm, tmp_path: Path) -> None:
    # A resume long after a job died without a result: the controller purged it (MinJobAge) and
    # there is no accounting. Stand-in: a job id this cluster never gave out.
    spec = make_spec(tmp_path, "true")
    handle = _ex(tmp_path).submit(spec)
    assert handle.wait(60) is not None
    job_file = Path(spec.cycle_dir) / "slurm_job.json"
    info = json.loads(job_file.read_text())
    job_file.write_text(json.dumps({**info, "job_id": "99999999"}))
    for stale in ("result.json", "logs/stderr.log"):
        (Path(spec.cycle_dir) / stale).unlink()
    found = _ex(tmp_path).recover(Path(spec.cycle_dir))
    assert isinstance(found, TrialResult), found
    assert found.status is TrialStatus.FAILED and "Slurm no longer knows the job" in found.message


RELEASED = f"{PY} -c \"import os, time; open(os.environ['MARKS'] + '/started', 'w'); " \
    "[time.sleep(0.05) for _ in iter(lambda: os.path.exists(os.environ['MARKS'] + '/release'), True)]; " \
    "print('val_accuracy: 0.8')\""


def test_a_job_suspended_by_an_operator_is_still_in_flight(slurm: RealSlurm, tmp_path: Path) -> None:
    handle = _ex(tmp_path, poll_s=0.01).submit(make_spec(tmp_path, f"echo $$ > \"$MARKS/pid\"; exec {RELEASED}"))
    wait_for(lambda: (tmp_path / "started").exists(), 60, "job running")
    trial_pid = int(_read(tmp_path / "pid"))
    slurm.run("scontrol", "suspend", handle.job_id)  # SIGSTOP to the job's processes; its CPUs stay held
    wait_for(lambda: _squeue(slurm, handle.job_id) == "SUSPENDED", 30, "job suspended")
    wait_for(lambda: proc_state(trial_pid) == "T", 30, "the trial stopped")
    for _ in range(5):  # each poll asks the queue (poll_s = 0.01): SUSPENDED is not an end
        assert handle.poll() is None and handle.state(force=True) == "SUSPENDED"
    slurm.run("scontrol", "resume", handle.job_id)
    (tmp_path / "release").touch()
    result = handle.wait(60)
    assert result is not None and result.status is TrialStatus.OK and result.metrics["val_accuracy"] == 0.8, result
    # A suspended job cannot read a cancel request: it is scancel'ed at once.
    other = _ex(tmp_path).submit(make_spec(tmp_path, SLEEPY, cycle=2))
    wait_for(lambda: (tmp_path / "ran_2").exists(), 60, "job 2 running")
    slurm.run("scontrol", "suspend", other.job_id)
    wait_for(lambda: other.state(force=True) == "SUSPENDED", 30, "job 2 suspended")
    t0 = time.monotonic()
    other.cancel()
    cancelled = other.wait(5)
    assert time.monotonic() - t0 < 10
    assert cancelled is not None and cancelled.status is TrialStatus.CANCELLED, cancelled
    assert "cancelled while suspended by Slurm" in cancelled.message
    wait_for(lambda: _squeue(slurm, other.job_id) == "CANCELLED", 30, "job 2 cancelled in Slurm")


def test_an_operators_scancel_ends_the_trial_and_is_recorded(slurm: RealSlurm, tmp_path: Path) -> None:
    handle = _ex(tmp_path).submit(make_spec(tmp_path, f"echo $$ > \"$MARKS/pid\"; exec {SLEEPY}"))
    wait_for(lambda: (tmp_path / "ran_1").exists(), 60, "job running")
    trial_pid = int(_read(tmp_path / "pid"))
    slurm.run("scancel", handle.job_id)  # an operator, not ralph-ml: SIGTERM, KillWait, SIGKILL
    result = handle.wait(60)
    assert result is not None and result.status is TrialStatus.FAILED and result.failure is FailureClass.CRASH
    # Either the job answered (its trial got Slurm's SIGTERM) or Slurm's SIGKILL beat it.
    assert "was killed by SIGTERM" in result.message or "ended as CANCELLED" in result.message, result.message
    wait_for(lambda: not alive(trial_pid), 10, "the trial's processes gone with the job")
    wait_for(lambda: _squeue(slurm, handle.job_id) == "CANCELLED", 30, "the queue's verdict")


# A trial that runs until it is stopped on its first run and ends at once on a later one;
# every run appends its attempt to $MARKS/ledger.
RERUN = """\
import os, time
marks = os.environ["MARKS"]
with open(os.path.join(marks, "ledger"), "a") as fh:
    fh.write(os.environ["SLURM_JOB_ID"] + " " + str(os.getpid()) + "\\n")
ckpt = os.path.join(os.environ["RALPH_CHECKPOINT_DIR"], "state.txt")
if os.path.exists(ckpt):
    print("resumed from", open(ckpt).read())
    print("val_accuracy: 0.75")
else:
    open(ckpt, "w").write("epoch 3")
    time.sleep(600)
"""


def _ledger(tmp_path: Path) -> list[list[str]]:
    return [line.split() for line in _read(tmp_path / "ledger").splitlines()]


def test_a_preempted_job_is_requeued_by_scontrol_and_resumes_from_its_checkpoint(slurm: RealSlurm, tmp_path: Path) -> None:
    handle = _ex(tmp_path).submit(make_spec(tmp_path, f"{PY} train.py", files={"train.py": RERUN}))
    wait_for(lambda: len(_ledger(tmp_path)) == 1, 60, "first attempt running")
    first_pid = int(_ledger(tmp_path)[0][1])
    # What Slurm does before preempting: signal the job's steps (submitit asked for USR2); the job
    # checkpoints and calls the real `scontrol requeue` on itself.
    slurm.run("scancel", "--signal", "USR2", handle.job_id)
    result = handle.wait(90)
    assert result is not None and result.status is TrialStatus.OK, result
    assert result.metrics["val_accuracy"] == 0.75 and "preempted and requeued 1 time(s)" in result.message
    assert [row[0] for row in _ledger(tmp_path)] == [handle.job_id] * 2  # the same job ran it twice
    assert not alive(first_pid)
    assert _scontrol(slurm, handle.job_id)["Restarts"] == "1"
    assert "resumed from epoch 3" in _read(Path(handle.spec.cycle_dir) / "logs" / "stdout.log")


# --------------------------------------------------------------------------- the real CLI

TRIAL = """
import os, time
cycle = os.environ["RALPH_CYCLE"]
with open(os.environ["LEDGER"], "a") as fh:
    fh.write(cycle + " " + os.environ["SLURM_JOB_ID"] + "\\n")
gate = os.path.join(os.environ["GATES"], "release_" + cycle)
while int(cycle) <= 2 and not os.path.exists(gate):
    time.sleep(0.05)
print(f"val_accuracy: {0.5 + int(cycle) / 100}")
"""


def test_cli_two_jobs_at_once_kill9_then_resume_reattaches_and_collects(slurm: RealSlurm, exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ledger, gates = tmp_path / "ledger.txt", tmp_path / "gates"
    gates.mkdir()
    root = exp(
        TRIAL, target=0.99,
        safeguards={"max_cycles": 3, "no_improvement_stop_cycles": 10},
        execution={"mode": "slurm", "max_concurrency": 2, "env": {"LEDGER": str(ledger), "GATES": str(gates)}},
        extra={"execution.slurm": {"partition": "debug", "poll_s": 0.5}},
    )
    proc = ralph_bg(root, "start")
    try:
        wait_for(lambda: sorted(r[0] for r in _rows(ledger)) == ["1", "2"], 90, "cycles 1 and 2 running as jobs")
        ids = {r[0]: r[1] for r in _rows(ledger)}
        # Both jobs hold one of the node's two CPUs at the same time.
        assert {_squeue(slurm, ids["1"]), _squeue(slurm, ids["2"])} == {"RUNNING"}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert recorded(root) == []
    (gates / "release_1").touch()  # job 1 ends while no loop exists; job 2 keeps running
    wait_for(lambda: _squeue(slurm, ids["1"]) == "COMPLETED", 60, "job 1 finished")
    assert _squeue(slurm, ids["2"]) == "RUNNING"
    resumed = ralph_bg(root, "resume")
    try:
        wait_for(lambda: len([e for e in _events(root) if e.get("kind") == "recovered"]) == 2, 60, "both recovered")
        (gates / "release_2").touch()
        out, err = resumed.communicate(timeout=120)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert resumed.returncode == 2, out + err  # max_cycles reached
    how = {e["cycle"]: e["how"] for e in _events(root) if e.get("kind") == "recovered"}
    assert how == {1: "collected", 2: "re-attached"}
    recs = recorded(root)
    assert [r["cycle"] for r in recs] == [1, 2, 3]
    assert [r["result"]["metrics"]["val_accuracy"] for r in recs] == [0.51, 0.52, 0.53]
    rows = _rows(ledger)
    assert sorted(r[0] for r in rows) == ["1", "2", "3"]  # each trial ran once
    # ... in the job recorded for its cycle, and the cluster got exactly these three jobs from this run.
    for cycle, job_id in rows:
        info = json.loads(_read(root / "runs" / f"cycle_{int(cycle):04d}" / "slurm_job.json"))
        assert info["job_id"] == job_id and _squeue(slurm, job_id) == "COMPLETED"
    mine = [line.split("|")[0] for line in slurm.run("squeue", "-h", "--states=all", "-o", "%i|%o").stdout.splitlines()
            if str(root / "runs" / "slurm") in line]
    assert sorted(mine) == sorted(r[1] for r in rows)


def _rows(path: Path) -> list[list[str]]:
    return [line.split() for line in _read(path).splitlines() if line.strip()]


def _events(root: Path) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for line in _read(root / "state" / "events.jsonl").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_cli_an_operators_requeue_runs_the_trial_again_and_the_cycle_is_recorded_once(  # type: ignore[no-untyped-def]
    slurm: RealSlurm, exp, tmp_path: Path
) -> None:
    root = exp(
        RERUN, target=0.99, safeguards={"max_cycles": 1},
        execution={"mode": "slurm", "env": {"MARKS": str(tmp_path)}},
        extra={"execution.slurm": {"partition": "debug", "poll_s": 0.5}},
    )
    proc = ralph_bg(root, "start")
    try:
        wait_for(lambda: len(_ledger(tmp_path)) == 1, 90, "cycle 1 running")
        job_id, first_pid = _ledger(tmp_path)[0]
        slurm.run("scontrol", "requeue", job_id)  # back to the queue; Slurm runs the job from the start
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out + err  # max_cycles reached
    recs = recorded(root)
    assert len(recs) == 1 and recs[0]["result"]["status"] == "ok", recs
    assert recs[0]["result"]["metrics"]["val_accuracy"] == 0.75  # the second run, from the checkpoint
    assert "ran 2 times: the Slurm job was requeued 1 time(s)" in recs[0]["result"]["message"]
    assert [row[0] for row in _ledger(tmp_path)] == [job_id] * 2  # the same job ran the trial twice
    assert not alive(int(first_pid)) and _scontrol(slurm, job_id)["Restarts"] == "1"
    # Requeued once more after it finished (the loop has recorded it): the job runs again but
    # answers with the result it has, without running the trial a third time.
    wait_for(lambda: _squeue(slurm, job_id) == "COMPLETED", 30, "job completed")
    slurm.run("scontrol", "requeue", job_id)
    wait_for(lambda: _scontrol(slurm, job_id)["Restarts"] == "2", 30, "second requeue")
    wait_for(lambda: _squeue(slurm, job_id) == "COMPLETED", 90, "the requeued job completed again")
    assert len(_ledger(tmp_path)) == 2 and len(recorded(root)) == 1
    assert json.loads(_read(root / "runs" / "cycle_0001" / "result.json"))["metrics"]["val_accuracy"] == 0.75
