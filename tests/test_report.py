"""Aggregation on hand-made frames, figures read back, and the report of a small real study."""

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from pql.ablate.launchers import DebugLauncher
from pql.ablate.runner import plan_study, run_study
from pql.cli import main
from pql.report.aggregate import (
    common_grid,
    curve_on_grid,
    curves,
    first_crossing,
    improvement_table,
    iqm,
    late_mean,
    per_run,
    performance_profile,
    probability_of_improvement,
    settled_crossing,
    stratified_bootstrap_ci,
    summarize,
)
from pql.report.figures import FigureData, Series, curves_figure, profile_figure
from pql.report.study import EmptyStudy, report_study, return_column

from .test_ablate import TINY


def runs_frame(spec: dict[str, list[tuple[float, float, float]]]) -> pd.DataFrame:
    """{run_id: [(env_steps, wall_s, eval_return), ...]} with cell = the run id's prefix before ':'."""
    rows = []
    for run_id, points in spec.items():
        for steps, wall, ret in points:
            rows.append({"run_id": run_id, "cell": run_id.split(":")[0], "task": "t", "env_steps": steps,
                         "wall_s": wall, "eval_return": ret})
    return pd.DataFrame(rows)


def test_iqm_by_hand():
    assert iqm([1, 2, 3, 4]) == 2.5  # drops 1 and 4
    assert iqm([100, 1, 3, 2, 4]) == 3.0  # drops 1 and 100: mean of 2, 3, 4
    assert iqm([7]) == 7.0
    assert iqm(list(range(8))) == 3.5  # drops 0, 1 and 6, 7
    assert math.isnan(iqm([]))


def test_curve_on_grid_interpolates_and_never_extrapolates():
    out = curve_on_grid(np.array([0, 10, 20]), np.array([0, 10, 40]), np.array([0, 5, 15, 20, 25]))
    assert out[:4].tolist() == [0, 5, 25, 40] and math.isnan(out[4])


def test_curve_on_grid_leaves_out_missing_values():
    """A NaN return (no training episode ended in that interval) is skipped, not spread to its neighbours."""
    out = curve_on_grid(np.array([0, 10, 20, 30]), np.array([np.nan, 10, np.nan, 30]), np.array([10, 15, 30, 5]))
    assert out[:3].tolist() == [10, 15, 30] and math.isnan(out[3]), "before the first value: nothing"
    assert np.isnan(curve_on_grid(np.array([0, 10]), np.array([np.nan, np.nan]), np.array([0, 5]))).all()


def test_without_evaluation_the_report_uses_the_training_return():
    frame = runs_frame({"A:1": [(0, 0, 0), (10, 10, 10)]})
    assert return_column(frame) == "eval_return"
    frame["train_return"], frame["eval_return"] = [np.nan, 7.0], np.nan
    assert return_column(frame) == "train_return"
    assert per_run(frame, 5.0, y="train_return")["final_return"].tolist() == [7.0]


def test_first_crossing_and_never():
    x, y = np.array([0, 10, 20, 30]), np.array([-1000, -300, -200, -100])
    assert first_crossing(x, y, -250) == 20
    assert first_crossing(x, y, 0) == math.inf


def test_settled_crossing_is_the_crossing_for_good():
    x = np.array([0, 10, 20, 30, 40, 50])
    assert settled_crossing(x, np.array([-900, -200, -300, -240, np.nan, -150]), -250) == 30, "crossed, fell back"
    assert settled_crossing(x, np.array([-900, -200, -100, -120, -150, -260]), -250) == math.inf, "ended below"
    assert settled_crossing(x, np.array([-100, -100, -100, -100, -100, -100]), -250) == 0
    runs = runs_frame({"a:0": [(0, 0.0, -900), (10, 1.0, -200), (20, 2.0, -300), (30, 3.0, -100)]})
    row = per_run(runs, -250).iloc[0]
    assert (row["time_to_threshold"], row["time_to_stay"], row["steps_to_stay"]) == (1.0, 3.0, 30)


