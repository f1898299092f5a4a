"""The runs a report reads: the study's index (or, for results from before it, the spec's expansion), each run
read from its own directory, finished or listed as missing with its state."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pql.ablate.matrix import Study
from pql.ablate.runner import unique_cells, write_index
from pql.ablate.store import ResultsStore
from pql.config import Config, ConfigError
from pql.report.provenance import PROVENANCE_COLUMNS, field_text, lookup, provenance, run_facts
from pql.store.run_dir import CELL, METRICS, STATUS, RunDir


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


def index_path(store: ResultsStore, profile: str) -> Path:
    """The study's index of runs for ``profile``: ``index-PROFILE.csv`` in its results."""
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


def lost_from_index(study: Study, store: ResultsStore, records: list[RunRecord], notes: list[str]) -> list[RunRecord]:
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
