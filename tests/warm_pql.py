"""``pql`` commands for the tests, started warm (:mod:`pql.ablate.warm_start`): forked from a server that
imported torch and torch._dynamo once, instead of paying their ~3.5 s in every command.

Each command is a process of its own (pid, session, signals, descriptors, working directory, environment)
running ``python -m pql ARGS`` from the imports on. The server imports only third-party modules, never
``pql`` (its registry reads the environment at import, and each test brings its own). Tests about how a
fresh interpreter starts (import order, the console entry point, resource limits set before exec) use
``subprocess``.
"""

from __future__ import annotations

import atexit
import subprocess
from typing import Any

from pql.ablate.warm_start import WarmProcess, WarmStarter

PRELOAD = ("torch", "torch._dynamo", "numpy", "pandas", "yaml", "omegaconf", "tqdm", "gymnasium", "matplotlib",
           "matplotlib.pyplot", "seaborn")
_starter: WarmStarter | None = None


def starter() -> WarmStarter:
    """This test session's server, started at its first use and stopped when the session ends."""
    global _starter
    if _starter is None:
        _starter = WarmStarter(PRELOAD)
        atexit.register(_starter.close)
    return _starter


def start_pql(*args: str, **kwargs: Any) -> WarmProcess:
    """``pql ARGS`` started, as ``subprocess.Popen([sys.executable, "-m", "pql", *args], **kwargs)``."""
    return starter().popen("pql", *args, **kwargs)


def run_pql(*args: str, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """``pql ARGS`` to its end, as ``subprocess.run([...], capture_output=True, text=True, **kwargs)``."""
    proc = start_pql(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
