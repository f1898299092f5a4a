"""Aggregation as pure functions over tidy frames and score arrays (no plotting, no files).

A *runs frame* is tidy: one row per metrics row of one run, with at least the
columns ``run_id``, ``cell`` (the cell's label), ``task``, ``env_steps``,
``wall_s`` and ``eval_return``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

Statistic = Callable[[np.ndarray], float]
LATE_SHARE = 1 / 3  # a run's late return: the mean of its evaluations over this last share of its training time


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean of the values left after trimming 25% from each end."""
    x = np.sort(np.asarray(values, dtype=float))
    if x.size == 0:
        return math.nan
    k = int(0.25 * x.size)
    return float(x[k : x.size - k].mean())


def iqm_rows(samples: np.ndarray) -> np.ndarray:
    """:func:`iqm` of each row of ``samples [N, R]``: ``[N]``."""
    x = np.sort(samples, axis=1)
    k = int(0.25 * x.shape[1])
    return x[:, k : x.shape[1] - k].mean(axis=1)


STATISTICS: dict[str, Statistic] = {
    "mean": lambda x: float(np.mean(x)),
    "median": lambda x: float(np.median(x)),
    "iqm": iqm,
}
# The statistics above applied to each row of a [N, R] matrix at once (what the bootstrap resamples).
ROWWISE: dict[Statistic, Callable[[np.ndarray], np.ndarray]] = {
    STATISTICS["mean"]: lambda s: s.mean(axis=1),
    STATISTICS["median"]: lambda s: np.median(s, axis=1),
    iqm: iqm_rows,
}


def stratified_bootstrap_ci(values: np.ndarray, strata: np.ndarray | None = None, statistic: Statistic = iqm,
                            reps: int = 2000, confidence: float = 0.95, seed: int = 0, method: str = "linear",
                            rowwise: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic``; runs are resampled with replacement within each stratum.

    ``values [R]`` are per-run scores, ``strata [R]`` their groups (e.g. tasks; one group if None);
    ``method``: numpy's quantile method for the interval's ends (``inverted_cdf`` keeps them resampled
    statistics, so that values of +inf, e.g. never reaching a threshold, stay +inf). The runs are put in
    a canonical order first, so the interval does not depend on the order they were listed in. The ``reps``
    resamples are drawn at once and the statistic taken over each row by ``rowwise`` (``[reps, R] -> [reps]``;
    by default :data:`ROWWISE`'s for the statistics there, else ``statistic`` row by row).
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    strata = np.zeros(values.size, dtype=int) if strata is None else np.asarray(strata)
    order = np.lexsort((values, strata))
    values, strata = values[order], strata[order]
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    picks = np.concatenate([g[rng.integers(0, g.size, size=(reps, g.size))] for g in groups], axis=1)  # [reps, R]
    rowwise = rowwise or ROWWISE.get(statistic)
    samples = values[picks]
    stats = rowwise(samples) if rowwise is not None else np.apply_along_axis(statistic, 1, samples)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha], method=method)
    return float(lo), float(hi)


