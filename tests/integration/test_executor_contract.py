"""One contract, every executor: the same trials through local, Ray and Slurm.

Backends (all real): ``local`` (subprocess group), ``local-warm`` (the same with
``execution.preload``: ``python script.py`` trials forked from the warm-start server), ``ray`` (a detached actor per trial on a
two-node Ray cluster started by the tests, shared filesystem), ``ray-ship`` (the code goes
through Ray's object store to a private folder, files come back), ``slurm`` (submitit's
SlurmExecutor and SlurmJob against the fake sbatch/sacct/scancel/scontrol/srun),
``slurm-local`` (the same jobs through submitit's LocalExecutor), and ``slurm-real`` (a
private single-node Slurm 22.05 started by the tests: ``tests/executors/real_slurm.py``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from executors.real_slurm import real_slurm, why_unavailable
from executors.support import (
    HANG_SH,
    PY,
    RAY_NAMESPACE,
    alive,
    fake_slurm_env,
    kill_strays,
    make_spec,
    proc_state,
    ray_cluster,
    read_pids,
    wait_for,
)
from ralph_ml.executors import Executor, LocalExecutor, TrialHandle, get_executor
from ralph_ml.records import FailureClass, TrialResult, TrialStatus

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="executors need /proc")

ALL = ["local", "local-warm", "ray", "ray-ship", "slurm", "slurm-local", "slurm-real"]


@dataclass
class Backend:
    name: str
    make: Callable[[], Executor]  # a fresh executor, as a restarted loop builds it

    @property
    def reattaches(self) -> bool:
        """Remote backends find a trial again after the loop's death; local re-runs it."""
        return not self.name.startswith("local")


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    name: str = request.param
    made: list[Executor] = []

    def factory() -> Executor:
        if name == "local":
            ex: Executor = LocalExecutor(kill_grace_s=1.0)
        elif name == "local-warm":
            ex = LocalExecutor(kill_grace_s=1.0, preload=["decimal"])
        elif name.startswith("ray"):
            ray_cluster()
            ex = get_executor(
                "ray", kill_grace_s=1.0, namespace=RAY_NAMESPACE, sync_interval_s=0.2,
                code_transfer="ship" if name == "ray-ship" else "shared", worker_dir=str(tmp_path / "ray-worker"),
            )
        else:
            ex = get_executor(
                "slurm", kill_grace_s=1.0, folder=str(tmp_path / "slurm-jobs"), poll_s=0.5,
                backend="local" if name == "slurm-local" else "slurm", partition="debug",
            )
        made.append(ex)
        return ex

    if name == "slurm":
        for k, v in fake_slurm_env(tmp_path / "slurm-state").items():
            monkeypatch.setenv(k, v)
    elif name == "slurm-real":
        if why_unavailable():
            pytest.skip(why_unavailable())
        for k, v in real_slurm().env.items():
            monkeypatch.setenv(k, v)
    yield Backend(name, factory)
    if name == "slurm-real":
        real_slurm().cancel_all()  # nothing of this test holds the node's CPUs for the next one
    if name.startswith("ray"):
        import ray

        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["namespace"] == RAY_NAMESPACE:
                ray.kill(ray.get_actor(actor["name"], namespace=RAY_NAMESPACE))
    for ex in made:
        ex.close()
    kill_strays(tmp_path)


def finish(handle: TrialHandle, timeout_s: float = 60.0) -> TrialResult:
    result = handle.wait(timeout_s)
    assert result is not None, "the trial did not end in time"
    return result


def on_disk(spec_cycle_dir: str) -> TrialResult:
    return TrialResult.from_dict(json.loads((Path(spec_cycle_dir) / "result.json").read_text()))


# --------------------------------------------------------------------------- runs and results

