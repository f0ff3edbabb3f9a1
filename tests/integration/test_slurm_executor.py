"""The Slurm executor: submitit's real SlurmExecutor/SlurmJob against the fake Slurm binaries.

``tests/fake_slurm/bin`` has sbatch, sacct, squeue, scancel, scontrol and srun (a FIFO queue
over ``$FAKE_SLURM_CPUS`` CPUs on this machine); nothing of ralph-ml or submitit is faked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ralph_bg, recorded
from executors.support import GATED_TRIAL, PY, alive, fake_slurm_env, kill_strays, make_spec, read_text, run_events, wait_for
from ralph_ml.errors import ExecutorError
from ralph_ml.executors import TrialHandle, get_executor
from ralph_ml.executors.slurm import SlurmExecutor, SlurmTrialHandle
from ralph_ml.records import FailureClass, TrialStatus

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="executors need /proc")


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fake cluster's state folder (jobs/<id>.json), with the binaries on PATH."""
    state = tmp_path / "slurm-state"
    for k, v in fake_slurm_env(state, FAKE_SLURM_CPUS="4").items():
        monkeypatch.setenv(k, v)
    yield state
    kill_strays(tmp_path)


def _ex(tmp_path: Path, **kw: object) -> SlurmExecutor:
    ex = get_executor("slurm", kill_grace_s=1.0, folder=str(tmp_path / "jobs"), poll_s=0.5, **kw)
    assert isinstance(ex, SlurmExecutor)
    return ex


def _job(state: Path, job_id: str) -> dict:  # type: ignore[type-arg]
    return json.loads((state / "jobs" / f"{job_id}.json").read_text())


def test_the_sbatch_script_carries_every_configured_option(slurm: Path, tmp_path: Path) -> None:
    ex = _ex(
        tmp_path, partition="gpu", time_min=30, gpus_per_node=2, cpus_per_task=4, mem_gb=8,
        additional_parameters={"account": "ml-team", "qos": "high", "exclusive": True},
        setup=["export FROM_SETUP=yes"],
    )
    spec = make_spec(tmp_path, f"{PY} -c \"import os; print('val_accuracy: 0.9'); print(os.environ['FROM_SETUP'], "
                               "os.environ['SLURM_JOB_PARTITION'], os.environ['SLURM_CPUS_PER_TASK'])\"")
    handle = ex.submit(spec)
    result = handle.wait(60)
    assert result is not None and result.status is TrialStatus.OK, result
    script = Path(handle.job.paths.submission_file).read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=8GB", "#SBATCH --account=ml-team", "#SBATCH --qos=high",
                 "#SBATCH --exclusive", "#SBATCH --job-name=ralph-run-test-c0001", "#SBATCH --signal=USR2@90",
                 "export FROM_SETUP=yes"):
        assert line in script.splitlines(), f"{line!r} not in\n{script}"
    assert "srun --unbuffered" in script and "-m submitit.core._submit" in script
    # The queue saw the same request, and the job ran with what it asked for.
    opts = _job(slurm, handle.job_id)["options"]
    assert (opts["partition"], opts["time"], opts["cpus-per-task"], opts["mem"]) == ("gpu", "30", "4", "8GB")
    assert "yes gpu 4" in (Path(spec.cycle_dir) / "logs" / "stdout.log").read_text()
    # Where the job is recorded for a resume.
    info = json.loads((Path(spec.cycle_dir) / "slurm_job.json").read_text())
    assert info["job_id"] == handle.job_id and info["folder"] == str(tmp_path / "jobs")


def test_the_default_time_limit_follows_the_cycle_limit(slurm: Path, tmp_path: Path) -> None:
    handle = _ex(tmp_path).submit(make_spec(tmp_path, "true", timeout_s=600))
    assert handle.wait(60) is not None
    assert "#SBATCH --time=15" in Path(handle.job.paths.submission_file).read_text()  # 10 min + 5 min margin


