"""The results store: ``results/<study>/<run_id>/`` per run, plus a study index.

A run directory is written only by the process that holds its lock (``RUN_DIR/.lock``):
``pql ablate`` while it prepares and launches the cell, then the job; the index only by
``pql ablate`` under the study's lock, atomically. A run's state is read from its files and
locks, never trusted blindly: a cell whose lock another process holds is running or queued
there; a run whose ``config.yaml`` is not its cell's config is ``stale``; a ``done`` run whose
metrics do not parse, repeat or go back in env steps, or stop short of its status is corrupt.
Stale and corrupt runs are moved aside and redone rather than aggregated.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

from pql.ablate.matrix import Cell, Study, run_identity
from pql.config import Config, ConfigError, config_to_dict, load_config
from pql.store.claims import ClaimRule, claim_age_s, job_alive
from pql.store.locks import LOCK_NAME, FileLock, holder
from pql.store.run_dir import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    REQUIRED_METRIC_COLUMNS,
    STATUS,
    RunDir,
    atomic_write,
    row_key,
    rows_order_problem,
)

STUDY_LOCK_WAIT_S = 120.0


@dataclass(frozen=True)
class RunState:
    """What the store knows of one cell's run: ``state`` in :data:`~pql.store.states.CELL_STATES`, plus why (error
    or skip reason)."""

    state: str
    detail: str = ""
    resumable: bool = False
    corrupt: bool = False


def metrics_problem(path: Path, expected_steps: int | None) -> str | None:
    """Why ``metrics.csv`` at ``path`` cannot be trusted, or None if it reads whole and its rows keep the
    order rule of one writer (:func:`pql.store.run_dir.row_order_problem`)."""
    if not path.exists():
        return "metrics.csv is missing"
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            lacking = [c for c in REQUIRED_METRIC_COLUMNS if c not in (reader.fieldnames or ())]
            if lacking:
                return f"metrics.csv lacks the column(s) {', '.join(lacking)}"
            rows = list(reader)
        if any(None in r.values() for r in rows):
            return "metrics.csv has a truncated row"
        keys = [row_key(r) for r in rows]
    except (ValueError, TypeError, KeyError, csv.Error) as err:
        return f"metrics.csv does not parse: {err}"
    if not rows:
        return "metrics.csv has no rows"
    problem = rows_order_problem(keys)
    if problem is not None:
        return f"metrics.csv: {problem}"
    if expected_steps is not None and keys[-1][0] != expected_steps:
        return f"metrics.csv ends at {keys[-1][0]} env steps but status.json says {expected_steps}"
    return None


def stale_reason(expected: Config, config_path: Path) -> str | None:
    """Why the run whose ``config.yaml`` is ``config_path`` is not a run of ``expected`` (its cell's config),
    or None (the same config, or none written yet). Keys that do not change results (out, progress, ...)
    are not compared."""
    if not config_path.exists():
        return None
    try:
        saved = run_identity(load_config(str(config_path)))
    except ConfigError as err:
        return f"its {CONFIG} is not a config of this version ({err})"
    wanted = run_identity(expected)
    keys = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
    if not keys:
        return None
    shown = ", ".join(f"{k} {saved.get(k, '(none)')} -> {wanted.get(k, '(none)')}" for k in keys[:4])
    return f"{CONFIG} differs from the cell: {shown}{' ...' if len(keys) > 4 else ''}"


class ResultsStore:
    """Run directories and the index of one study under ``root/<study>``."""

    def __init__(self, root: str | Path, study: str, claim_rule: ClaimRule | None = None) -> None:
        self.path = Path(root) / study
        self.path.mkdir(parents=True, exist_ok=True)
        self.claim_rule = claim_rule or ClaimRule()

    def run_path(self, cell: Cell) -> Path:
        """The run directory of ``cell`` in this study's results."""
        return self.path / cell.run_id

    def lock(self) -> FileLock:
        """The study's lock, held while a ``pql ablate`` decides, prepares and indexes (briefly)."""
        return FileLock(self.path / LOCK_NAME)

    def state(self, cell: Cell) -> RunState:
        """The state of ``cell``'s run as its files and its lock tell it."""
        return self.run_state(self.run_path(cell), cell.config)

    def run_state(self, run: Path, expected: Config | None) -> RunState:
        """The state of the run in ``run`` as its files and its lock tell it; stale when its config is not
        ``expected`` (None: not compared, e.g. a run the index lists that the spec no longer expands to)."""
        busy = holder(run / LOCK_NAME)
        has_checkpoint = (run / CHECKPOINT).exists()
        stale = None if busy or expected is None else stale_reason(expected, run / CONFIG)
        if stale is not None:
            return RunState("stale", f"{stale}; redo")
        try:
            status = json.loads((run / STATUS).read_text())
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
            problem = metrics_problem(run / METRICS, status.get("env_steps"))
            if problem is None:
                return RunState("done")
            if busy:
                return RunState("running", f"by {busy}")
            return RunState("pending", f"corrupt result: {problem}; redo", corrupt=True)
        if busy:  # another process has the cell: its run, or its launcher about to start it
            return RunState("running", where) if state == "running" else RunState("queued", f"taken by {busy}")
        if state == "failed":
            resumable = has_checkpoint and bool(status.get("resumable"))
            how = f"; resumes from its checkpoint at {status.get('checkpoint_env_steps', 'its last')} env steps " \
                  f"with --retry-failed" if resumable else ""
            return RunState("failed", f"{status.get('error', '')}{how}", resumable=resumable)
        if state == "interrupted":
            return RunState("pending", f"interrupted by {status.get('signal', 'a signal')}; resumes from its checkpoint"
                            if has_checkpoint else "interrupted before its first checkpoint", resumable=has_checkpoint)
        then = "; resumes from its checkpoint" if has_checkpoint else "; starts afresh (no checkpoint)"
        if state == "queued":
            job = status.get("slurm_job_id")
            if job and job_alive(job) is not False:
                return RunState("queued", f"SLURM job {job}")
            return RunState("pending", f"its SLURM job {job} is gone{then}", resumable=has_checkpoint)
        if state == "running":
            dead = self.claim_rule.dead_because(status)
            if dead is None:
                age = claim_age_s(status)
                return RunState("running", where + (f", renewed {age:.0f} s ago" if age is not None else ""))
            return RunState("pending", f"stale claim: {dead}{then}", resumable=has_checkpoint)
        return RunState("pending", f"unknown state {state!r}; redo", corrupt=True)

    def prepare(self, cell: Cell, restart: bool = False) -> Path:
        """Get ``cell``'s directory ready to run (its lock held by this process): a stale or corrupt run's
        files moved aside into ``RUN_ID.stale-TIME/`` or ``RUN_ID.corrupt-TIME/``, an unresumable run's
        results cleared (an interrupted run, a stale claim and a run that failed resumably, killed or
        stopped by the watchdog, keep their checkpoint to resume; ``restart`` clears them too), temporary
        files of a killed write removed, and ``cell.json`` written with the cell's resolved config, which
        the job runs as it is."""
        run_dir = RunDir(self.run_path(cell))
        current = self.state(cell)
        if current.state == "stale" or current.corrupt:
            run_dir.set_aside("stale" if current.state == "stale" else "corrupt", keep=(LOCK_NAME,))  # held here
        elif restart or not current.resumable:
            run_dir.start_fresh()
        run_dir.sweep_temporary()
        run_dir.write_cell({"study": cell.study, "profile": cell.profile, "run_id": cell.run_id, "seed": cell.seed,
                            "axis_values": cell.axis_values, "overrides": cell.overrides,
                            "gpu_model": cell.config.gpu_model, "config": config_to_dict(cell.config)})
        return run_dir.path

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