OK_TRAIN = """\
import json, os, sys
from ralph_ml import trial
seen = {k: os.environ.get(k) for k in ("RALPH_RUN_ID", "RALPH_CYCLE", "RALPH_TRIAL_TOKEN")}
seen["cwd_has_code"] = os.path.exists("train.py")
seen["params"] = json.load(open(os.environ["RALPH_PARAMS"]))
print(json.dumps(seen), flush=True)
print("warming up", file=sys.stderr)
for step in range(3):
    trial.report(step, loss=1.0 / (step + 1))
open(os.path.join(os.environ["RALPH_CHECKPOINT_DIR"], "last.ckpt"), "wb").write(b"weights" * 1000)
trial.log_metrics(val_accuracy=0.9, train_loss=0.1)
print("train_loss: 0.1")
"""


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_ok_trial_collects_metrics_logs_progress_and_checkpoints(backend: Backend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, f"{PY} train.py", eval_cmd=f"{PY} -c \"print('val_loss: 0.25')\"", files={"train.py": OK_TRAIN})
    # What an attempt interrupted after stopping at its target left: not this attempt's.
    (Path(spec.cycle_dir) / "stopped.json").write_text('{"by": "target", "step": 7}')
    handle = backend.make().submit(spec)
    result = finish(handle)
    assert result.status is TrialStatus.OK and result.failure is FailureClass.NONE, result.message
    assert result.metrics["val_accuracy"] == pytest.approx(0.9)
    assert result.exit_code == 0 and result.train_seconds > 0 and result.ended_at >= result.started_at
    # What the loop reads afterwards is in the driver's cycle folder, whatever the backend.
    cdir = Path(spec.cycle_dir)
    assert on_disk(spec.cycle_dir) == result
    seen = json.loads((cdir / "logs" / "stdout.log").read_text().splitlines()[0])
    assert seen["RALPH_RUN_ID"] == "run-test" and seen["RALPH_CYCLE"] == "1" and seen["RALPH_TRIAL_TOKEN"]
    assert seen["cwd_has_code"] is True and seen["params"] == {"x": 0.5}
    assert "val_loss: 0.25" in (cdir / "logs" / "stdout.log").read_text()  # eval_cmd ran after train
    assert "warming up" in (cdir / "logs" / "stderr.log").read_text()
    assert [json.loads(x)["step"] for x in (cdir / "progress.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert (cdir / "checkpoints" / "last.ckpt").read_bytes() == b"weights" * 1000
    assert json.loads((cdir / "metrics.json").read_text())["result"]["val_accuracy"] == 0.9
    assert (result.stopped_by, result.stopped_at_step) == ("", None)  # it ran to its end
    # The handle is futures-shaped: the same result again, without blocking.
    assert handle.poll() == result and handle.done() and handle.wait(0) == result


RISING = """\
from ralph_ml import trial
for step in range(10):
    acc = 0.5 + 0.1 * step
    if trial.report(step, val_accuracy=acc):
        break
trial.log_metrics(val_accuracy=acc, steps_done=step + 1)
"""


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_a_trial_stopped_at_its_target_says_at_which_step(backend: Backend, tmp_path: Path) -> None:
    """``trial.report`` stops the curve 0.5, 0.6, ... at step 3 (0.8 >= 0.75) and leaves
    stopped.json in the cycle folder; the result says ``stopped_by = "target"`` at step 3, on
    the driver's side too (ray-ship brings it back from the worker's private folder)."""
    target = json.dumps({"name": "val_accuracy", "value": 0.75, "direction": "maximize"})
    spec = make_spec(tmp_path, f"{PY} train.py", files={"train.py": RISING}, env={"RALPH_STOP_AT_TARGET": target})
    result = finish(backend.make().submit(spec))
    assert result.status is TrialStatus.OK, result.message
    assert result.metrics["steps_done"] == 4 and result.metrics["val_accuracy"] == pytest.approx(0.8)
    assert (result.stopped_by, result.stopped_at_step) == ("target", 3)
    assert on_disk(spec.cycle_dir) == result
    assert json.loads((Path(spec.cycle_dir) / "stopped.json").read_text())["step"] == 3


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_failed_trial_reports_exit_code_and_stderr(backend: Backend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, f"{PY} -c \"import sys; print('boom: bad batch', file=sys.stderr); sys.exit(3)\"")
    result = finish(backend.make().submit(spec))
    assert result.status is TrialStatus.FAILED and result.failure is FailureClass.CRASH
    assert result.exit_code == 3 and "boom: bad batch" in result.stderr_tail
    assert "exited with code 3" in result.message and str(Path(spec.cycle_dir) / "logs" / "stderr.log").endswith(
        result.message.rsplit("full log: ", 1)[1]
    )


@pytest.mark.parametrize("backend", ["local", "ray", "slurm", "slurm-real"], indirect=True)
def test_changed_frozen_file_makes_the_trial_invalid(backend: Backend, tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path, f"{PY} -c \"open('prepare.py', 'a').write('THRESHOLD = 0')\"", eval_cmd="echo val_accuracy: 1.0",
        files={"prepare.py": "THRESHOLD = 0.5\n"}, frozen=["prepare.py"],
    )
    result = finish(backend.make().submit(spec))
    assert result.status is TrialStatus.INVALID and result.failure is FailureClass.FROZEN_MODIFIED
    assert "prepare.py" in result.message and "val_accuracy" not in result.metrics  # eval_cmd never ran


# --------------------------------------------------------------------------- while it runs

STREAMING = """\
import json, os, time
from ralph_ml import trial
step = 0
while not trial.report(step, loss=1.0 / (step + 1)):
    print(f"step {step}", flush=True)
    step += 1
    time.sleep(0.1)
trial.log_metrics(val_accuracy=0.5, stopped_at=step)
"""


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_logs_and_progress_stream_while_running_and_control_json_stops_it(backend: Backend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, f"{PY} train.py", files={"train.py": STREAMING})
    handle = backend.make().submit(spec)
    cdir = Path(spec.cycle_dir)
    # The live view and the pruner read these files in the driver's cycle folder while it runs.
    wait_for(lambda: "step 3" in _text(cdir / "logs" / "stdout.log"), 60, "streamed stdout")
    wait_for(lambda: len(_text(cdir / "progress.jsonl").splitlines()) >= 4, 30, "streamed progress")
    assert handle.poll() is None and not handle.done()
    # What the loop's pruner does: ask the trial to stop through control.json (cooperative).
    (cdir / "control.json").write_text(json.dumps({"action": "stop", "reason": "pruned"}))
    result = finish(handle, 30)
    assert result.status is TrialStatus.OK, result.message
    assert result.metrics["stopped_at"] >= 3
    if backend.name == "local-warm":  # the trial really was forked from the warm-start server
        assert json.loads((cdir / "trial.json").read_text())["warm"] is True


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_cancel_kills_the_whole_process_group(backend: Backend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sh hang.sh", files={"hang.sh": HANG_SH})
    handle = backend.make().submit(spec)
    pids = read_pids(tmp_path / "pids", 4, 60)
    assert all(alive(p) for p in pids)
    t0 = time.monotonic()
    handle.cancel()
    result = finish(handle, 5)
    assert time.monotonic() - t0 < 10.0  # SIGTERM, the 1 s grace, SIGKILL: no scancel fallback needed
    assert result.status is TrialStatus.CANCELLED and result.failure is FailureClass.CANCELLED
    assert "while running train_cmd 'sh hang.sh'" in result.message  # the trial's own group kill
    assert "process(es) that had left the trial's process group were killed too" in result.message
    wait_for(lambda: not any(alive(p) for p in pids), 10, "every process of the trial gone")
    assert on_disk(spec.cycle_dir).status is TrialStatus.CANCELLED
    handle.cancel()  # no-op once ended
    assert handle.poll() == result


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_timeout_kills_the_whole_process_group(backend: Backend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sh hang.sh", files={"hang.sh": HANG_SH}, timeout_s=3.0)
    handle = backend.make().submit(spec)
    pids = read_pids(tmp_path / "pids", 4, 60)
    result = finish(handle, 60)
    assert result.status is TrialStatus.TIMEOUT and result.failure is FailureClass.TIMEOUT
    assert "killed after" in result.message and "timeout_s = 3" in result.message
    assert 3.0 <= result.train_seconds < 10.0
    wait_for(lambda: not any(alive(p) for p in pids), 10, "every process of the trial gone")


PAUSED_WORK = """\
import os, time
open(os.environ["PIDS"], "a").write(str(os.getpid()) + chr(10))
[time.sleep(0.1) for _ in range(25)]
print("val_accuracy: 0.7")
"""


@pytest.mark.parametrize("backend", ["local", "local-warm", "ray", "ray-ship", "slurm", "slurm-real"], indirect=True)
def test_suspended_time_does_not_count_toward_the_timeout(backend: Backend, tmp_path: Path) -> None:
    # 2.5 s of work under a 4 s limit, with a 3 s pause in the middle: must end OK, not TIMEOUT.
    # Steps of 0.1 s: a stopped sleep() would otherwise catch up on the pause in one go.
    spec = make_spec(tmp_path, f"{PY} train.py", files={"train.py": PAUSED_WORK}, timeout_s=4.0)
    handle = backend.make().submit(spec)
    (pid,) = read_pids(tmp_path / "pids", 1, 60)
    handle.suspend()
    wait_for(lambda: proc_state(pid) == "T", 10, "the trial stopped (SIGSTOP)")
    time.sleep(3.0)
    assert proc_state(pid) == "T" and handle.poll() is None
    handle.resume()
    wait_for(lambda: not alive(pid) or proc_state(pid) != "T", 10, "the trial continued (SIGCONT)")
    result = finish(handle, 30)
    assert result.status is TrialStatus.OK, result.message
    assert result.metrics["val_accuracy"] == 0.7 and result.train_seconds < 4.0
    assert result.duration_s > 5.0  # wall time includes the pause
    if backend.name == "local-warm":
        assert json.loads((Path(spec.cycle_dir) / "trial.json").read_text())["warm"] is True


# --------------------------------------------------------------------------- resources


@pytest.mark.parametrize("backend", ["local", "ray", "slurm"], indirect=True)
def test_resources_are_honoured(backend: Backend, tmp_path: Path) -> None:
    show = f"{PY} -c \"import os, json; print(json.dumps(dict(os.environ)))\""
    # The loop's own GPU pool pinned GPU 7 and 2 CPU threads (CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS).
    spec = make_spec(tmp_path, show, env={"CUDA_VISIBLE_DEVICES": "7", "OMP_NUM_THREADS": "2"})
    if backend.name == "local":
        result = finish(backend.make().submit(spec))
        env = json.loads(_text(Path(spec.cycle_dir) / "logs" / "stdout.log"))
        assert result.status is TrialStatus.OK
        assert env["CUDA_VISIBLE_DEVICES"] == "7" and env["OMP_NUM_THREADS"] == "2"
    elif backend.name == "ray":
        import ray

        cluster = ray_cluster()
        ex = get_executor("ray", kill_grace_s=1.0, namespace=RAY_NAMESPACE, resources={"node_b": 1}, num_cpus=1)
        hold = make_spec(tmp_path / "b", f"{PY} -c \"import time; time.sleep(60)\"", env={"CUDA_VISIBLE_DEVICES": "7"})
        h = ex.submit(hold)
        # While it runs it holds node B's only `node_b` unit and one CPU there.
        wait_for(lambda: ray.available_resources().get("node_b", 0) == 0, 30, "node_b taken")
        placed = wait_for(lambda: h.poll() is None and json.loads((Path(hold.cycle_dir) / "ray_actor.json").read_text()).get("node"))
        assert placed["node_id"] == cluster.b_node
        h.cancel()
        wait_for(lambda: ray.available_resources().get("node_b", 0) == 1, 30, "node_b given back")
        result = finish(ex.submit(spec))
        env = json.loads(_text(Path(spec.cycle_dir) / "logs" / "stdout.log"))
        assert result.status is TrialStatus.OK
        assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "2"  # Ray gave it no GPU
        assert json.loads((Path(spec.cycle_dir) / "ray_actor.json").read_text())["node"]["node_id"] == cluster.b_node
    else:
        ex = get_executor(
            "slurm", kill_grace_s=1.0, folder=str(tmp_path / "slurm-jobs"), poll_s=0.5, partition="debug",
            cpus_per_task=2, gpus_per_node=1, mem_gb=3,
        )
        handle = ex.submit(spec)
        result = finish(handle)
        env = json.loads(_text(Path(spec.cycle_dir) / "logs" / "stdout.log"))
        assert result.status is TrialStatus.OK
        script = Path(handle.job.paths.submission_file).read_text()  # type: ignore[attr-defined]
        assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --gpus-per-node=1" in script
        assert "#SBATCH --mem=3GB" in script
        # Slurm's allocation, not the loop's pool: the job's CPUs and its own GPU numbering.
        assert env["SLURM_CPUS_PER_TASK"] == "2" and env["CUDA_VISIBLE_DEVICES"] == "0"


# --------------------------------------------------------------------------- the loop died


RELEASED = f"""\
import os, time
open(os.path.join(os.environ["MARKS"], "started"), "w").write(str(os.getpid()))
while not os.path.exists(os.path.join(os.environ["MARKS"], "release")):
    time.sleep(0.05)
print("val_accuracy: 0.8")
print("bye", flush=True)
"""


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_recover_reattaches_to_a_running_trial(backend: Backend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, f"{PY} train.py", files={"train.py": RELEASED})
    backend.make().submit(spec)  # the loop that submitted it is gone: only the cycle folder is left
    pid = int(wait_for(lambda: _text(tmp_path / "started"), 60, "trial started"))
    found = backend.make().recover(Path(spec.cycle_dir))
    if not backend.reattaches:
        # Local: nothing can wait for a process of a dead loop; it is stopped and run again.
        assert found is None
        wait_for(lambda: not alive(pid), 10, "the orphaned trial killed")
        return
    assert isinstance(found, TrialHandle), found
    assert found.poll() is None and alive(pid)  # re-attached, not re-run
    (tmp_path / "release").touch()
    result = finish(found)
    assert result.status is TrialStatus.OK and result.metrics["val_accuracy"] == 0.8
    assert "bye" in _text(Path(spec.cycle_dir) / "logs" / "stdout.log")
    # And once collected, a later recovery reads the same result without running anything.
    again = backend.make().recover(Path(spec.cycle_dir))
    assert isinstance(again, TrialResult) and again == result


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_recover_collects_a_trial_that_finished_while_the_loop_was_dead(backend: Backend, tmp_path: Path) -> None:
    train = f"{PY} -c \"import os; print('val_accuracy: 0.6'); open(os.environ['MARKS'] + '/done', 'w')\""
    spec = make_spec(tmp_path, train)
    backend.make().submit(spec)
    wait_for(lambda: (tmp_path / "done").exists(), 60, "trial done")
    if not backend.reattaches:
        # Local: the result is the waiting loop's to write; with the loop gone it is run again.
        assert backend.make().recover(Path(spec.cycle_dir)) is None
        return
    found = wait_for(lambda: backend.make().recover(Path(spec.cycle_dir)), 30, "a result")
    if isinstance(found, TrialHandle):  # the job's last bookkeeping was still in flight
        found = finish(found)
    assert isinstance(found, TrialResult) and found.status is TrialStatus.OK
    assert found.metrics["val_accuracy"] == 0.6
    assert "val_accuracy: 0.6" in _text(Path(spec.cycle_dir) / "logs" / "stdout.log")


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def test_a_missing_extra_names_the_pip_command() -> None:
    import subprocess

    code = (
        "import sys; sys.modules['ray'] = None; sys.modules['submitit'] = None\n"
        "from ralph_ml.executors import get_executor\n"
        "from ralph_ml.errors import ExecutorError\n"
        "for name in ('ray', 'slurm'):\n"
        "    try:\n"
        "        get_executor(name)\n"
        "    except ExecutorError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert "pip install 'ralph-ml[ray]'" in out.stdout and "pip install 'ralph-ml[slurm]'" in out.stdout, out.stderr


def test_config_sub_tables_are_the_executors_keyword_arguments(tmp_path: Path) -> None:
    import inspect

    from conftest import make_experiment

    from ralph_ml.config import load_config
    from ralph_ml.errors import ConfigError
    from ralph_ml.executors.ray_executor import RayExecutor
    from ralph_ml.executors.slurm import SlurmExecutor

    root = make_experiment(tmp_path / "s", "print(1)", execution={"mode": "slurm"},
                           extra={"execution.slurm": {"partition": "gpu", "folder": "jobs", "mem_gb": 8}})
    opts = load_config(root / "ralph.toml").executor_options()
    assert opts["folder"] == str((root / "jobs").resolve()) and opts["partition"] == "gpu" and opts["mem_gb"] == 8
    assert set(opts) <= set(inspect.signature(SlurmExecutor).parameters)
    root = make_experiment(tmp_path / "r", "print(1)", execution={"mode": "ray"},
                           extra={"execution.ray": {"address": "auto", "resources": {"a100": 1}, "code_transfer": "ship"}})
    opts = load_config(root / "ralph.toml").executor_options()
    assert opts["address"] == "auto" and opts["resources"] == {"a100": 1.0} and opts["code_transfer"] == "ship"
    assert set(opts) <= set(inspect.signature(RayExecutor).parameters)
    root = make_experiment(tmp_path / "t", "print(1)", execution={"mode": "ray"}, extra={"execution.ray": {"adress": "auto"}})
    with pytest.raises(ConfigError, match="Did you mean 'execution.ray.address'"):
        load_config(root / "ralph.toml")
    root = make_experiment(tmp_path / "u", "print(1)", execution={"mode": "ray"},
                           extra={"execution.ray": {"code_transfer": "runtime_env"}})
    with pytest.raises(ConfigError, match="code_transfer"):
        load_config(root / "ralph.toml")