def curve_on_grid(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``y`` linearly interpolated at ``grid``; NaN outside [x[0], x[-1]] (no extrapolation past a run's end).
    ``x`` is sorted, rows of equal ``x`` in the order written. Points where ``y`` is NaN (e.g. no training
    episode ended in that interval) are left out; of rows with equal ``x`` (rows written by time while the
    actor did not step repeat the env steps of the row before) the last one counts: the latest policy
    evaluated at that point."""
    x, y, grid = np.asarray(x, float), np.asarray(y, float), np.asarray(grid, float)
    keep = ~np.isnan(y)
    if not keep.any():
        return np.full(grid.shape, math.nan)
    x, y = x[keep], y[keep]
    last = np.append(x[1:] != x[:-1], True)  # [P]: the last of each run of equal x
    x, y = x[last], y[last]
    out = np.interp(grid, x, y)
    out[(grid < x[0]) | (grid > x[-1])] = math.nan
    return out


def common_grid(runs: pd.DataFrame, x: str, points: int = 60) -> np.ndarray:
    """``points`` evenly spaced values of ``x`` from 0 to the longest run's end."""
    end = float(runs.groupby("run_id")[x].max().max())
    return np.linspace(0.0, end, points)


def curves(runs: pd.DataFrame, x: str, grid: np.ndarray, y: str = "eval_return", reps: int = 1000,
           seed: int = 0) -> pd.DataFrame:
    """Per cell and grid point: mean, median, IQM and a 95% bootstrap interval (of the mean) over the
    runs that reach that point, with their count ``n``. Columns: cell, x, n, mean, median, iqm, ci_lo, ci_hi."""
    rows = []
    for cell, frame in runs.groupby("cell", sort=False):
        by_run = [r for _, r in frame.sort_values(x, kind="stable").groupby("run_id", sort=False)]
        per_run = np.stack([curve_on_grid(r[x].to_numpy(), r[y].to_numpy(), grid) for r in by_run])  # [R, G]
        tasks = np.array([r["task"].iloc[0] for r in by_run])  # [R], in the same order as per_run's rows
        for j, point in enumerate(grid):
            have = ~np.isnan(per_run[:, j])
            vals = per_run[have, j]
            if vals.size == 0:
                continue
            lo, hi = stratified_bootstrap_ci(vals, tasks[have], STATISTICS["mean"], reps=reps, seed=seed)
            rows.append({"cell": cell, "x": point, "n": int(vals.size), "mean": float(vals.mean()),
                         "median": float(np.median(vals)), "iqm": iqm(vals), "ci_lo": lo, "ci_hi": hi})
    return pd.DataFrame(rows, columns=["cell", "x", "n", "mean", "median", "iqm", "ci_lo", "ci_hi"])


def first_crossing(x: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """The first logged ``x`` at which ``y >= threshold``; +inf if the run never got there."""
    hits = np.flatnonzero(np.asarray(y, float) >= threshold)
    return float(np.asarray(x, float)[hits[0]]) if hits.size else math.inf


def settled_crossing(x: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """The first logged ``x`` from which every later logged ``y`` (NaNs skipped) stays ``>= threshold``;
    +inf if the last one is below it. A run that crosses and falls back gets the time it crossed for good."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~np.isnan(y)
    x, y = x[keep], y[keep]
    below = np.flatnonzero(y < threshold)
    if y.size == 0 or (below.size and below[-1] == y.size - 1):
        return math.inf
    return float(x[below[-1] + 1]) if below.size else float(x[0])


def late_mean(x: np.ndarray, y: np.ndarray, share: float = LATE_SHARE) -> float:
    """The mean of the logged ``y`` (NaNs skipped) at ``x >= (1 - share) * max(x)``: with ``x`` the training
    time, a run's return over the last ``share`` of it, which a single bad or lucky last evaluation moves
    less than the final return (NaN without any ``y``)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~np.isnan(y)
    x, y = x[keep], y[keep]
    if not y.size:
        return math.nan
    start = (1 - share) * x.max()  # a point on the window's edge counts, whatever the float rounding
    return float(y[(x >= start) | np.isclose(x, start)].mean())


def per_run(runs: pd.DataFrame, threshold: float, y: str = "eval_return") -> pd.DataFrame:
    """One row per run: cell, task, final return, late return (:func:`late_mean` over the training time), and
    the time and env steps to ``threshold`` (inf: never): the first crossing (``*_to_threshold``) and the
    crossing for good (``*_to_stay``, see :func:`settled_crossing`)."""
    rows = []
    for run_id, r in runs.sort_values("env_steps", kind="stable").groupby("run_id", sort=False):
        ys = r[y].to_numpy()
        rows.append({"run_id": run_id, "cell": r["cell"].iloc[0], "task": r["task"].iloc[0],
                     "final_return": float(r[y].dropna().iloc[-1]) if r[y].notna().any() else math.nan,
                     "late_return": late_mean(r["wall_s"].to_numpy(), ys),
                     "time_to_threshold": first_crossing(r["wall_s"].to_numpy(), ys, threshold),
                     "steps_to_threshold": first_crossing(r["env_steps"].to_numpy(), ys, threshold),
                     "time_to_stay": settled_crossing(r["wall_s"].to_numpy(), ys, threshold),
                     "steps_to_stay": settled_crossing(r["env_steps"].to_numpy(), ys, threshold)})
    return pd.DataFrame(rows)


def summarize(run_table: pd.DataFrame, threshold: float, reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per cell: final-return mean / median / IQM with a 95% stratified-bootstrap interval of the IQM, the
    late return's IQM with its interval (``late_iqm``), and time / steps to ``threshold``, first crossing
    (``*_to_threshold``) and crossing for good (``*_to_stay``): the median over all runs, a run that never
    got there counting as +inf (so the median is inf when half or more never did), with its 95%
    stratified-bootstrap interval (``*_ci_lo``/``*_ci_hi``, ends are resampled medians, so an end is inf where
    half or more of the resampled runs never did), and how many runs reached it (``reached``) or stayed (``stayed``)."""
    rows = []
    for cell, frame in run_table.groupby("cell", sort=False):
        final, tasks = frame["final_return"].to_numpy(), frame["task"].to_numpy()
        lo, hi = stratified_bootstrap_ci(final, tasks, iqm, reps=reps, seed=seed)
        row: dict[str, object] = {
            "cell": cell, "runs": len(frame), "final_mean": float(final.mean()),
            "final_median": float(np.median(final)), "final_iqm": iqm(final), "final_iqm_ci_lo": lo,
            "final_iqm_ci_hi": hi}
        late = frame["late_return"].to_numpy(dtype=float)
        row["late_iqm"] = iqm(late)
        row["late_iqm_ci_lo"], row["late_iqm_ci_hi"] = stratified_bootstrap_ci(late, tasks, iqm, reps=reps, seed=seed)
        row["threshold"] = threshold
        for crossing, count in (("threshold", "reached"), ("stay", "stayed")):
            row[count] = int(np.isfinite(frame[f"time_to_{crossing}"].to_numpy()).sum())
            for measure in ("time", "steps"):
                metric = f"{measure}_to_{crossing}"
                values = frame[metric].to_numpy(dtype=float)
                row[f"{metric}_median"] = float(np.median(values))
                row[f"{metric}_ci_lo"], row[f"{metric}_ci_hi"] = stratified_bootstrap_ci(
                    values, tasks, STATISTICS["median"], reps=reps, seed=seed, method="inverted_cdf")
        rows.append(row)
    return pd.DataFrame(rows)


def performance_profile(run_table: pd.DataFrame, taus: np.ndarray, reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per cell and score threshold tau: the share of runs whose final return is >= tau, with its 95%
    stratified-bootstrap interval (runs resampled within each task; rliable's performance profile).
    Columns: cell, tau, fraction, ci_lo, ci_hi."""
    rows = []
    for cell, frame in run_table.groupby("cell", sort=False):
        final, tasks = frame["final_return"].to_numpy(dtype=float), frame["task"].to_numpy()
        for tau in taus:
            above: Statistic = lambda s, tau=tau: float(np.mean(s >= tau))  # noqa: E731
            lo, hi = stratified_bootstrap_ci(final, tasks, above, reps=reps, seed=seed,
                                             rowwise=lambda s, tau=tau: (s >= tau).mean(axis=1))
            rows.append({"cell": cell, "tau": float(tau), "fraction": above(final), "ci_lo": lo, "ci_hi": hi})
    return pd.DataFrame(rows, columns=["cell", "tau", "fraction", "ci_lo", "ci_hi"])


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) + P(X = Y) / 2 for a run of X and a run of Y drawn at random (the Mann-Whitney U statistic
    over n x m, as rliable's probability of improvement on one task)."""
    x, y = np.asarray(x, float)[:, None], np.asarray(y, float)[None, :]
    return float((x > y).mean() + 0.5 * (x == y).mean())


def improvement_table(run_table: pd.DataFrame, reference: str, reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The probability that a run of cell ``reference`` ends with a higher final return than a run of each
    other cell, averaged over tasks, with a 95% percentile bootstrap interval (scipy.stats.bootstrap; each
    cell's runs resampled within each task). Columns: cell, poi, ci_lo, ci_hi."""
    from scipy.stats import bootstrap  # here: only this table needs scipy

    rows = []
    ours = run_table[run_table["cell"] == reference]
    for cell, frame in run_table[run_table["cell"] != reference].groupby("cell", sort=False):
        tasks = sorted(set(ours["task"]) & set(frame["task"]))
        if not tasks:
            continue
        samples, sizes = [], []
        for task in tasks:
            for side in (ours, frame):
                samples.append(side.loc[side["task"] == task, "final_return"].to_numpy(dtype=float))
            sizes.append(len(samples) - 2)

        def mean_poi(*parts: np.ndarray, starts: list[int] = sizes) -> float:
            return float(np.mean([probability_of_improvement(parts[i], parts[i + 1]) for i in starts]))

        point = mean_poi(*samples)
        if all(len(s) > 1 for s in samples):
            ci = bootstrap(samples, mean_poi, n_resamples=reps, method="percentile", vectorized=False,
                           random_state=seed).confidence_interval
            lo, hi = float(ci.low), float(ci.high)
        else:
            lo = hi = math.nan
        rows.append({"cell": cell, "poi": point, "ci_lo": lo, "ci_hi": hi})
    return pd.DataFrame(rows, columns=["cell", "poi", "ci_lo", "ci_hi"])
