"""``pql report SPEC``: from a study's run files to its tables, figures and markdown report.

The runs are those the store's index lists (``results/<study>/index-<profile>.csv``, written by
``pql ablate``), each read from its own directory: ``config.yaml`` says its task and algorithm,
``status.json`` whether it finished, ``manifest.json`` with what code and where it ran. Results
from before the index are found by expanding the spec instead, and the report says so. The spec
gives the study's name, description and figure settings, and the order of the cells' axes.

Writes, per profile like the index: ``results/<study>/summary-<profile>.csv`` (per cell),
``results/<study>/per_run-<profile>.csv`` (final return, time / steps to threshold and provenance
of every run), ``plots/<study>/<study>-<profile>-<task>[-<kind>].png`` and ``.pdf`` (per task one
of each kind the spec asks for) and ``plots/<study>/README-<profile>.md``. With ``by`` (a manifest
field), each cell is split by the field's value and every file name gets ``-by-<field>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pql.ablate.matrix import Study, expand
from pql.ablate.runner import unique_cells
from pql.ablate.spec import FIGURE_X, load_spec
from pql.ablate.store import ResultsStore
from pql.algos import ALGORITHMS
from pql.config import ConfigError, thresholds, value_text
from pql.report.aggregate import (
    common_grid,
    curves,
    improvement_table,
    per_run,
    performance_profile,
    summarize,
)
from pql.report.figures import FIGURES, FigureData, Series, save_figure
from pql.report.markdown import markdown_table, write_markdown
from pql.report.provenance import check_field
from pql.report.published import PublishedCurve, published_summary
from pql.report.runs import FoundRuns, RunRecord, index_path, index_records, load_runs, lost_from_index


class EmptyStudy(ConfigError):
    """A study with no finished run to report on."""


@dataclass
class Report:
    """What ``report_study`` wrote and what it found missing."""

    summary: pd.DataFrame
    figures: list[Path]
    markdown: Path
    missing: list[dict[str, Any]]
    tables: list[Path]  # the summary and per-run CSV files


def algo_label(name: str) -> str:
    """How figures and reports name an algorithm: its declared label (the name of one not registered)."""
    return ALGORITHMS[name].label if name in ALGORITHMS else name


def _noise_text(value: dict[str, Any]) -> str:
    """A noise cell's scheme in words, with its correlation where the cell sets one (0: white noise)."""
    kind, low, high = value.get("kind"), value.get("sigma_min"), value.get("sigma_max")
    schemes = {"mixed": f"mixed sigma in [{low}, {high}]", "per_episode": f"sigma per episode from U[{low}, {high}]"}
    text = schemes.get(str(kind), f"fixed sigma = {value.get('sigma')}")
    if "correlation" in value:
        text += ", white" if not value["correlation"] else f", rho = {value['correlation']}"
    return text


def _value_text(key: str, value: Any) -> str:
    if key == "noise" and isinstance(value, dict):
        return _noise_text(value)
    if key == "algo":
        return algo_label(str(value))
    if key == "mode":
        return str(value)
    if key == "algo.batch_size":
        return f"B = {value}"
    if key == "num_envs":
        return f"N = {value}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return f"{key} = {value}"


PROFILE_POINTS = 60  # score thresholds of a performance profile, from the lowest final return to the highest
Y_LABELS = {"eval_return": "evaluation return", "train_return": "training return (exploring policy)"}


def legend_label(axis_values: dict[str, Any], template: str | None, device_names: list[str]) -> str:
    """Legend text of a cell: the spec's ``figure.legend`` template ({key} replaced), or one phrase per axis.

    A ``gpu_model`` axis shows the device names its runs recorded.
    """
    values = dict(axis_values)
    if "gpu_model" in values:
        values["gpu_model"] = " / ".join(device_names) or values["gpu_model"]
    if template:
        text = template
        for key, value in values.items():
            text = text.replace("{" + key + "}", str(value))
        return text
    parts = [str(v) if k == "gpu_model" else _value_text(k, v) for k, v in values.items()]
    return ", ".join(parts) or "base"


def return_column(runs: pd.DataFrame) -> str:
    """``eval_return``, or ``train_return`` where no run evaluated (``eval_envs=0``, e.g. Isaac Gym)."""
    return "eval_return" if runs["eval_return"].notna().any() else "train_return"