def test_per_run_and_summary_keep_the_order_of_the_runs():
    """Runs come in the spec's cell order; sorting their rows by env steps must not reorder the cells
    (an unstable sort did, with every run starting at env step 0)."""
    cells = ["n=256", "n=1024", "n=4096", "n=16384"]
    frame = runs_frame({f"{cell}:{seed}": [(0, 0.0, -900), (100 * (seed + 1), 1.0, -200)]
                        for cell in cells for seed in range(5)})
    assert per_run(frame, -250)["run_id"].tolist() == frame["run_id"].unique().tolist()
    assert summarize(per_run(frame, -250), -250, reps=50)["cell"].tolist() == cells


def test_curves_average_only_runs_that_reach_the_point():
    frame = runs_frame({"A:1": [(0, 0, 0), (10, 10, 10)], "A:2": [(0, 0, 10), (20, 20, 30)]})
    out = curves(frame, "env_steps", np.array([0.0, 10.0, 20.0]), reps=200)
    assert out["mean"].tolist() == [5.0, 15.0, 30.0]
    assert out["n"].tolist() == [2, 2, 1]
    assert (out["ci_lo"] <= out["mean"]).all() and (out["mean"] <= out["ci_hi"]).all()
    assert out.iloc[2]["ci_lo"] == out.iloc[2]["ci_hi"] == 30.0  # one run: no spread
    assert common_grid(frame, "env_steps", points=3).tolist() == [0.0, 10.0, 20.0]


def test_curves_stratify_each_run_by_its_own_task():
    """A cell over two tasks, one always at 0 and one always at 10: resampled within each task the mean
    never moves. The runs that start later come last once the rows are sorted by x; their tasks must follow."""
    rows = [{"run_id": run, "cell": "c", "task": task, "env_steps": steps, "wall_s": steps, "eval_return": ret}
            for run, task, start, ret in (("a1", "t1", 5, 0.0), ("b1", "t2", 0, 10.0), ("a2", "t1", 5, 0.0),
                                          ("b2", "t2", 0, 10.0))
            for steps in (start, 100)]
    out = curves(pd.DataFrame(rows), "env_steps", np.array([50.0, 100.0]), reps=200)
    assert out["n"].tolist() == [4, 4] and out["mean"].tolist() == [5.0, 5.0]
    assert out["ci_lo"].tolist() == out["ci_hi"].tolist() == [5.0, 5.0]


def test_bootstrap_interval_properties():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0, 1, 5), rng.normal(0, 1, 200)
    lo_s, hi_s = stratified_bootstrap_ci(small, statistic=np.mean)
    lo_l, hi_l = stratified_bootstrap_ci(large, statistic=np.mean)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < hi_s - lo_s, "more seeds, narrower interval"
    assert stratified_bootstrap_ci(np.full(6, 3.0)) == (3.0, 3.0)
    # Stratified: each task keeps its number of runs, so the mean of {0,0,0} and {10,10,10} never moves.
    values, tasks = np.array([0.0, 0, 0, 10, 10, 10]), np.array([0, 0, 0, 1, 1, 1])
    assert stratified_bootstrap_ci(values, tasks, np.mean) == (5.0, 5.0)
    lo, hi = stratified_bootstrap_ci(values, None, np.mean)
    assert lo < 5.0 < hi
    mixed, strata = rng.normal(0, 1, 9), np.array(["a", "b", "c"] * 3)
    shuffled = rng.permutation(9)
    assert stratified_bootstrap_ci(mixed, strata) == stratified_bootstrap_ci(mixed[shuffled], strata[shuffled]), \
        "the order the runs are listed in does not move the interval"


