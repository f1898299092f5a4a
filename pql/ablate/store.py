"""The results store: ``results/<study>/<run_id>/`` per run, plus a study index.

A run directory is written only by the process that holds its lock (``RUN_DIR/.lock``):
``pql ablate`` while it prepares and launches the cell, then the job; the index only by
``pql ablate`` under the study's lock, atomically. A run's state is read from its files and
locks, never trusted blindly: a cell whose lock another process holds is running or queued
there; a ``done`` run whose metrics do not parse, repeat or go back in env steps, or stop
short of its status is corrupt, and is moved aside and redone rather than aggregated.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from pql.ablate.job import CELL_FILE
from pql.ablate.spec import Cell, Study
from pql.locks import LOCK_NAME, FileLock, holder
from pql.run_dir import CHECKPOINT, METRIC_COLUMNS, atomic_write

STATES = ("done", "running", "queued", "failed", "pending", "skipped")
RUN_FILES = ("metrics.csv", "status.json", "config.yaml", CHECKPOINT)
STUDY_LOCK_WAIT_S = 120.0


@dataclass(frozen=True)
class RunState:
    """What the store knows of one cell's run: ``state`` in STATES, plus why (error or skip reason)."""

    state: str
    detail: str = ""
    resumable: bool = False
    corrupt: bool = False


def metrics_problem(path: Path, expected_steps: int | None) -> str | None:
    """Why ``metrics.csv`` at ``path`` cannot be trusted, or None if it reads whole."""
    if not path.exists():
        return "metrics.csv is missing"
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != METRIC_COLUMNS:
                return f"metrics.csv has columns {reader.fieldnames}, expected {list(METRIC_COLUMNS)}"
            rows = list(reader)
        steps = [int(float(r["env_steps"])) for r in rows]
        for r in rows:
            float(r["wall_s"])
            if None in r.values():
                return "metrics.csv has a truncated row"
    except (ValueError, TypeError, KeyError, csv.Error) as err:
        return f"metrics.csv does not parse: {err}"
    if not rows:
        return "metrics.csv has no rows"
    if any(b <= a for a, b in itertools.pairwise(steps)):
        return "metrics.csv env_steps repeat or go backwards (two processes wrote it?)"
    if expected_steps is not None and steps[-1] != expected_steps:
        return f"metrics.csv ends at {steps[-1]} env steps but status.json says {expected_steps}"
    return None


def _alive(status: dict[str, Any]) -> bool:
    """Whether the process that wrote a 'running' status still runs (conservative where unknown)."""
    job = status.get("slurm_job_id")
    if job:
        try:
            out = subprocess.run(["squeue", "-h", "-j", str(job)], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return True
        return bool(out.stdout.strip())
    if status.get("host") != socket.gethostname():
        return True
    try:
        pid = int(status["pid"])
        os.kill(pid, 0)
    except (ProcessLookupError, KeyError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")  # a zombie is dead


class ResultsStore:
    """Run directories and the index of one study under ``root/<study>``."""

    def __init__(self, root: str | Path, study: str) -> None:
        self.path = Path(root) / study
        self.path.mkdir(parents=True, exist_ok=True)

    def run_path(self, cell: Cell) -> Path:
        return self.path / cell.run_id

    def lock(self) -> FileLock:
        """The study's lock, held while a ``pql ablate`` decides, prepares and indexes (briefly)."""
        return FileLock(self.path / LOCK_NAME)

    def state(self, cell: Cell) -> RunState:
        """The state of ``cell``'s run as its files and its lock tell it."""
        run = self.run_path(cell)
        busy = holder(run / LOCK_NAME)
        has_checkpoint = (run / CHECKPOINT).exists()
        try:
            status = json.loads((run / "status.json").read_text())
        except FileNotFoundError:
            if busy:
                return RunState("queued", f"taken by {busy}")
            return RunState("pending", "checkpoint, no status" if has_checkpoint else "", resumable=has_checkpoint)
        except (json.JSONDecodeError, OSError) as err:
            if busy:
                return RunState("running", f"by {busy}")
            return RunState("pending", f"status.json unreadable ({err}); redo", corrupt=True)
        state = status.get("state")
        where = f"pid {status.get('pid')} on {status.get('host')}"
        if state == "done":
            problem = metrics_problem(run / "metrics.csv", status.get("env_steps"))
            if problem is None:
                return RunState("done")
            if busy:
                return RunState("running", f"by {busy}")
            return RunState("pending", f"corrupt result: {problem}; redo", corrupt=True)
        if busy:  # another process has the cell: its run, or its launcher about to start it
            return RunState("running", where) if state == "running" else RunState("queued", f"taken by {busy}")
        if state == "failed":
            return RunState("failed", status.get("error", ""), resumable=has_checkpoint)
        if state == "interrupted":
            return RunState("pending", f"interrupted by {status.get('signal', 'a signal')}; resumes from its checkpoint"
                            if has_checkpoint else "interrupted before its first checkpoint", resumable=has_checkpoint)
        if state == "queued":
            job = status.get("slurm_job_id")
            if job and _alive(status):
                return RunState("queued", f"SLURM job {job}")
            return RunState("pending", f"its SLURM job {job} is gone" +
                            ("; resumes from its checkpoint" if has_checkpoint else ""), resumable=has_checkpoint)
        if state == "running":
            if _alive(status):
                return RunState("running", where)
            return RunState("pending", "interrupted; resumes from its checkpoint" if has_checkpoint else "interrupted",
                            resumable=has_checkpoint)
        return RunState("pending", f"unknown state {state!r}; redo", corrupt=True)

    def prepare(self, cell: Cell) -> Path:
        """Get ``cell``'s directory ready to run (its lock held by this process): a corrupt result's files
        moved aside into ``RUN_ID.corrupt-TIME/``, a failed or unresumable run's files cleared (an
        interrupted run keeps its checkpoint to resume), ``cell.json`` written."""
        run = self.run_path(cell)
        current = self.state(cell)
        if current.corrupt and run.exists():
            aside = run.with_name(f"{run.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            aside.mkdir(exist_ok=True)
            for item in run.iterdir():
                if item.name != LOCK_NAME:  # the lock stays: this process holds it
                    item.rename(aside / item.name)
        elif current.state == "failed" or not current.resumable:  # start afresh
            for name in RUN_FILES:
                (run / name).unlink(missing_ok=True)
        run.mkdir(parents=True, exist_ok=True)
        body = {"study": cell.study, "profile": cell.profile, "run_id": cell.run_id, "seed": cell.seed,
                "axis_values": cell.axis_values, "overrides": cell.overrides, "gpu_model": cell.config.gpu_model}
        atomic_write(run / CELL_FILE, json.dumps(body, indent=2, default=str).encode())
        return run

    def write_index(self, study: Study, known: dict[str, RunState]) -> None:
        """Rewrite ``index-PROFILE.csv``: one row per cell with its run id, axis values, seed and state
        (``known`` states by run id, e.g. skips, else read from the run's files)."""
        header = ["run_id", "profile", "seed", "label", "axis_values", "state", "detail"]
        lines = [header]
        for cell in study.cells:
            st = known.get(cell.run_id) or self.state(cell)
            lines.append([cell.run_id, cell.profile, str(cell.seed), cell.label,
                          json.dumps(cell.axis_values, sort_keys=True, default=str), st.state, st.detail])
        buf = StringIO()
        csv.writer(buf).writerows(lines)
        atomic_write(self.path / f"index-{study.profile}.csv", buf.getvalue().encode())
