"""Ray executor: each trial is a named, detached Ray actor that runs the trial command.

- The actor holds the trial's resources (``num_cpus``, ``num_gpus``, custom ``resources``) for
  its life and runs the local executor's ``LocalTrialHandle`` on its worker, driven by a
  thread of its own: same process group, timeout (suspended time excluded), SIGTERM -> grace
  -> SIGKILL, /proc sweep, metrics, frozen-file check as ``local``.
- Named ``ralph-<run_id>-c<cycle>-<hash of the cycle folder>`` in ``execution.ray.namespace``
  and ``lifetime="detached"``: it outlives a crashed loop, and ``recover`` re-attaches to it
  by the name recorded in ``<cycle_dir>/ray_actor.json`` (written *before* the actor exists,
  so no trial can run unrecorded). A finished trial's actor waits ``keep_finished_s`` to be
  collected, then exits; collecting it frees its resources.
- ``code_transfer = "shared"``: the worker uses the cycle's paths as they are (same filesystem).
  ``"ship"``: the code folder travels as a tar.gz through Ray's object store and is unpacked
  into a private folder on the worker; ``RALPH_*`` paths are rewritten to it; logs and
  progress.jsonl stream back every ``sync_interval_s`` while it runs, control.json goes out
  (cooperative stop), and metrics.json, checkpoints/ and the rest come back when it ends.
  (Ray's own per-actor ``runtime_env={"working_dir": ...}`` accepts only remote URIs; a local
  folder uploads only at the job level, so the code goes through the object store instead;
  ``execution.ray.runtime_env`` still passes pip/conda/env_vars/container/URIs to each actor.)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import tarfile
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from ..errors import ExecutorError
from ..journal import write_bytes_atomic, write_json_atomic
from ..metrics import DEFAULT_METRICS_PATTERN
from ..records import FailureClass, TrialResult, TrialSpec, TrialStatus
from ._common import BackgroundTrial, error_result, for_remote, spec_from_dict
from .base import Executor, TrialHandle
from .local import RESULT_FILE, read_result, reap_orphans

log = logging.getLogger(__name__)

ACTOR_FILE = "ray_actor.json"  # name, namespace, spec and (once placed) node of the trial's actor
_STREAMED = ("logs/stdout.log", "logs/stderr.log", "progress.jsonl")  # appended while the trial runs
_NOT_BACK = ("trial.json", RESULT_FILE)  # worker-local pids; the result travels as a record
_CHUNK_BYTES = 4 << 20  # at most this much of one file per call (logs, checkpoints)
_SHIP_MAX_BYTES = 1 << 20  # cycle files (params.json, config.json, ...) shipped with the spec
_SHIP_CODE_MAX_BYTES = 512 << 20  # a code folder larger than this (compressed) is refused: move data out of it
_SHARED_SLICE_S = 5.0  # shared mode: longest single wait on the actor (nothing to sync meanwhile)
_RPC_MARGIN_S = 60.0  # on top of a call's own duration before a silent actor counts as busy
_RECOVER_LOOK_S = 5.0  # recover: how long to wait for a found actor to answer before calling it queued
_ACTOR_THREADS = 16  # wait, cancel, suspend, file reads run concurrently in the actor


# --------------------------------------------------------------------------- worker side


class TrialActor:
    """Runs on a Ray worker: one trial, launched in the constructor, observed by methods."""

    def __init__(self, payload: dict[str, Any], code_tgz: bytes | None = None) -> None:
        self.name: str = payload["name"]
        self._collected = threading.Event()
        self._suspend_seq = 0
        self._lock = threading.Lock()
        self.trial: BackgroundTrial | None = None
        self.failed: TrialResult | None = None
        spec = spec_from_dict(payload["spec"])
        self.cycle_dir, self.code_dir = Path(spec.cycle_dir), Path(spec.code_dir)
        try:
            if code_tgz is not None:
                spec = self._unpack(spec, payload, code_tgz)
            # The trial sees exactly the GPUs Ray assigned to this actor (none for num_gpus = 0).
            gpus = ",".join(str(g) for g in ray.get_gpu_ids())
            spec = replace(for_remote(spec), env={**for_remote(spec).env, "CUDA_VISIBLE_DEVICES": gpus})
            self.trial = BackgroundTrial(
                spec, kill_grace_s=payload["kill_grace_s"], metrics_pattern=payload["metrics_pattern"]
            )
        except Exception as exc:  # noqa: BLE001 - a trial that cannot start is a recorded failure
            self.failed = error_result(f"the trial could not start on Ray node {socket.gethostname()}: {exc}")
        threading.Thread(target=self._linger, args=(float(payload["keep_finished_s"]),), daemon=True).start()

    def _unpack(self, spec: TrialSpec, payload: dict[str, Any], code_tgz: bytes) -> TrialSpec:
        """ship: unpack the code into a private cycle folder on this worker; remap the paths."""
        root = Path(payload["worker_dir"] or Path(tempfile.gettempdir()) / "ralph-ml-trials")
        here = root / self.name
        if here.exists():
            shutil.rmtree(here)
        (here / "code").mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(code_tgz), mode="r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (and 3.10.12): no links out of the folder
                tar.extractall(here / "code", filter="data")
            else:  # pragma: no cover - older Pythons
                tar.extractall(here / "code")  # noqa: S202 - our own archive of the cycle's code
        for sub in ("logs", "checkpoints"):
            (here / sub).mkdir(parents=True, exist_ok=True)
        for rel, data in payload["files"].items():
            (here / rel).write_bytes(data)
        moves = sorted(
            [(spec.code_dir, str(here / "code")), (spec.cycle_dir, str(here))], key=lambda m: len(m[0]), reverse=True
        )
        env = {}
        for key, value in spec.env.items():
            for old, new in moves:
                if value == old or value.startswith(old + os.sep):
                    value = new + value[len(old) :]
                    break
            env[key] = value
        if "params" in payload:  # RALPH_PARAMS pointed outside the cycle folder (repeats): shipped
            (here / "params.json").write_bytes(payload["params"])
            env["RALPH_PARAMS"] = str(here / "params.json")
        self.cycle_dir, self.code_dir = here, here / "code"
        return replace(spec, cycle_dir=str(here), code_dir=str(here / "code"), env=env)

    def _linger(self, keep_s: float) -> None:
        """Once the trial ended, wait ``keep_s`` for a loop to collect it, then free the resources."""
        if self.trial is not None:
            self.trial.wait(None)
        if not self._collected.wait(keep_s):
            log.warning("trial actor %s was not collected within %.0f s; exiting", self.name, keep_s)
            os._exit(0)

    # ------------------------------------------------------------------ observed by the driver

    def info(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "cycle_dir": str(self.cycle_dir),
            "code_dir": str(self.code_dir),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }

    def wait(self, timeout_s: float) -> dict[str, Any] | None:
        if self.failed is not None:
            return self.failed.to_dict()
        assert self.trial is not None
        result = self.trial.wait(max(0.0, timeout_s))
        return None if result is None else result.to_dict()

    def cancel(self) -> dict[str, Any]:
        if self.failed is not None:
            return self.failed.to_dict()
        assert self.trial is not None
        return self.trial.cancel().to_dict()

    def set_suspended(self, suspended: bool, seq: int) -> None:
        """Pause or continue the trial; calls may arrive out of order, the highest ``seq`` wins."""
        with self._lock:
            if seq <= self._suspend_seq or self.trial is None:
                return
            self._suspend_seq = seq
            (self.trial.suspend if suspended else self.trial.resume)()

    def sizes(self) -> dict[str, int]:
        """Every file of the cycle folder but the code: relative path -> size in bytes."""
        out: dict[str, int] = {}
        for path in self.cycle_dir.rglob("*"):
            rel = path.relative_to(self.cycle_dir).as_posix()
            if rel.startswith("code/") or rel in _NOT_BACK or not path.is_file():
                continue
            out[rel] = path.stat().st_size
        return out

    def read(self, wants: dict[str, int], max_bytes: int) -> dict[str, bytes]:
        """From each file (relative path -> offset), at most ``max_bytes`` from the offset on."""
        out: dict[str, bytes] = {}
        for rel, offset in wants.items():
            try:
                with open(self.cycle_dir / rel, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(max_bytes)
            except OSError:
                continue
            if data:
                out[rel] = data
        return out

    def write_control(self, data: bytes) -> None:
        """The loop's control.json (cooperative stop), to where the trial reads it."""
        write_bytes_atomic(self.cycle_dir / "control.json", data)

    def release(self, remove: bool) -> None:
        """Collected: stop waiting for a loop, delete the private copy (ship)."""
        self._collected.set()
        if remove:
            shutil.rmtree(self.cycle_dir, ignore_errors=True)


