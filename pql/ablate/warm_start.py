"""Processes started warm: forked from a server that has imported torch once, instead of an interpreter
importing it again for each (torch, then torch._dynamo at the first optimiser: about 3.5 s a process on
two CPU cores, longer than a quick cell's whole training).

``python -m pql.ablate.warm_start SOCKET MODULE...`` imports the MODULEs, starts no thread of its own and
forks one child per request on the Unix socket. The child takes the request's session, descriptors,
working directory, environment and arguments and runs ``python -m REQUESTED_MODULE ARGS`` as a fresh
interpreter would from the imports on, leaving through the interpreter's normal exit (atexit handlers,
non-daemon threads joined, streams flushed). Its parent is the server, which reports its pid and, once
reaped, its exit status, so :class:`WarmProcess` answers like ``subprocess.Popen``. The server dies with
the process that started it (``PR_SET_PDEATHSIG``), and ignores SIGINT (a terminal's Ctrl-C goes to that
process, which passes it on).

Used by the local launcher for a study's jobs, and by the tests for ``pql`` commands.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
START_TIMEOUT_S = 300.0  # the server's imports, on a busy machine


# -- the server ----------------------------------------------------------------------------------------------
def _serve(path: str, parent: int) -> tuple[dict[str, Any], list[int]]:
    """Accept requests on the Unix socket ``path`` while ``parent`` lives; returns only in a forked child,
    with its request and its descriptors (stdin, stdout, stderr, then the passed ones)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection that awaits its exit status
    while os.getppid() == parent:
        if select.select([listener], [], [], 0.02)[0]:
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 64)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                for sock in (listener, conn, *waiting.values()):
                    sock.close()
                return json.loads(message), fds
            for fd in fds:
                os.close(fd)
            conn.send(str(pid).encode())
            waiting[pid] = conn
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = waiting.pop(pid)
            conn.send(str(os.waitstatus_to_exitcode(status)).encode())
            conn.close()
    raise SystemExit(0)


def _install_fds(fds: list[int], targets: list[int]) -> None:
    """Each received descriptor at its target number (0, 1, 2, then the passed ones), inheritable."""
    high = max(targets) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, high) for fd in fds]
    for fd in fds:
        os.close(fd)
    for fd, target in zip(moved, targets, strict=True):
        os.dup2(fd, target)
    for fd in set(moved) - set(targets):
        os.close(fd)


def _become(request: dict[str, Any], fds: list[int]) -> None:
    """In the child: the session, descriptors, directory, environment, signals and argv of
    ``python -m MODULE ARGS`` started as asked."""
    if request["new_session"]:
        os.setsid()
    _install_fds(fds, [0, 1, 2, *request["pass_fds"]])
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # what python -m puts first, then PYTHONPATH (the server runs without one)
    sys.path[:1] = [os.getcwd(), *(os.path.abspath(p) for p in request["env"].get("PYTHONPATH", "").split(os.pathsep)
                                   if p)]
    sys.argv = [request["module"], *request["args"]]
    import random

    random.seed()


