"""The Ray executor on a real two-node Ray cluster on this machine, and through the real CLI.

The cluster (``tests/executors/support.py``): head node (2 CPUs) + node B (2 CPUs and the
custom resource ``node_b = 1``), one raylet each, shared with test_executor_contract.py.
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

from conftest import ralph, ralph_bg, recorded
from executors.support import (
    GATED_TRIAL, PY, RAY_NAMESPACE, alive, kill_strays, make_spec, ray_cluster, read_text, run_events, wait_for,
)
from ralph_ml.errors import ExecutorError
from ralph_ml.executors import get_executor
from ralph_ml.executors.ray_executor import RayExecutor, RayTrialHandle
from ralph_ml.records import FailureClass, TrialStatus

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="executors need /proc")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[object]:
    import ray

    c = ray_cluster()
    yield c
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == RAY_NAMESPACE:
            ray.kill(ray.get_actor(actor["name"], namespace=RAY_NAMESPACE))
    kill_strays(tmp_path)


def _ex(**kw: object) -> RayExecutor:
    ex = get_executor("ray", kill_grace_s=1.0, namespace=RAY_NAMESPACE, **kw)
    assert isinstance(ex, RayExecutor)
    return ex


# Each trial records itself, then waits until all four started: they can only finish if
# they all ran at the same time.
BARRIER = """\
import os, time
marks = os.environ["MARKS"]
open(os.path.join(marks, "started_" + os.environ["RALPH_CYCLE"]), "w").close()
deadline = time.time() + 60
while sum(n.startswith("started_") for n in os.listdir(marks)) < 4:
    assert time.time() < deadline, "not all four trials ran at once"
    time.sleep(0.05)