_RemoteTrial: Any = ray.remote(TrialActor)


# --------------------------------------------------------------------------- driver side


def _actor_name(spec: TrialSpec) -> str:
    digest = hashlib.sha1(str(Path(spec.cycle_dir).resolve()).encode()).hexdigest()[:10]
    return f"ralph-{spec.run_id}-c{spec.cycle:04d}-{digest}"


# Ray Client: the server the cluster forks for each connection sometimes dies as it starts
# ("Starting Ray client server failed", the proxy cannot reach it, or finds it a zombie as it
# reads its command line: "Initialization failure from server ... ZombieProcess";
# ray-project/ray#63202). A new connection gets a new server.
_CLIENT_TRANSIENT = ("client server failed", "proxy failed to connect to backend", "zombieprocess")
_CLIENT_ATTEMPTS = 3
_CLIENT_RETRY_S = 1.0


def _connect(address: str | None, namespace: str) -> None:
    """``ray.init`` for the executor; a Ray Client connection whose server failed to start is tried again."""
    attempts = _CLIENT_ATTEMPTS if (address or "").startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                # "local": a new private instance even when this machine runs a cluster already
                address=address or "local",
                namespace=namespace,
                log_to_driver=False,  # trial output goes to its log files, not the loop's terminal
                logging_level=logging.WARNING,
            )
            return
        except Exception as exc:
            if attempt == attempts or not any(m in str(exc).lower() for m in _CLIENT_TRANSIENT):
                raise
            log.warning("Ray Client connection %d/%d to %s failed as its server started (%s); trying again",
                        attempt, attempts, address, exc)
            if ray.is_initialized():
                ray.shutdown()
            time.sleep(_CLIENT_RETRY_S * attempt)


