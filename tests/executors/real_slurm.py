"""A private, real single-node Slurm cluster on this machine, once per test session.

Debian's Slurm 22.05 (``slurmctld slurmd slurm-client munge``; ``make test`` installs them),
run from a temporary folder and never from the system's ``/etc/slurm`` or ``/run/munge``:

- ``munged`` with a key generated for the session, its own socket, pid file and log;
- a generated ``slurm.conf``: this host as the one node (``CPUs=2``), one partition ``debug``,
  free TCP ports, process tracking without cgroups, and no accounting database;
- ``slurmctld -D`` and ``slurmd -D`` in the background, waited for until ``sinfo`` shows the
  node idle, stopped at exit (with every job still running on the node).

Clients find it through ``SLURM_CONF`` (``RealSlurm.env``); jobs inherit it from ``sbatch``.
Without accounting (``AccountingStorageType=accounting_storage/none``) ``sacct`` answers
``Slurm accounting storage is disabled``: a real configuration (small clusters run without
``slurmdbd``) that the executor must cope with, through ``squeue``.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sacct", "scancel", "scontrol", "srun", "sinfo")
NODE_CPUS = 2  # what the node offers: two one-CPU trials run at once
_START_TIMEOUT_S = 90.0  # munged, slurmctld and slurmd up and the node idle, on a loaded machine


@dataclass(frozen=True)
class RealSlurm:
    root: Path  # the cluster's folder: slurm.conf, state, spool, logs, munge socket
    conf: Path
    node: str
    partition: str

    @property
    def env(self) -> dict[str, str]:
        """What a client (or a ralph-ml process) needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster (``squeue``, ``scontrol``, ...)."""
        return subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60,
                              check=check)

    def cancel_all(self) -> None:
        """scancel every job of the cluster and wait until none runs: what a test leaves is not the next one's."""
        self.run("scancel", "--full", "-u", "root", check=False)
        deadline = time.monotonic() + 60
        while self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.2)

    def logs(self) -> str:
        """The daemons' logs, for an assertion message."""
        out = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / name
            text = path.read_text(errors="replace") if path.exists() else "(none)"
            out.append(f"--- {path} (last 3000 chars)\n{text[-3000:]}")
        return "\n".join(out)


def why_unavailable() -> str | None:
    """Why no private cluster can be started here (a reason to skip), or None."""
    missing = [d for d in COMMANDS if shutil.which(d, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
    if missing:
        return f"real Slurm not installed (missing {', '.join(missing)}): apt-get install slurmctld slurmd slurm-client munge"
    if os.geteuid() != 0:
        return "the private Slurm cluster needs root: slurmd launches each job as its user"
    return None


_CLUSTER: RealSlurm | None = None
_PROCS: list[subprocess.Popen[bytes]] = []


def real_slurm() -> RealSlurm:
    """Start the cluster on first use (once per process) and return it; raises if it does not come up."""
    global _CLUSTER
    if _CLUSTER is not None:
        return _CLUSTER
    reason = why_unavailable()
    if reason:
        raise RuntimeError(reason)
    for attempt in range(3):  # the free ports picked may be taken before the daemons bind them
        root = Path(tempfile.mkdtemp(prefix="ralph-slurm-"))
        try:
            _CLUSTER = _start(root)
        except RuntimeError:
            _stop(root)
            if attempt == 2:
                raise
            continue
        except BaseException:
            _stop(root)
            raise
        atexit.register(_stop, root)
        return _CLUSTER
    raise AssertionError("not reached")


def _sbin(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    assert found, name
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _mem_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


def _conf(root: Path, node: str, ctld_port: int, slurmd_port: int) -> str:
    mem = max(256, _mem_mb() // 2)  # RealMemory: what jobs may ask for (--mem), half the machine
    return f"""\
# A private single-node cluster for ralph-ml's tests (tests/executors/real_slurm.py).
ClusterName=ralphtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={root}/plugstack.conf
# No cgroups: processes are tracked through their parents, no task containment.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct is disabled; finished jobs are logged to a text file.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
SchedulerType=sched/backfill
# Look at pending jobs every 2 s (default 60 s / 30 s): a requeued job starts soon after its wait.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
# The node's CPUs and memory come from this file, whatever the machine has.
SlurmdParameters=config_overrides
# SIGTERM -> KillWait -> SIGKILL when Slurm ends a job (scancel, time limit, requeue).
KillWait=5
InactiveLimit=0
MinJobAge=300
MessageTimeout=30
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} CPUs={NODE_CPUS} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _start(root: Path) -> RealSlurm:
    node = socket.gethostname().split(".")[0]
    for d in ("munge", "state", "spool"):
        (root / d).mkdir(mode=0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    (root / "plugstack.conf").write_text("")
    ctld_port, slurmd_port = _free_ports(2)
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, node, ctld_port, slurmd_port))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # munged forks into the background itself; --force: /tmp's sticky bit is fine for a test key.
    subprocess.run(
        [_sbin("munged"), "--force", f"--socket={root}/munge/munge.socket", f"--key-file={key}",
         f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munge/seed"],
        check=True, timeout=30, capture_output=True,
    )
    for daemon in ("slurmctld", "slurmd"):
        args = [_sbin(daemon), "-D", "-f", str(conf)]
        if daemon == "slurmctld":
            args.append("-i")  # ignore (absent) saved state
        else:
            args += ["-N", node]
        with open(root / f"{daemon}.out", "wb") as out:
            _PROCS.append(subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    cluster = RealSlurm(root=root, conf=conf, node=node, partition="debug")
    deadline = time.monotonic() + _START_TIMEOUT_S
    state = ""
    while time.monotonic() < deadline:
        for proc in _PROCS:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}\n{cluster.logs()}")
        try:
            state = subprocess.run(
                ["sinfo", "-h", "-n", node, "-o", "%T"], env=env, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except subprocess.TimeoutExpired:
            state = "(sinfo timed out)"
        if state == "idle":
            return cluster
        time.sleep(0.2)
    raise RuntimeError(f"the private Slurm node is not idle after {_START_TIMEOUT_S:.0f} s (sinfo: {state!r})\n{cluster.logs()}")


def _stop(root: Path) -> None:
    """Cancel what still runs, stop the daemons and munged, kill what is left; remove the folder."""
    conf = root / "slurm.conf"
    if _CLUSTER is not None and _CLUSTER.root == root and all(p.poll() is None for p in _PROCS):
        try:
            _CLUSTER.cancel_all()
        except (OSError, subprocess.SubprocessError):
            pass
    for proc in reversed(_PROCS):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(_PROCS):
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _PROCS.clear()
    try:  # munged writes its seed file as it exits: wait for that before removing the folder
        munged = int((root / "munge" / "munged.pid").read_text().strip())
        os.kill(munged, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{munged}") and time.monotonic() < deadline:
            time.sleep(0.05)
    except (OSError, ValueError):
        pass
    # slurmstepd outlives slurmd by design; it and every job process carry this cluster's SLURM_CONF.
    _kill_env(f"SLURM_CONF={conf}".encode())
    shutil.rmtree(root, ignore_errors=True)


def _kill_env(needle: bytes) -> None:
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
