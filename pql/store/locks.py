"""Exclusive locks on run directories and study folders, so that no two processes run one cell.

A lock is an ``flock`` on a file (``RUN_DIR/.lock``, ``results/<study>/.lock``): the kernel
releases it when the holder dies, even by ``kill -9``, so a lock is never stale. The file
holds a line naming the holder (pid, host, command) for the messages of those who find it
taken. On Linux, ``flock`` on NFS is carried by NFS's byte-range locks, so the locks also
hold between the login node and the compute nodes of a SLURM cluster.

A launcher that starts a run in a child process hands its lock over: the child inherits
the locked file descriptor (``PQL_RUN_LOCK_FD``) and adopts it, so the run stays locked
from the launcher's decision to run it until the child exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pql.config import ConfigError

LOCK_NAME = ".lock"
INHERITED_FD = "PQL_RUN_LOCK_FD"  # environment variable: a locked descriptor handed to a child run
_held: dict[Path, FileLock] = {}  # the locks this process holds, by resolved path


class RunLocked(ConfigError):
    """Another process is training in (or about to start) the run directory."""


class FileLock:
    """An exclusive ``flock`` on ``path``; ``acquire`` does not block unless given a timeout."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self.fd is not None

    def acquire(self, timeout_s: float = 0.0, poll_s: float = 0.1) -> bool:
        """Take the lock, retrying for up to ``timeout_s``; True if this process now holds it."""
        key = self.path.resolve()
        mine = _held.get(key)
        if mine is not None and mine is not self:
            return False
        if self.fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(poll_s)
        self._own(fd, key)
        return True

    def adopt(self, fd: int) -> bool:
        """Take over ``fd``, a descriptor of this lock's file that a parent locked; False if it is not."""
        try:
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                return False
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the same open file: succeeds if the parent locked it
        except (OSError, BlockingIOError):
            return False
        self._own(fd, self.path.resolve())
        return True

    def _own(self, fd: int, key: Path) -> None:
        self.fd = fd
        _held[key] = self
        try:
            line = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}: " \
                   f"{' '.join(sys.argv[:3])}\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, line.encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, only its description is missing
            pass

    def release(self) -> None:
        """Drop the lock (a child that inherited the descriptor keeps it until it exits)."""
        if self.fd is None:
            return
        _held.pop(self.path.resolve(), None)
        os.close(self.fd)  # closing our descriptor drops the lock unless a child still holds the file open
        self.fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_lock(run: str | Path) -> FileLock:
    """The lock of the run directory ``run``."""
    return FileLock(Path(run) / LOCK_NAME)


def held_here(run: str | Path) -> bool:
    """Whether this process already holds the lock of the run directory ``run``."""
    return (Path(run) / LOCK_NAME).resolve() in _held


def holder(path: str | Path) -> str | None:
    """Who holds the lock at ``path`` if another process does (its description), else None."""
    path = Path(path)
    if path.resolve() in _held or not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        return text or "another process"
    finally:
        os.close(fd)


def claim_run(run: str | Path, timeout_s: float = 10.0) -> FileLock | None:
    """The lock of the run directory ``run`` for a process about to train in it: the one this process
    already holds, the one a launching parent handed down (``PQL_RUN_LOCK_FD``), or a new one
    (waiting up to ``timeout_s`` for a brief holder such as ``pql status``). None if another holds it."""
    lock = _held.get((Path(run) / LOCK_NAME).resolve())
    if lock is not None:
        return lock
    lock = run_lock(run)
    inherited = os.environ.get(INHERITED_FD)
    if inherited and inherited.isdigit() and lock.adopt(int(inherited)):
        del os.environ[INHERITED_FD]
        return lock
    return lock if lock.acquire(timeout_s) else None


@contextlib.contextmanager
def locked_run(run: str | Path) -> Iterator[None]:
    """Hold the lock of the run directory ``run`` inside the block (see :func:`claim_run`); a lock this
    process held before the block stays held after it. RunLocked if another process has it."""
    kept = held_here(run)
    lock = claim_run(run)
    if lock is None:
        raise RunLocked(f"{run} is in use by another process ({holder(Path(run) / LOCK_NAME)}); wait for it to "
                        "end, or train elsewhere with out=")
    try:
        yield
    finally:
        if not kept:
            lock.release()