print("val_accuracy: 0.5")
"""


def test_four_trials_run_at_once_on_both_nodes(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ex = _ex(num_cpus=1)
    handles = [ex.submit(make_spec(tmp_path, f"{PY} train.py", cycle=c, files={"train.py": BARRIER})) for c in range(1, 5)]
    results = [h.wait(120) for h in handles]
    assert all(r is not None and r.status is TrialStatus.OK for r in results), results
    nodes = [json.loads((Path(h.spec.cycle_dir) / "ray_actor.json").read_text())["node"]["node_id"] for h in handles]
    # 4 one-CPU trials on 2 + 2 CPUs: both nodes, two trials each.
    assert sorted(nodes.count(n) for n in (cluster.head_node, cluster.b_node)) == [2, 2]


def test_a_custom_resource_routes_trials_to_its_node_and_queues_the_rest(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import ray

    ex = _ex(num_cpus=0.5, resources={"node_b": 1})
    first = ex.submit(make_spec(tmp_path, f"{PY} -c \"import time; time.sleep(60)\"", cycle=1))
    second = ex.submit(make_spec(tmp_path, "echo never; touch \"$MARKS/ran\"", cycle=2))
    node = wait_for(lambda: first.poll() is None and isinstance(first, RayTrialHandle) and first.node, 60, "first placed")
    assert node["node_id"] == cluster.b_node
    # node B has one `node_b`: the second trial waits for it (it is not run elsewhere).
    time.sleep(1.0)
    assert second.poll() is None and not second._placed()  # type: ignore[attr-defined]
    second.cancel()
    res2 = second.wait(5)
    assert res2 is not None and res2.status is TrialStatus.CANCELLED and "waiting for Ray resources" in res2.message
    assert not (tmp_path / "ran").exists()
    first.cancel()
    res1 = first.wait(5)
    assert res1 is not None and res1.status is TrialStatus.CANCELLED and res1.failure is FailureClass.CANCELLED
    wait_for(lambda: ray.available_resources().get("node_b", 0) == 1, 30, "node_b free again")


def test_a_request_no_node_can_fit_is_refused_up_front(cluster) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ExecutorError) as err:
        _ex(resources={"tpu_v5": 1})
    msg = str(err.value)
    assert "no node of the Ray cluster can ever fit one trial" in msg and "tpu_v5" in msg
    assert "node_b=1" in msg and "check_feasible = false" in msg
    _ex(resources={"tpu_v5": 1}, check_feasible=False).close()  # an autoscaler may add it


def test_runtime_env_reaches_the_trial_and_a_lost_actor_is_a_recorded_failure(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import ray

    ex = _ex(runtime_env={"env_vars": {"FROM_RUNTIME_ENV": "yes"}})
    train = f"{PY} -c \"import os, time; print('env', os.environ['FROM_RUNTIME_ENV'], flush=True); time.sleep(60)\""
    handle = ex.submit(make_spec(tmp_path, train))
    assert isinstance(handle, RayTrialHandle)
    log = Path(handle.spec.cycle_dir) / "logs" / "stdout.log"
    wait_for(lambda: log.exists() and "env yes" in log.read_text(), 60, "the trial saw the runtime_env")
    trial_pid = json.loads((Path(handle.spec.cycle_dir) / "trial.json").read_text())["pid"]
    ray.kill(ray.get_actor(handle.name, namespace=RAY_NAMESPACE))  # what a lost node looks like
    result = handle.wait(30)
    wait_for(lambda: not alive(trial_pid), 10, "what the dead actor left running is stopped")
    assert result is not None and result.status is TrialStatus.FAILED and result.failure is FailureClass.CRASH
    assert f"the Ray actor {handle.name} running cycle 1" in result.message and "died before the trial ended" in result.message


def test_without_an_address_the_run_gets_a_private_local_ray(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """address unset: a new local Ray for the run, never the cluster this machine already runs."""
    import subprocess

    script = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
import ray
from executors.support import make_spec
from ralph_ml.executors import get_executor
from pathlib import Path
ex = get_executor("ray", kill_grace_s=1.0)
res = ex.submit(make_spec(Path({str(tmp_path)!r}), "echo val_accuracy: 0.3")).wait(120)
gcs = ray.get_runtime_context().gcs_address
ex.close()
print(json.dumps({{"status": res.status.value, "metric": res.metrics.get("val_accuracy"), "gcs": gcs,
                  "still_connected": ray.is_initialized()}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["status"] == "ok" and got["metric"] == 0.3, out.stderr[-2000:]
    assert got["gcs"] != cluster.address and not got["still_connected"]  # its own Ray, shut down by close()


# --------------------------------------------------------------------------- the real CLI



@pytest.mark.parametrize("via", ["gcs", "client"])
def test_cli_kill9_then_resume_collects_the_finished_trial_and_reattaches_the_running_one(
    cluster, exp, tmp_path: Path, via: str  # type: ignore[no-untyped-def]
) -> None:
    """``via``: the cluster's GCS address (``ray start --address``), or Ray Client (``ray://``)
    with the code shipped through the object store, as from a laptop outside the cluster."""
    import ray

    ledger, gates = tmp_path / "ledger.txt", tmp_path / "gates"
    gates.mkdir()
    ray_cfg = {"address": cluster.address, "namespace": RAY_NAMESPACE, "num_cpus": 1}
    if via == "client":
        ray_cfg = {**ray_cfg, "address": cluster.client_address, "code_transfer": "ship"}
    root = exp(
        GATED_TRIAL, target=0.99,
        safeguards={"max_cycles": 3, "no_improvement_stop_cycles": 10},
        execution={"mode": "ray", "max_concurrency": 2, "env": {"LEDGER": str(ledger), "GATES": str(gates)}},
        extra={"execution.ray": ray_cfg},
    )
    proc = ralph_bg(root, "start")
    try:
        # K = 2: cycles 1 and 2 run at once on the cluster, each waiting for its gate.
        try:
            # Up to 180 s: a Ray Client connection whose server dies as it starts (ray#63202) is
            # tried again by the executor, and each failed attempt takes Ray's own time to report.
            wait_for(lambda: sorted(read_text(ledger).split()) == ["1", "2"], 180, "cycles 1 and 2 running")
        except AssertionError as exc:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"{exc}; the loop said:\n{out}\n{err}") from None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert recorded(root) == []
    # While no loop exists, cycle 1 finishes on the cluster; cycle 2 keeps running.
    (gates / "release_1").touch()
    wait_for(lambda: _ended_on_cluster(root, 1), 30, "cycle 1 finished")
    assert not _ended_on_cluster(root, 2)
    resumed = ralph_bg(root, "resume")
    try:
        wait_for(lambda: {e.get("how") for e in run_events(root, "recovered")} >= {"collected", "re-attached"}, 60,
                 "both cycles recovered")
        (gates / "release_2").touch()
        out, err = resumed.communicate(timeout=120)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert resumed.returncode == 2, out + err  # max_cycles reached
    recovered = {e["cycle"]: e["how"] for e in run_events(root, "recovered")}
    assert recovered == {1: "collected", 2: "re-attached"}
    recs = recorded(root)
    assert [r["cycle"] for r in recs] == [1, 2, 3]
    assert [r["result"]["metrics"]["val_accuracy"] for r in recs] == [0.51, 0.52, 0.53]
    assert sorted(read_text(ledger).split()) == ["1", "2", "3"]  # every trial ran exactly once
    # The actors were collected: nothing of this run is left holding the cluster's CPUs.
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == RAY_NAMESPACE]
    assert not [n for n in names if n.startswith("ralph-")], names
    assert json.loads((root / "runs" / "cycle_0002" / "ray_actor.json").read_text())["node"]["node_id"] in (
        cluster.head_node, cluster.b_node)
    status = ralph(root, "status", "--json")
    assert json.loads(status.stdout)["cycle"] == 3


def test_cli_digits_template_on_the_cluster_kill9_then_resume_collects_what_finished(
    cluster, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """The real digits template (PyTorch), K = 2 trials spread over both nodes: kill -9 of the
    loop while two train, one ends meanwhile, `resume` collects it and runs the run to its end."""
    import ray

    pytest.importorskip("torch", reason="the digits template trains with PyTorch: pip install 'ralph-ml[templates]'")
    pytest.importorskip("sklearn", reason="the digits template loads scikit-learn's digits: pip install 'ralph-ml[templates]'")
    max_cycles = 4
    assert ralph(tmp_path, "init", "exp", "--template", "digits").returncode == 0
    root = tmp_path / "exp"
    cfg = root / "ralph.toml"
    text = cfg.read_text()
    edits = [
        ("max_cycles = 12", f"max_cycles = {max_cycles}"),
        ("no_improvement_stop_cycles = 6", "no_improvement_stop_cycles = 100"),  # no plateau stop
        ("[execution]\n", '[execution]\nmode = "ray"\nmax_concurrency = 2\n'),
        ("low = 5\nhigh = 60\ndefault = 15", "low = 3\nhigh = 15\ndefault = 5"),  # epochs: short trials
    ]
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    cfg.write_text(text + f"""
[execution.ray]
address = "{cluster.address}"
namespace = "{RAY_NAMESPACE}"
num_cpus = 1
scheduling_strategy = "SPREAD"   # two 1-CPU trials on two 2-CPU nodes: one on each

