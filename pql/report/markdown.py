"""The study's markdown report: its figures, the summary table with intervals, notes and the missing runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pql.ablate.matrix import Study


def _text(v: Any) -> str:
    if isinstance(v, float):
        return "never" if math.isinf(v) else "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a markdown table, floats to 4 significant digits (inf: never, NaN: -)."""
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "".join("| " + " | ".join(_text(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def _with_intervals(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with each statistic that has ``<base>_ci_lo``/``_ci_hi`` columns written as ``v [lo, hi]``
    in its own column and those two columns dropped (the CSV keeps them apart)."""
    out = summary.copy()
    for column in summary.columns:
        base = column.removesuffix("_median")
        if f"{base}_ci_lo" in summary.columns and f"{base}_ci_hi" in summary.columns:
            out[column] = [f"{_text(v)} [{_text(lo)}, {_text(hi)}]" for v, lo, hi in
                           zip(summary[column], summary[f"{base}_ci_lo"], summary[f"{base}_ci_hi"], strict=True)]
            out = out.drop(columns=[f"{base}_ci_lo", f"{base}_ci_hi"])
    return out


def write_markdown(study: Study, summary: pd.DataFrame, figures: list[Path], missing: list[dict[str, Any]],
                   path: Path, notes: list[str], by: str | None = None) -> Path:
    """The report at ``path``: the figures, the summary table, the missing or failed runs."""
    lines = [f"# Study `{study.name}` (profile `{study.profile}`)" + (f", by `{by}`" if by else ""), "",
             study.description, ""]
    lines += [f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"]
    lines += ["", "Lines: mean evaluation return over seeds (the training episodes' return where the runs had no "
              "evaluation environments, eval_envs=0); bands: 95% bootstrap interval of the mean; grey dash-dot: "
              "the threshold. "
              "Final return: last evaluation of each run; late return (`late_iqm`, the IQM over runs): the mean "
              "of a run's evaluations over the last third of its training time. Time/steps to threshold "
              "(`*_to_threshold`, the bars): the first evaluation at or above it, median over runs, a run that "
              "never reached it counting as "
              "never. Time/steps to stay (`*_to_stay`): the evaluation from which a run stays at or above the "
              "threshold to its end, so a run that crossed and fell back counts from its last crossing, or as "
              "never if it ended below; `stayed` counts those runs. In the table, `[lo, hi]`: the 95% "
              "stratified-bootstrap interval of the statistic before it (of the IQM; of the median, whose ends "
              "are resampled medians, so never where half or more of a resample never got there)."]
    if "threshold_bars" in study.figures:
        lines += ["", "Bars: that median, with the 95% bootstrap interval of the median (an interval reaching the "
                  "top edge goes on to never); above each bar, the runs that reached the threshold."]
    if by:
        lines += ["", f"Each cell is split by its runs' `{by}` (manifest.json), shown as `[value]`."]
    lines += ["", *notes, "", "## Summary", ""]
    lines.append(markdown_table(_with_intervals(summary)))
    lines += ["## Missing or failed runs", ""]
    if missing:
        lines.append(markdown_table(pd.DataFrame(missing)))
    else:
        lines.append("None: every run of the study finished.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
