"""A tiny Slurm on one machine: sbatch, squeue, sacct, scancel, scontrol and srun.

The external binaries are the only thing the Slurm tests fake; submitit's real code talks
to them. State lives in ``$FAKE_SLURM_DIR`` (one JSON file per job, guarded by a file lock):

- ``sbatch SCRIPT`` parses the ``#SBATCH`` lines, queues the job (PENDING) and starts it when
  the cluster's ``$FAKE_SLURM_CPUS`` (default 4) have room for its ``--cpus-per-task``;
  ``$FAKE_SLURM_PARTITIONS`` (comma-separated), when set, are the only partitions accepted.
- a detached runner runs the script (stdout/stderr to ``--output``/``--error``), enforces
  ``--time``, then marks the job COMPLETED / FAILED / TIMEOUT, or re-queues it after
  ``scontrol requeue``; every job's processes carry ``SLURM_JOB_ID`` in their environment,
  which stands in for Slurm's cgroup when ``scancel`` kills a job.
- ``srun`` runs the step with its own ``--output``/``--error`` and records its pid, which
  ``scancel --signal`` signals (like Slurm, only the steps).

Invoked through the shims in ``bin/`` (``$FAKE_SLURM_PYTHON``, default python3).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve()
STATE = Path(os.environ.get("FAKE_SLURM_DIR", "/tmp/fake-slurm"))
NODE = "fakenode1"
KILL_WAIT_S = 2.0  # Slurm's KillWait: SIGTERM, then SIGKILL this much later


@contextmanager
def locked() -> Iterator[None]:
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def job_path(jid: str) -> Path:
    return STATE / "jobs" / f"{jid}.json"


def load(jid: str) -> dict[str, Any] | None:
    try:
        return json.loads(job_path(jid).read_text())
    except (OSError, ValueError):
        return None


def save(job: dict[str, Any]) -> None:
    path = job_path(job["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job, indent=1))
    os.replace(tmp, path)


def all_jobs() -> list[dict[str, Any]]:
    out = []
    for p in sorted((STATE / "jobs").glob("*.json"), key=lambda p: int(p.stem)):
        job = load(p.stem)
        if job:
            out.append(job)
    return out


def minutes(value: str) -> float:
    """Slurm --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    days = 0
    if "-" in value:
        d, value = value.split("-", 1)
        days = int(d)
    parts = [int(p) for p in value.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, s = parts
    else:
        h, (m, s) = 0, (parts + [0])[:2]
    return days * 1440 + h * 60 + m + s / 60


def parse_script(text: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:[=\s]+(.*))?$", line.strip())
        if m:
            opts[m.group(1)] = (m.group(2) or "true").strip().strip("'\"")
    return opts


# --------------------------------------------------------------------------- scheduling


def schedule() -> None:
    """Start pending jobs, in id order, while the cluster's CPUs have room (caller holds the lock)."""
    total = int(os.environ.get("FAKE_SLURM_CPUS", "4"))
    jobs = all_jobs()
    used = sum(j["cpus"] for j in jobs if j["state"] == "RUNNING")
    for job in jobs:
        if job["state"] != "PENDING" or job.get("held"):
            continue
        if used + job["cpus"] > total:
            break  # FIFO: later jobs wait behind it
        used += job["cpus"]
        job["state"], job["start_time"] = "RUNNING", time.time()
        runner_env = {k: v for k, v in job["env"].items() if k != "SLURM_JOB_ID"}
        proc = subprocess.Popen(
            [sys.executable, str(HERE), "_run", job["id"]],
            env=runner_env,
            cwd=job["cwd"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        job["runner_pid"] = proc.pid
        save(job)


def job_env(job: dict[str, Any]) -> dict[str, str]:
    env = dict(job["env"])
    env.update(
        SLURM_JOB_ID=job["id"],
        SLURM_JOBID=job["id"],
        SLURM_JOB_NAME=job["name"],
        SLURM_NTASKS="1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NODEID="0",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_JOB_NODELIST=NODE,
        SLURM_CPUS_PER_TASK=str(job["cpus"]),
        SLURM_RESTART_COUNT=str(job["restarts"]),
        FAKE_SLURM_CLUSTER=str(STATE),
    )
    if job.get("partition"):
        env["SLURM_JOB_PARTITION"] = job["partition"]
    if job.get("gpus"):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(job["gpus"]))
    return env


def run_job(jid: str) -> None:
    """The runner: one execution of the batch script, then the job's next state."""
    signal.signal(signal.SIGTERM, lambda *_: None)  # scancel signals the whole group; we report the end
    job = load(jid)
    assert job is not None
    out = job["options"].get("output", f"slurm-{jid}.out").replace("%j", jid)
    err = job["options"].get("error", out).replace("%j", jid)
    limit_s = minutes(job["options"]["time"]) * 60 if "time" in job["options"] else None
    with open(out, "ab") as o, open(err, "ab") as e:
        proc = subprocess.Popen(["/bin/bash", str(STATE / "jobs" / f"{jid}.sh")], env=job_env(job), cwd=job["cwd"],
                                stdin=subprocess.DEVNULL, stdout=o, stderr=e)
        timed_out = False
        while True:
            try:
                rc = proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            if limit_s is not None and time.time() - job["start_time"] > limit_s and not timed_out:
                timed_out = True
                kill_job(jid, signal.SIGTERM)
                kill_job(jid, signal.SIGKILL, after_s=KILL_WAIT_S)
    with locked():
        job = load(jid)
        assert job is not None
        if job.get("requeue"):
            job.update(requeue=False, state="PENDING", restarts=job["restarts"] + 1, step_pid=None)
        elif not job["state"].startswith("CANCELLED"):
            job["state"] = "TIMEOUT" if timed_out else ("COMPLETED" if rc == 0 else "FAILED")
            job["exit_code"] = rc
        job["end_time"] = time.time()
        save(job)
        schedule()


def job_pids(jid: str) -> list[int]:
    """Every process of the job: its environment names the job and this fake cluster (the cgroup)."""
    needles = (f"\0SLURM_JOB_ID={jid}\0".encode(), f"\0FAKE_SLURM_CLUSTER={STATE}\0".encode())
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = b"\0" + fh.read()
        except OSError:
            continue
        if all(n in env for n in needles):
            out.append(int(name))
    return out


def kill_job(jid: str, sig: int, after_s: float = 0.0) -> None:
    if after_s:
        subprocess.Popen([sys.executable, str(HERE), "_kill", jid, str(int(sig)), str(after_s)], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return
    for pid in job_pids(jid):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


# --------------------------------------------------------------------------- commands


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    text = script.read_text()
    opts = parse_script(text)
    for a in args[:-1]:  # command-line options override the script's
        m = re.match(r"--([\w-]+)(?:=(.*))?$", a)
        if m:
            opts[m.group(1)] = m.group(2) or "true"
    allowed = [p for p in os.environ.get("FAKE_SLURM_PARTITIONS", "").split(",") if p]
    if allowed and opts.get("partition") not in allowed:
        print(f"sbatch: error: invalid partition specified: {opts.get('partition')}", file=sys.stderr)
        return 1
    with locked():
        counter = STATE / "next_id"
        # Ids unique across fake clusters (as on a real one): clients cache finished job ids.
        first = 1000 + zlib.crc32(str(STATE).encode()) % 9_000_000
        jid = str(int(counter.read_text()) if counter.exists() else first)
        counter.write_text(str(int(jid) + 1))
        (STATE / "jobs").mkdir(parents=True, exist_ok=True)
        (STATE / "jobs" / f"{jid}.sh").write_text(text)
        gpus = int(opts.get("gpus-per-node", "0").split(":")[-1] or 0)
        save({
            "id": jid, "name": opts.get("job-name", script.name), "state": "PENDING", "options": opts,
            "cpus": int(opts.get("cpus-per-task", "1")), "gpus": gpus, "partition": opts.get("partition"),
            "cwd": os.getcwd(), "env": dict(os.environ), "submit_time": time.time(), "restarts": 0,
            "requeue": False, "held": "hold" in opts, "step_pid": None, "runner_pid": None,
        })
        schedule()
    print(f"Submitted batch job {jid}")
    return 0


def sacct(args: list[str]) -> int:
    ids = [args[i + 1] for i, a in enumerate(args) if a == "-j" and i + 1 < len(args)]
    print("JobID|State|NodeList")
    with locked():
        for job in all_jobs():
            if job["id"] in ids:
                node = NODE if job.get("start_time") else "None assigned"
                print(f"{job['id']}|{job['state']}|{node}")
                if job.get("start_time"):
                    print(f"{job['id']}.batch|{job['state']}|{node}")
    return 0


def squeue(args: list[str]) -> int:
    ids = [x for i, a in enumerate(args) if a in ("-j", "--jobs") for x in args[i + 1].split(",")]
    with locked():
        for job in all_jobs():
            if job["state"] in ("PENDING", "RUNNING") and (not ids or job["id"] in ids):
                print(f"{job['id']} {job['state']} {job['name']}")
    return 0


def scancel(args: list[str]) -> int:
    sig = None
    ids = []
    it = iter(args)
    for a in it:
        if a in ("--signal", "-s"):
            sig = next(it)
        elif a.startswith("--signal="):
            sig = a.split("=", 1)[1]
        elif not a.startswith("-"):
            ids.append(a)
    for jid in ids:
        with locked():
            job = load(jid)
            if job is None:
                print(f"scancel: error: Invalid job id {jid}", file=sys.stderr)
                return 1
            if sig is not None:  # signal the job's steps only
                if job["state"] == "RUNNING" and job.get("step_pid"):
                    num = getattr(signal, sig if sig.startswith("SIG") else "SIG" + sig)
                    try:
                        os.kill(job["step_pid"], num)
                    except OSError:
                        pass
                continue
            if job["state"] == "PENDING":
                job.update(state="CANCELLED by 0", end_time=time.time())
                save(job)
                continue
            if job["state"] != "RUNNING":
                continue
            job["state"] = "CANCELLED by 0"
            save(job)
        kill_job(jid, signal.SIGTERM)
        kill_job(jid, signal.SIGKILL, after_s=KILL_WAIT_S)
    return 0


def scontrol(args: list[str]) -> int:
    if args[:1] == ["requeue"]:
        with locked():
            job = load(args[1])
            if job is None or job["state"] != "RUNNING":
                print(f"scontrol: error: job {args[1]} is not running", file=sys.stderr)
                return 1
            job["requeue"] = True
            save(job)
        return 0
    if args[:2] == ["show", "job"]:
        job = load(args[2])
        if job is None:
            return 1
        print(f"JobId={job['id']} JobName={job['name']} JobState={job['state'].split()[0]} Restarts={job['restarts']}")
        return 0
    print(f"scontrol (fake): unsupported {args}", file=sys.stderr)
    return 1


def srun(args: list[str]) -> int:
    out = err = None
    it = iter(args)
    cmd: list[str] = []
    for a in it:
        if cmd:
            cmd.append(a)
        elif a == "--output":
            out = next(it)
        elif a == "--error":
            err = next(it)
        elif a.startswith("-"):
            continue  # --unbuffered and friends
        else:
            cmd.append(a)
    jid = os.environ["SLURM_JOB_ID"]
    with locked():
        job = load(jid)
        if job is not None:
            job["step_pid"] = os.getpid()
            save(job)
    for path, fd in ((out, 1), (err, 2)):
        if path:
            f = os.open(path.replace("%j", jid).replace("%t", "0"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(f, fd)
            os.close(f)
    os.execvp(cmd[0], cmd)
    return 127  # not reached


def main() -> int:
    name, args = sys.argv[1], sys.argv[2:]
    if name == "_run":
        run_job(args[0])
        return 0
    if name == "_kill":
        time.sleep(float(args[2]))
        kill_job(args[0], int(args[1]))
        return 0
    commands = {"sbatch": sbatch, "sacct": sacct, "squeue": squeue, "scancel": scancel, "scontrol": scontrol, "srun": srun}
    return commands[name](args)


if __name__ == "__main__":
    sys.exit(main())
