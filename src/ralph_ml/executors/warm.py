"""Warm starts (``execution.preload``): trial commands forked from a server with the imports done.

A cycle of a small model spends most of its CPU importing (``import torch`` and scikit-learn:
about 4 CPU-seconds of a 6-second digits trial on this kind of machine). With
``execution.preload = ["torch", "sklearn"]`` the local executor starts one server per run
(``ralph_ml._zygote``) that imports them once; each ``python script.py ...`` trial command is
then a fork of it, set up as a fresh interpreter would be (own session and process group,
working directory, environment, ``sys.argv``/``sys.path``, stdio to the cycle's logs, thread
counts, a fresh NumPy seed) and run as ``__main__``.

Only plain ``python [-u] [-B] script.py args`` / ``python -m module args`` commands whose
``python`` is the loop's own interpreter run warm (``warm_command``); anything else (shell
syntax, another interpreter, other flags) runs cold, exactly as without preload, and so does
every command while the server is unavailable. The trial cannot tell the difference, except
that what the preloaded modules read at import time (environment variables such as
``PYTHONHASHSEED``) comes from the loop, not from the cycle.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Sequence

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0  # the first warm launch waits this long for the imports, then runs cold
_REPLY_TIMEOUT_S = 30.0  # a ready server answers a launch within milliseconds
# Shell syntax (operators, expansions, globs, comments, escapes): such commands need /bin/sh.
_SHELL_SYNTAX = re.compile(r"[|&;<>()$`\\*?\[\]{}~#!\n]")


@dataclass(frozen=True)
class WarmCommand:
    """A command the server can run: ``python [flags] script args`` or ``python -m module args``."""

    argv: tuple[str, ...]  # the trial's sys.argv (for -m, argv[0] is replaced by the module's path)
    module: str | None = None
    unbuffered: bool = False  # -u
    no_bytecode: bool = False  # -B


def _same_interpreter(found: str, python: str) -> bool:
    """Same executable in the same folder (a venv's python links to the base one: not the same)."""
    a, b = os.path.abspath(found), os.path.abspath(python)
    return os.path.dirname(a) == os.path.dirname(b) and os.path.realpath(a) == os.path.realpath(b)


def warm_command(cmd: str, path_env: str, python: str = sys.executable) -> WarmCommand | None:
    """``cmd`` as a command the server can run, or None when it must go through /bin/sh."""
    if _SHELL_SYNTAX.search(cmd):
        return None
    try:
        words = shlex.split(cmd)
    except ValueError:  # unbalanced quotes: let the shell say so
        return None
    if not words or "=" in words[0]:
        return None
    exe = shutil.which(words[0], path=path_env)
    if exe is None or not _same_interpreter(exe, python):
        return None
    unbuffered = no_bytecode = False
    i = 1
    while i < len(words) and words[i].startswith("-") and words[i] != "-":
        flag = words[i]
        if flag == "-m":
            if i + 1 >= len(words):
                return None
            return WarmCommand(tuple(words[i + 1 :]), words[i + 1], unbuffered, no_bytecode)
        if len(flag) < 2 or not set(flag[1:]) <= {"u", "B"}:
            return None  # -c, -X, -W, -O, ...: a cold interpreter applies them
        unbuffered = unbuffered or "u" in flag
        no_bytecode = no_bytecode or "B" in flag
        i += 1
    if i >= len(words):
        return None  # an interactive interpreter
    return WarmCommand(tuple(words[i:]), None, unbuffered, no_bytecode)


class WarmProcess:
    """A forked trial command, shaped like the parts of ``subprocess.Popen`` the executor uses."""

    def __init__(self, pid: int, conn: socket.socket, server_pid: int, buffered: bytes = b"") -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.lost = ""  # why the exit code is unknown (the server died), if it is
        self._conn = conn
        self._server_pid = server_pid
        self._buf = buffered  # what was read past the pid reply
        self._released = False
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self.returncode is None:
                    self._read()
                if self.returncode is not None:
                    return self.returncode
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"warm pid {self.pid}", timeout or 0.0)
            poller = select.poll()  # not select(): descriptors above 1023 are common in a long run
            try:
                poller.register(self._conn, select.POLLIN)
                poller.poll(None if left is None else max(0, math.ceil(left * 1000)))
            except (OSError, ValueError):  # closed by another thread that read the exit meanwhile
                pass

    def _read(self) -> None:
        if self._parse():
            return
        while True:
            try:
                data = self._conn.recv(4096, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._on_lost()
                return
            self._buf += data
            if self._parse():
                return

    def _parse(self) -> bool:
        """Take the exit status from the buffered lines; True once it is known."""
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            msg = json.loads(line)
            if "exited" in msg:  # the leader is a zombie the server keeps until release()
                self.returncode = int(msg["exited"])
            elif "exit" in msg:  # collected: the server is done with it
                self.returncode = int(msg["exit"]) if self.returncode is None else self.returncode
                self._released = True
                self._conn.close()
        return self.returncode is not None

    def release(self, timeout_s: float = _REPLY_TIMEOUT_S) -> None:
        """The executor is done with the exited trial's process group: the server kills what is
        left in it and collects the leader (until then the group id cannot be reused)."""
        with self._lock:
            if self._released:
                return
            self._released = True
            try:
                self._conn.settimeout(timeout_s)
                self._conn.sendall(b"reap\n")
                while b'"exit"' not in self._buf:  # wait for the server to have collected it
                    chunk = self._conn.recv(4096)
                    if not chunk:
                        break
                    self._buf += chunk
            except OSError:  # the server is gone: nothing left to collect there
                pass
            self._conn.close()

    def _on_lost(self) -> None:
        """The server died first: nobody can tell the exit code; stop what is left of the trial."""
        self._released = True
        self._conn.close()
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        self.lost = (f"the warm-start server (pid {self._server_pid}) died while the trial ran, so its exit code "
                     "is unknown; the trial was stopped")
        self.returncode = -signal.SIGKILL


def _refusal(conn: socket.socket) -> str:
    """The server's ``{"error": ...}`` reply on a connection it already closed, if it sent one."""
    try:
        line = conn.recv(4096).split(b"\n", 1)[0]
        return str(json.loads(line).get("error", "")) if line else ""
    except (OSError, ValueError, AttributeError):
        return ""


class WarmStarter:
    """One warm-start server for a run; ``launch`` forks a trial command from it.

    The server starts at construction, so its imports overlap the loop's own start-up. Any
    failure (an import that raises, a dead server) makes ``launch`` return None: the caller
    runs the command cold, and ``error`` says why (also logged once).
    """

    def __init__(
        self,
        modules: Sequence[str],
        *,
        workspace: Path | None = None,
        log_path: Path | None = None,
        python: str = sys.executable,
        ready_timeout_s: float = READY_TIMEOUT_S,
        reply_timeout_s: float = _REPLY_TIMEOUT_S,
    ) -> None:
        self.modules = tuple(modules)
        self.reply_timeout_s = reply_timeout_s  # then the launch is given up and the command runs cold
        self.python = python
        self.error = ""
        self._ready = False
        self._ready_timeout_s = ready_timeout_s
        self._lock = threading.Lock()
        self._dir = tempfile.mkdtemp(prefix="ralph-warm-")
        self.socket_path = os.path.join(self._dir, "server.sock")
        self._log_path = log_path
        log_fh: IO[bytes] | int = subprocess.DEVNULL
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_fh = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [python, "-m", "ralph_ml._zygote", self.socket_path, str(workspace or ""), *self.modules],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_fh,
                cwd=self._dir,  # not the workspace: a file there must not shadow a preloaded module
                start_new_session=True,  # Ctrl-C in the loop's terminal is the loop's to handle
            )
        except OSError as exc:
            self._proc = None
            self._fail(f"cannot start the warm-start server with {python}: {exc}")
        finally:
            if not isinstance(log_fh, int):
                log_fh.close()
        self._commands: dict[tuple[str, str], WarmCommand | None] = {}

    def command(self, cmd: str, path_env: str) -> WarmCommand | None:
        key = (cmd, path_env)
        if key not in self._commands:
            self._commands[key] = warm_command(cmd, path_env, self.python)
        return self._commands[key]

    def _fail(self, why: str) -> None:
        if not self.error:
            where = f"; its log: {self._log_path}" if self._log_path else ""
            self.error = why
            log.warning("execution.preload: %s%s; trials run cold (fresh interpreters)", why, where)

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until the server has imported the modules (True) or failed (False)."""
        with self._lock:
            if self._ready or self.error or self._proc is None or self._proc.stdout is None:
                return self._ready
            timeout_s = self._ready_timeout_s if timeout_s is None else timeout_s
            poller = select.poll()
            poller.register(self._proc.stdout, select.POLLIN)
            if not poller.poll(math.ceil(timeout_s * 1000)):
                self._fail(f"the server had not imported {', '.join(self.modules)} after {timeout_s:g} s")
                self.close()
                return False
            line = self._proc.stdout.readline().decode(errors="replace").strip()
            if line == "ready":
                self._ready = True
            else:
                self._fail(line.removeprefix("error: ") or f"the server exited with code {self._proc.wait()}")
            return self._ready

    def launch(self, cmd: WarmCommand, cwd: Path, env: dict[str, str], stdout: IO[Any], stderr: IO[Any]) -> WarmProcess | None:
        """Fork ``cmd`` from the server; None when it cannot (the caller runs the command cold)."""
        if not self.wait_ready() or self._proc is None:
            return None
        if self._proc.poll() is not None:
            self._fail(f"the server exited with code {self._proc.returncode}")
            return None
        title = shlex.join(["python", *(["-m"] if cmd.module else []), *cmd.argv])  # for ps and top
        request = {"argv": list(cmd.argv), "module": cmd.module, "cwd": str(cwd), "env": env, "title": title,
                   "unbuffered": cmd.unbuffered, "no_bytecode": cmd.no_bytecode}
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.settimeout(self.reply_timeout_s)
            conn.connect(self.socket_path)
            with open(os.devnull, "rb") as devnull:
                try:
                    socket.send_fds(conn, [json.dumps(request).encode() + b"\n"],
                                    [devnull.fileno(), stdout.fileno(), stderr.fileno()])
                except OSError as exc:  # the server refused it at once: its reply says why
                    raise ConnectionError(_refusal(conn) or str(exc)) from exc
            reply = b""
            while b"\n" not in reply:
                chunk = conn.recv(4096)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                reply += chunk
            line, rest = reply.split(b"\n", 1)  # a quick trial's exit may come in the same read
            msg = json.loads(line)
            if "pid" not in msg:
                raise ConnectionError(msg.get("error", line.decode(errors="replace")))
            conn.sendall(b"go\n")  # from here on the command is the server's: never run it cold too
        except (OSError, ValueError) as exc:
            conn.close()
            self._fail(f"a launch failed: {exc}")
            return None
        conn.settimeout(None)
        return WarmProcess(int(msg["pid"]), conn, self._proc.pid, rest)

    def close(self) -> None:
        """Stop the server (its trials, in sessions of their own, are the executor's business)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()  # stdin EOF: the server exits
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
