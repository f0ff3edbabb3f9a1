"""LocalExecutor against real subprocesses: tiny trial scripts written into each cycle's code dir."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import asdict
from pathlib import Path

import pytest

from executors.support import HANG_SH, PY, alive, kill_strays, make_spec, read_pids, wait_for
from ralph_ml.errors import ExecutorError
from ralph_ml.executors import LocalExecutor, get_executor, read_result, reap_orphans
from ralph_ml.records import FailureClass, TrialResult, TrialSpec, TrialStatus

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LocalExecutor needs /proc")


@pytest.fixture(autouse=True)
def _no_strays(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Kill whatever a failing test left running: every trial's environment names its tmp_path."""
    yield
    kill_strays(tmp_path)


def run(spec: TrialSpec, **kw: float) -> TrialResult:
    result = LocalExecutor(**kw).submit(spec).wait(60)
    assert result is not None
    return result


# --------------------------------------------------------------------------- normal ends


def test_ok_trial_writes_metrics_json_and_result(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        f"{PY} train.py",
        files={
            "train.py": """\
            import json, os, sys
            seen = {k: os.environ.get(k) for k in ("RALPH_TRIAL_TOKEN", "RALPH_RUN_ID", "RALPH_CYCLE")}
            seen["cwd"] = os.getcwd()
            json.dump(seen, open("seen.json", "w"))
            print("training...", file=sys.stderr)
            json.dump({"result": {"val_accuracy": 0.9, "train_loss": 0.1}, "runtime": {"train_seconds": 1}},
                      open(os.environ["RALPH_METRICS_PATH"], "w"))
            """
        },
    )
    result = run(spec)
    assert result.status is TrialStatus.OK and result.failure is FailureClass.NONE
    assert result.exit_code == 0
    assert result.metrics == {"val_accuracy": 0.9, "train_loss": 0.1}
    assert 0 < result.train_seconds < 10 and result.eval_seconds == 0.0
    assert result.started_at <= result.ended_at
    assert "training..." in result.stderr_tail

    cycle_dir = Path(spec.cycle_dir)
    assert read_result(cycle_dir) == result  # result.json round-trips for resume
    trial = json.loads((cycle_dir / "trial.json").read_text())
    seen = json.loads((Path(spec.code_dir) / "seen.json").read_text())
    assert seen["RALPH_TRIAL_TOKEN"] == trial["token"] and len(trial["token"]) >= 16
    assert seen["RALPH_RUN_ID"] == "run-test" and seen["RALPH_CYCLE"] == "1"
    assert seen["cwd"] == spec.code_dir
    assert isinstance(trial["start_time"], int) and trial["pid"] == trial["pgid"]
    assert "training..." in (cycle_dir / "logs" / "stderr.log").read_text()


def test_stdout_lines_are_the_fallback(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, f"{PY} -c \"print('val_accuracy: 0.25'); print('epoch 2'); print('val_accuracy: 0.5')\"")
    result = run(spec)
    assert result.status is TrialStatus.OK
    assert result.metrics == {"val_accuracy": 0.5}


def test_nan_metric_is_kept_as_nan(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        f"{PY} -c \"import json, os; json.dump({{'result': {{'val_loss': float('nan'), 'acc': 'inf'}}}}, "
        "open(os.environ['RALPH_METRICS_PATH'], 'w'))\"",
    )
    result = run(spec)
    assert result.status is TrialStatus.OK  # the loop, not the executor, judges a NaN target
    assert math.isnan(result.metrics["val_loss"]) and result.metrics["acc"] == math.inf
    assert math.isnan(read_result(Path(spec.cycle_dir)).metrics["val_loss"])  # type: ignore[union-attr]


def test_missing_metrics_give_an_empty_dict(tmp_path: Path) -> None:
    result = run(make_spec(tmp_path, "echo no metrics here"))
    assert result.status is TrialStatus.OK and result.metrics == {}


def test_malformed_metrics_json_is_noted_and_stdout_used(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "echo val_accuracy: 0.4; printf '{\"result\": ' > \"$RALPH_METRICS_PATH\"")
    result = run(spec)
    assert result.status is TrialStatus.OK
    assert result.metrics == {"val_accuracy": 0.4}
    assert "malformed" in result.message


