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

import csv
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pql.ablate.runner import unique_cells, write_index
from pql.ablate.spec import FIGURE_X, Study, expand, load_spec
from pql.ablate.store import ResultsStore
from pql.algos import ALGORITHMS
from pql.config import Config, ConfigError, thresholds, value_text
from pql.report.aggregate import (
    common_grid,
    curves,
    improvement_table,
    per_run,
    performance_profile,
    summarize,
)
from pql.report.figures import FIGURES, FigureData, Series, save_figure
from pql.report.provenance import PROVENANCE_COLUMNS, check_field, field_text, lookup, provenance, run_facts
from pql.training.run_dir import CELL, METRICS, STATUS, RunDir


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


@dataclass(frozen=True)
class RunRecord:
    """A run of the study as the store's index lists it (or, for results from before the index, the spec's
    expansion)."""

    run_id: str
    label: str  # the cell's label, e.g. ``num_envs=1024``
    axis_values: dict[str, Any]  # in the order of the spec's axes
    seed: int


@dataclass
class SeriesRuns:
    """The finished runs of one line of the figures: a cell's, or with ``by`` those of a cell with one value."""

    record: RunRecord  # the cell's first run: its label and axis values
    algo: str
    by_value: str | None
    devices: list[str]  # the device names its runs recorded, in order of appearance


@dataclass
class FoundRuns:
    """What the report found of a study's runs."""

    frame: pd.DataFrame  # metrics rows of the finished runs, with run_id, cell (series key), seed, task, algo
    series: dict[str, SeriesRuns]  # by series key, in the order of the runs
    provenance: pd.DataFrame  # per run_id: the PROVENANCE_COLUMNS
    missing: list[dict[str, Any]]
    left_out: list[str]  # runs of the index that ran with other KEY=VALUE overrides than the report's


def algo_label(name: str) -> str:
    """How figures and reports name an algorithm: its declared label (the name of one not registered)."""
    return ALGORITHMS[name].label if name in ALGORITHMS else name


def _value_text(key: str, value: Any) -> str:
    if key == "noise" and isinstance(value, dict):
        if value.get("kind") == "mixed":
            return f"mixed sigma in [{value.get('sigma_min')}, {value.get('sigma_max')}]"
        return f"fixed sigma = {value.get('sigma')}"
    if key == "algo":
        return algo_label(str(value))
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


def index_path(store: ResultsStore, profile: str) -> Path:
    return store.path / f"index-{profile}.csv"


def index_records(study: Study, store: ResultsStore) -> list[RunRecord] | None:
    """The runs the store's index of ``study.profile`` lists (each run id once, in its order); None without
    an index."""
    path = index_path(store, study.profile)
    if not path.exists():
        return None
    order = list(study.axes)
    records: dict[str, RunRecord] = {}
    try:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                values = json.loads(row["axis_values"])
                ordered = sorted(values, key=lambda k: order.index(k) if k in order else len(order))
                records.setdefault(row["run_id"], RunRecord(row["run_id"], row["label"],
                                                            {k: values[k] for k in ordered}, int(row["seed"])))
    except (OSError, KeyError, TypeError, ValueError, csv.Error) as err:
        raise ConfigError(f"{path} is not a study index ({type(err).__name__}: {err}); "
                          f"pql ablate rewrites it") from None
    return list(records.values())


def _lost_from_index(study: Study, store: ResultsStore, records: list[RunRecord], notes: list[str]) -> list[RunRecord]:
    """The cells of ``study`` that the index does not list but whose run directories exist (an index that lost
    rows, e.g. truncated by a full disk): their records, after rewriting the index from the run directories."""
    listed = {r.run_id for r in records}
    lost = [c for c in unique_cells(study) if c.run_id not in listed and (store.run_path(c) / CELL).exists()]
    if not lost:
        return []
    problems = write_index(study, store)
    notes.append(f"{len(lost)} run(s) missing from `{index_path(store, study.profile).name}` were found in their "
                 f"directories; " + (f"the index could not be rewritten ({problems[0]})." if problems
                                     else "the index was rewritten from the run directories."))
    return [RunRecord(c.run_id, c.label, c.axis_values, c.seed) for c in lost]


def _other_overrides(run: Path, overrides: dict[str, str]) -> list[str]:
    """The ``overrides`` that the run's ``cell.json`` (what ``pql ablate`` gave it) does not have."""
    try:
        given = json.loads((run / CELL).read_text()).get("overrides") or {}
    except (OSError, ValueError, AttributeError):
        return []
    return [f"{k}={v}" for k, v in overrides.items() if str(given.get(k)) != v]


