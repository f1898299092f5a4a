"""The job matrix of a study: its cells (axis values x seeds, each a resolved, validated config) and their
run ids, a stable hash of a cell's whole resolved config, so a study never reuses a run made with other
settings and always finds its own again."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pql.ablate.spec import DEFAULT_FIGURES
from pql.algos import identity_defaults
from pql.config import Config, ConfigError, config_to_dict, dotted_overrides, value_text
from pql.resolve import build_config

# Keys that do not change what a run computes, left out of its id.
NOT_IN_RUN_ID = {"out", "resume", "progress", "tensorboard", "wandb", "wandb_project", "checkpoint_every_s",
                 "watchdog_s", "check_memory", "eval_max_share"}  # the last: when rows come, by the machine's speed
# Bumped when what a config means changes without its keys changing (e.g. a fix in an algorithm's
# maths): results made under another schema are then not reused. 2: ids hash the whole config.
RUN_ID_SCHEMA = 2
# Keys a run's own settings added since schema 2 (run-level ones; an algorithm's are its declaration's
# identity_defaults), each with the value (as text) at which a run computes exactly what it did before the key
# existed: at that value the key is left out of the id, so earlier runs keep theirs.
ADDED_SINCE_SCHEMA: dict[str, str] = {"algo.activation": "elu", "matmul_precision": "auto",
                                      "algo.buffer_per_env": "null", "algo.layer_norm": "False",
                                      "noise.correlation": "0.0"}


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
        """The cell's run id: the hash of its whole resolved config (:func:`run_id`)."""
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
    figures: tuple[str, ...] = DEFAULT_FIGURES  # the figure kinds to draw, names in FIGURE_KINDS


def run_identity(cfg: Config) -> dict[str, str]:
    """The values that make a run what it is: every key of the resolved config (dotted, as text) except
    those in NOT_IN_RUN_ID and the keys added since schema 2 (ADDED_SINCE_SCHEMA, the algorithms'
    identity_defaults) at their earlier behaviour's value."""
    added = {**ADDED_SINCE_SCHEMA, **identity_defaults()}
    return {k: v for k, v in dotted_overrides(config_to_dict(cfg)).items()
            if k.split(".")[0] not in NOT_IN_RUN_ID and added.get(k) != v}


def run_id(cfg: Config) -> str:
    """12 hex digits of the SHA-256 of :func:`run_identity` and RUN_ID_SCHEMA: a change of any value, a
    default's included, names a different run, so a study never reuses a run made with other settings."""
    body = {"schema": RUN_ID_SCHEMA, "config": run_identity(cfg)}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def _extra_cells(extra: Any) -> list[dict[str, Any]]:
    """A spec's ``extra_cells``, checked: a list of mappings of config keys (a cell each, beside the product of
    the axes, with those keys as its axis values)."""
    if not isinstance(extra, list) or not all(isinstance(c, dict) and c for c in extra):
        raise ConfigError("extra_cells must be a list of non-empty mappings of config keys, e.g. "
                          "[{algo: fast_td3, mode: async}]")
    return [dict(c) for c in extra]


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
    extra = _extra_cells(chosen.get("extra_cells", spec.get("extra_cells")) or [])
    base_overrides = dotted_overrides(base)
    axis_keys = {k for key, values in axes.items() for v in values for k in dotted_overrides(v, key)}
    axis_keys |= {k for values in extra for k in dotted_overrides(values)}
    clash = sorted(axis_keys & set(overrides or {}))
    if clash:
        raise ConfigError(f"{', '.join(clash)} is an axis of study '{spec['study']}'; change the spec, not the cells")
    cells = []
    names = list(axes)
    combos = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(axes[k] for k in names))]
    for axis_values in combos + extra:
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
