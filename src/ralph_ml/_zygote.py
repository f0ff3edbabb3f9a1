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
- the server answers ``{"pid": N}`` once the child leads its session, and ``{"exit": code}``
  (``os.waitstatus_to_exitcode``: negative for a signal) when it has ended, after killing
  what the child left in its process group, as the local executor does for a cold trial.

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


def _child(req: dict[str, Any], fds: list[int], ready_w: int, base_path: list[str]) -> None:
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
    while not buf.endswith(b"\n"):
        data, got, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
        fds += got
        if not data:
            raise ConnectionError("connection closed before a whole request")
        buf += data
        if len(buf) > _MAX_REQUEST_BYTES:
            raise ConnectionError("request too large")
    return json.loads(buf), fds


def main(argv: list[str]) -> int:
    sock_path, forbidden, modules = argv[0], os.path.realpath(argv[1]) if argv[1] else "", argv[2:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the loop's to handle
    error = _preload(modules, forbidden)
    if error:
        print("error: " + error, flush=True)
        return 1
    base_path = sys.path[1:]  # sys.path[0] is this module's folder under -m: the cwd
    _title(f"ralph-ml warm-start server ({', '.join(modules)})")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ, "accept")
    sel.register(wake_r, selectors.EVENT_READ, "child")
    sel.register(sys.stdin, selectors.EVENT_READ, "parent")
    children: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "parent":
                if not os.read(sys.stdin.fileno(), 4096):
                    return 0  # the loop is gone
            elif key.data == "child":
                os.read(wake_r, 4096)
                _reap(children)
            else:
                conn, _ = server.accept()
                _serve(conn, children, base_path, sel, closing=[server.fileno(), wake_r, wake_w])


def _serve(
    conn: socket.socket,
    children: dict[int, socket.socket],
    base_path: list[str],
    sel: selectors.BaseSelector,
    closing: list[int],
) -> None:
    fds: list[int] = []
    try:
        conn.settimeout(_REQUEST_TIMEOUT_S)  # a client that connects and says nothing cannot hang the server
        req, fds = _recv_request(conn)
        conn.settimeout(None)
        if len(fds) != 3:
            raise ConnectionError(f"expected 3 file descriptors, got {len(fds)}")
    except (OSError, ValueError) as exc:
        _send(conn, {"error": f"bad request: {exc}"})
        conn.close()
        for fd in fds:
            os.close(fd)
        return
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            signal.set_wakeup_fd(-1)
            sel.close()
            os.close(ready_r)
            for fd in closing:
                os.close(fd)
            for other in children.values():
                other.close()
            conn.close()
            _child(req, fds, ready_w, base_path)
        finally:
            os._exit(255)  # _child never returns; this only guards against a bug in it
    os.close(ready_w)
    for fd in fds:
        os.close(fd)
    os.read(ready_r, 1)  # the child leads its own session now: its pgid is its pid
    os.close(ready_r)
    children[pid] = conn
    _send(conn, {"pid": pid})
    _reap(children)  # a SIGCHLD that arrived meanwhile


def _reap(children: dict[int, socket.socket]) -> None:
    """Report every ended child: kill the rest of its process group first, then collect it."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == 0:
            return
        pid = info.si_pid
        try:
            os.killpg(pid, signal.SIGKILL)  # the leader is an unreaped zombie: its pgid is still ours
        except OSError:
            pass
        _, status = os.waitpid(pid, 0)
        conn = children.pop(pid, None)
        if conn is not None:
            _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
            conn.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
