"""Figures: draw what aggregation computed, nothing more (seaborn/matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

# One colour per algorithm in every figure.
ALGO_COLORS = {"pql": "#1f77b4", "pql-d": "#ff7f0e", "ppo": "#2ca02c", "ddpg": "#d62728", "sac": "#9467bd"}
AXIS_TITLES = {"wall_s": "wall-clock time (s)", "env_steps": "environment steps"}


def cell_colors(cells: list[str], algos: dict[str, str] | None) -> dict[str, str]:
    """Colours by algorithm when every cell has a distinct one, else a palette in cell order."""
    if algos and len(set(algos.values())) == len(cells) and all(a in ALGO_COLORS for a in algos.values()):
        return {c: ALGO_COLORS[algos[c]] for c in cells}
    palette = sns.color_palette("viridis" if len(cells) > 6 else "deep", len(cells))
    return {c: matplotlib.colors.to_hex(p) for c, p in zip(cells, palette, strict=True)}


def study_figure(curves: dict[str, pd.DataFrame], labels: dict[str, str], title: str,
                 algos: dict[str, str] | None = None, y_label: str = "evaluation return") -> plt.Figure:
    """Return vs each x axis side by side, one line per cell (its mean) with its interval band.

    ``curves`` maps an x column (``wall_s``, ``env_steps``) to the frame of
    :func:`pql.report.aggregate.curves`; ``labels`` maps a cell to its legend text,
    in legend order; ``algos`` maps a cell to its algorithm for consistent colours.
    """
    sns.set_theme(style="whitegrid", context="notebook")
    cells = list(labels)
    colors = cell_colors(cells, algos)
    fig, axes = plt.subplots(1, len(curves), figsize=(6.0 * len(curves), 4.2), squeeze=False)
    for ax, (x, frame) in zip(axes[0], curves.items(), strict=True):
        for cell in cells:
            data = frame[frame["cell"] == cell]
            if data.empty:
                continue
            ax.plot(data["x"], data["mean"], color=colors[cell], label=labels[cell], linewidth=2)
            ax.fill_between(data["x"], data["ci_lo"], data["ci_hi"], color=colors[cell], alpha=0.2, linewidth=0)
        ax.set_xlabel(AXIS_TITLES.get(x, x))
        ax.set_ylabel(y_label)
    axes[0][-1].legend(loc="lower right", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf into ``out_dir``; closes the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for path in paths:  # no creation date: the same data gives the same file
        fig.savefig(path, dpi=120, metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    plt.close(fig)
    return paths
