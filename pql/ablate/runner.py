"""``pql ablate`` and ``pql status``: expand a spec, decide what to run, launch, report.

Idempotent: a finished run is never run again; a failed one only with
``retry_failed``; an interrupted one resumes from its checkpoint; a corrupt one
is moved aside and redone. Safe to run twice at once: a cell is run only by the
``pql ablate`` (or SLURM job) that holds its run directory's lock; the others
leave it and say who has it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pql.ablate.launchers import Launcher
from pql.ablate.matrix import Cell, Study, expand
from pql.ablate.memory import Capacity, TaskDims, estimate, misfits, probe_task, summary
from pql.ablate.spec import load_spec
from pql.ablate.store import STUDY_LOCK_WAIT_S, ClaimRule, ResultsStore, RunState
from pql.config import ConfigError
from pql.devices import gpu_mismatch, missing_gpus, resolve_devices
from pql.store.locks import FileLock, holder, run_lock
from pql.store.states import CELL_STATES


@dataclass
class Plan:
    """What a rerun of a study does with each cell."""

    study: Study
    store: ResultsStore
    states: dict[str, RunState]
    to_run: list[Cell]
    skipped: dict[str, str]
    claims: dict[str, FileLock]  # run id -> the run directory's lock, held by this process, for each cell to run
    restart: bool = False  # the cells run start from step 0, not from their checkpoints

    def release(self) -> None:
        """Give up the cells this plan claimed and has not launched."""
        for lock in self.claims.values():
            lock.release()

    @property
    def elsewhere(self) -> list[Cell]:
        """Cells that another process is running or about to run."""
        return [c for c in unique_cells(self.study) if self.states[c.run_id].state in ("running", "queued")]


def unique_cells(study: Study) -> list[Cell]:
    """The study's cells with identical configs (same run id) kept once."""
    seen: dict[str, Cell] = {}
    for cell in study.cells:
        seen.setdefault(cell.run_id, cell)
    return list(seen.values())


def plan_study(spec_path: str | Path, profile: str, overrides: dict[str, str], results_root: str | Path,
               retry_failed: bool = False, check_local_gpu: bool = True, claim: bool = False,
               claim_rule: ClaimRule | None = None, restart: bool = False) -> Plan:
    """Decide, from the files in the store, which cells run now and which are skipped, and why.

    ``claim``: take the lock of each cell to run (under the study's lock, so two ``pql ablate``
    of one study never pick the same cell); the plan holds them until launched or released.
    ``claim_rule``: how another host's ``running`` status is judged (:class:`ClaimRule`). ``restart``:
    the cells to run start from step 0 instead of resuming.
    """
    study = expand(load_spec(spec_path), profile, overrides)
    store = ResultsStore(results_root, study.name, claim_rule)
    states: dict[str, RunState] = {}
    to_run: list[Cell] = []
    skipped: dict[str, str] = {}
    locks: dict[str, FileLock] = {}
    with _study_lock(store) if claim else contextlib.nullcontext():
        for cell in unique_cells(study):
            lock = run_lock(store.run_path(cell)) if claim else None
            if lock is not None:
                store.run_path(cell).mkdir(exist_ok=True)
                if not lock.acquire():
                    lock = None  # another process has the cell: state() says who
            state = store.state(cell)
            wanted = state.state not in ("done", "running", "queued") and (state.state != "failed" or retry_failed)
            if wanted and claim and lock is None:  # released by its holder a moment ago: leave it this time
                wanted, state = False, RunState("queued", "taken by another process while planning")
            reason = (missing_gpus(cell.config) or gpu_mismatch(cell.config.gpu_model, resolve_devices(cell.config))) \
                if wanted and check_local_gpu else None
            if reason is not None:
                wanted, skipped[cell.run_id], state = False, reason, RunState("skipped", reason)
            states[cell.run_id] = state
            if wanted:
                to_run.append(cell)
                if lock is not None:
                    locks[cell.run_id] = lock
            elif lock is not None:
                lock.release()
    return Plan(study, store, states, to_run, skipped, locks, restart)


@contextlib.contextmanager
def _study_lock(store: ResultsStore) -> Iterator[None]:
    """The study's lock, waited for (another ``pql ablate`` holds it only while it plans or indexes)."""
    lock = store.lock()
    if not lock.acquire():
        print(f"waiting for {holder(lock.path)} to finish planning study {store.path.name}...", file=sys.stderr)
        if not lock.acquire(timeout_s=STUDY_LOCK_WAIT_S):
            raise ConfigError(f"{lock.path} is held by {holder(lock.path)} for over {STUDY_LOCK_WAIT_S:.0f} s")
    try:
        yield
    finally:
        lock.release()