def test_time_to_threshold_counts_runs_that_never_reached_it():
    frame = runs_frame({
        "A:1": [(0, 0, -900), (100, 5, -200)],
        "A:2": [(0, 0, -900), (100, 10, -240), (200, 20, -100)],
        "A:3": [(0, 0, -900), (100, 10, -800)],  # never reached
        "B:1": [(0, 0, -900), (100, 10, -600)],
        "B:2": [(0, 0, -900), (100, 4, -100)],
    })
    table = per_run(frame, -250)
    assert table.set_index("run_id").loc["A:2", "time_to_threshold"] == 10
    assert table.set_index("run_id").loc["A:2", "steps_to_threshold"] == 100
    assert math.isinf(table.set_index("run_id").loc["A:3", "time_to_threshold"])
    summary = summarize(table, -250, reps=200).set_index("cell")
    assert summary.loc["A", "runs"] == 3 and summary.loc["A", "reached"] == 2
    assert summary.loc["A", "time_to_threshold_median"] == 10  # of 5, 10, never
    assert math.isinf(summary.loc["B", "time_to_threshold_median"])  # of 4, never: half never got there
    assert summary.loc["A", "final_mean"] == pytest.approx((-200 - 100 - 800) / 3)
    assert summary.loc["A", "final_iqm"] == pytest.approx((-200 - 100 - 800) / 3)  # 3 runs: nothing trimmed
    assert summary.loc["A", "final_iqm_ci_lo"] <= summary.loc["A", "final_iqm"] <= summary.loc["A", "final_iqm_ci_hi"]


def test_late_return_is_the_mean_over_the_last_third_of_training_time_by_hand():
    # wall 0..9 s: the last third is wall >= 6 (6 and 9; the NaN at 7.5 is skipped): (-300 + -100) / 2
    assert late_mean([0, 3, 6, 7.5, 9], [-900, -200, -300, math.nan, -100]) == -200
    assert late_mean([0, 30], [-900, -150]) == -150, "only the last of two rows 30 s apart"
    assert math.isnan(late_mean([0, 5], [math.nan, math.nan]))
    frame = runs_frame({"A:1": [(0, 0, -900), (50, 3, -200), (100, 6, -300), (150, 9, -100)],
                        "A:2": [(0, 0, -900), (50, 3, -700), (100, 6, -500), (150, 9, -500)],
                        "A:3": [(0, 0, -900), (50, 3, -100), (100, 6, -150), (150, 9, -250)]})
    table = per_run(frame, -250).set_index("run_id")
    assert list(table["late_return"]) == [-200, -500, -200]
    summary = summarize(table.reset_index(), -250, reps=200).set_index("cell")
    assert summary.loc["A", "late_iqm"] == pytest.approx(-300), "3 runs: nothing trimmed"
    assert summary.loc["A", "late_iqm_ci_lo"] <= -300 <= summary.loc["A", "late_iqm_ci_hi"]
    assert summary.loc["A", "final_iqm"] == pytest.approx((-100 - 500 - 250) / 3), "the last evaluations"


def test_figure_draws_exactly_the_aggregated_table():
    frame = runs_frame({"A:1": [(0, 0, 0), (10, 1, 10)], "A:2": [(0, 0, 2), (10, 2, 14)],
                        "B:1": [(0, 0, -5), (10, 1, -1)]})
    tables = {x: curves(frame, x, common_grid(frame, x, points=5), reps=100) for x in ("wall_s", "env_steps")}
    series = [Series("A", "N = 256", "A"), Series("B", "N = 4096", "B")]
    fig = curves_figure(FigureData("envs: classic/pendulum, PQL", series, tables, pd.DataFrame()))
    assert fig._suptitle.get_text() == "envs: classic/pendulum, PQL"
    for ax, (x, table) in zip(fig.axes, tables.items(), strict=True):
        assert ax.get_xlabel() == {"wall_s": "wall-clock time (s)", "env_steps": "environment steps"}[x]
        assert [line.get_label() for line in ax.get_lines()] == ["N = 256", "N = 4096"]
        for line, cell in zip(ax.get_lines(), ["A", "B"], strict=True):
            expected = table[table["cell"] == cell]
            np.testing.assert_allclose(line.get_xdata(), expected["x"])
            np.testing.assert_allclose(line.get_ydata(), expected["mean"])
        assert len(ax.collections) == 2, "one interval band per line"
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == ["N = 256", "N = 4096"]


