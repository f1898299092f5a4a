"""Study specs: a YAML file expands into a matrix of cells, each a complete, validated run config.

A spec has ``study`` (its name), ``description``, a ``base`` config, ``axes``
(config key -> list of values; a dict value is merged under that key, so
``noise: [{kind: fixed, sigma: 0.2}]`` sets two keys at once), ``seeds`` and
``profiles`` (``quick``, ``paper``, ...), each of which may replace ``base``
entries, ``axes`` and ``seeds``. Cells are the cartesian product of the axes
times the seeds; each cell's run id is a stable hash of its whole resolved config (:func:`run_id`).

What ``pql report`` draws: ``figures``, the figure kinds (:data:`pql.report.figures.FIGURES`,
default ``[curves]``), and ``figure``: ``x`` (the x axes of ``curves``: ``wall_s``, ``env_steps``),
``hue`` (an axis: cells with one value of it share a colour), ``style`` (an axis: cells with one
value of it share a line style, or a hatch in bar figures), ``legend`` (a template, ``{AXIS}``
replaced by the cell's value) and ``threshold`` (the return counted as solved; default: the task's
in ``pql/presets.yaml``). All are checked when the spec is read, before anything runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pql.config import (
    Config,
    ConfigError,
    build_config,
    config_to_dict,
    dotted_overrides,
    read_yaml_mapping,
    value_text,
)
from pql.report.figures import FIGURES

SPEC_KEYS = {"study", "description", "base", "axes", "seeds", "profiles", "figure", "figures"}
PROFILE_KEYS = {"base", "axes", "seeds", "description"}
FIGURE_KEYS = {"x", "hue", "style", "legend", "threshold"}
FIGURE_X = ("wall_s", "env_steps")  # the x axes a curve figure can have, each a metrics.csv column
DEFAULT_FIGURES = ("curves",)
# Keys that do not change what a run computes, left out of its id.
NOT_IN_RUN_ID = {"out", "resume", "progress", "tensorboard", "wandb", "wandb_project", "checkpoint_every_s",
                 "watchdog_s", "check_memory"}
# Bumped when what a config means changes without its keys changing (e.g. a fix in an algorithm's
# maths): results made under another schema are then not reused. 2: ids hash the whole config.
RUN_ID_SCHEMA = 2
# Keys added since schema 2, each with the value (as text) at which a run computes exactly what it did
# before the key existed: at that value the key is left out of the id, so earlier runs keep theirs.
ADDED_SINCE_SCHEMA = {"algo.preact_penalty": "0.0", "algo.ppo.bounds_loss_coef": "0.0",
                      "algo.ppo.stagger_episodes": "False"}


@dataclass(frozen=True)
class Cell:
    """One run of a study: its axis values, seed, overrides and resolved config."""

    study: str
    profile: str
    axis_values: dict[str, Any]
    seed: int
    overrides: dict[str, str]
    config: Config = field(repr=False)

    @cached_property
    def run_id(self) -> str:
        return run_id(self.config)

    @property
    def label(self) -> str:
        """The axis values as ``key=value`` text, e.g. ``num_envs=1024``."""
        return ", ".join(f"{k}={value_text(v)}" for k, v in self.axis_values.items()) or "base"


@dataclass(frozen=True)
class Study:
    """A spec with one profile chosen and expanded."""

    name: str
    profile: str
    description: str
    axes: dict[str, list[Any]]
    cells: list[Cell]
    figure: dict[str, Any]  # the spec's figure settings (checked by load_spec)
    figures: tuple[str, ...] = DEFAULT_FIGURES  # the figure kinds to draw, names in FIGURES


def run_identity(cfg: Config) -> dict[str, str]:
    """The values that make a run what it is: every key of the resolved config (dotted, as text) except
    those in NOT_IN_RUN_ID and those of ADDED_SINCE_SCHEMA at their earlier behaviour's value."""
    return {k: v for k, v in dotted_overrides(config_to_dict(cfg)).items()
            if k.split(".")[0] not in NOT_IN_RUN_ID and ADDED_SINCE_SCHEMA.get(k) != v}