def test_background_grandchild_does_not_survive_a_normal_end(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sleep 1000 & echo $! > bg.pid; exit 0")
    result = run(spec)
    assert result.status is TrialStatus.OK
    (bg,) = read_pids(Path(spec.code_dir) / "bg.pid", 1)
    wait_for(lambda: not alive(bg), 2.0)


def test_a_child_in_its_own_session_does_not_survive_a_normal_end(tmp_path: Path) -> None:
    # outside the trial's process group: only the trial's token in its environment finds it
    escape = (f"{PY} -c \"import subprocess; p = subprocess.Popen(['sleep', '1000'], start_new_session=True); "
              "open('bg.pid', 'w').write(str(p.pid))\"; exit 0")
    spec = make_spec(tmp_path, escape)
    result = run(spec)
    assert result.status is TrialStatus.OK
    (bg,) = read_pids(Path(spec.code_dir) / "bg.pid", 1)
    wait_for(lambda: not alive(bg), 2.0)


def test_wait_returns_as_soon_as_the_trial_ends(tmp_path: Path) -> None:
    handle = LocalExecutor().submit(make_spec(tmp_path, "sleep 0.3"))
    assert handle.wait(0.05) is None and handle.poll() is None
    t = time.monotonic()
    result = handle.wait(10)
    assert result is not None and result.status is TrialStatus.OK
    assert time.monotonic() - t < 0.5  # woken by the exit, not by a polling interval or the timeout
    assert handle.wait(0) is result and handle.done()


# --------------------------------------------------------------------------- failures


def test_crash_reports_exit_code_stderr_and_log_path(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path, f"{PY} -c \"import sys; print('boom: bad shape (3, 4)', file=sys.stderr); sys.exit(3)\""
    )
    result = run(spec)
    assert result.status is TrialStatus.FAILED and result.failure is FailureClass.CRASH
    assert result.exit_code == 3
    assert "boom: bad shape (3, 4)" in result.stderr_tail
    assert "exited with code 3" in result.message
    assert "logs/stderr.log" in result.message


def test_oom_from_stderr_text(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        f"{PY} -c \"import sys; print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB',"
        " file=sys.stderr); sys.exit(1)\"",
    )
    result = run(spec)
    assert result.status is TrialStatus.FAILED and result.failure is FailureClass.OOM
    assert result.exit_code == 1 and "out of memory" in result.message


def test_sigkill_not_sent_by_us_is_oom(tmp_path: Path) -> None:
    result = run(make_spec(tmp_path, "kill -9 $$"))
    assert result.status is TrialStatus.FAILED and result.failure is FailureClass.OOM
    assert result.exit_code in (-9, 137)


def test_timeout_kills_every_process_including_setsid_grandchildren(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sh hang.sh", timeout_s=1.0, files={"hang.sh": HANG_SH})
    t = time.monotonic()
    handle = LocalExecutor(kill_grace_s=0.5).submit(spec)
    pids = read_pids(tmp_path / "pids", 4)
    assert all(alive(p) for p in pids)
    result = handle.wait(30)
    elapsed = time.monotonic() - t
    assert result is not None
    assert result.status is TrialStatus.TIMEOUT and result.failure is FailureClass.TIMEOUT
    assert 1.0 <= elapsed < 3.0
    assert "killed after 1 s" in result.message and "timeout_s = 1" in result.message
    assert "had left the trial's process group were killed too" in result.message
    wait_for(lambda: not any(alive(p) for p in [*pids, handle.pid]), 2.0)
    assert read_result(Path(spec.cycle_dir)) == result


def test_timeout_counts_train_and_eval_together(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sleep 0.6", eval_cmd="sleep 0.6; touch eval_done", timeout_s=1.0)
    result = run(spec, kill_grace_s=0.5)
    assert result.status is TrialStatus.TIMEOUT
    assert "eval_cmd" in result.message
    assert result.train_seconds >= 0.6
    assert not (Path(spec.code_dir) / "eval_done").exists()


def test_cancel_stops_a_running_trial_without_waiting_the_grace(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sh hang.sh", files={"hang.sh": HANG_SH})
    handle = LocalExecutor(kill_grace_s=5.0).submit(spec)
    pids = read_pids(tmp_path / "pids", 4)
    assert handle.wait(0.1) is None
    t = time.monotonic()
    handle.cancel()
    assert time.monotonic() - t < 2.0  # the group died on SIGTERM: no need to sit out 5 s of grace
    result = handle.poll()
    assert result is not None
    assert result.status is TrialStatus.CANCELLED and result.failure is FailureClass.CANCELLED
    wait_for(lambda: not any(alive(p) for p in pids), 2.0)
    handle.cancel()  # no-op once ended
    assert handle.poll() is result


def test_cancel_of_a_suspended_trial_lets_it_clean_up(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        f"{PY} -c \"import signal, sys, time\n"
        "def bye(*_): open('cleaned', 'w').close(); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\nopen('ready', 'w').close()\ntime.sleep(1000)\"",
    )
    handle = LocalExecutor(kill_grace_s=5.0).submit(spec)
    wait_for((Path(spec.code_dir) / "ready").exists)
    handle.suspend()
    t = time.monotonic()
    handle.cancel()
    assert time.monotonic() - t < 2.0  # continued so it could act on SIGTERM, not SIGKILLed after 5 s
    result = handle.poll()
    assert result is not None and result.status is TrialStatus.CANCELLED
    assert (Path(spec.code_dir) / "cleaned").exists()


def test_cancel_from_another_thread_wakes_a_blocked_wait(tmp_path: Path) -> None:
    handle = LocalExecutor(kill_grace_s=0.5).submit(make_spec(tmp_path, "sleep 1000"))
    timer = threading.Timer(0.2, handle.cancel)
    timer.start()
    t = time.monotonic()
    result = handle.wait()  # no timeout: only the cancel can end it
    timer.join()
    assert result is not None and result.status is TrialStatus.CANCELLED
    assert time.monotonic() - t < 2.0


# --------------------------------------------------------------------------- eval and frozen files


def test_eval_runs_after_train_and_sees_its_outputs(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        "echo train-was-here; echo 0.875 > model.txt",
        eval_cmd=f"{PY} evaluate.py",
        frozen=["evaluate.py"],
        files={
            "evaluate.py": """\
            import json, os
            acc = float(open("model.txt").read())
            print("eval-was-here")
            json.dump({"result": {"test_accuracy": acc}}, open(os.environ["RALPH_METRICS_PATH"], "w"))
            """
        },
    )
    result = run(spec)
    assert result.status is TrialStatus.OK
    assert result.metrics == {"test_accuracy": 0.875}
    assert result.eval_seconds > 0
    stdout = (Path(spec.cycle_dir) / "logs" / "stdout.log").read_text()
    assert stdout.index("train-was-here") < stdout.index("eval-was-here")  # one log, appended


def test_eval_does_not_run_after_a_failed_train(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "exit 1", eval_cmd="touch eval_ran")
    result = run(spec)
    assert result.status is TrialStatus.FAILED and result.exit_code == 1
    assert "train_cmd" in result.message
    assert not (Path(spec.code_dir) / "eval_ran").exists()


def test_failed_eval_is_a_crash(tmp_path: Path) -> None:
    result = run(make_spec(tmp_path, "true", eval_cmd="echo eval broke >&2; exit 4"))
    assert result.status is TrialStatus.FAILED and result.failure is FailureClass.CRASH
    assert result.exit_code == 4 and "eval_cmd 'echo eval broke" in result.message


@pytest.mark.parametrize("eval_cmd", ["touch eval_ran", None])
def test_train_modifying_a_frozen_file_is_invalid(tmp_path: Path, eval_cmd: str | None) -> None:
    spec = make_spec(
        tmp_path,
        "echo '# better metric' >> prepare.py; echo val_accuracy: 1.0",
        eval_cmd=eval_cmd,
        frozen=["prepare.py", "data.py"],
        files={"prepare.py": "ACC = 0.5\n", "data.py": "X = 1\n"},
    )
    result = run(spec)
    assert result.status is TrialStatus.INVALID and result.failure is FailureClass.FROZEN_MODIFIED
    assert "prepare.py" in result.message and "data.py" not in result.message
    assert not (Path(spec.code_dir) / "eval_ran").exists()


# --------------------------------------------------------------------------- suspend, logs, orphans


def test_suspended_time_does_not_count_toward_the_timeout(tmp_path: Path) -> None:
    # 30 steps of 50 ms = 1.5 s of work, each step counted in ./steps; the limit is 2.5 s.
    spec = make_spec(
        tmp_path,
        f"{PY} -c \"import time\nfor i in range(30):\n    time.sleep(0.05); open('steps', 'w').write(str(i + 1))\"",
        timeout_s=2.5,
    )
    handle = LocalExecutor(kill_grace_s=0.5).submit(spec)
    steps = Path(spec.code_dir) / "steps"
    assert handle.wait(0.5) is None
    handle.suspend()
    time.sleep(0.1)
    frozen_at = steps.read_text()
    time.sleep(1.4)
    assert steps.read_text() == frozen_at  # really stopped
    assert handle.wait(0.5) is None  # still suspended: no timeout, no end
    handle.resume()
    result = handle.wait(30)
    assert result is not None and result.status is TrialStatus.OK, result
    assert result.duration_s > 2.5  # wall time past the limit ...
    assert result.train_seconds < 2.5  # ... but not active time
    assert steps.read_text() == "30"


def test_logs_stream_while_the_trial_runs(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        f"{PY} -c \"import os, time\nprint('epoch 1 done', flush=True)\n"
        "while not os.path.exists('go'): time.sleep(0.01)\nprint('val_accuracy: 0.6')\"",
    )
    handle = LocalExecutor().submit(spec)
    stdout = Path(spec.cycle_dir) / "logs" / "stdout.log"
    wait_for(lambda: "epoch 1 done" in stdout.read_text())
    assert handle.poll() is None  # read while it runs
    (Path(spec.code_dir) / "go").touch()
    result = handle.wait(30)
    assert result is not None and result.metrics == {"val_accuracy": 0.6}


DRIVER = """\
import json, sys, time
from ralph_ml.executors import LocalExecutor
from ralph_ml.records import TrialSpec
LocalExecutor().submit(TrialSpec(**json.loads(sys.argv[1])))
print("submitted", flush=True)
time.sleep(1000)
"""


def test_reap_orphans_kills_a_trial_whose_loop_died(tmp_path: Path) -> None:
    # exec: the hang.sh shell is the group leader, so ./pids lists every process of the trial.
    spec = make_spec(tmp_path, "exec sh hang.sh", files={"hang.sh": HANG_SH})
    loop = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(asdict(spec))], stdout=subprocess.PIPE)
    try:
        assert loop.stdout is not None and loop.stdout.readline() == b"submitted\n"
        pids = read_pids(tmp_path / "pids", 4)
    finally:
        loop.kill()  # kill -9 of the loop: the trial's session outlives it
        loop.wait()
    assert all(alive(p) for p in pids)
    cycle_dir = Path(spec.cycle_dir)
    assert read_result(cycle_dir) is None  # never finished
    assert reap_orphans(cycle_dir) == 4
    wait_for(lambda: not any(alive(p) for p in pids), 2.0)
    assert reap_orphans(cycle_dir) == 0


def test_reap_orphans_never_touches_a_reused_pid(tmp_path: Path) -> None:
    cycle_dir = tmp_path / "cycle_0001"
    cycle_dir.mkdir()
    bystander = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        (cycle_dir / "trial.json").write_text(
            json.dumps({"pid": bystander.pid, "pgid": bystander.pid, "start_time": 1, "token": "not-its-token"})
        )
        assert reap_orphans(cycle_dir) == 0
        assert alive(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()
    assert reap_orphans(tmp_path / "no_such_cycle") == 0


def test_big_output_goes_to_disk_and_only_the_tail_is_read(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        f"{PY} -c \"import sys\nchunk = ('x' * 99 + chr(10)) * 10000\nfor _ in range(50): sys.stdout.write(chunk)\n"
        "for _ in range(5): sys.stderr.write(chunk)\nprint('val_accuracy: 0.7')\n"
        "print('LAST LINE', file=sys.stderr)\"",
    )
    tracemalloc.start()
    try:
        result = run(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    logs = Path(spec.cycle_dir) / "logs"
    assert (logs / "stdout.log").stat().st_size >= 50_000_000
    assert result.metrics == {"val_accuracy": 0.7}
    assert result.stderr_tail.endswith("LAST LINE")
    assert len(result.stderr_tail.encode()) <= 4096 and len(result.stderr_tail.splitlines()) <= 40
    assert peak < 5_000_000  # bytes: the 50 MB log never sits in memory


def test_without_pidfd_the_popen_fallback_behaves_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "pidfd_open")  # as on kernels older than 5.3
    ok = run(make_spec(tmp_path, "echo val_accuracy: 0.5", cycle=1))
    assert ok.status is TrialStatus.OK and ok.metrics == {"val_accuracy": 0.5}
    spec = make_spec(tmp_path, "sh hang.sh", timeout_s=0.5, files={"hang.sh": HANG_SH}, cycle=2)
    handle = LocalExecutor(kill_grace_s=0.5).submit(spec)
    pids = read_pids(tmp_path / "pids", 4)
    result = handle.wait(30)
    assert result is not None and result.status is TrialStatus.TIMEOUT
    wait_for(lambda: not any(alive(p) for p in pids), 2.0)


# --------------------------------------------------------------------------- registry and errors


def test_registry() -> None:
    executor = get_executor("local", kill_grace_s=1.0)
    assert isinstance(executor, LocalExecutor) and executor.kill_grace_s == 1.0
    with pytest.raises(ExecutorError, match="unknown executor 'slurmx'; available: local"):
        get_executor("slurmx")


def test_submit_into_a_missing_code_dir_is_an_executor_error(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "true")
    os.rmdir(spec.code_dir)
    with pytest.raises(ExecutorError, match="could not start train_cmd 'true'"):
        LocalExecutor().submit(spec)


def test_process_group_is_separate_from_ours(tmp_path: Path) -> None:
    handle = LocalExecutor().submit(make_spec(tmp_path, "sleep 5"))
    try:
        assert os.getpgid(handle.pid) == handle.pid != os.getpgid(0)
    finally:
        handle.cancel()
    result = handle.poll()
    assert result is not None and result.exit_code == -signal.SIGTERM