def figure_series(found: FoundRuns, keys: list[str], study: Study) -> list[Series]:
    """The lines (bars) of one task's figures: legend text, colour by the spec's ``figure.hue`` axis and line
    style by its ``figure.style`` axis; each line its own colour where hue and style alone would not tell
    two lines apart (or without hue)."""
    hue, style, template = study.figure.get("hue"), study.figure.get("style"), study.figure.get("legend")
    out = []
    for key in keys:
        runs = found.series[key]
        values, tag = runs.record.axis_values, f" [{runs.by_value}]" if runs.by_value is not None else ""
        out.append(Series(key, legend_label(values, template, runs.devices) + tag,
                          (value_text(values[hue]) if hue in values else key) + tag,
                          value_text(values[style]) if style in values else None, runs.algo))
    if len({(s.color_group, s.style_group) for s in out}) < len(out):
        out = [replace(s, color_group=s.key) for s in out]
    return out


def report_study(spec_path: str | Path, profile: str, results: str | Path = "results", plots: str | Path = "plots",
                 overrides: dict[str, str] | None = None, threshold: float | None = None, reps: int = 1000,
                 by: str | None = None, published: tuple[PublishedCurve, ...] = ()) -> Report:
    """Aggregate the study's finished runs, draw the spec's figure kinds per task, write the tables and the
    report. ``threshold`` wins over the spec's ``figure.threshold``, which wins over the task's preset;
    ``by``: split each cell by this manifest field's value; ``published``: curves drawn beside every task's."""
    if by:
        check_field(by)
    spec = load_spec(spec_path)
    study = expand(spec, profile, overrides)
    store = ResultsStore(results, study.name)
    notes: list[str] = []
    found = _find_runs(study, store, profile, by, overrides, notes)
    if found.left_out:
        notes.append(f"Left out, for they ran with other KEY=VALUE than this report's: {'; '.join(found.left_out)}.")
    if found.frame.empty:
        raise _empty_study(study, store, spec_path, found)
    suffix = f"-by-{by}" if by else ""
    out_dir = Path(plots) / study.name
    preset_thresholds = thresholds()
    tables, run_tables, figures, improvements = [], [], [], []
    for task, task_runs in found.frame.groupby("task", sort=False):
        thr = threshold if threshold is not None else study.figure.get("threshold", preset_thresholds.get(task))
        table, runs_of_task, task_figures, improvement = _report_task(
            study, profile, str(task), task_runs, found, math.nan if thr is None else float(thr), reps,
            out_dir, suffix, notes, published)
        tables.append(table)
        run_tables.append(runs_of_task)
        figures += task_figures
        if improvement is not None:
            improvements.append(improvement)
    summary = pd.concat(tables, ignore_index=True)
    paths = [store.path / f"summary-{profile}{suffix}.csv", store.path / f"per_run-{profile}{suffix}.csv"]
    summary.to_csv(paths[0], index=False)
    per_runs = pd.concat(run_tables, ignore_index=True).merge(found.provenance, on="run_id", how="left")
    per_runs.to_csv(paths[1], index=False)
    if improvements:
        notes += ["", "## Probability of improvement", "",
                  "The probability that a run of the reference cell (the first one) ends with a higher final "
                  "return than a run of the other cell, with its 95% percentile bootstrap interval "
                  "(scipy.stats.bootstrap, each cell's runs resampled within the task); 0.5: no difference.", "",
                  markdown_table(pd.concat(improvements, ignore_index=True))]
    markdown = write_markdown(study, summary, figures, found.missing, out_dir / f"README-{profile}{suffix}.md",
                              notes, by)
    return Report(summary, figures, markdown, found.missing, paths)


