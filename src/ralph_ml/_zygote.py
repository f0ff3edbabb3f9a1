"""The warm-start server: imports heavy modules once, then forks one child per trial command.

    python -m ralph_ml._zygote SOCKET_PATH FORBIDDEN_DIR MODULE [MODULE ...]

Started by ``ralph_ml.executors.warm.WarmStarter`` (``execution.preload``); nobody runs it by
hand. It imports the MODULEs (say ``torch`` and ``sklearn``: seconds of CPU per trial
otherwise), binds SOCKET_PATH, prints ``ready`` (or ``error: ...``) on stdout and serves:

- one connection per command: a JSON line ``{"argv": [...], "module": null | "pkg.mod",
  "cwd": ..., "env": {...}}`` with three file descriptors (stdin, stdout, stderr) attached;
- the server forks; the child becomes the leader of a new session (as ``start_new_session``),
  takes the three descriptors, the working directory, the environment, ``sys.argv`` and
  ``sys.path`` of a fresh ``python script.py`` and runs the script as ``__main__``;
- the server answers ``{"pid": N}`` once the child leads its session; the child runs the script
  only when the loop then says ``go`` (a loop that gave up waiting for the pid hangs up instead,
  runs the command cold, and the child ends unrun: a command never runs twice);
- when the child has ended, the server answers ``{"exited": code}`` (``os.waitstatus_to_exitcode``:
  negative for a signal) and keeps it as an unreaped zombie, so its process group id cannot be
  reused while the loop gives the rest of the group its kill grace, as for a cold trial;
- the loop says ``reap`` (or hangs up): the server kills what is left in the group, collects the
  child and answers ``{"exit": code}``.

A request the server cannot serve (malformed, or no descriptors or processes left to fork) is
answered ``{"error": why}`` and the loop runs that command cold; the server goes on serving.

It exits when its stdin (a pipe from the loop) closes, so it never outlives the loop. The
children do: like cold trials, they are in sessions of their own and the loop's resume
deals with them. Stdlib only (and setproctitle when installed); nothing here imports ralph-ml.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

_MAX_REQUEST_BYTES = 4 << 20  # an environment and argv; anything larger is refused
_REQUEST_TIMEOUT_S = 10.0  # the loop sends its request right after connecting
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _preload(modules: list[str], forbidden_dir: str) -> str:
    """Import ``modules``; '' when all is well, else why the server cannot serve."""
    import importlib

    for name in modules:
        try:
            mod = importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - anything an import raises is a refusal
            return f"cannot preload {name!r}: {type(exc).__name__}: {exc}"
        origin = os.path.realpath(getattr(mod, "__file__", None) or "")
        if forbidden_dir and origin.startswith(os.path.join(forbidden_dir, "")):
            return (f"{name!r} is the experiment's own code ({origin}); preload only installed libraries, "
                    "since each cycle has its own copy of the experiment's files")
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and cuda.is_initialized():
        return "preloading initialized CUDA, and a forked trial cannot use it; preload modules that do not touch the GPU"
    return ""


def _limit_threads(env: dict[str, str]) -> None:
    """Apply the trial's thread count to libraries the server loaded, which read it at import."""
    raw = next((env[v] for v in _THREAD_VARS if env.get(v, "").strip().isdigit()), "")
    if not raw or int(raw) < 1:
        return
    n = int(raw)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    if "numpy" in sys.modules:
        try:
            import threadpoolctl  # type: ignore[import-untyped]  # scikit-learn's: BLAS and OpenMP pools

            threadpoolctl.threadpool_limits(n)
        except ImportError:
            pass


