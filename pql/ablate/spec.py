"""Study specs: a YAML file expands into a matrix of cells, each a complete, validated run config.

A spec has ``study`` (its name), ``description``, a ``base`` config, ``axes``
(config key -> list of values; a dict value is merged under that key, so
``noise: [{kind: fixed, sigma: 0.2}]`` sets two keys at once), ``seeds`` and
``profiles`` (``quick``, ``paper``, ...), each of which may replace ``base``
entries, ``axes``, ``extra_cells`` and ``seeds``. Cells are the cartesian product of
the axes, then the ``extra_cells`` (a list of mappings of config keys, each one more cell whose
axis values are those keys, e.g. ``{algo: fast_td3, mode: async}`` beside an ``algo`` axis),
times the seeds (:func:`pql.ablate.matrix.expand`).

What ``pql report`` draws: ``figures``, the figure kinds (:data:`FIGURE_KINDS`,
default ``[curves]``), and ``figure``: ``x`` (the x axes of ``curves``: ``wall_s``, ``env_steps``),
``hue`` (an axis: cells with one value of it share a colour), ``style`` (an axis: cells with one
value of it share a line style, or a hatch in bar figures), ``legend`` (a template, ``{AXIS}``
replaced by the cell's value) and ``threshold`` (the return counted as solved; default: the task's
in ``pql/presets.yaml``). All are checked when the spec is read, before anything runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pql.config import ConfigError, read_yaml_mapping

SPEC_KEYS = {"study", "description", "base", "axes", "extra_cells", "seeds", "profiles", "figure", "figures"}
PROFILE_KEYS = {"base", "axes", "extra_cells", "seeds", "description"}
FIGURE_KEYS = {"x", "hue", "style", "legend", "threshold"}
FIGURE_X = ("wall_s", "env_steps")  # the x axes a curve figure can have, each a metrics.csv column
# The figure kinds a spec can ask for (``figures: [curves, threshold_bars, profile]``), each drawn by its function
# in pql.report.figures.FIGURES.
FIGURE_KINDS = ("curves", "threshold_bars", "profile")
DEFAULT_FIGURES = ("curves",)
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
    """The axis names of the spec and of its profiles, with the keys their ``extra_cells`` set."""
    names: list[str] = []
    for part in (spec, *((p or {}) for p in (spec.get("profiles") or {}).values())):
        extra = part.get("extra_cells") or []
        keys = [*(part.get("axes") or {}), *(k for c in extra if isinstance(c, dict) for k in c)]
        names += [n for n in keys if n not in names]
    return names


def _check_figures(path: Path, spec: dict[str, Any]) -> None:
    """ConfigError naming a figure kind, figure key or value the report cannot draw, with the allowed ones."""
    kinds = spec.get("figures", list(DEFAULT_FIGURES))
    if not isinstance(kinds, list) or not kinds:
        raise ConfigError(f"{path}: 'figures' must be a list of figure kinds from {', '.join(FIGURE_KINDS)}")
    bad = [str(k) for k in kinds if k not in FIGURE_KINDS]
    if bad:
        raise ConfigError(f"{path}: unknown figure kind(s) {', '.join(bad)}; allowed: {', '.join(FIGURE_KINDS)}")
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
