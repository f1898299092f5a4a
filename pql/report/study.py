"""``pql report SPEC``: from a study's raw run files to its tables, figures and markdown report.

Writes, per profile like the store's ``index-<profile>.csv``:
``results/<study>/summary-<profile>.csv`` (per cell), ``results/<study>/per_run-<profile>.csv``
(final return and time / steps to threshold of every run), ``plots/<study>/``
figures (PNG and PDF, one per task) and ``plots/<study>/README-<profile>.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pql.ablate.runner import unique_cells
from pql.ablate.spec import Cell, Study, expand, load_spec
from pql.ablate.store import ResultsStore
from pql.config import ConfigError
from pql.report.aggregate import common_grid, curves, per_run, summarize
from pql.report.figures import save_figure, study_figure

# Evaluation return that counts as solved, for time-to-threshold (a spec's figure.threshold wins).
DEFAULT_THRESHOLDS = {"classic/pendulum": -250.0, "gym/Pendulum-v1": -250.0, "classic/mountaincar": 90.0,
                      "playground/CartpoleBalance": 900.0}
ALGO_NAMES = {"pql": "PQL", "pql-d": "PQL-D", "ppo": "PPO", "ddpg": "DDPG(n)", "sac": "SAC(n)"}


class EmptyStudy(ConfigError):
    """A study with no finished run to report on."""


@dataclass
class Report:
    """What ``report_study`` wrote and what it found missing."""

    summary: pd.DataFrame
    figures: list[Path]
    markdown: Path
    missing: list[dict[str, Any]]


def _value_text(key: str, value: Any) -> str:
    if key == "noise" and isinstance(value, dict):
        if value.get("kind") == "mixed":
            return f"mixed sigma in [{value.get('sigma_min')}, {value.get('sigma_max')}]"
        return f"fixed sigma = {value.get('sigma')}"
    if key == "algo":
        return ALGO_NAMES.get(str(value), str(value))
    if key == "algo.batch_size":
        return f"B = {value}"
    if key == "num_envs":
        return f"N = {value}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return f"{key} = {value}"


Y_LABELS = {"eval_return": "evaluation return", "train_return": "training return (exploring policy)"}


def legend_label(cell: Cell, template: str | None, device_names: list[str]) -> str:
    """Legend text of a cell: the spec's ``figure.legend`` template ({key} replaced), or one phrase per axis.

    A ``gpu_model`` axis shows the device names its runs recorded.
    """
    values = dict(cell.axis_values)
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


def load_runs(study: Study, store: ResultsStore) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, list[str]]]:
    """Tidy frame of every finished run's metrics; the runs that are missing; device names per cell."""
    frames, missing, devices = [], [], {}
    for cell in unique_cells(study):
        state = store.state(cell)
        if state.state != "done":
            missing.append({"run_id": cell.run_id, "cell": cell.label, "seed": cell.seed, "state": state.state,
                            "detail": state.detail})
            continue
        run = store.run_path(cell)
        frame = pd.read_csv(run / "metrics.csv")
        frame["run_id"], frame["cell"], frame["seed"] = cell.run_id, cell.label, cell.seed
        frame["task"], frame["algo"] = cell.config.task, cell.config.algo.name
        frames.append(frame)
        status = json.loads((run / "status.json").read_text())
        names = devices.setdefault(cell.label, [])
        for name in sorted(set((status.get("devices") or {}).values())):
            if name not in names:
                names.append(name)
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return runs, missing, devices


def _markdown_table(frame: pd.DataFrame) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "never" if math.isinf(v) else "-" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def report_study(spec_path: str | Path, profile: str, results: str | Path = "results", plots: str | Path = "plots",
                 overrides: dict[str, str] | None = None, threshold: float | None = None,
                 reps: int = 1000) -> Report:
    """Aggregate the study's finished runs, draw one figure per task, write the summary and the report."""
    spec = load_spec(spec_path)
    study = expand(spec, profile, overrides)
    store = ResultsStore(results, study.name)
    runs, missing, devices = load_runs(study, store)
    if runs.empty:
        found = [m for m in missing if m["state"] != "pending" or m["detail"]]
        named = "".join(f"\n  {m['run_id']} ({m['cell']}, seed {m['seed']}): {m['state']}"
                        + (f", {m['detail']}" if m["detail"] else "") for m in found)
        raise EmptyStudy(f"study '{study.name}' (profile {profile}) has no finished runs in {store.path}"
                         + (f"; what is there:{named}\n" if named else "; ")
                         + f"run them with: pql ablate {spec_path} --profile {profile}")
    cells = {c.label: c for c in unique_cells(study)}
    template = study.figure.get("legend")
    out_dir = Path(plots) / study.name
    tables, run_tables, figures = [], [], []
    for task, task_runs in runs.groupby("task", sort=False):
        thr = threshold if threshold is not None else study.figure.get("threshold", DEFAULT_THRESHOLDS.get(task))
        thr = math.nan if thr is None else float(thr)
        y = return_column(task_runs)
        curve_frames = {x: curves(task_runs, x, common_grid(task_runs, x), y=y, reps=reps)
                        for x in ("wall_s", "env_steps")}
        runs_of_task = per_run(task_runs, thr, y=y)
        run_tables.append(runs_of_task)
        table = summarize(runs_of_task, thr, reps=reps)
        table.insert(0, "task", task)
        tables.append(table)
        present = [label for label in cells if label in set(task_runs["cell"])]
        labels = {label: legend_label(cells[label], template, devices.get(label, [])) for label in present}
        algos = {label: cells[label].config.algo.name for label in present}
        algo_names = ", ".join(ALGO_NAMES.get(a, a) for a in dict.fromkeys(algos.values()))
        fig = study_figure(curve_frames, labels, f"{study.name}: {task}, {algo_names}", algos, Y_LABELS[y])
        figures += save_figure(fig, out_dir, f"{study.name}-{task.replace('/', '-')}")
    summary = pd.concat(tables, ignore_index=True)
    summary.to_csv(store.path / f"summary-{profile}.csv", index=False)
    pd.concat(run_tables, ignore_index=True).to_csv(store.path / f"per_run-{profile}.csv", index=False)
    markdown = write_markdown(study, summary, figures, missing, out_dir)
    return Report(summary, figures, markdown, missing)


def write_markdown(study: Study, summary: pd.DataFrame, figures: list[Path], missing: list[dict[str, Any]],
                   out_dir: Path) -> Path:
    """``plots/<study>/README-<profile>.md``: the figures, the summary table, the missing or failed runs."""
    lines = [f"# Study `{study.name}` (profile `{study.profile}`)", "", study.description, ""]
    lines += [f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"]
    lines += ["", "Lines: mean evaluation return over seeds (the training episodes' return where the runs had no "
              "evaluation environments, eval_envs=0); bands: 95% bootstrap interval of the mean. "
              "Final return: last evaluation of each run. Time/steps to threshold: median over runs, "
              "a run that never reached the threshold counting as never.", "", "## Summary", ""]
    lines.append(_markdown_table(summary))
    lines += ["## Missing or failed runs", ""]
    if missing:
        lines.append(_markdown_table(pd.DataFrame(missing)))
    else:
        lines.append("None: every run of the study finished.")
    path = out_dir / f"README-{study.profile}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