def test_probability_of_improvement_and_profile_by_hand():
    assert probability_of_improvement([1, 2, 3], [0, 2, 5]) == pytest.approx((4 + 0.5) / 9)  # 4 wins, 1 tie
    table = pd.DataFrame({"cell": ["PQL"] * 4 + ["PPO"] * 4, "task": "t",
                          "final_return": [-150, -160, -170, -180, -300, -200, -155, -400]})
    poi = improvement_table(table, "PQL", reps=300).set_index("cell").loc["PPO"]
    assert poi["poi"] == pytest.approx(13 / 16)  # 13 of the 16 pairs have PQL ahead
    assert poi["ci_lo"] <= poi["poi"] <= poi["ci_hi"] <= 1.0
    profile = performance_profile(table, np.array([-250.0, -165.0]), reps=100).set_index(["cell", "tau"])
    assert profile.loc[("PQL", -165.0), "fraction"] == 0.5 and profile.loc[("PPO", -250.0), "fraction"] == 0.5
    fig = profile_figure(FigureData("algorithms: t", [Series("PQL", "PQL", "PQL", algo="pql"),
                                                       Series("PPO", "PPO", "PPO", algo="ppo")],
                                    {}, pd.DataFrame(), profile=profile.reset_index(),
                                    improvement=improvement_table(table, "PQL", reps=300)))
    left, right = fig.axes
    assert [line.get_label() for line in left.get_lines()] == ["PQL", "PPO"]
    np.testing.assert_allclose(left.get_lines()[0].get_ydata(), [1.0, 0.5])
    assert [t.get_text() for t in right.get_yticklabels()] == ["PPO"]
    assert right.get_xlabel() == "P(PQL ends higher than ...)"
    point = right.lines[0].get_xdata()[0]
    assert point == pytest.approx(13 / 16)


def test_algorithm_colours_are_the_same_in_every_figure():
    frame = runs_frame({"A:1": [(0, 0, 0), (10, 1, 1)], "B:1": [(0, 0, 0), (10, 1, 2)]})
    tables = {"wall_s": curves(frame, "wall_s", np.array([0.0, 1.0]), reps=10)}
    a, b = Series("A", "PQL", "A", algo="pql"), Series("B", "PQL-D", "B", algo="pql-d")
    one = curves_figure(FigureData("t", [a, b], tables, pd.DataFrame()))
    two = curves_figure(FigureData("t", [b, a], tables, pd.DataFrame()))
    colour = lambda fig: {ln.get_label(): ln.get_color() for ln in fig.axes[0].get_lines()}  # noqa: E731
    assert colour(one) == colour(two) and colour(one)["PQL"] != colour(one)["PQL-D"]


def _finish_tiny_study(results):
    plan = plan_study(TINY, "quick", {"max_env_steps": "960"}, results)
    assert run_study(plan, DebugLauncher(), progress=False) == []
    return plan


