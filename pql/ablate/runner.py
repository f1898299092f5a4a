"""``pql ablate`` and ``pql status``: expand a spec, decide what to run, launch, report.

Idempotent: a finished run is never run again; a failed one only with
``retry_failed``; an interrupted one resumes from its checkpoint; a corrupt one
is moved aside and redone.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pql.ablate.launchers import Launcher
from pql.ablate.spec import Cell, Study, expand, load_spec
from pql.ablate.store import STATES, ResultsStore, RunState
from pql.devices import gpu_mismatch, resolve_devices


@dataclass
class Plan:
    """What a rerun of a study does with each cell."""

    study: Study
    store: ResultsStore
    states: dict[str, RunState]
    to_run: list[Cell]
    skipped: dict[str, str]


def unique_cells(study: Study) -> list[Cell]:
    """The study's cells with identical configs (same run id) kept once."""
    seen: dict[str, Cell] = {}
    for cell in study.cells:
        seen.setdefault(cell.run_id, cell)
    return list(seen.values())


def plan_study(spec_path: str | Path, profile: str, overrides: dict[str, str], results_root: str | Path,
               retry_failed: bool = False, check_local_gpu: bool = True) -> Plan:
    """Decide, from the files in the store, which cells run now and which are skipped, and why."""
    study = expand(load_spec(spec_path), profile, overrides)
    store = ResultsStore(results_root, study.name)
    states, to_run, skipped = {}, [], {}
    for cell in unique_cells(study):
        state = store.state(cell)
        states[cell.run_id] = state
        if state.state in ("done", "running") or (state.state == "failed" and not retry_failed):
            continue
        if check_local_gpu:
            reason = gpu_mismatch(cell.config.gpu_model, resolve_devices(cell.config))
            if reason is not None:
                skipped[cell.run_id] = reason
                states[cell.run_id] = RunState("skipped", reason)
                continue
        to_run.append(cell)
    return Plan(study, store, states, to_run, skipped)


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


def run_study(plan: Plan, launcher: Launcher, progress: bool = True) -> list[str]:
    """Prepare and launch the planned cells, then rewrite the index; returns the launcher's problems."""
    paths = [plan.store.prepare(cell) for cell in plan.to_run]
    skipped = {run_id: RunState("skipped", why) for run_id, why in plan.skipped.items()}
    plan.store.write_index(plan.study, skipped)
    problems = launcher.launch(plan.to_run, paths, progress=progress) if plan.to_run else []
    plan.store.write_index(plan.study, skipped)
    return problems


def status_report(study: Study, store: ResultsStore, skipped: dict[str, str] | None = None) -> str:
    """done / running / failed / pending (and skipped) counts, with each failure's error."""
    states = {cell.run_id: store.state(cell) for cell in unique_cells(study)}
    for run_id, reason in (skipped or {}).items():
        if states[run_id].state != "done":
            states[run_id] = RunState("skipped", reason)
    counts = Counter(s.state for s in states.values())
    lines = [f"study {study.name} (profile {study.profile}), {len(states)} runs in {store.path}",
             "  " + "  ".join(f"{name} {counts.get(name, 0)}" for name in STATES)]
    for cell in unique_cells(study):
        st = states[cell.run_id]
        if st.state in ("failed", "skipped") or st.detail:
            lines.append(f"  {st.state:<8} {cell.run_id} ({cell.label}, seed {cell.seed}): {st.detail}")
    lines.append(f"  checked {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return "\n".join(lines)