def _server_main(path: str, preload: list[str]) -> None:
    """Import ``preload``, then serve; in each forked child, run the requested module as ``__main__``."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent:
        return
    for name in preload:
        __import__(name)
    request, fds = _serve(path, parent)
    _become(request, fds)
    import runpy

    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


# -- the client ----------------------------------------------------------------------------------------------
class WarmProcess:
    """One warm process, answering like ``subprocess.Popen`` (pid, returncode, poll, wait, communicate,
    send_signal, terminate, kill; ``stdout``/``stderr`` are readable binary files where PIPE was asked)."""

    def __init__(self, conn: socket.socket, args: list[str], stdout: IO[bytes] | None, stderr: IO[bytes] | None,
                 text: bool) -> None:
        self.args = args
        self._conn = conn
        self.pid = int(conn.recv(64).decode())
        self.returncode: int | None = None
        self.stdout, self.stderr = stdout, stderr
        self._text = text

    def _take_status(self, timeout: float | None) -> bool:
        if self.returncode is None and select.select([self._conn], [], [], timeout)[0]:
            reply = self._conn.recv(64).decode()
            self.returncode = int(reply) if reply else -signal.SIGKILL  # the server died: so did its children
            self._conn.close()
        return self.returncode is not None

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        self._take_status(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit code once it has exited; TimeoutExpired after ``timeout`` seconds."""
        if not self._take_status(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode  # type: ignore[return-value]

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Everything the process writes to its pipes, once it has exited."""
        deadline = None if timeout is None else time.monotonic() + timeout
        files = (self.stdout, self.stderr)
        chunks: list[list[bytes] | None] = [None if f is None or f.closed else [] for f in files]
        open_fds = {f.fileno(): i for i, f in enumerate(files) if f is not None and chunks[i] is not None}
        while open_fds:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select(list(open_fds), [], [], left)
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout)
            for fd in ready:
                data = os.read(fd, 1 << 16)
                if data:
                    chunks[open_fds[fd]].append(data)  # type: ignore[union-attr]
                else:
                    files[open_fds.pop(fd)].close()  # type: ignore[union-attr]
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        out = [None if c is None else b"".join(c) for c in chunks]
        return tuple(x.decode() if self._text and x is not None else x for x in out)  # type: ignore[return-value]

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` unless it has exited."""
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)


class WarmStarter:
    """A server that imports ``preload`` (started at once, importing in the background), and the processes
    forked from it. ``env``: the server's environment (without PYTHONPATH; each request brings its own)."""

    def __init__(self, preload: tuple[str, ...], env: dict[str, str] | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="pql-warm-"))
        self.path = str(self.folder / "warm.sock")
        server_env = {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONPATH"}
        self.server = subprocess.Popen([sys.executable, "-m", "pql.ablate.warm_start", self.path, *preload],
                                       stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL, env=server_env)

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                conn.connect(self.path)
                return conn
            except (FileNotFoundError, ConnectionRefusedError):
                conn.close()
                if self.server.poll() is not None or time.monotonic() > deadline:
                    raise OSError(f"the warm-start server is not running (exit code {self.server.returncode})") \
                        from None
                time.sleep(0.05)

    def popen(self, module: str, *args: str, stdout: Any = None, stderr: Any = None, text: bool = False,
              cwd: str | Path | None = None, env: dict[str, str] | None = None, start_new_session: bool = False,
              pass_fds: tuple[int, ...] = ()) -> WarmProcess:
        """``python -m MODULE ARGS`` as ``subprocess.Popen`` would start it (stdout/stderr: None to
        inherit, PIPE, DEVNULL, an open file; stderr may be STDOUT). OSError if the server is gone."""
        mine: list[int] = []  # descriptors of ours to close once the server has its copies
        files: list[IO[bytes] | None] = [None, None]
        ends = [os.open(os.devnull, os.O_RDONLY)]
        mine.append(ends[0])
        for i, how in enumerate((stdout, stderr)):
            if how == PIPE:
                read, write = os.pipe()
                files[i] = os.fdopen(read, "rb")
                ends.append(write)
                mine.append(write)
            elif how == DEVNULL:
                ends.append(os.open(os.devnull, os.O_WRONLY))
                mine.append(ends[-1])
            elif how == subprocess.STDOUT:
                ends.append(ends[1])
            elif how is None:
                ends.append(i + 1)
            else:
                ends.append(how.fileno())
        request = {"module": module, "args": [str(a) for a in args], "cwd": str(cwd or os.getcwd()),
                   "env": dict(os.environ if env is None else env), "new_session": start_new_session,
                   "pass_fds": list(pass_fds)}
        try:
            conn = self._connect()
            try:
                socket.send_fds(conn, [json.dumps(request).encode()], [*ends, *pass_fds])
                return WarmProcess(conn, [sys.executable, "-m", module, *request["args"]], *files, text)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            for f in files:
                if f is not None:
                    f.close()
            raise
        finally:
            for fd in set(mine):
                os.close(fd)

    def close(self) -> None:
        """Stop the server (processes it started run on, reaped by init)."""
        self.server.kill()
        self.server.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    _server_main(sys.argv[1], sys.argv[2:])