def _exit_code(code: object) -> int:
    """What the interpreter does with ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _title(text: str) -> None:
    """What ps and top show for this process (its argv is still the server's otherwise)."""
    try:
        import setproctitle
    except ImportError:  # a core dependency, but this module runs on stdlib alone too
        return
    setproctitle.setproctitle(text)


def _child(req: dict[str, Any], fds: list[int], ready_w: int, go_r: int, base_path: list[str]) -> None:
    """Become the trial: a fresh ``python [-m module | script] args`` as far as the code can tell."""
    import runpy
    import threading

    os.setsid()
    os.write(ready_w, b"1")
    os.close(ready_w)
    _title(req.get("title") or " ".join(req["argv"]))
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    env: dict[str, str] = req["env"]
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(env)
    unbuffered = bool(env.get("PYTHONUNBUFFERED")) or req.get("unbuffered", False)
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE")) or req.get("no_bytecode", False)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own streams
    sys.stdout = open(1, "w", buffering=1 if unbuffered else -1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
    argv: list[str] = req["argv"]
    module = req.get("module")
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    script = os.path.abspath(argv[0])  # __main__.__file__ is absolute, as in a cold run (3.9+)
    first = os.getcwd() if module else os.path.dirname(os.path.realpath(script))
    sys.path[:] = [first, *extra, *base_path]
    sys.argv = list(argv)
    if "numpy" in sys.modules:  # preloaded: a fresh process would draw a fresh global seed
        sys.modules["numpy"].random.seed()
    if os.read(go_r, 1) != b"1":  # the loop gave up on this launch (and runs the command cold): end unrun
        os._exit(255)
    os.close(go_r)
    code = 0
    try:
        _limit_threads(env)
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            _run_script(script)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException as exc:  # noqa: BLE001 - printed as the interpreter would, then exit 1
        tb = _user_frames(exc.__traceback__)
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined] # join non-daemon threads, as at exit
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _run_script(script: str) -> None:
    """Run a file as ``__main__`` the way ``python script.py`` does: ``sys.argv[0]`` as typed,
    ``__file__`` absolute (``runpy.run_path`` would rewrite ``argv[0]`` to the path it is given)."""
    import builtins
    import importlib.machinery
    import runpy
    import types

    if not os.path.exists(script):  # the interpreter's own words and exit code
        print(f"{sys.executable}: can't open file {script!r}: [Errno 2] No such file or directory", file=sys.stderr)
        raise SystemExit(2)
    if not os.path.isfile(script):  # a folder or zip file with a __main__.py
        runpy.run_path(script, run_name="__main__")
        return
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__cached__ = None  # type: ignore[attr-defined]
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
    sys.modules["__main__"] = main
    with open(script, "rb") as fh:
        code = compile(fh.read(), script, "exec")
    exec(code, main.__dict__)  # noqa: S102 - this is what running the trial's script means


def _user_frames(tb: Any) -> Any:
    """The traceback without the frames of this server and of runpy (a fresh run shows none)."""
    import runpy

    ours = {os.path.abspath(__file__), os.path.abspath(runpy.__file__), "<frozen runpy>"}

    def own(name: str) -> bool:
        return name in ours or (not name.startswith("<") and os.path.abspath(name) in ours)

    while tb is not None and tb.tb_next is not None and own(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


def _send(conn: socket.socket, msg: dict[str, Any]) -> None:
    try:
        conn.sendall((json.dumps(msg) + "\n").encode())
    except OSError:  # the loop went away; nothing to tell
        pass


def _recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    buf = b""
    fds: list[int] = []
    try:
        while not buf.endswith(b"\n"):
            data, got, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
            fds += got
            if not data:
                raise ConnectionError("connection closed before a whole request")
            buf += data
            if len(buf) > _MAX_REQUEST_BYTES:
                raise ConnectionError("request too large")
        return json.loads(buf), fds
    except BaseException:
        for fd in fds:  # the cycle's log files: not kept open by a request that failed
            os.close(fd)
        raise


def main(argv: list[str]) -> int:
    sock_path, forbidden, modules = argv[0], os.path.realpath(argv[1]) if argv[1] else "", argv[2:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the loop's to handle
    # torch.cuda.is_available() in a preloaded module then asks NVML, which leaves the forks free
    # to use CUDA; counting devices through the CUDA runtime would make every fork unable to.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    error = _preload(modules, forbidden) or _fork_safety()
    if error:
        print("error: " + error, flush=True)
        return 1
    base_path = sys.path[1:]  # sys.path[0] is this module's folder under -m: the cwd
    _title(f"ralph-ml warm-start server ({', '.join(modules)})")
    server = _Server(sock_path, base_path)
    print("ready", flush=True)
    return server.serve_forever()


def _fork_safety() -> str:
    """'' when a fork of this process can still use CUDA (torch marks a fork it cannot: a "bad fork")."""
    torch = sys.modules.get("torch")
    bad_fork = getattr(getattr(torch, "cuda", None), "_is_in_bad_fork", None)
    if bad_fork is None:
        return ""
    pid = os.fork()
    if pid == 0:
        os._exit(3 if bad_fork() else 0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 3:
        return ("a preloaded module initialized CUDA (torch.cuda.device_count() or a CUDA call at import), "
                "and a forked trial could not use the GPU; preload modules that do not touch the GPU")
    return ""


@dataclass
class _Trial:
    """A forked trial command, from its fork until the loop is done with its process group."""

    pid: int
    conn: socket.socket | None  # to the loop's executor; None once it hung up
    go_w: int | None  # the child waits on this pipe: "go" runs the script, closing it ends the child unrun
    buf: bytes = b""
    exited: int | None = None  # the leader's exit code, once it is a zombie (kept: its group id stays taken)
    release: bool = False  # the loop is done with the group: collect the zombie as soon as it exits


class _Server:
    """The accept loop. Per connection: a request, ``{"pid"}``; the loop says ``go``; the leader
    exits: ``{"exited"}``, its zombie kept so the loop can give the rest of the group its kill grace
    (the pgid cannot be reused meanwhile); the loop says ``reap`` (or hangs up): the group is
    killed, the zombie collected, ``{"exit"}``."""

    def __init__(self, sock_path: str, base_path: list[str]) -> None:
        self.base_path = base_path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(sock_path)
        self.listener.listen(64)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "child")
        self.sel.register(sys.stdin, selectors.EVENT_READ, "parent")
        self.reserve = _spare_fd()  # given up to answer a connection when descriptors run out
        self.trials: dict[int, _Trial] = {}

    def serve_forever(self) -> int:
        while True:
            for key, _ in self.sel.select():
                if key.data == "parent":
                    if not os.read(sys.stdin.fileno(), 4096):
                        return 0  # the loop is gone
                elif key.data == "child":
                    os.read(self.wake_r, 4096)
                    self._collect()
                elif key.data == "accept":
                    self._accept()
                elif (trial := self.trials.get(key.data)) is not None and trial.conn is not None:
                    self._message(trial)  # (a trial released earlier in this round is gone)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # out of descriptors (EMFILE, ENFILE): free the spare one to say so
            if self.reserve < 0:
                time.sleep(0.05)  # nothing to free: the loop's reply timeout sends the command cold
                self.reserve = _spare_fd()
                return
            os.close(self.reserve)
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            finally:
                self.reserve = -1
            _send(conn, {"error": f"the warm-start server cannot accept a trial: {exc}"})
            conn.close()
            self.reserve = _spare_fd()
            return
        self._start(conn)

    def _start(self, conn: socket.socket) -> None:
        fds: list[int] = []
        pipes: list[int] = []
        try:
            conn.settimeout(_REQUEST_TIMEOUT_S)  # a client that connects and says nothing cannot hang the server
            req, fds = _recv_request(conn)
            conn.settimeout(None)
            if len(fds) != 3:
                raise ConnectionError(f"bad request: expected 3 file descriptors, got {len(fds)}")
            ready_r, ready_w = os.pipe()
            pipes += (ready_r, ready_w)
            go_r, go_w = os.pipe()
            pipes += (go_r, go_w)
            pid = os.fork()
        except (OSError, ValueError) as exc:  # a bad request, or no descriptors or processes left
            _send(conn, {"error": f"cannot start the trial: {type(exc).__name__}: {exc}"})
            conn.close()
            for fd in fds + pipes:
                os.close(fd)
            return
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                self.sel.close()
                for fd in (ready_r, go_w, self.wake_r, self.wake_w, self.reserve):
                    if fd >= 0:
                        os.close(fd)
                self.listener.close()
                for other in self.trials.values():
                    if other.conn is not None:
                        other.conn.close()
                    if other.go_w is not None:
                        os.close(other.go_w)
                conn.close()
                _child(req, fds, ready_w, go_r, self.base_path)
            finally:
                os._exit(255)  # _child never returns; this only guards against a bug in it
        for fd in (ready_w, go_r, *fds):
            os.close(fd)
        self.trials[pid] = _Trial(pid, conn, go_w)
        os.read(ready_r, 1)  # the child leads its own session now: its pgid is its pid
        os.close(ready_r)
        _send(conn, {"pid": pid})
        self.sel.register(conn, selectors.EVENT_READ, pid)
        self._collect()  # a SIGCHLD that arrived meanwhile

    def _message(self, trial: _Trial) -> None:
        assert trial.conn is not None
        try:
            data = trial.conn.recv(4096)
        except OSError:
            data = b""
        if not data:  # the loop hung up: a child not yet told to go ends unrun
            self.sel.unregister(trial.conn)
            trial.conn.close()
            trial.conn = None
            self._go(trial, run=False)
            trial.release = True
            if trial.exited is not None:
                self._release(trial)
            return
        trial.buf += data
        while b"\n" in trial.buf:
            line, trial.buf = trial.buf.split(b"\n", 1)
            if line == b"go":
                self._go(trial, run=True)
            elif line == b"reap":
                trial.release = True
                if trial.exited is not None:
                    self._release(trial)
                    return

    def _go(self, trial: _Trial, *, run: bool) -> None:
        if trial.go_w is None:
            return
        try:
            if run:
                os.write(trial.go_w, b"1")
        except OSError:  # the child is already gone
            pass
        os.close(trial.go_w)
        trial.go_w = None

    def _collect(self) -> None:
        """Note every leader that exited; keep its zombie until the loop releases its group."""
        for trial in list(self.trials.values()):
            if trial.exited is not None:
                continue
            try:
                info = os.waitid(os.P_PID, trial.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is None or info.si_pid == 0:
                continue
            trial.exited = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            if trial.release or trial.conn is None:
                self._release(trial)
            else:
                _send(trial.conn, {"exited": trial.exited})

    def _release(self, trial: _Trial) -> None:
        """Kill what the trial left in its process group, collect the leader, say how it ended."""
        try:
            os.killpg(trial.pid, signal.SIGKILL)  # the leader is an unreaped zombie: its pgid is still ours
        except OSError:
            pass
        _, status = os.waitpid(trial.pid, 0)
        del self.trials[trial.pid]
        self._go(trial, run=False)
        if trial.conn is not None:
            _send(trial.conn, {"exit": os.waitstatus_to_exitcode(status)})
            self.sel.unregister(trial.conn)
            trial.conn.close()
            trial.conn = None


def _spare_fd() -> int:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return -1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