def test_report_of_a_real_small_study(tmp_path):
    results, plots = tmp_path / "results", tmp_path / "plots"
    plan = _finish_tiny_study(results)
    report = report_study(TINY, "quick", results, plots, {"max_env_steps": "960"}, reps=100)
    assert [p.name for p in report.figures] == ["tiny-quick-classic-pendulum.png", "tiny-quick-classic-pendulum.pdf"]
    assert all(p.stat().st_size > 1000 for p in report.figures)
    summary = pd.read_csv(results / "tiny" / "summary-quick.csv")
    assert sorted(summary["cell"]) == sorted({c.label for c in plan.study.cells}) and len(summary) == 4
    assert (summary["runs"] == 2).all() and (summary["threshold"] == -250).all()
    runs = pd.read_csv(results / "tiny" / "per_run-quick.csv")
    assert len(runs) == 8 and {"time_to_threshold", "steps_to_threshold", "final_return"} <= set(runs.columns)
    assert report.markdown == plots / "tiny" / "README-quick.md", "one report per profile, like the run index"
    text = report.markdown.read_text()
    assert "tiny-quick-classic-pendulum.png" in text and "every run of the study finished" in text
    row = summary.iloc[0]
    for stat in ("final_iqm", "time_to_threshold_median", "steps_to_stay_median"):
        base = stat.removesuffix("_median")
        values = (row[stat], row[f"{base}_ci_lo"], row[f"{base}_ci_hi"])
        shown = [f"{v:.4g}" if np.isfinite(v) else "never" for v in values]
        assert f"{shown[0]} [{shown[1]}, {shown[2]}]" in text, f"{stat} with its interval in the table"
    assert "_ci_lo" not in text, "each interval sits beside its statistic, not in columns of its own"
    # A partial study renders with what exists and names what is missing.
    shutil.rmtree(plan.store.run_path(plan.to_run[0]))
    partial = report_study(TINY, "quick", results, plots, {"max_env_steps": "960"}, reps=100)
    assert len(partial.missing) == 1 and plan.to_run[0].run_id in partial.markdown.read_text()
    # A run that never evaluated (eval_envs=0) is left out, not drawn with its exploring return among the others.
    unevaluated = plan.to_run[1]
    metrics = plan.store.run_path(unevaluated) / "metrics.csv"
    frame = pd.read_csv(metrics)
    frame["eval_return"] = np.nan
    frame.to_csv(metrics, index=False)
    mixed = report_study(TINY, "quick", results, plots, {"max_env_steps": "960"}, reps=100)
    assert f"{unevaluated.run_id}, which never evaluated" in mixed.markdown.read_text()
    assert unevaluated.run_id not in set(pd.read_csv(results / "tiny" / "per_run-quick.csv")["run_id"])
    # An index that lost rows (a full disk): the runs are found in their directories and the index rewritten.
    index = results / "tiny" / "index-quick.csv"
    index.write_text("\n".join(index.read_text().splitlines()[:2]) + "\n")
    rebuilt = report_study(TINY, "quick", results, plots, {"max_env_steps": "960"}, reps=100)
    assert "were found in their directories; the index was rewritten" in rebuilt.markdown.read_text()
    assert len(pd.read_csv(results / "tiny" / "per_run-quick.csv")) == 6, "every finished, evaluated run"
    assert len(pd.read_csv(index)) == 8


def test_empty_study_says_so(tmp_path, capsys):
    with pytest.raises(EmptyStudy, match="no finished runs"):
        report_study(TINY, "quick", tmp_path / "results", tmp_path / "plots")
    code = main(["report", str(TINY), "--results", str(tmp_path / "results"), "--plots", str(tmp_path / "plots")])
    assert code == 2 and "no finished runs" in capsys.readouterr().err


def test_legend_names_the_axis_values():
    from pql.ablate.matrix import expand
    from pql.ablate.spec import load_spec
    from pql.report.study import legend_label

    cells = expand(load_spec(TINY), "quick").cells
    texts = {legend_label(c.axis_values, None, []) for c in cells}
    assert "PQL, mixed sigma in [0.05, 0.8]" in texts and "PQL-D, fixed sigma = 0.3" in texts
    assert legend_label(cells[0].axis_values, "{algo} with noise", []) == "pql with noise"
    schemes = [{"kind": "per_episode", "sigma_min": 0.001, "sigma_max": 0.4},
               {"kind": "mixed", "sigma_min": 0.05, "sigma_max": 0.8, "correlation": 0.0},
               {"kind": "fixed", "sigma": 0.8, "correlation": 0.9}]
    assert [legend_label({"noise": n}, None, []) for n in schemes] == [
        "sigma per episode from U[0.001, 0.4]", "mixed sigma in [0.05, 0.8], white", "fixed sigma = 0.8, rho = 0.9"]