CHECKPOINTED = """\
import os, time
ckpt = os.path.join(os.environ["RALPH_CHECKPOINT_DIR"], "state.txt")
marks = os.environ["MARKS"]
if os.path.exists(ckpt):  # a requeued run resumes from its checkpoint
    print("resumed from", open(ckpt).read())
    print("val_accuracy: 0.75")
else:
    open(ckpt, "w").write("epoch 3")
    open(os.path.join(marks, "attempt1"), "w").write(str(os.getpid()))
    time.sleep(600)
"""


def test_a_preempted_job_is_requeued_and_the_trial_resumes_from_its_checkpoint(slurm: Path, tmp_path: Path) -> None:
    handle = _ex(tmp_path).submit(make_spec(tmp_path, f"{PY} train.py", files={"train.py": CHECKPOINTED}))
    pid = int(wait_for(lambda: read_text(tmp_path / "attempt1"), 60, "first attempt running"))
    # What Slurm does before preempting: signal the job's steps (submitit asked for USR2).
    subprocess.run(["scancel", "--signal", "USR2", handle.job_id], check=True)
    result = handle.wait(90)
    assert result is not None and result.status is TrialStatus.OK, result
    assert result.metrics["val_accuracy"] == 0.75
    assert "preempted and requeued 1 time(s)" in result.message
    assert not alive(pid)  # the first attempt's trial was stopped before the requeue
    assert _job(slurm, handle.job_id)["restarts"] == 1
    assert "resumed from epoch 3" in (Path(handle.spec.cycle_dir) / "logs" / "stdout.log").read_text()


SLEEPY = f"{PY} -c \"import os, time; open(os.environ['MARKS'] + '/ran_' + os.environ['RALPH_CYCLE'], 'w'); " \
    "time.sleep(float(os.environ.get('SLEEP_S', '600'))); print('val_accuracy: 0.5')\""