def load_runs(records: list[RunRecord], store: ResultsStore, expected: dict[str, Config], by: str | None = None,
              overrides: dict[str, str] | None = None) -> FoundRuns:
    """Metrics of every finished run of ``records`` (finished as the store decides: a run whose config is not
    its ``expected`` one, by run id, is stale and left out), one series per cell (per cell and value of the
    manifest field ``by``); the runs that are missing; the runs left out for their other ``overrides``."""
    frames, missing, left_out, prov = [], [], [], []
    series: dict[str, SeriesRuns] = {}
    for record in records:
        run = store.path / record.run_id
        run_state = store.run_state(run, expected.get(record.run_id))
        state, detail = run_state.state, run_state.detail
        if state == "done":
            try:
                config = RunDir(run, create=False).read_config()
                task, algo = config.task, config.algo.name
            except ConfigError as err:
                state, detail = "pending", f"corrupt result: {err}"
        if state != "done":
            missing.append({"run_id": record.run_id, "cell": record.label, "seed": record.seed, "state": state,
                            "detail": detail})
            continue
        other = _other_overrides(run, overrides or {})
        if other:
            left_out.append(f"{record.run_id} ({record.label}, seed {record.seed}): {', '.join(other)}")
            continue
        facts = run_facts(run)
        by_value = field_text(lookup(facts, by)) if by else None
        key = record.label + (f" [{by_value}]" if by else "")
        frame = pd.read_csv(run / METRICS)
        frame["run_id"], frame["cell"], frame["seed"] = record.run_id, key, record.seed
        frame["task"], frame["algo"] = task, algo
        frames.append(frame)
        prov.append({"run_id": record.run_id, **provenance(facts)})
        names = series.setdefault(key, SeriesRuns(record, algo, by_value, [])).devices
        status = json.loads((run / STATUS).read_text())
        for name in sorted(set((status.get("devices") or {}).values())):
            if name not in names:
                names.append(name)
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return FoundRuns(runs, series, pd.DataFrame(prov, columns=["run_id", *PROVENANCE_COLUMNS]), missing, left_out)


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
                 by: str | None = None) -> Report:
    """Aggregate the study's finished runs, draw the spec's figure kinds per task, write the tables and the
    report. ``threshold`` wins over the spec's ``figure.threshold``, which wins over the task's preset;
    ``by``: split each cell by this manifest field's value."""
    if by:
        check_field(by)
    spec = load_spec(spec_path)
    study = expand(spec, profile, overrides)
    store = ResultsStore(results, study.name)
    records = index_records(study, store)
    expected = {c.run_id: c.config for c in unique_cells(study)}
    notes = []
    if records is None:
        records = [RunRecord(c.run_id, c.label, c.axis_values, c.seed) for c in unique_cells(study)]
        notes.append(f"No `{index_path(store, profile).name}` in `{store.path}` (results from before the index): "
                     "the runs were found by expanding the spec.")
        found = load_runs(records, store, expected, by)
    else:
        notes.append(f"Runs: those listed in `{index_path(store, profile)}`.")
        records += _lost_from_index(study, store, records, notes)
        found = load_runs(records, store, expected, by, overrides)
        listed = {(r.label, r.seed) for r in records}
        found.missing += [{"run_id": c.run_id, "cell": c.label, "seed": c.seed, "state": "pending",
                           "detail": "not in the index: not launched yet"}
                          for c in unique_cells(study) if (c.label, c.seed) not in listed]
    if found.left_out:
        notes.append(f"Left out, for they ran with other KEY=VALUE than this report's: {'; '.join(found.left_out)}.")
    if found.frame.empty:
        raise _empty_study(study, store, spec_path, found)
    suffix = f"-by-{by}" if by else ""
    out_dir = Path(plots) / study.name
    xs = study.figure.get("x", list(FIGURE_X))
    preset_thresholds = thresholds()
    tables, run_tables, figures, improvements = [], [], [], []
    for task, task_runs in found.frame.groupby("task", sort=False):
        thr = threshold if threshold is not None else study.figure.get("threshold", preset_thresholds.get(task))
        thr = math.nan if thr is None else float(thr)
        y = return_column(task_runs)
        evaluated = task_runs.groupby("run_id")["eval_return"].transform(lambda v: v.notna().any())
        if y == "eval_return" and not evaluated.all():
            unevaluated = sorted(task_runs.loc[~evaluated, "run_id"].unique())
            notes.append(f"Left out of {task}'s figures and tables: {', '.join(unevaluated)}, which never evaluated "
                         "(eval_envs=0); an exploring policy's training return is not mixed with evaluation returns.")
            task_runs = task_runs[evaluated]
        runs_of_task = per_run(task_runs, thr, y=y)
        run_tables.append(runs_of_task)
        table = summarize(runs_of_task, thr, reps=reps)
        table.insert(0, "task", task)
        tables.append(table)
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
            improvements.append(improvement)
        data = FigureData(f"{study.name}: {task}, {algo_names}", series, curve_frames, table, Y_LABELS[y],
                          scores, improvement)
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
                  _markdown_table(pd.concat(improvements, ignore_index=True))]
    markdown = write_markdown(study, summary, figures, found.missing, out_dir / f"README-{profile}{suffix}.md",
                              notes, by)
    return Report(summary, figures, markdown, found.missing, paths)


def _empty_study(study: Study, store: ResultsStore, spec_path: str | Path, found: FoundRuns) -> EmptyStudy:
    named = "".join(f"\n  {m['run_id']} ({m['cell']}, seed {m['seed']}): {m['state']}"
                    + (f", {m['detail']}" if m["detail"] else "")
                    for m in found.missing if m["state"] != "pending" or m["detail"])
    named += "".join(f"\n  {line}: ran with other KEY=VALUE" for line in found.left_out)
    return EmptyStudy(f"study '{study.name}' (profile {study.profile}) has no finished runs in {store.path}"
                      + (f"; what is there:{named}\n" if named else "; ")
                      + f"run them with: pql ablate {spec_path} --profile {study.profile}")


def _text(v: Any) -> str:
    if isinstance(v, float):
        return "never" if math.isinf(v) else "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _markdown_table(frame: pd.DataFrame) -> str:
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
              "evaluation environments, eval_envs=0); bands: 95% bootstrap interval of the mean. "
              "Final return: last evaluation of each run. Time/steps to threshold (`*_to_threshold`, the bars): "
              "the first evaluation at or above it, median over runs, a run that never reached it counting as "
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
    lines.append(_markdown_table(_with_intervals(summary)))
    lines += ["## Missing or failed runs", ""]
    if missing:
        lines.append(_markdown_table(pd.DataFrame(missing)))
    else:
        lines.append("None: every run of the study finished.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