def _report_task(study: Study, profile: str, task: str, task_runs: pd.DataFrame, found: FoundRuns, thr: float,
                 reps: int, out_dir: Path, suffix: str, notes: list[str], published: tuple[PublishedCurve, ...],
                 ) -> tuple[pd.DataFrame, pd.DataFrame, list[Path], pd.DataFrame | None]:
    """One task of the report: its per-run and summary tables, the figures the spec asks for (NaN ``thr``: no
    threshold known) with the ``published`` curves, and, for the profile figure, the probability of
    improvement; adds its notes to ``notes``."""
    xs = study.figure.get("x", list(FIGURE_X))
    figures: list[Path] = []
    y = return_column(task_runs)
    evaluated = task_runs.groupby("run_id")["eval_return"].transform(lambda v: v.notna().any())
    if y == "eval_return" and not evaluated.all():
        unevaluated = sorted(task_runs.loc[~evaluated, "run_id"].unique())
        notes.append(f"Left out of {task}'s figures and tables: {', '.join(unevaluated)}, which never evaluated "
                     "(eval_envs=0); an exploring policy's training return is not mixed with evaluation returns.")
        task_runs = task_runs[evaluated]
    runs_of_task = per_run(task_runs, thr, y=y)
    table = summarize(runs_of_task, thr, reps=reps)
    table.insert(0, "task", task)
    series = figure_series(found, [k for k in found.series if k in set(task_runs["cell"])], study)
    algo_names = ", ".join(algo_label(a) for a in dict.fromkeys(s.algo for s in series))
    curve_frames = {x: curves(task_runs, x, common_grid(task_runs, x), y=y, reps=reps) for x in xs} \
        if "curves" in study.figures else {}
    scores = improvement = None
    if "profile" in study.figures and len(series) > 1:
        finals = runs_of_task["final_return"].dropna()
        taus = np.linspace(finals.min(), finals.max(), PROFILE_POINTS) if len(finals) else np.array([])
        scores = performance_profile(runs_of_task, taus, reps=reps)
        improvement = improvement_table(runs_of_task, series[0].key, reps=reps)
        improvement.insert(0, "task", task)
        improvement.insert(1, "reference", series[0].key)
    data = FigureData(f"{study.name}: {task}, {algo_names}", series, curve_frames, table, Y_LABELS[y],
                      scores, improvement, published)
    if published:
        notes.extend(_published_notes(task, published, thr, "wall_s" in curve_frames))
    for kind in study.figures:
        if kind == "profile" and scores is None:
            notes.append(f"No profile figure of {task}: it needs two cells or more.")
            continue
        if kind == "threshold_bars" and math.isnan(thr):
            notes.append(f"No threshold_bars figure of {task}: no threshold is known for it (give --threshold "
                         "or the spec's figure.threshold).")
            continue
        # The profile is in the name: two profiles of a study may run the same task (playground, playground-ppo).
        name = (f"{study.name}-{profile}-{task.replace('/', '-')}" + ("" if kind == "curves" else f"-{kind}")
                + suffix)
        figures += save_figure(FIGURES[kind](data), out_dir, name)
    return table, runs_of_task, figures, improvement


def _published_notes(task: str, published: tuple[PublishedCurve, ...], thr: float, drawn: bool) -> list[str]:
    """The report's section on the published curves of ``task``: what each reaches, on its own clock."""
    where = ("drawn on the wall-clock panel (median of their runs, dotted, a marker per point of their grid; "
             "band: the runs' range)" if drawn else "not drawn: this study draws no wall-clock curves")
    return ["", f"## Published curves beside {task}", "",
            f"Read from the files named, {where}. Their x is their own clock, read as seconds of training: "
            "their hardware, and what their clock counts (compilation, evaluation), may differ from these runs'. "
            "`first_x_median`: the median over their runs of the first point at or above the threshold (never "
            "where half or more never got there); `last_value_median`: of each run's last value.", "",
            markdown_table(published_summary(published, thr))]


def _find_runs(study: Study, store: ResultsStore, profile: str, by: str | None, overrides: dict[str, str] | None,
               notes: list[str]) -> FoundRuns:
    """The study's runs: those its index lists (and any it lost), read from their directories, or without an
    index those of the spec's expansion; says which in ``notes``."""
    records = index_records(study, store)
    expected = {c.run_id: c.config for c in unique_cells(study)}
    if records is None:
        records = [RunRecord(c.run_id, c.label, c.axis_values, c.seed) for c in unique_cells(study)]
        notes.append(f"No `{index_path(store, profile).name}` in `{store.path}` (results from before the index): "
                     "the runs were found by expanding the spec.")
        found = load_runs(records, store, expected, by)
    else:
        notes.append(f"Runs: those listed in `{index_path(store, profile)}`.")
        records += lost_from_index(study, store, records, notes)
        found = load_runs(records, store, expected, by, overrides)
        listed = {(r.label, r.seed) for r in records}
        found.missing += [{"run_id": c.run_id, "cell": c.label, "seed": c.seed, "state": "pending",
                           "detail": "not in the index: not launched yet"}
                          for c in unique_cells(study) if (c.label, c.seed) not in listed]
    return found


def _empty_study(study: Study, store: ResultsStore, spec_path: str | Path, found: FoundRuns) -> EmptyStudy:
    named = "".join(f"\n  {m['run_id']} ({m['cell']}, seed {m['seed']}): {m['state']}"
                    + (f", {m['detail']}" if m["detail"] else "")
                    for m in found.missing if m["state"] != "pending" or m["detail"])
    named += "".join(f"\n  {line}: ran with other KEY=VALUE" for line in found.left_out)
    return EmptyStudy(f"study '{study.name}' (profile {study.profile}) has no finished runs in {store.path}"
                      + (f"; what is there:{named}\n" if named else "; ")
                      + f"run them with: pql ablate {spec_path} --profile {study.profile}")