class RayExecutor(Executor):
    """Trials as detached Ray actors; see the module docstring. Keyword arguments mirror
    ``[execution.ray]`` plus the local executor's ``kill_grace_s`` and ``metrics_pattern``."""

    name = "ray"

    def __init__(
        self,
        *,
        kill_grace_s: float = 5.0,
        metrics_pattern: str = DEFAULT_METRICS_PATTERN,
        address: str | None = None,
        namespace: str = "ralph-ml",
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        resources: dict[str, float] | None = None,
        code_transfer: str = "shared",
        runtime_env: dict[str, Any] | None = None,
        sync_interval_s: float = 1.0,
        scheduling_strategy: str = "DEFAULT",
        keep_finished_s: float = 3600.0,
        check_feasible: bool = True,
        worker_dir: str | None = None,
    ) -> None:
        if code_transfer not in ("shared", "ship"):
            raise ExecutorError(f"execution.ray.code_transfer must be 'shared' or 'ship', got {code_transfer!r}")
        self.kill_grace_s = kill_grace_s
        self.metrics_pattern = metrics_pattern
        self.namespace = namespace
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.resources = dict(resources or {})
        self.code_transfer = code_transfer
        self.runtime_env = dict(runtime_env or {})
        self.sync_interval_s = sync_interval_s
        self.scheduling_strategy = scheduling_strategy
        self.keep_finished_s = keep_finished_s
        self.worker_dir = worker_dir
        self._owns_ray = False
        self.closed = threading.Event()  # set by close(): file-moving threads stop touching Ray
        if not ray.is_initialized():
            try:
                _connect(address, namespace)
            except Exception as exc:  # ConnectionError, RuntimeError, ValueError: all mean "no cluster"
                where = "a new local Ray instance" if address is None else f"the Ray cluster at {address!r}"
                raise ExecutorError(
                    f"could not connect to {where}: {exc}; check execution.ray.address (start a cluster with "
                    "`ray start --head`, then use address = \"auto\" or \"HEAD_IP:6379\"; Ray Client: \"ray://HOST:10001\")"
                ) from exc
            self._owns_ray = True
        if check_feasible:
            self._check_feasible()

    def _demand(self) -> dict[str, float]:
        need = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        return {k: v for k, v in need.items() if v > 0}

    def _check_feasible(self) -> None:
        need = self._demand()
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
        if any(all(res.get(k, 0.0) >= v for k, v in need.items()) for res in nodes):
            return
        have = "; ".join(
            ", ".join(f"{k}={v:g}" for k, v in sorted(res.items()) if not k.startswith(("node:", "memory", "object_store")))
            for res in nodes
        )
        raise ExecutorError(
            f"no node of the Ray cluster can ever fit one trial: it needs {need} "
            f"(execution.ray.num_cpus/num_gpus/resources), the alive nodes have [{have or 'none'}]. "
            "Lower the request, add a node with those resources, or set execution.ray.check_feasible = false "
            "when an autoscaler adds nodes on demand."
        )

    def submit(self, spec: TrialSpec) -> RayTrialHandle:
        name = _actor_name(spec)
        cycle_dir = Path(spec.cycle_dir)
        payload: dict[str, Any] = {
            "name": name,
            "spec": spec.to_dict(),
            "transfer": self.code_transfer,
            "kill_grace_s": self.kill_grace_s,
            "metrics_pattern": self.metrics_pattern,
            "keep_finished_s": self.keep_finished_s,
            "worker_dir": self.worker_dir,
            "files": {},
        }
        options: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "lifetime": "detached",
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "resources": self.resources,
            "max_concurrency": _ACTOR_THREADS,
            "max_restarts": 0,
            "scheduling_strategy": self.scheduling_strategy,
        }
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        args: list[Any] = [payload]
        if self.code_transfer == "ship":
            payload["files"] = _cycle_files(cycle_dir)
            params = spec.env.get("RALPH_PARAMS", "")
            if params and not params.startswith(spec.cycle_dir + os.sep) and os.path.isfile(params):
                payload["params"] = Path(params).read_bytes()
            args.append(ray.put(_pack(Path(spec.code_dir))))
        try:
            (cycle_dir / "logs").mkdir(parents=True, exist_ok=True)
            (cycle_dir / RESULT_FILE).unlink(missing_ok=True)
            # Recorded before the actor exists: a loop that dies right after can still find it.
            write_json_atomic(
                cycle_dir / ACTOR_FILE,
                {"name": name, "namespace": self.namespace, "code_transfer": self.code_transfer, "spec": spec.to_dict()},
            )
        except OSError as exc:
            raise ExecutorError(f"cannot prepare the cycle folder {cycle_dir}: {exc}") from exc
        self._kill_stale(name)
        try:
            actor = _RemoteTrial.options(**options).remote(*args)
        except Exception as exc:
            raise ExecutorError(f"could not create the Ray actor {name} for cycle {spec.cycle}: {exc}") from exc
        return RayTrialHandle(spec, actor, self, name, ship=self.code_transfer == "ship")

    def _kill_stale(self, name: str) -> None:
        """An actor left under this name by an earlier attempt of the same cycle: stop it first."""
        try:
            old = ray.get_actor(name, namespace=self.namespace)
        except ValueError:
            return
        try:
            ray.get(old.cancel.remote(), timeout=self.kill_grace_s + _RPC_MARGIN_S)
        except Exception as exc:  # noqa: BLE001 - it is killed below either way
            log.warning("could not cancel the stale actor %s: %s", name, exc)
        ray.kill(old, no_restart=True)

    def recover(self, cycle_dir: Path) -> TrialResult | TrialHandle | None:
        """Re-attach to the cycle's actor if it still exists (running: a handle; ended: its result)."""
        path = Path(cycle_dir) / ACTOR_FILE
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            spec = spec_from_dict(info["spec"])
            name = str(info["name"])
        except FileNotFoundError:
            return super().recover(cycle_dir)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ExecutorError(f"cannot read {path}: {exc}; delete it to run cycle {Path(cycle_dir).name} again") from exc
        try:
            actor = ray.get_actor(name, namespace=str(info.get("namespace", self.namespace)))
        except ValueError:  # gone (collected, lingered out, node lost, or a local Ray that died with the loop)
            if info.get("code_transfer") == "shared":
                reap_orphans(cycle_dir)  # the same machine, when it ran here
            return read_result(cycle_dir)
        handle = RayTrialHandle(spec, actor, self, name, ship=info.get("code_transfer") == "ship", attached=True)
        handle._placed(wait_s=_RECOVER_LOOK_S)  # an alive actor answers at once; a queued one does not
        return handle.poll() or handle

    def close(self) -> None:
        self.closed.set()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False