def describe_plan(plan: Plan) -> str:
    """A table of every cell with its state and what this invocation does with it."""
    lines = [f"study {plan.study.name} (profile {plan.study.profile}): {len(plan.states)} runs in {plan.store.path}"]
    run_ids = {c.run_id for c in plan.to_run}
    for cell in unique_cells(plan.study):
        st = plan.states[cell.run_id]
        action = "run" if cell.run_id in run_ids else "keep" if st.state == "done" else "skip"
        detail = f"  ({st.detail})" if st.detail else ""
        lines.append(f"  {cell.run_id}  {action:<4}  {st.state:<8}  {cell.label}, seed {cell.seed}{detail}")
    return "\n".join(lines)


def describe_memory(plan: Plan, capacity: Callable[[str, str | None], Capacity | None]) -> tuple[str, list[str]]:
    """The memory each cell will need on each device (:mod:`pql.ablate.memory`), one line per cell, and a warning
    naming the cell for each device it does not fit. ``capacity(device, gpu_model)`` is a device's memory
    (None: unknown, not checked). Each task is built once, with one environment on the CPU, for its sizes."""
    dims: dict[str, TaskDims] = {}
    lines = ["memory per cell (persistent + one update's activations; the simulator's own only for classic/ tasks):"]
    warnings = []
    for cell in unique_cells(plan.study):
        cfg = cell.config
        if cfg.task not in dims:
            dims[cfg.task] = probe_task(cfg.task)
        est = estimate(cfg, dims[cfg.task])
        caps = {device: capacity(device, cfg.gpu_model) for device in est.device_bytes()}
        lines.append(f"  {cell.run_id}  {summary(est, caps.get)}")
        for problem in misfits(est, caps.get):
            lines.append(f"    does not fit: {problem}")
            warnings.append(f"cell {cell.run_id} ({cell.label}, seed {cell.seed}) {problem}")
    return "\n".join(lines), warnings


def run_study(plan: Plan, launcher: Launcher, progress: bool = True) -> list[str]:
    """Prepare and launch the planned (claimed) cells, then rewrite the index; returns the problems
    (a cell that could not be prepared, the launcher's). A full disk fails cells, never the summary."""
    problems: list[str] = []
    ready: list[tuple[Cell, Path]] = []
    skipped = {run_id: RunState("skipped", why) for run_id, why in plan.skipped.items()}
    try:
        for cell in plan.to_run:
            if cell.run_id not in plan.claims:  # a plan made without claim=True
                plan.store.run_path(cell).mkdir(exist_ok=True)
                lock = run_lock(plan.store.run_path(cell))
                if not lock.acquire():
                    problems.append(f"{cell.run_id} ({cell.label}, seed {cell.seed}): left to "
                                    f"{holder(lock.path)}, which took it")
                    continue
                plan.claims[cell.run_id] = lock
            try:
                ready.append((cell, plan.store.prepare(cell, restart=plan.restart)))
            except OSError as err:
                problems.append(f"{cell.run_id} ({cell.label}, seed {cell.seed}): cannot prepare "
                                f"{plan.store.run_path(cell)}: {err}")
                plan.claims.pop(cell.run_id).release()
        problems += _write_index(plan, skipped)
        if ready:
            locks = [plan.claims.pop(cell.run_id) for cell, _ in ready]
            problems += launcher.launch([c for c, _ in ready], [p for _, p in ready], locks, progress=progress)
    finally:
        plan.release()
        problems += _write_index(plan, skipped)
    return problems


def _write_index(plan: Plan, skipped: dict[str, RunState]) -> list[str]:
    return write_index(plan.study, plan.store, skipped)


def write_index(study: Study, store: ResultsStore, known: dict[str, RunState] | None = None) -> list[str]:
    """Rewrite the study's index under the study's lock (``known``: states by run id, e.g. skips); returns
    the problem, if any, as a line for the user."""
    try:
        with _study_lock(store):
            store.write_index(study, known or {})
    except (OSError, ConfigError) as err:
        return [f"could not write the index of {store.path}: {err}"]
    return []


def status_report(study: Study, store: ResultsStore, skipped: dict[str, str] | None = None) -> str:
    """done / running / failed / pending (and skipped) counts, with each failure's error."""
    states = {cell.run_id: store.state(cell) for cell in unique_cells(study)}
    for run_id, reason in (skipped or {}).items():
        if states[run_id].state != "done":
            states[run_id] = RunState("skipped", reason)
    counts = Counter(s.state for s in states.values())
    lines = [f"study {study.name} (profile {study.profile}), {len(states)} runs in {store.path}",
             "  " + "  ".join(f"{name} {counts.get(name, 0)}" for name in CELL_STATES)]
    for cell in unique_cells(study):
        st = states[cell.run_id]
        if st.state in ("failed", "skipped") or st.detail:
            lines.append(f"  {st.state:<8} {cell.run_id} ({cell.label}, seed {cell.seed}): {st.detail}")
    lines.append(f"  checked {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return "\n".join(lines)