def test_a_queued_job_is_cancelled_without_ever_running(slurm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SLURM_CPUS", "1")
    ex = _ex(tmp_path)
    running = ex.submit(make_spec(tmp_path, SLEEPY, cycle=1))
    queued = ex.submit(make_spec(tmp_path, SLEEPY, cycle=2))
    wait_for(lambda: (tmp_path / "ran_1").exists(), 60, "job 1 running")
    assert queued.state(force=True) == "PENDING" and queued.poll() is None
    queued.cancel()
    res = queued.wait(5)
    assert res is not None and res.status is TrialStatus.CANCELLED and "cancelled while queued" in res.message
    running.cancel()
    assert running.wait(5) is not None
    assert not (tmp_path / "ran_2").exists() and _job(slurm, queued.job_id)["state"].startswith("CANCELLED")


def test_resume_reattaches_to_a_queued_job_then_follows_it_to_its_end(
    slurm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SLURM_CPUS", "1")
    ex = _ex(tmp_path)
    first = ex.submit(make_spec(tmp_path, SLEEPY, cycle=1))
    spec2 = make_spec(tmp_path, SLEEPY, cycle=2, env={"SLEEP_S": "0.2"})
    ex.submit(spec2)  # and the loop dies: only runs/cycle_0002/slurm_job.json knows about it
    wait_for(lambda: (tmp_path / "ran_1").exists(), 60, "job 1 running")
    found = _ex(tmp_path).recover(Path(spec2.cycle_dir))
    assert isinstance(found, SlurmTrialHandle) and found.state(force=True) == "PENDING"
    first.cancel()  # frees the CPU: the queued job starts now
    result = found.wait(60)
    assert result is not None and result.status is TrialStatus.OK and result.metrics["val_accuracy"] == 0.5
    assert len(list((slurm / "jobs").glob("*.json"))) == 2  # never submitted again


def test_an_operators_scancel_is_the_trials_sigterm(slurm: Path, tmp_path: Path) -> None:
    handle = _ex(tmp_path).submit(make_spec(tmp_path, SLEEPY))
    wait_for(lambda: (tmp_path / "ran_1").exists(), 60, "job running")
    subprocess.run(["scancel", handle.job_id], check=True)  # an operator, not ralph-ml
    result = handle.wait(30)
    assert result is not None and result.status is TrialStatus.FAILED and result.failure is FailureClass.CRASH
    assert "was killed by SIGTERM" in result.message  # the job answered: its trial got Slurm's SIGTERM


def test_a_job_that_dies_without_answering_is_recorded_with_the_queues_verdict(slurm: Path, tmp_path: Path) -> None:
    handle = _ex(tmp_path).submit(make_spec(tmp_path, f"echo $$ > \"$MARKS/pid\"; exec {SLEEPY}"))
    wait_for(lambda: (tmp_path / "ran_1").exists(), 60, "job running")
    trial_pid = int(read_text(tmp_path / "pid"))
    subprocess.run(["scancel", "--signal", "KILL", handle.job_id], check=True)  # the job's python dies at once
    result = handle.wait(30)
    assert result is not None and result.status is TrialStatus.FAILED and result.failure is FailureClass.CRASH
    assert f"Slurm job {handle.job_id} for cycle 1 ended as FAILED without a result" in result.message
    assert "_log.err" in result.message  # where to look
    wait_for(lambda: not alive(trial_pid), 10, "the orphaned trial stopped")


def test_an_unknown_partition_is_refused_with_sbatchs_reason(slurm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SLURM_PARTITIONS", "debug,gpu")
    with pytest.raises(ExecutorError) as err:
        _ex(tmp_path, partition="nope").submit(make_spec(tmp_path, "true"))
    assert "invalid partition specified: nope" in str(err.value) and "[execution.slurm]" in str(err.value)


def test_without_slurm_on_path_the_error_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "no-slurm").mkdir()  # not /usr/bin: `make test` installs a real Slurm there
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))
    with pytest.raises(ExecutorError) as err:
        _ex(tmp_path)
    assert "srun" in str(err.value) and 'backend = "local"' in str(err.value)


# --------------------------------------------------------------------------- the real CLI