def _pack(code_dir: Path) -> bytes:
    """The cycle's code folder as tar.gz bytes (symlinks kept as links)."""
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
            tar.add(code_dir, arcname=".")
    except OSError as exc:
        raise ExecutorError(f"cannot pack the trial's code folder {code_dir}: {exc}") from exc
    if buf.tell() > _SHIP_CODE_MAX_BYTES:
        raise ExecutorError(
            f"the code folder {code_dir} packs to {buf.tell() >> 20} MiB (limit {_SHIP_CODE_MAX_BYTES >> 20} MiB) "
            "with execution.ray.code_transfer = 'ship'; keep data out of the workspace (files.exclude, "
            "RALPH_DATA_DIR) or use code_transfer = 'shared' on a shared filesystem"
        )
    return buf.getvalue()


def _cycle_files(cycle_dir: Path) -> dict[str, bytes]:
    """The small files of a cycle folder (params.json, config.json, control.json, ...) for the worker."""
    out: dict[str, bytes] = {}
    for path in cycle_dir.iterdir():
        if path.is_file() and path.name not in (ACTOR_FILE, *_NOT_BACK) and path.stat().st_size <= _SHIP_MAX_BYTES:
            out[path.name] = path.read_bytes()
    return out


class RayTrialHandle(TrialHandle):
    """The driver's side of one trial actor. Thread-safe; ``wait`` also moves files (ship)."""

    def __init__(
        self, spec: TrialSpec, actor: Any, ex: RayExecutor, name: str, *, ship: bool, attached: bool = False
    ) -> None:
        self.spec = spec
        self.name = name
        self._actor = actor
        self._ex = ex
        self._ship = ship
        self.cycle_dir = Path(spec.cycle_dir)
        self._result: TrialResult | None = None
        self._lock = threading.Lock()  # one sync/collect at a time
        self._info_ref = actor.info.remote()
        self.node: dict[str, Any] | None = None  # where it runs, once the actor was placed
        self._seq = int(time.time() * 1000)  # suspend/resume order, increasing across re-attaches
        self._suspended = False
        # Offsets of the streamed files: what the driver already has (a re-attach continues there).
        self._offsets = {rel: _size(self.cycle_dir / rel) for rel in _STREAMED} if self._ship else {}
        self._control_key: tuple[int, int] | None = _stat_key(self.cycle_dir / "control.json") if not attached else None
        if ship:  # files move whether or not anyone waits (the live view and the pruner read them)
            threading.Thread(target=self._sync_loop, name=f"ralph-ray-sync-{spec.cycle}", daemon=True).start()

    # ------------------------------------------------------------------ TrialHandle

    def poll(self) -> TrialResult | None:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> TrialResult | None:
        end = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            if self._result is not None:
                return self._result
            slice_s = self._ex.sync_interval_s if self._ship else _SHARED_SLICE_S
            if end is not None:
                slice_s = max(0.0, min(slice_s, end - time.monotonic()))
            if not self._placed(wait_s=slice_s):  # still queued for resources: nothing to ask yet
                if end is not None and time.monotonic() >= end:
                    return None
                continue
            try:
                raw = ray.get(self._actor.wait.remote(slice_s), timeout=slice_s + _RPC_MARGIN_S)
            except GetTimeoutError:  # a busy cluster: ask again
                raw = None
            except RayError as exc:  # the actor died (node lost, killed, runtime_env failed)
                return self._lost(exc)
            if raw is not None:
                return self._collect(TrialResult.from_dict(raw))
            if end is not None and time.monotonic() >= end:
                return None

    def cancel(self) -> None:
        if self._result is not None:
            return
        if not self._placed(wait_s=1.0):
            # Still queued for resources: nothing runs yet, so removing the actor is the cancel.
            ray.kill(self._actor, no_restart=True)
            if not self._ship:  # it may have launched the trial just now (shared: trial.json is here)
                reap_orphans(self.cycle_dir)
            now = time.time()
            self._result = TrialResult(
                status=TrialStatus.CANCELLED, failure=FailureClass.CANCELLED, started_at=now, ended_at=now,
                message=f"cancelled while waiting for Ray resources {self._ex._demand()} (actor {self.name})",
            )
            write_json_atomic(self.cycle_dir / RESULT_FILE, self._result.to_dict())
            return
        try:
            raw = ray.get(self._actor.cancel.remote(), timeout=self._ex.kill_grace_s + _RPC_MARGIN_S)
        except (RayActorError, GetTimeoutError) as exc:
            self._lost(exc)
            return
        self._collect(TrialResult.from_dict(raw))

    def suspend(self) -> None:
        self._set_suspended(True)

    def resume(self) -> None:
        self._set_suspended(False)

    # ------------------------------------------------------------------ internals

    def _set_suspended(self, suspended: bool) -> None:
        with self._lock:
            if self._result is not None or suspended == self._suspended:
                return
            self._suspended = suspended
            self._seq += 1
            ref = self._actor.set_suspended.remote(suspended, self._seq)
        if self._placed():  # else it applies once the actor starts (the highest seq wins)
            try:
                ray.get(ref, timeout=_RPC_MARGIN_S)
            except (RayActorError, GetTimeoutError) as exc:
                log.warning("could not %s trial actor %s: %s", "suspend" if suspended else "resume", self.name, exc)

    def _placed(self, wait_s: float = 0.0) -> bool:
        """True once the actor runs (its constructor started the trial); records its node."""
        if self.node is not None:
            return True
        ready, _ = ray.wait([self._info_ref], timeout=wait_s)
        if not ready:
            return False
        try:
            self.node = ray.get(self._info_ref)
        except RayError:
            return True  # it died, or could never start (a runtime_env that fails): the next call reports it
        try:
            doc = json.loads((self.cycle_dir / ACTOR_FILE).read_text(encoding="utf-8"))
            write_json_atomic(self.cycle_dir / ACTOR_FILE, {**doc, "node": self.node})
        except (OSError, ValueError) as exc:
            log.warning("could not record the node of %s: %s", self.name, exc)
        return True

    def _sync_loop(self) -> None:
        """Until the trial is collected (or its actor is gone): move files every sync_interval_s."""
        while self._result is None:
            if self._ex.closed.wait(self._ex.sync_interval_s) or self._result is not None or not ray.is_initialized():
                return
            if self._placed() and not self._sync():
                return

    def _sync(self) -> bool:
        """One round of file moves; False once the actor is gone."""
        # ship: append new log/progress bytes here; send control.json there if it changed.
        if not self._lock.acquire(blocking=False):
            return True  # another thread is moving files right now
        try:
            key = _stat_key(self.cycle_dir / "control.json")
            if key is not None and key != self._control_key:
                data = (self.cycle_dir / "control.json").read_bytes()
                ray.get(self._actor.write_control.remote(data), timeout=_RPC_MARGIN_S)
                self._control_key = key
            self._pull(dict(self._offsets))
        except RayActorError:
            return False
        except Exception as exc:  # noqa: BLE001 - a busy cluster or a full disk: try again next round
            if not ray.is_initialized():
                return False
            log.warning("could not move the files of %s: %s", self.name, exc)
        finally:
            self._lock.release()
        return True

    def _pull(self, wants: dict[str, int]) -> None:
        """Append to each local file what the worker's copy has beyond ``wants[rel]``, to its end."""
        while wants:
            got: dict[str, bytes] = ray.get(self._actor.read.remote(wants, _CHUNK_BYTES), timeout=_RPC_MARGIN_S)
            nxt: dict[str, int] = {}
            for rel, data in got.items():
                dest = self.cycle_dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "r+b" if dest.exists() else "wb") as fh:
                    fh.seek(wants[rel])
                    fh.write(data)
                    fh.truncate()
                end = wants[rel] + len(data)
                if rel in self._offsets:
                    self._offsets[rel] = end
                if len(data) == _CHUNK_BYTES:
                    nxt[rel] = end
            wants = nxt

    def _collect(self, result: TrialResult) -> TrialResult:
        """The trial ended: bring everything back (ship), write result.json, free the actor."""
        self._placed(wait_s=_RPC_MARGIN_S)  # records the node (and, below, the worker's paths)
        with self._lock:
            if self._result is not None:
                return self._result
            if self._ship:
                try:
                    sizes: dict[str, int] = ray.get(self._actor.sizes.remote(), timeout=_RPC_MARGIN_S)
                    wants = {rel: (self._offsets.get(rel, 0) if rel in _STREAMED else 0) for rel in sizes}
                    for rel, size in sizes.items():
                        if size == 0:  # empty files (a silent stderr.log) exist here too
                            (self.cycle_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                            (self.cycle_dir / rel).touch()
                    self._pull({rel: off for rel, off in wants.items() if sizes[rel] > off})
                    result = self._localize(result)
                    write_json_atomic(self.cycle_dir / RESULT_FILE, result.to_dict())
                except (RayActorError, GetTimeoutError, OSError) as exc:
                    result = _replace_message(result, f"{result.message}; files could not be brought back: {exc}")
                    write_json_atomic(self.cycle_dir / RESULT_FILE, result.to_dict())
            self._result = result
        self._free()
        return result

    def _localize(self, result: TrialResult) -> TrialResult:
        """Worker paths in the message (logs, code) as the driver's paths."""
        if self.node is None:
            return result
        msg = result.message
        for old, new in ((self.node["code_dir"], self.spec.code_dir), (self.node["cycle_dir"], self.spec.cycle_dir)):
            msg = msg.replace(old, new)
        return _replace_message(result, msg)

    def _free(self) -> None:
        try:
            ray.get(self._actor.release.remote(self._ship), timeout=_RPC_MARGIN_S)
        except (RayActorError, GetTimeoutError) as exc:
            log.warning("could not release trial actor %s: %s", self.name, exc)
        try:
            ray.kill(self._actor, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - already gone
            log.debug("kill %s: %s", self.name, exc)

    def _lost(self, exc: BaseException) -> TrialResult:
        """The actor died (node lost, killed by hand): the result on disk if any, else a failure."""
        if not self._ship:
            reap_orphans(self.cycle_dir)  # what it left running, when that was on this machine
        found = read_result(self.cycle_dir) if not self._ship else None
        if found is not None and found.exit_code in (-signal.SIGKILL, 128 + signal.SIGKILL):
            found = None  # the trial was SIGKILLed as its actor went down (Ray kills a dead worker's children)
        where = f" on node {self.node['hostname']} ({self.node['node_ip']})" if self.node else ""
        self._result = found or error_result(
            f"the Ray actor {self.name} running cycle {self.spec.cycle}{where} died before the trial ended: "
            f"{type(exc).__name__}: {exc}; its logs: {self.cycle_dir / 'logs'}"
        )
        if found is None:
            write_json_atomic(self.cycle_dir / RESULT_FILE, self._result.to_dict())
        return self._result


def _replace_message(result: TrialResult, message: str) -> TrialResult:
    return TrialResult.from_dict({**result.to_dict(), "message": message})


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