def run_id(cfg: Config) -> str:
    """12 hex digits of the SHA-256 of :func:`run_identity` and RUN_ID_SCHEMA: a change of any value, a
    default's included, names a different run, so a study never reuses a run made with other settings."""
    body = {"schema": RUN_ID_SCHEMA, "config": run_identity(cfg)}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read a spec file and check its top-level shape."""
    path = Path(path)
    spec = read_yaml_mapping(path, str(path), "'study', 'base', 'axes', ... (a study spec)")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown spec key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(SPEC_KEYS))}")
    if "study" not in spec:
        raise ConfigError(f"{path}: the spec needs a 'study' name")
    for name, profile in (spec.get("profiles") or {}).items():
        bad = set(profile or {}) - PROFILE_KEYS
        if bad:
            raise ConfigError(f"{path}: profile '{name}' has unknown key(s) {', '.join(sorted(bad))}")
    _check_figures(path, spec)
    return spec


def _spec_axes(spec: dict[str, Any]) -> list[str]:
    """The axis names of the spec and of its profiles."""
    names = list(spec.get("axes") or {})
    for profile in (spec.get("profiles") or {}).values():
        names += [n for n in ((profile or {}).get("axes") or {}) if n not in names]
    return names


def _check_figures(path: Path, spec: dict[str, Any]) -> None:
    """ConfigError naming a figure kind, figure key or value the report cannot draw, with the allowed ones."""
    kinds = spec.get("figures", list(DEFAULT_FIGURES))
    if not isinstance(kinds, list) or not kinds:
        raise ConfigError(f"{path}: 'figures' must be a list of figure kinds from {', '.join(FIGURES)}")
    bad = [str(k) for k in kinds if k not in FIGURES]
    if bad:
        raise ConfigError(f"{path}: unknown figure kind(s) {', '.join(bad)}; allowed: {', '.join(FIGURES)}")
    figure = spec.get("figure") or {}
    if not isinstance(figure, dict):
        raise ConfigError(f"{path}: 'figure' must be a mapping of {', '.join(sorted(FIGURE_KEYS))}")
    unknown = set(figure) - FIGURE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown figure key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"allowed: {', '.join(sorted(FIGURE_KEYS))}")
    x = figure.get("x", list(FIGURE_X))
    if not isinstance(x, list) or not x or any(v not in FIGURE_X for v in x) or len(set(x)) < len(x):
        raise ConfigError(f"{path}: figure.x {x} must list x axes of {', '.join(FIGURE_X)}, each once")
    axes = _spec_axes(spec)
    for key in ("hue", "style"):
        if key in figure and figure[key] not in axes:
            raise ConfigError(f"{path}: figure.{key} '{figure[key]}' is not an axis of the study; "
                              f"its axes: {', '.join(axes) or 'none'}")
    legend = figure.get("legend", "")
    if not isinstance(legend, str):
        raise ConfigError(f"{path}: figure.legend must be a text such as \"N = {{num_envs}}\"")
    missing = [name for name in re.findall(r"\{([^{}]*)\}", legend) if name not in axes]
    if missing:
        raise ConfigError(f"{path}: figure.legend names {', '.join(missing)}, not an axis of the study; "
                          f"its axes: {', '.join(axes) or 'none'}")
    threshold = figure.get("threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ConfigError(f"{path}: figure.threshold must be a number (the return counted as solved)")


def expand(spec: dict[str, Any], profile: str, overrides: dict[str, str] | None = None) -> Study:
    """The cells of ``spec`` under ``profile``; ``overrides`` (dotted keys) apply to every cell.

    Every cell is validated against the config schema here, before anything runs.
    """
    profiles = spec.get("profiles") or {}
    if profile not in profiles:
        raise ConfigError(f"study '{spec['study']}' has no profile '{profile}'; "
                          f"it has: {', '.join(profiles) or 'none'}")
    chosen = profiles[profile] or {}
    base = {**(spec.get("base") or {}), **(chosen.get("base") or {})}
    axes: dict[str, list[Any]] = {**(spec.get("axes") or {}), **(chosen.get("axes") or {})}
    seeds = chosen.get("seeds", spec.get("seeds", [0]))
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"axis '{key}' must be a non-empty list of values")
    base_overrides = dotted_overrides(base)
    axis_keys = {k for key, values in axes.items() for v in values for k in dotted_overrides(v, key)}
    clash = sorted(axis_keys & set(overrides or {}))
    if clash:
        raise ConfigError(f"{', '.join(clash)} is an axis of study '{spec['study']}'; change the spec, not the cells")
    cells = []
    names = list(axes)
    for combo in itertools.product(*(axes[k] for k in names)):
        axis_values = dict(zip(names, combo, strict=True))
        for seed in seeds:
            cell_overrides = dict(base_overrides)
            for key, value in axis_values.items():
                cell_overrides.update(dotted_overrides(value, key))
            cell_overrides.update(overrides or {})
            cell_overrides["seed"] = str(seed)
            try:
                cfg = build_config(cell_overrides)
            except ConfigError as err:
                raise ConfigError(f"study '{spec['study']}', cell {axis_values or 'base'}: {err}") from None
            cells.append(Cell(spec["study"], profile, axis_values, int(seed), cell_overrides, cfg))
    return Study(spec["study"], profile, chosen.get("description", spec.get("description", "")), axes, cells,
                 spec.get("figure") or {}, tuple(spec.get("figures", DEFAULT_FIGURES)))
