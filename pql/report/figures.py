"""Figures: draw what aggregation computed, nothing more (seaborn/matplotlib).

``FIGURES`` is the registry of figure kinds a spec picks with ``figures: [...]``: a name and a
function that draws one task's :class:`FigureData` into a figure. matplotlib and seaborn are
imported on the first draw, so that ``pql ablate`` and ``pql status`` check a spec's figure
kinds without loading them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pql.report.published import PublishedCurve

AXIS_TITLES = {"wall_s": "wall-clock time (s)", "env_steps": "environment steps"}
# Per value of a spec's figure.style axis, in the order of its values: a line style (curves), a hatch (bars).
LINE_STYLES = ("-", "--", ":", "-.")
HATCHES = ("", "//", "..", "xx")
PUBLISHED_GREYS = ("0.15", "0.45", "0.65")  # published curves: grey, dotted, with markers on their grid
THRESHOLD_LINE = {"color": "0.3", "linestyle": "-.", "linewidth": 1.0, "zorder": 1}  # the task's threshold
THRESHOLD_METRICS = {"time_to_threshold": "time to threshold (s)", "steps_to_threshold": "env steps to threshold"}


def _pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _seaborn() -> ModuleType:
    import seaborn as sns

    return sns


@dataclass(frozen=True)
class Series:
    """One line of a curve figure, one bar of a bar figure: the runs of one cell (with ``pql report --by``,
    those of one cell that share a value of the field)."""

    key: str  # the ``cell`` column of the aggregated frames
    label: str  # legend text
    color_group: str  # series of one group share a colour: the value of the spec's figure.hue axis
    style_group: str | None = None  # series of one group share a line style: the value of figure.style's axis
    algo: str | None = None  # the series' algorithm, for the suite's colour of it


@dataclass(frozen=True)
class FigureData:
    """What the figures of one task draw: aggregated tables only."""

    title: str
    series: list[Series]  # in legend order
    curves: dict[str, pd.DataFrame]  # x column (wall_s, env_steps) -> frame of pql.report.aggregate.curves
    thresholds: pd.DataFrame  # per series key (``cell``): pql.report.aggregate.summarize's columns
    y_label: str = "evaluation return"
    profile: pd.DataFrame | None = None  # pql.report.aggregate.performance_profile of the final returns
    improvement: pd.DataFrame | None = None  # pql.report.aggregate.improvement_table: the first series vs the rest
    published: tuple[PublishedCurve, ...] = ()  # drawn on the wall-clock panel of the curves figure


def cell_colors(cells: list[str], algos: dict[str, str] | None) -> dict[str, str]:
    """Colours by algorithm (each algorithm's own, from its declaration) when every cell has a distinct one,
    else a palette in cell order."""
    from pql.algos import ALGORITHMS  # here: the registry imports torch, which checking a spec does not need

    if algos and len(set(algos.values())) == len(cells) and all(a in ALGORITHMS for a in algos.values()):
        return {c: ALGORITHMS[algos[c]].color for c in cells}
    from matplotlib.colors import to_hex

    palette = _seaborn().color_palette("viridis" if len(cells) > 6 else "deep", len(cells))
    return {c: to_hex(p) for c, p in zip(cells, palette, strict=True)}


def series_colors(series: list[Series]) -> dict[str, str]:
    """Colour of each series (by key): one per colour group, by :func:`cell_colors` (groups in series order;
    the algorithm's colour where every group has a distinct algorithm)."""
    groups = list(dict.fromkeys(s.color_group for s in series))
    algos = {s.color_group: s.algo for s in series}
    one_algo = all(len({s.algo for s in series if s.color_group == g}) == 1 and algos[g] is not None for g in groups)
    colors = cell_colors(groups, {g: str(algos[g]) for g in groups} if one_algo else None)
    return {s.key: colors[s.color_group] for s in series}


def series_styles(series: list[Series], styles: tuple[str, ...] = LINE_STYLES) -> dict[str, str]:
    """Line style (or hatch) of each series (by key): one per style group, in series order; ``styles[0]`` for
    series without one (cells that do not set the style key, e.g. beside an extra cell that does), and then
    the groups start at ``styles[1]``, so a group never looks like no group."""
    groups = list(dict.fromkeys(s.style_group for s in series if s.style_group is not None))
    first = 1 if any(s.style_group is None for s in series) else 0
    return {s.key: styles[(first + groups.index(s.style_group)) % len(styles)] if s.style_group is not None
            else styles[0] for s in series}


def _draw_published(ax: Axes, published: tuple[PublishedCurve, ...]) -> None:
    """Each published curve: the median of its runs, dotted with a marker per point of its grid, and the
    runs' range as a band (the panel keeps the study's own time range: points beyond it are not shown)."""
    for i, pub in enumerate(published):
        grey, line = PUBLISHED_GREYS[i % len(PUBLISHED_GREYS)], pub.curve
        ax.plot(line["x"], line["median"], color=grey, linestyle=":", marker="o", markersize=3, linewidth=1.5,
                label=f"{pub.label} (published, median of {pub.trials.shape[1]})")
        ax.fill_between(line["x"], line["lo"], line["hi"], color=grey, alpha=0.12, linewidth=0)


def figure_threshold(data: FigureData) -> float:
    """The return the task's time- and steps-to-threshold count from (NaN where none is known)."""
    column = data.thresholds["threshold"] if "threshold" in data.thresholds else ()
    return float(column.iloc[0]) if len(column) else math.nan


def curves_figure(data: FigureData) -> Figure:
    """Return vs each x axis side by side, one line per series (its mean) with its interval band; the task's
    threshold as a grey dash-dot line across each panel; published curves beside them on the wall-clock
    panel."""
    plt = _pyplot()
    _seaborn().set_theme(style="whitegrid", context="notebook")
    colors, styles = series_colors(data.series), series_styles(data.series)
    fig, axes = plt.subplots(1, len(data.curves), figsize=(6.0 * len(data.curves), 4.2), squeeze=False)
    for ax, (x, frame) in zip(axes[0], data.curves.items(), strict=True):
        for s in data.series:
            line = frame[frame["cell"] == s.key]
            if line.empty:
                continue
            ax.plot(line["x"], line["mean"], color=colors[s.key], linestyle=styles[s.key], label=s.label, linewidth=2)
            ax.fill_between(line["x"], line["ci_lo"], line["ci_hi"], color=colors[s.key], alpha=0.2, linewidth=0)
        if math.isfinite(threshold := figure_threshold(data)):
            ax.axhline(threshold, label=f"threshold {threshold:g}", **THRESHOLD_LINE)
        if x == "wall_s" and data.published:
            _draw_published(ax, data.published)
            if not frame.empty:  # the runs' budget, not the published curves' longer one
                ax.set_xlim(0.0, 1.02 * float(frame["x"].max()))
        ax.set_xlabel(AXIS_TITLES.get(x, x))
        ax.set_ylabel(data.y_label)
    entries: dict[str, object] = {}  # every panel's lines, once each (published ones are on one panel only)
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    axes[0][-1].legend(list(entries.values()), list(entries), loc="lower right", fontsize="small")
    fig.suptitle(data.title)
    fig.tight_layout()
    return fig


def _threshold_panel(ax: Axes, data: FigureData, metric: str, colors: dict[str, str], hatches: dict[str, str]) -> None:
    table = data.thresholds.set_index("cell")
    rows = [table.loc[s.key] for s in data.series]
    medians = [float(r[f"{metric}_median"]) for r in rows]
    finite = [v for r, m in zip(rows, medians, strict=True) if math.isfinite(m)
              for v in (m, float(r[f"{metric}_ci_hi"])) if math.isfinite(v)]
    top = 1.15 * max(finite) if finite and max(finite) > 0 else 1.0
    places = range(len(rows))
    ax.bar(places, [m if math.isfinite(m) else 0.0 for m in medians], color=[colors[s.key] for s in data.series],
           hatch=[hatches[s.key] for s in data.series], edgecolor="white")
    for i, (row, median) in enumerate(zip(rows, medians, strict=True)):
        reached = f"{int(row['reached'])}/{int(row['runs'])}"
        if not math.isfinite(median):
            ax.text(i, 0.02 * top, f"never\n({reached})", ha="center", va="bottom", fontsize="small")
            continue
        lo, hi = float(row[f"{metric}_ci_lo"]), min(float(row[f"{metric}_ci_hi"]), top)
        ax.errorbar(i, median, yerr=[[median - lo], [hi - median]], fmt="none", ecolor="black", capsize=4)
        ax.annotate(reached, (i, hi), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                    fontsize="small")
    ax.set_ylim(0.0, top * 1.08)
    ax.set_xticks(list(places), [s.label for s in data.series], rotation=20 if len(rows) > 3 else 0,
                  ha="right" if len(rows) > 3 else "center")
    ax.set_ylabel(THRESHOLD_METRICS[metric])


def threshold_bars_figure(data: FigureData) -> Figure:
    """Per series, the median time (left) and env steps (right) to the threshold over its runs, a bar with
    the 95% bootstrap interval of the median; a run that never got there counts as never, so a median
    that is never (half or more of the runs) has no bar and says "never". Above each bar: the runs that
    reached the threshold; an interval reaching the top edge goes on to never."""
    plt = _pyplot()
    _seaborn().set_theme(style="whitegrid", context="notebook")
    colors, hatches = series_colors(data.series), series_styles(data.series, HATCHES)
    fig, axes = plt.subplots(1, len(THRESHOLD_METRICS), figsize=(6.0 * len(THRESHOLD_METRICS), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], THRESHOLD_METRICS, strict=True):
        _threshold_panel(ax, data, metric, colors, hatches)
    fig.suptitle(f"{data.title}: return {figure_threshold(data):g} reached")
    fig.tight_layout()
    return fig


def profile_figure(data: FigureData) -> Figure:
    """Left: the performance profile, per series the share of runs whose final return is at least tau, with
    its 95% stratified-bootstrap band. Right: the probability that a run of the first series ends higher
    than a run of each other series, with its 95% bootstrap interval (0.5: no difference)."""
    assert data.profile is not None and data.improvement is not None, "the report computes both for this kind"
    plt = _pyplot()
    _seaborn().set_theme(style="whitegrid", context="notebook")
    colors = series_colors(data.series)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.0, 4.2))
    for s in data.series:
        line = data.profile[data.profile["cell"] == s.key]
        left.plot(line["tau"], line["fraction"], color=colors[s.key], label=s.label, linewidth=2,
                  drawstyle="steps-post")
        left.fill_between(line["tau"], line["ci_lo"], line["ci_hi"], color=colors[s.key], alpha=0.2, linewidth=0,
                          step="post")
    left.set_xlabel(f"final {data.y_label} tau")
    left.set_ylabel("share of runs with final return >= tau")
    left.legend(loc="lower left", fontsize="small")
    table = data.improvement.set_index("cell")
    others = [s for s in data.series[1:] if s.key in table.index]
    for i, s in enumerate(others):
        row = table.loc[s.key]
        err = [[row["poi"] - row["ci_lo"]], [row["ci_hi"] - row["poi"]]] if math.isfinite(row["ci_lo"]) else None
        right.errorbar(float(row["poi"]), i, xerr=err, fmt="o", color=colors[s.key], capsize=4)
    right.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    right.set_xlim(0.0, 1.0)
    right.set_yticks(range(len(others)), [s.label for s in others])
    right.set_xlabel(f"P({data.series[0].label} ends higher than ...)")
    fig.suptitle(f"{data.title}: performance profile and probability of improvement")
    fig.tight_layout()
    return fig


FigureKind = Callable[[FigureData], "Figure"]
# How each figure kind a spec can ask for (pql.ablate.spec.FIGURE_KINDS) is drawn.
FIGURES: dict[str, FigureKind] = {"curves": curves_figure, "threshold_bars": threshold_bars_figure,
                                  "profile": profile_figure}


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf into ``out_dir``; closes the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for path in paths:  # no creation date: the same data gives the same file
        fig.savefig(path, dpi=120, metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    _pyplot().close(fig)
    return paths
