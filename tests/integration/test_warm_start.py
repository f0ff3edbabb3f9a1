"""Warm starts (``execution.preload``): trial commands forked from a server with the imports done.

Real server, real forks, real signals. A preloaded module a fresh interpreter does not import
at start-up (``decimal``) shows that a trial really ran warm; everything else a trial can
observe must be what a cold ``python script.py`` would see.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Iterator

import pytest

from conftest import make_experiment, ralph, recorded
from executors.support import HANG_SH, PY, alive, make_spec, read_pids, wait_for
from ralph_ml.executors import LocalExecutor
from ralph_ml.records import FailureClass, TrialStatus

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="executors need /proc")

PROBE = """\
import json, os, sys
print(json.dumps({
    "warm": "decimal" in sys.modules,
    "name": __name__,
    "file": __file__,
    "argv": sys.argv,
    "cwd": os.getcwd(),
    "path0": sys.path[0],
    "extra_on_path": os.environ.get("EXTRA_DIR") in sys.path,
    "leads_session": os.getsid(0) == os.getpid() == os.getpgid(0),
    "stdin": sys.stdin.read(),
    "token": os.environ.get("RALPH_TRIAL_TOKEN"),
    "cycle": os.environ.get("RALPH_CYCLE"),
    "loop_only": os.environ.get("ONLY_IN_THE_LOOP"),
}), flush=True)
print("to stderr", file=sys.stderr)
from helper import VALUE  # a module next to the script, as with a cold interpreter
print(f"val_accuracy: {VALUE}")
"""


@pytest.fixture
def warm(tmp_path: Path) -> Iterator[LocalExecutor]:
    ex = LocalExecutor(kill_grace_s=1.0, preload=["decimal"], preload_log=tmp_path / "preload.log")
    assert ex.warm is not None and ex.warm.wait_ready(60), ex.warm.error if ex.warm else ""
    yield ex
    ex.close()


def _stdout(spec_cycle_dir: str) -> str:
    return (Path(spec_cycle_dir) / "logs" / "stdout.log").read_text()


def _trial_json(spec_cycle_dir: str) -> dict[str, object]:
    return json.loads((Path(spec_cycle_dir) / "trial.json").read_text())


def test_a_warm_trial_sees_what_a_fresh_interpreter_sees(warm: LocalExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    monkeypatch.setenv("ONLY_IN_THE_LOOP", "server-side")  # set after the server started
    env = {"EXTRA_DIR": str(extra), "PYTHONPATH": str(extra)}
    specs = [make_spec(tmp_path / str(i), f"{PY} probe.py --flag 'two words'", eval_cmd=f"{PY} -c \"print('eval: 1')\"",
                       files={"probe.py": PROBE, "helper.py": f"VALUE = 0.{i + 5}\n"}, env=env) for i in range(2)]
    results = [warm.submit(spec).wait(60) for spec in specs]
    for i, (spec, result) in enumerate(zip(specs, results)):
        assert result is not None and result.status is TrialStatus.OK, result and result.message
        assert result.metrics["val_accuracy"] == pytest.approx(0.5 + i / 10)
        seen = json.loads(_stdout(spec.cycle_dir).splitlines()[0])
        code = str(Path(spec.code_dir))
        assert seen["warm"] is True and _trial_json(spec.cycle_dir)["warm"] is False  # the eval (-c) ran cold
        assert seen["name"] == "__main__" and seen["argv"] == ["probe.py", "--flag", "two words"]
        assert seen["file"] == str(Path(spec.code_dir) / "probe.py")
        assert seen["cwd"] == code and seen["path0"] == code and seen["extra_on_path"] is True
        assert seen["leads_session"] is True and seen["stdin"] == ""
        assert seen["token"] and seen["cycle"] == "1" and seen["loop_only"] == "server-side"
        assert "to stderr" in (Path(spec.cycle_dir) / "logs" / "stderr.log").read_text()
        assert "eval: 1" in _stdout(spec.cycle_dir)


def test_exit_codes_and_tracebacks_are_those_of_the_script(warm: LocalExecutor, tmp_path: Path) -> None:
    crash = make_spec(tmp_path / "a", f"{PY} train.py", files={"train.py": "def f():\n    raise ValueError('bad lr')\nf()\n"})
    result = warm.submit(crash).wait(60)
    assert result is not None and result.status is TrialStatus.FAILED and result.exit_code == 1
    assert _trial_json(crash.cycle_dir)["warm"] is True
    tail = result.stderr_tail
    assert "ValueError: bad lr" in tail and 'train.py", line 3' in tail
    assert "runpy" not in tail and "_zygote" not in tail  # only the script's own frames, as cold
    exits = make_spec(tmp_path / "b", f"{PY} train.py", files={"train.py": "import sys\nsys.exit(3)\n"})
    result = warm.submit(exits).wait(60)
    assert result is not None and result.exit_code == 3 and "exited with code 3" in result.message
    missing = make_spec(tmp_path / "c", f"{PY} nope.py")
    result = warm.submit(missing).wait(60)
    assert result is not None and result.exit_code == 2 and "can't open file" in result.stderr_tail  # as a cold run
    assert _trial_json(missing.cycle_dir)["warm"] is True


def test_a_numpy_seed_is_fresh_in_every_warm_trial(tmp_path: Path) -> None:
    ex = LocalExecutor(kill_grace_s=1.0, preload=["numpy"])
    try:
        draw = "import numpy, sys\nassert 'numpy' in sys.modules\nprint('draw:', numpy.random.randint(1 << 30))\n"
        draws = []
        for i in range(2):
            spec = make_spec(tmp_path / str(i), f"{PY} draw.py", files={"draw.py": draw})
            result = ex.submit(spec).wait(60)
            assert result is not None and result.status is TrialStatus.OK, result and result.message
            assert _trial_json(spec.cycle_dir)["warm"] is True
            draws.append(result.metrics["draw"])
        assert draws[0] != draws[1]  # not the server's global state, copied into every fork
    finally:
        ex.close()


HANG_PY = f"""\
import os, subprocess, sys
open(os.environ["PIDS"], "a").write(str(os.getpid()) + chr(10))
subprocess.run(["sh", "hang.sh"])
"""


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancel_and_timeout_kill_everything_a_warm_trial_started(warm: LocalExecutor, tmp_path: Path, how: str) -> None:
    spec = make_spec(tmp_path, f"{PY} train.py", files={"train.py": HANG_PY, "hang.sh": HANG_SH},
                     timeout_s=3.0 if how == "timeout" else 60.0)
    handle = warm.submit(spec)
    pids = read_pids(tmp_path / "pids", 5, 30)  # python leader, sh, sleep, env -i sleep, a setsid escaper
    assert _trial_json(spec.cycle_dir)["warm"] is True and all(alive(p) for p in pids)
    # ps and top show the trial's own command, not the server's
    assert Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")[0].decode().startswith("python train.py")
    if how == "cancel":
        handle.cancel()
    result = handle.wait(30)
    assert result is not None
    assert result.status is (TrialStatus.CANCELLED if how == "cancel" else TrialStatus.TIMEOUT), result.message
    assert "left the trial's process group were killed too" in result.message  # the escaper, by its token
    wait_for(lambda: not any(alive(p) for p in pids), 10, "every process of the trial gone")


def test_a_preload_that_fails_leaves_trials_cold_and_says_why(tmp_path: Path) -> None:
    ex = LocalExecutor(kill_grace_s=1.0, preload=["decimal", "no_such_module_xyz"])
    try:
        spec = make_spec(tmp_path, f"{PY} train.py", files={"train.py": "import sys\nprint('val_accuracy:', int('decimal' in sys.modules))\n"})
        result = ex.submit(spec).wait(60)
        assert result is not None and result.status is TrialStatus.OK and result.metrics["val_accuracy"] == 0
        assert _trial_json(spec.cycle_dir)["warm"] is False
        assert ex.warm is not None and "cannot preload 'no_such_module_xyz'" in ex.warm.error
    finally:
        ex.close()


def test_the_experiments_own_modules_are_never_preloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "mylib.py").write_text("X = 1\n")
    monkeypatch.setenv("PYTHONPATH", str(ws))
    ex = LocalExecutor(kill_grace_s=1.0, preload=["mylib"], workspace=ws)
    try:
        assert ex.warm is not None and not ex.warm.wait_ready(60)
        assert "'mylib' is the experiment's own code" in ex.warm.error
    finally:
        ex.close()


def test_a_warm_trial_whose_server_dies_is_a_recorded_failure_and_the_next_runs_cold(warm: LocalExecutor, tmp_path: Path) -> None:
    assert warm.warm is not None and warm.warm._proc is not None
    server = warm.warm._proc.pid
    spec = make_spec(tmp_path / "a", f"{PY} train.py", files={"train.py": "import os, time\n"
                     "open(os.environ['PIDS'], 'a').write(str(os.getpid()) + chr(10))\ntime.sleep(60)\n"},
                     env={"PIDS": str(tmp_path / "pids")})
    handle = warm.submit(spec)
    (pid,) = read_pids(tmp_path / "pids", 1, 30)
    os.kill(server, signal.SIGKILL)
    result = handle.wait(30)
    assert result is not None and result.status is TrialStatus.FAILED and result.failure is FailureClass.CRASH
    assert "warm-start server" in result.message and "died" in result.message
    wait_for(lambda: not alive(pid), 10, "the trial stopped")
    nxt = make_spec(tmp_path / "b", f"{PY} -B train.py", files={"train.py": "print('val_accuracy: 0.4')\n"})
    result = warm.submit(nxt).wait(60)
    assert result is not None and result.status is TrialStatus.OK and result.metrics["val_accuracy"] == 0.4
    assert _trial_json(nxt.cycle_dir)["warm"] is False


def test_after_the_loop_dies_a_warm_orphan_is_stopped_and_run_again(tmp_path: Path) -> None:
    ex = LocalExecutor(kill_grace_s=1.0, preload=["decimal"])
    assert ex.warm is not None and ex.warm.wait_ready(60)
    spec = make_spec(tmp_path, f"{PY} train.py", files={"train.py": HANG_PY, "hang.sh": HANG_SH})
    ex.submit(spec)
    pids = read_pids(tmp_path / "pids", 5, 30)
    # Everything of the loop is gone, its sentinel too (which would stop the trial: see
    # test_crash_resume), and its server exits with it; the trial, in its own session, is not.
    assert ex._sentinel is not None
    ex._sentinel.kill()
    ex._sentinel.wait()
    ex.close()
    assert all(alive(p) for p in pids)
    assert LocalExecutor().recover(Path(spec.cycle_dir)) is None  # nothing to collect: run it again
    wait_for(lambda: not any(alive(p) for p in pids), 10, "the orphaned trial and its children killed")


def test_the_cli_runs_a_preloaded_experiment_warm_two_at_a_time_and_validate_says_so(tmp_path: Path) -> None:
    train = "import sys\nfrom ralph_ml import trial\np = trial.params({'x': 0.5})\n" \
        "print('val_accuracy:', p['x'] if 'decimal' in sys.modules else 0.0)\n"
    root = make_experiment(tmp_path, train, target=0.99, safeguards={"max_cycles": 4, "no_improvement_stop_cycles": 10},
                           execution={"preload": ["decimal"], "eval_cmd": "echo done", "max_concurrency": 2})
    out = ralph(root, "validate")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "train_cmd runs warm" in out.stdout and "eval_cmd runs cold" in out.stdout
    out = ralph(root, "start", "--plain")
    assert out.returncode == 2, out.stdout + out.stderr  # max cycles
    recs = recorded(root)
    assert len(recs) == 4 and all(r["result"]["metrics"]["val_accuracy"] > 0 for r in recs)  # each train_cmd ran warm


def test_a_preloaded_torch_takes_the_trials_thread_count_and_gpu_pinning(tmp_path: Path) -> None:
    """torch reads OMP_NUM_THREADS at import, in the server: the fork applies the trial's own;
    CUDA is not initialized by the import, so the pool's CUDA_VISIBLE_DEVICES still decides."""
    pytest.importorskip("torch")
    ex = LocalExecutor(kill_grace_s=1.0, preload=["torch"])
    try:
        probe = "import os, sys, torch\nprint('warm:', int('torch' in sys.modules and sys.argv[0] == 'p.py'))\n" \
            "print('threads:', torch.get_num_threads())\nprint('cuda_init:', int(torch.cuda.is_initialized()))\n" \
            "print('pinned:', os.environ['CUDA_VISIBLE_DEVICES'])\n"
        got = []
        for n in (1, 2):
            spec = make_spec(tmp_path / str(n), f"{PY} p.py", files={"p.py": probe},
                             env={"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n), "CUDA_VISIBLE_DEVICES": str(n + 4)})
            result = ex.submit(spec).wait(120)
            assert result is not None and result.status is TrialStatus.OK, result and result.message
            assert _trial_json(spec.cycle_dir)["warm"] is True
            got.append(result.metrics)
        assert [m["threads"] for m in got] == [1, 2] and [m["pinned"] for m in got] == [5, 6]
        assert all(m["cuda_init"] == 0 for m in got)
    finally:
        ex.close()


def test_trials_that_end_at_once_are_still_warm_and_report_their_exit(warm: LocalExecutor, tmp_path: Path) -> None:
    """A trial may end before the loop has read its pid: both answers then arrive in one read."""
    for i in range(25):
        spec = make_spec(tmp_path / str(i), f"{PY} t.py", files={"t.py": f"raise SystemExit({i % 3})\n"})
        result = warm.submit(spec).wait(30)
        assert result is not None and result.exit_code == i % 3, result
        assert _trial_json(spec.cycle_dir)["warm"] is True, warm.warm and warm.warm.error


SAVER_PY = """\
import os, subprocess, sys, time
# A helper in the trial's group that needs a moment after SIGTERM (say, to save a checkpoint).
subprocess.Popen([sys.executable, "-c", "import os, pathlib, signal, sys, time\\n"
    "def save(*_):\\n    time.sleep(0.3)\\n    pathlib.Path('saved').write_text('1')\\n    sys.exit(0)\\n"
    "signal.signal(signal.SIGTERM, save)\\n"
    "open(os.environ['PIDS'], 'a').write(str(os.getpid()) + chr(10))\\ntime.sleep(60)\\n"])
open(os.environ["PIDS"], "a").write(str(os.getpid()) + chr(10))
time.sleep(60)  # the leader itself dies at once on SIGTERM
"""


@pytest.mark.parametrize("preload", [[], ["decimal"]], ids=["cold", "warm"])
def test_the_kill_grace_reaches_the_rest_of_the_group_after_the_leader_died(tmp_path: Path, preload: list[str]) -> None:
    ex = LocalExecutor(kill_grace_s=3.0, preload=preload)
    try:
        spec = make_spec(tmp_path, f"{PY} train.py", files={"train.py": SAVER_PY})
        handle = ex.submit(spec)
        pids = read_pids(tmp_path / "pids", 2, 30)
        assert _trial_json(spec.cycle_dir)["warm"] is bool(preload)
        handle.cancel()
        result = handle.wait(30)
        assert result is not None and result.status is TrialStatus.CANCELLED, result and result.message
        assert (Path(spec.code_dir) / "saved").exists()  # not SIGKILLed with its leader
        wait_for(lambda: not any(alive(p) for p in pids), 10, "the trial's processes gone")
    finally:
        ex.close()


def _open_fds(pid: int) -> int:
    return max(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) + 1


def test_a_server_out_of_descriptors_sends_commands_cold_and_goes_on_serving(warm: LocalExecutor, tmp_path: Path) -> None:
    import resource

    assert warm.warm is not None and warm.warm._proc is not None
    server = warm.warm._proc.pid
    limits = resource.prlimit(server, resource.RLIMIT_NOFILE)
    train = {"train.py": "import sys\nprint('val_accuracy:', 0.5 + 0.1 * ('decimal' in sys.modules))\n"}
    # No descriptor for the connection at all (accept fails), then none for the fork's pipes.
    for i, spare in enumerate((0, 4)):
        resource.prlimit(server, resource.RLIMIT_NOFILE, (_open_fds(server) + spare, limits[1]))
        spec = make_spec(tmp_path / str(i), f"{PY} train.py", files=train)
        result = warm.submit(spec).wait(60)
        assert result is not None and result.status is TrialStatus.OK and result.metrics["val_accuracy"] == 0.5
        assert _trial_json(spec.cycle_dir)["warm"] is False and warm.warm._proc.poll() is None
        resource.prlimit(server, resource.RLIMIT_NOFILE, limits)
    assert "cannot" in warm.warm.error and "Too many open files" in warm.warm.error
    spec = make_spec(tmp_path / "after", f"{PY} train.py", files=train)
    result = warm.submit(spec).wait(60)
    assert result is not None and result.metrics["val_accuracy"] == 0.6 and _trial_json(spec.cycle_dir)["warm"] is True


def test_a_launch_given_up_on_runs_cold_and_never_twice(warm: LocalExecutor, tmp_path: Path) -> None:
    """A server too slow to answer (here: stopped) forks the trial after the loop ran it cold."""
    assert warm.warm is not None and warm.warm._proc is not None
    server = warm.warm._proc.pid
    warm.warm.reply_timeout_s = 1.0
    ledger = tmp_path / "ledger"
    train = {"train.py": f"import sys\nopen({str(ledger)!r}, 'a').write(str('decimal' in sys.modules) + chr(10))\n"
             "print('val_accuracy: 0.5')\n"}
    os.kill(server, signal.SIGSTOP)
    try:
        spec = make_spec(tmp_path / "a", f"{PY} train.py", files=train)
        result = warm.submit(spec).wait(60)
    finally:
        os.kill(server, signal.SIGCONT)
    assert result is not None and result.status is TrialStatus.OK and _trial_json(spec.cycle_dir)["warm"] is False
    warm.warm.reply_timeout_s = 30.0
    nxt = make_spec(tmp_path / "b", f"{PY} train.py", files=train)  # served after the stale request
    result = warm.submit(nxt).wait(60)
    assert result is not None and result.status is TrialStatus.OK and _trial_json(nxt.cycle_dir)["warm"] is True
    assert ledger.read_text().split() == ["False", "True"]  # the given-up launch never ran


def test_a_preload_that_asks_for_cuda_still_leaves_the_gpu_to_the_forks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU machines only: ``torch.cuda.is_available()`` at import (many libraries call it) must
    not make the forked trials unable to use CUDA."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "asks_cuda.py").write_text("import torch\nAVAILABLE = torch.cuda.is_available()\n")
    monkeypatch.setenv("PYTHONPATH", str(lib))
    ex = LocalExecutor(kill_grace_s=1.0, preload=["torch", "asks_cuda"])
    try:
        assert ex.warm is not None and ex.warm.wait_ready(120), ex.warm.error if ex.warm else ""
        spec = make_spec(tmp_path / "a", f"{PY} g.py", env={"PYTHONPATH": str(lib)}, files={
            "g.py": "import sys, torch\nassert 'asks_cuda' in sys.modules\n"
                    "print('gpu_sum:', float(torch.ones(3, device='cuda').sum()))\n"})
        result = ex.submit(spec).wait(120)
        assert result is not None and result.status is TrialStatus.OK, result and (result.message + result.stderr_tail)
        assert result.metrics["gpu_sum"] == 3.0 and _trial_json(spec.cycle_dir)["warm"] is True
    finally:
        ex.close()
