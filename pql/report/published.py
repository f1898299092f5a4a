"""Published curves drawn beside a study's own runs: another project's raw evaluation returns over time.

A published curve is a CSV file whose first column is the x (seconds of training, as the source's clock
counts them) and whose other columns are one run each, e.g. cvoelcker/reppo's ``results/time/*.csv``
(``steps,trial_0,...``); an empty cell is a point that run has no value at. ``pql report --published
LABEL=CSV`` draws each curve's median over its runs, with the runs' range as a band, on the wall-clock
panel of the curves figure, and the report lists what each one reaches. The file stays the user's: the
report names it, the suite ships none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pql.config import ConfigError

USAGE = "expected LABEL=CSV, e.g. 'brax SAC=CartpoleSwingup_sac_brax_full.csv'"


@dataclass(frozen=True)
class PublishedCurve:
    """One published curve: its runs on the source's grid and their median and range per point."""

    label: str  # legend text
    source: str  # the CSV's path as given
    trials: pd.DataFrame  # index: x (s), one column per run; NaN where a run has no value
    curve: pd.DataFrame  # columns x, median, lo, hi (the runs' min and max), runs (with a value at x)


def parse_published(arg: str) -> PublishedCurve:
    """The curve ``LABEL=CSV`` names; a :class:`ConfigError` names the argument, file or column at fault."""
    label, sep, path = arg.partition("=")
    label, path = label.strip(), path.strip()
    if not sep or not label or not path:
        raise ConfigError(f"--published {arg!r}: {USAGE}")
    if not Path(path).is_file():
        raise ConfigError(f"--published {label}: no file {path}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(f"--published {label}: {path} is not a CSV file pandas can read: {err}") from err
    if frame.shape[1] < 2:
        raise ConfigError(f"--published {label}: {path} needs an x column and one column per run, has "
                          f"{list(frame.columns)}")
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = [str(c) for c in frame.columns if numeric[c].isna().sum() > frame[c].isna().sum()]
    if bad:
        raise ConfigError(f"--published {label}: non-numeric values in column(s) {', '.join(bad)} of {path}")
    trials = numeric.set_index(numeric.columns[0]).dropna(how="all")
    if trials.empty:
        raise ConfigError(f"--published {label}: {path} has no value in any run column")
    trials.index.name = "x"
    curve = pd.DataFrame({"x": trials.index, "median": trials.median(axis=1), "lo": trials.min(axis=1),
                          "hi": trials.max(axis=1), "runs": trials.notna().sum(axis=1)}).reset_index(drop=True)
    return PublishedCurve(label, path, trials, curve)


def published_summary(curves: Sequence[PublishedCurve], threshold: float) -> pd.DataFrame:
    """Per curve: its runs, the x range with values, the runs with a point at or above ``threshold``, the
    median over runs of the first such x (inf: never, as for the study's own runs) and of each run's last value.
    A NaN ``threshold`` (none known for the task) leaves the two threshold columns NaN."""
    known = not math.isnan(threshold)
    rows = []
    for c in curves:
        firsts = [float(run.index[run.to_numpy() >= threshold][0]) if (run >= threshold).any() else math.inf
                  for _, run in c.trials.items()]
        lasts = [float(run.dropna().iloc[-1]) for _, run in c.trials.items() if run.notna().any()]
        rows.append({"published": c.label, "file": c.source, "runs": c.trials.shape[1],
                     "x_from": float(c.curve["x"].min()), "x_to": float(c.curve["x"].max()),
                     "threshold": threshold, "reached": int(np.isfinite(firsts).sum()) if known else math.nan,
                     "first_x_median": float(np.median(firsts)) if known else math.nan,
                     "last_value_median": float(np.median(lasts))})
    return pd.DataFrame(rows)
