"""What the executor tests share: trial specs, a Ray cluster per test session, the fake Slurm.

Real components only: a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``:
one raylet per node, started once per pytest process and shut down at exit) and submitit's
real code talking to the fake Slurm binaries in ``tests/fake_slurm/bin``.
"""

from __future__ import annotations

import atexit
import json
import os
import shlex
import signal
import socket
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ralph_ml.hashing import hash_files
from ralph_ml.records import TrialSpec

PY = shlex.quote(sys.executable)
FAKE_SLURM_BIN = Path(__file__).resolve().parent.parent / "fake_slurm" / "bin"
RAY_NAMESPACE = "ralph-ml-tests"

# A trial that hangs with four kinds of processes (the executors must all reap them): the shell in the
# trial's group, a background `sleep` in the group, one that dropped its environment (only its
# group identifies it), and a python grandchild that left the group with setsid() and ignores
# SIGTERM (only RALPH_TRIAL_TOKEN identifies it). Each appends its pid to $PIDS.
HANG_SH = f"""\
echo $$ >> "$PIDS"
sleep 1000 &
echo $! >> "$PIDS"
env -i sleep 1000 &
echo $! >> "$PIDS"
{PY} -c "import os, signal, time
os.setsid()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(os.environ['PIDS'], 'a').write(str(os.getpid()) + chr(10))
time.sleep(1000)" &
wait
"""


def make_spec(
    tmp_path: Path,
    train_cmd: str,
    *,
    eval_cmd: str | None = None,
    timeout_s: float = 60.0,
    files: dict[str, str] | None = None,
    frozen: list[str] | None = None,
    cycle: int = 1,
    env: dict[str, str] | None = None,
    run_id: str = "run-test",
) -> TrialSpec:
    """A cycle folder laid out as the loop lays it out, with the loop's RALPH_* environment."""
    cycle_dir = tmp_path / "runs" / f"cycle_{cycle:04d}"
    code = cycle_dir / "code"
    code.mkdir(parents=True)
    (cycle_dir / "logs").mkdir()
    (cycle_dir / "checkpoints").mkdir()
    (cycle_dir / "params.json").write_text('{"x": 0.5}')
    for name, text in (files or {}).items():
        (code / name).write_text(textwrap.dedent(text))
    full_env = {
        "RALPH_RUN_ID": run_id,
        "RALPH_CYCLE": str(cycle),
        "RALPH_RUN_DIR": str(cycle_dir),
        "RALPH_PARAMS": str(cycle_dir / "params.json"),
        "RALPH_METRICS_PATH": str(cycle_dir / "metrics.json"),
        "RALPH_CHECKPOINT_DIR": str(cycle_dir / "checkpoints"),
        "RALPH_PROGRESS_PATH": str(cycle_dir / "progress.jsonl"),
        "RALPH_CONTROL_PATH": str(cycle_dir / "control.json"),
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONUNBUFFERED": "1",
        "PIDS": str(tmp_path / "pids"),
        "MARKS": str(tmp_path),
        **(env or {}),
    }
    return TrialSpec(
        run_id=run_id,
        cycle=cycle,
        cycle_dir=str(cycle_dir),
        code_dir=str(code),
        train_cmd=train_cmd,
        eval_cmd=eval_cmd,
        params={"x": 0.5},
        seed=0,
        timeout_s=timeout_s,
        env=full_env,
        frozen_hashes=hash_files(code, frozen) if frozen else {},
    )


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] != b"Z"


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def wait_for(pred: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < end, f"{what} not met within {timeout_s} s"
        time.sleep(0.05)


def read_pids(path: Path, n: int, timeout_s: float = 30.0) -> list[int]:
    wait_for(lambda: path.exists() and len(path.read_text().split()) >= n, timeout_s, f"{n} pids in {path}")
    return [int(p) for p in path.read_text().split()]


# A trial for the kill -9 / resume tests through the real CLI: cycles 1 and 2 append their
# number to $LEDGER, then wait for $GATES/release_<cycle>; cycle 3 runs straight through.
GATED_TRIAL = """
import os, time
cycle = os.environ["RALPH_CYCLE"]
with open(os.environ["LEDGER"], "a") as fh:
    fh.write(cycle + "\\n")
gate = os.path.join(os.environ["GATES"], "release_" + cycle)
while int(cycle) <= 2 and not os.path.exists(gate):
    time.sleep(0.05)
print(f"val_accuracy: {0.5 + int(cycle) / 100}")
"""


def read_text(path: Path) -> str:
    """The file's text, or "" while it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def run_events(root: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The run's events (state/events.jsonl) so far, of one kind or all; a line being written is skipped."""
    out = []
    for line in read_text(root / "state" / "events.jsonl").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if kind is None or e.get("kind") == kind:
            out.append(e)
    return out


def kill_strays(marker: Path) -> None:
    """SIGKILL every process whose environment mentions ``marker`` (what a failing test left)."""
    needle = f"={marker}".encode()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if needle in fh.read():
                        os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass


# --------------------------------------------------------------------------- Ray


@dataclass(frozen=True)
class RayCluster:
    address: str  # the head's GCS address, what `ray start --address` and execution.ray.address take
    client_address: str  # ray://127.0.0.1:PORT: the head's Ray Client server
    head_node: str  # node ids
    b_node: str  # the node with the custom resource {"node_b": 1}


_CLUSTER: RayCluster | None = None


def ray_cluster() -> RayCluster:
    """Two Ray nodes on this machine (2 CPUs each; node B also has ``node_b = 1``), once per process.

    The pytest process is connected to it as a driver; ralph-ml processes started by the tests
    connect by address. Detached actors live in the cluster, not in the drivers.
    """
    global _CLUSTER
    if _CLUSTER is not None:
        return _CLUSTER
    import ray
    from ray.cluster_utils import Cluster

    small = 80 * 1024 * 1024  # object store per node: the tests move kilobytes
    with socket.socket() as s:  # a free port for the head's Ray Client server
        s.bind(("127.0.0.1", 0))
        client_port = s.getsockname()[1]
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"head": 1}, "object_store_memory": small, "include_dashboard": False,
                        "ray_client_server_port": client_port},
        shutdown_at_exit=False,
    )
    b = cluster.add_node(num_cpus=2, resources={"node_b": 1}, object_store_memory=small)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=RAY_NAMESPACE, log_to_driver=False, logging_level="WARNING")

    def _stop() -> None:
        ray.shutdown()
        cluster.shutdown()

    atexit.register(_stop)
    _CLUSTER = RayCluster(address=cluster.address, client_address=f"ray://127.0.0.1:{client_port}",
                          head_node=cluster.head_node.node_id, b_node=b.node_id)
    return _CLUSTER


# --------------------------------------------------------------------------- Slurm


def fake_slurm_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """Environment variables that put the fake Slurm on PATH with its state in ``state_dir``."""
    return {
        "PATH": f"{FAKE_SLURM_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_SLURM_DIR": str(state_dir),
        "FAKE_SLURM_PYTHON": sys.executable,
        **extra,
    }