def test_cli_kill9_then_resume_reattaches_to_the_slurm_jobs(slurm: Path, exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ledger, gates = tmp_path / "ledger.txt", tmp_path / "gates"
    gates.mkdir()
    root = exp(
        GATED_TRIAL, target=0.99,
        safeguards={"max_cycles": 3, "no_improvement_stop_cycles": 10},
        execution={"mode": "slurm", "max_concurrency": 2, "env": {"LEDGER": str(ledger), "GATES": str(gates)}},
        # with a pruner on, the re-attached trial gets its pruning session too (it once crashed the loop)
        extra={"execution.slurm": {"partition": "debug", "poll_s": 0.5}, "pruning": {"pruner": "median"}},
    )
    proc = ralph_bg(root, "start")
    try:
        wait_for(lambda: sorted(read_text(ledger).split()) == ["1", "2"], 90, "cycles 1 and 2 running as jobs")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    (gates / "release_1").touch()  # job 1 ends while no loop exists; job 2 keeps running
    wait_for(lambda: (root / "runs" / "cycle_0001" / "result.json").exists(), 30, "job 1 finished")
    resumed = ralph_bg(root, "resume")
    try:
        wait_for(lambda: len(run_events(root, "recovered")) == 2, 60, "both recovered")
        (gates / "release_2").touch()
        out, err = resumed.communicate(timeout=120)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert resumed.returncode == 2, out + err
    how = {e["cycle"]: e["how"] for e in run_events(root, "recovered")}
    assert how == {1: "collected", 2: "re-attached"}
    assert [r["cycle"] for r in recorded(root)] == [1, 2, 3]
    assert sorted(read_text(ledger).split()) == ["1", "2", "3"]  # each trial ran once
    assert len(list((slurm / "jobs").glob("*.json"))) == 3  # and was submitted once
    assert (root / "runs" / "slurm").is_dir()  # execution.slurm.folder, relative to the experiment


PRUNED_ON_THE_CLUSTER = """
import math, os, time
from ralph_ml import trial
p = trial.params({"x": 0.7})
top = 1 - (p["x"] - 0.7) ** 2        # the baseline x = 0.7 has the best curve at every step
cycle, gates = os.environ["RALPH_CYCLE"], os.environ["GATES"]
acc = 0.0
for step in range(20):
    acc = top * (1 - math.exp(-(step + 1) / 3))
    if trial.report(step, val_accuracy=acc):   # the pruner asked it to stop: it listens, once let go
        open(os.path.join(gates, "asked_" + cycle), "w").close()
        while not os.path.exists(os.path.join(gates, "release_" + cycle)):
            time.sleep(0.05)
        break
    time.sleep(0.1)
trial.log_metrics(val_accuracy=acc, steps_done=step + 1)
"""


def test_a_job_pruned_before_a_kill9_is_recorded_pruned_when_resume_collects_it(slurm: Path, exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The pruner asks cycle 2 to stop, the loop dies, the job listens and ends while no loop
    exists: resume collects an ok result.json, which must still be recorded as pruned (its
    metric is that of a trial cut short), not as a trial that ran to its end."""
    gates = tmp_path / "gates"
    gates.mkdir()
    root = exp(
        PRUNED_ON_THE_CLUSTER, target=1.5, space={"x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.7}},
        safeguards={"max_cycles": 2, "no_improvement_stop_cycles": 10},
        execution={"mode": "slurm", "env": {"GATES": str(gates)}},
        extra={"execution.slurm": {"partition": "debug", "poll_s": 0.5},
               "pruning": {"pruner": "median", "n_startup_trials": 1, "n_warmup_steps": 2, "grace_s": 60}},
    )
    proc = ralph_bg(root, "start")
    try:
        wait_for(lambda: (gates / "asked_2").exists(), 90, "cycle 2 asked to stop by the pruner")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    request = json.loads((root / "runs" / "cycle_0002" / "control.json").read_text())
    assert request["by"] == "pruner" and request["action"] == "stop"
    (gates / "release_2").touch()  # the job ends while no loop exists
    wait_for(lambda: (root / "runs" / "cycle_0002" / "result.json").exists(), 30, "job 2 finished")
    assert json.loads((root / "runs" / "cycle_0002" / "result.json").read_text())["status"] == "ok"
    resumed = ralph_bg(root, "resume")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 2, out + err
    assert {e["cycle"]: e["how"] for e in run_events(root, "recovered")} == {2: "collected"}
    first, second = recorded(root)
    assert first["result"]["status"] == "ok" and first["result"]["metrics"]["steps_done"] == 20
    res = second["result"]
    assert res["status"] == "pruned" and second["verdict"] == "pruned" and not second["kept"], res
    assert res["stopped_by"] == "pruner" and res["stopped_at_step"] == request["step"]
    last = json.loads((root / "runs" / "cycle_0002" / "progress.jsonl").read_text().splitlines()[-1])["step"]
    went_on = f"; it stopped after step {last}" if last > request["step"] else ""
    assert res["message"] == f"pruned at step {request['step']}: {request['reason']}{went_on}"
    assert 0 < res["metrics"]["steps_done"] < 20  # its partial metrics are kept
    assert f"pruned at step {request['step']} · val_accuracy: " in out


def test_handles_are_trial_handles(slurm: Path, tmp_path: Path) -> None:
    handle = _ex(tmp_path, backend="local").submit(make_spec(tmp_path, "echo val_accuracy: 1"))
    assert isinstance(handle, TrialHandle)
    result = handle.wait(60)
    assert result is not None and result.status is TrialStatus.OK and os.path.exists(handle.job.paths.result_pickle)
