"""A run that fails before it trains still says so in its ``status.json``.

:func:`pql.training.run.run_training` records in ``status.json`` how a run's training ended, from the
moment it writes ``running``. What fails before that (a config that does not validate, a run that
cannot fit its device's memory, a trainer that cannot be built, the wrong GPU) is recorded here, as
``failed`` with the error, wherever the run directory is known: ``out=``, ``resume=``, a study's cell.

Never: a directory created for a failure (a bad ``out=`` leaves nothing behind); a directory written to
that is not a run's (no ``config.yaml``, ``cell.json`` or ``status.json``, and not created by the
failing attempt: say ``out=.``); a status replaced while another process holds the run; an outcome
replaced: only a run with no status yet, or ``queued`` (a study cell submitted to SLURM) or ``failed``,
gets ``failed``. A run that is ``done``, ``interrupted`` or was left ``running`` keeps its state when an
attempt to resume it fails before training (the error is on the terminal): as ``failed``, ``pql ablate``
would no longer resume it, and a typo in ``pql train resume=RUN KEY=VALUE`` must not cost a run its
checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path

from pql.config import ConfigError
from pql.store.locks import RunLocked, held_here, run_lock
from pql.store.run_dir import CELL, CONFIG, STATUS, RunDir

REPLACEABLE = (None, "queued", "failed")  # the states a failure before training may replace


def _status_bytes(path: Path) -> bytes | None:
    """The bytes of ``path/status.json`` (None when there is none)."""
    try:
        return (path / STATUS).read_bytes()
    except OSError:
        return None


def _is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a run's files (its config, a study's cell or a status)."""
    return any((path / name).is_file() for name in (CONFIG, CELL, STATUS))


def error_text(err: BaseException) -> str:
    """The error as ``status.json`` keeps it: a config error's message as the user read it, else its type too."""
    return str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"


def record_failure(path: str | Path, err: BaseException) -> bool:
    """Write ``status.json`` of the run in ``path`` as ``failed`` with ``err``, holding the run's lock (taken
    here unless this process holds it already); whether it was written. Not written where another process
    holds the run, or where its status holds an outcome (a state not in :data:`REPLACEABLE`)."""
    run_dir = RunDir(path, create=False)
    lock = None if held_here(run_dir.path) else run_lock(run_dir.path)
    if lock is not None and not lock.acquire():
        return False
    try:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if run_dir.read_status().get("state") not in REPLACEABLE:
                return False
        fields = {"error": error_text(err), "before_training": True, "host": socket.gethostname(),
                  "pid": os.getpid()}
        if not isinstance(err, ConfigError):
            fields["traceback"] = "".join(traceback.format_exception(err))
        try:
            run_dir.write_status("failed", **fields)
        except OSError:
            return False
        return True
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def failure_recorded(path: str | Path | None) -> Iterator[None]:
    """Record in ``path``'s ``status.json`` an error raised in the block that left no status, or the one there
    was before it (so raised before training: the training records its own end), where ``path`` is a run
    directory (see the module docstring). Signals, ``SystemExit`` and a run held by another process
    (RunLocked) pass untouched."""
    where = Path(path) if path not in (None, "", "null") else None
    existed = where is not None and where.is_dir()
    before = _status_bytes(where) if where is not None else None
    try:
        yield
    except RunLocked:
        raise
    except Exception as err:
        if where is not None and where.is_dir() and (_is_run_dir(where) or not existed) \
                and _status_bytes(where) in (None, before):
            record_failure(where, err)
        raise
