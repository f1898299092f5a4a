"""``pql/presets.yaml``: the presets of each algorithm, backend and task, the tasks' thresholds and reward bounds,
and what is derived from those bounds (a critic's value support, a categorical critic's atoms)."""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any

import yaml

from pql.config.files import FAST_YAML_LOADER
from pql.config.schema import Config


def _preset_table() -> dict[str, dict[str, Any]]:
    """``pql/presets.yaml``, a copy of it read once (a study's status or report builds every cell's config)."""
    return copy.deepcopy(_read_presets())


@functools.cache
def _read_presets() -> dict[str, dict[str, Any]]:
    text = resources.files("pql").joinpath("presets.yaml").read_text()
    return yaml.load(text, Loader=FAST_YAML_LOADER) or {}


def presets(task: str, algo: str) -> list[dict[str, Any]]:
    """The preset layers (nested dicts) for ``task`` and ``algo``, lowest precedence first: the
    algorithm's, the backend's (``backends``, by task-name prefix), the backend's for that algorithm (its
    ``by_algo`` entry), the task's, then the task's for that algorithm."""
    table = _preset_table()
    backend = dict(next((layer for prefix, layer in table.get("backends", {}).items() if task.startswith(prefix)), {}))
    task_layer = dict(table.get("tasks", {}).get(task, {}))
    backend_by_algo, by_algo = backend.pop("by_algo", {}), task_layer.pop("by_algo", {})
    return [table.get("algos", {}).get(algo, {}), backend, backend_by_algo.get(algo, {}), task_layer,
            by_algo.get(algo, {})]


def thresholds() -> dict[str, float]:
    """The evaluation return counted as solved, per task (``presets.yaml``'s ``thresholds``), for
    time- and steps-to-threshold in reports; no run's config reads it."""
    return {task: float(value) for task, value in (_preset_table().get("thresholds") or {}).items()}


def return_bounds(task: str, gamma: float) -> tuple[float, float] | None:
    """Bounds of a discounted return of ``task`` in its reward units (``presets.yaml``'s ``rewards``),
    or None for a task without reward bounds there."""
    entry = (_preset_table().get("rewards") or {}).get(task)
    if entry is None:
        return None
    step_lo, step_hi = entry["step"]
    terminal_lo, terminal_hi = entry.get("terminal", (0.0, 0.0))
    horizon = entry["horizon"]
    g = horizon if gamma == 1 else (1 - gamma**horizon) / (1 - gamma)
    return step_lo * g + min(0.0, terminal_lo), step_hi * g + max(0.0, terminal_hi)


def value_support(cfg: Config) -> tuple[float, float] | None:
    """The range of values a critic of ``cfg`` must represent: the task's return bounds at its gamma,
    times its reward scale (None when the task has none)."""
    bounds = return_bounds(cfg.task, cfg.algo.gamma)
    if bounds is None:
        return None
    lo, hi = (b * cfg.algo.reward_scale for b in bounds)
    return round(lo, 4), round(hi, 4)


SUPPORT_MARGIN = 0.05
"""Share of the return range added on each side of derived atoms: returns at a bound (Pendulum's best is 0)
then project two atoms inside the edges, so mass on the edge atoms means only returns out of range."""


def atom_range(support: tuple[float, float]) -> tuple[float, float]:
    """A categorical critic's (v_min, v_max) for returns in ``support``: the range widened by
    :data:`SUPPORT_MARGIN` of its width on each side."""
    lo, hi = support
    margin = SUPPORT_MARGIN * (hi - lo)
    return round(lo - margin, 4), round(hi + margin, 4)
