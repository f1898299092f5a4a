"""Whether a run's claim (a ``running`` or ``queued`` status.json) is alive, when no process here holds
the run's lock: decided by the host, the SLURM job and the age of the claim (:class:`ClaimRule`)."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pql.store.run_dir import STATUS_TIME


def job_alive(job: str) -> bool | None:
    """Whether SLURM still has job ``job`` (None: squeue cannot be asked here)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else False


def claim_age_s(status: dict[str, Any]) -> float | None:
    """Seconds since the run last renewed its claim (``updated``, rewritten at every metrics row and checkpoint);
    None when the status has no readable time."""
    try:
        return time.time() - datetime.strptime(str(status["updated"]), STATUS_TIME).timestamp()
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class ClaimRule:
    """How a ``running`` (or ``queued``) status whose run's lock no process here holds is judged.

    On this host the lock is the truth: a running run holds it (the kernel drops it when the process dies,
    even by ``kill -9``), so a ``running`` status without a holder is a dead run's, whatever its pid says
    (a pid can be reused). A claim from another host is judged by its SLURM job where it names one and
    squeue answers, else by its age: a run renews ``updated`` at every metrics row and checkpoint, so a
    claim older than ``stale_after_s`` is taken over (resumed from its checkpoint), and ``take_over``
    takes over every claim from another host at once. Where flock works across NFS (Linux's NFS client
    carries it), another host's live run is seen holding the lock and the lock wins over any age.
    """

    stale_after_s: float = 1800.0
    take_over: bool = False

    def dead_because(self, status: dict[str, Any]) -> str | None:
        """Why the claim in ``status`` (whose lock no process here holds) is dead, or None if it may be alive."""
        host = status.get("host")
        if host == socket.gethostname():
            return "no process holds its lock here (its process is gone)"
        job = status.get("slurm_job_id")
        alive = job_alive(job) if job else None
        if alive is not None:
            return None if alive else f"its SLURM job {job} is gone"
        if self.take_over:
            return f"taken over from {host} (--take-over)"
        age = claim_age_s(status)
        if age is None or age > self.stale_after_s:
            shown = "never renewed" if age is None else f"last renewed {age / 60:.0f} min ago"
            return f"its claim from {host} is {shown} (over --stale-after {self.stale_after_s:g} s)"
        return None