# every trial trained to its end: one stopped at the target would end the run and cancel its sibling
[pruning]
stop_at_target = false
""")

    def cdir(cycle: int) -> Path:
        return root / "runs" / f"cycle_{cycle:04d}"

    def two_in_flight() -> list[int] | None:
        """The cycles placed on a node (the loop recorded which) with no result yet, once there are two."""
        placed = [c for c in range(1, max_cycles + 1) if '"node"' in read_text(cdir(c) / "ray_actor.json")]
        busy = [c for c in placed if not (cdir(c) / "result.json").exists()]
        return busy if len(busy) == 2 else None

    proc = ralph_bg(root, "start")
    try:
        running = wait_for(two_in_flight, 90, "two trials training at once")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    # With no loop alive, the trials keep training on the cluster; at least one ends there.
    wait_for(lambda: any(_ended_on_cluster(root, c) for c in running), 60, "one in-flight trial finished")
    finished = {c for c in running if _ended_on_cluster(root, c)}
    resumed = ralph(root, "resume", timeout=180)
    assert resumed.returncode in (0, 2), resumed.stdout + resumed.stderr  # target met, or max_cycles
    recovered = {e["cycle"]: e["how"] for e in run_events(root, "recovered")}
    assert set(recovered) == set(running), recovered
    assert all(recovered[c] == "collected" for c in finished), recovered
    assert all(how in ("collected", "re-attached") for how in recovered.values()), recovered  # none re-run
    cycles = [r["cycle"] for r in recorded(root)]
    assert sorted(cycles) == list(range(1, len(cycles) + 1)), cycles  # each cycle once
    if resumed.returncode == 2:
        assert len(cycles) == max_cycles
    assert all(r["result"]["status"] == "ok" for r in recorded(root))
    for c in cycles:  # every trial trained exactly once: one first epoch in its log
        first_epochs = [ln for ln in read_text(cdir(c) / "logs" / "stdout.log").splitlines() if ln.startswith("epoch   1/")]
        assert len(first_epochs) == 1, (c, first_epochs)
    assert not (root / "runs" / ".interrupted").exists()
    nodes = {json.loads((cdir(c) / "ray_actor.json").read_text())["node"]["node_id"] for c in cycles}
    assert nodes == {cluster.head_node, cluster.b_node}
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == RAY_NAMESPACE]
    assert not [n for n in names if n.startswith("ralph-")], names  # every actor was collected


def _ended_on_cluster(root: Path, cycle: int) -> bool:
    """Whether the cycle's trial ended, asked where its result is while no loop runs: the shared
    cycle folder, or (code shipped) the trial's actor on the cluster."""
    import ray

    cdir = root / "runs" / f"cycle_{cycle:04d}"
    info = json.loads((cdir / "ray_actor.json").read_text())
    if info["code_transfer"] == "shared":
        return (cdir / "result.json").exists()
    actor = ray.get_actor(info["name"], namespace=info["namespace"])
    return ray.get(actor.wait.remote(0.0), timeout=30) is not None


def test_importing_the_executors_does_not_import_ray_or_submitit() -> None:
    """Importing the executors package never imports ray (it loads only for execution.mode = 'ray')."""
    import subprocess

    code = "import sys, ralph_ml.executors, ralph_ml.loop; print('ray' in sys.modules, 'submitit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert out.stdout.strip() == "False False", out.stderr
