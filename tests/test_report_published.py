"""``pql report --published LABEL=CSV``: another project's curves beside a study's runs, read from a file the
user gives, drawn on the wall-clock panel and summarised in the report; bad arguments named."""

import math

import numpy as np
import pytest

from pql.cli import main
from pql.config import ConfigError
from pql.report.published import parse_published, published_summary
from tests.test_report_spec import fake_study, report

# As cvoelcker/reppo's results/time/*.csv: x first, one column per run, an empty first row, gaps; longer than
# the fake study's runs (3 s).
CURVE = "steps,trial_0,trial_1,trial_2\n0.0,,,\n1.0,-900,-300,\n2.0,-200,-100,-800\n3.0,-150,,-700\n9.0,-120,,\n"


def write_curve(folder, text: str = CURVE, name: str = "published.csv"):
    path = folder / name
    path.write_text(text)
    return path


def test_a_published_curve_is_its_runs_median_and_range_per_point(tmp_path):
    curve = parse_published(f"brax SAC={write_curve(tmp_path)}")
    assert curve.label == "brax SAC" and curve.trials.shape == (4, 3), "the empty row is dropped"
    assert curve.curve["x"].tolist() == [1.0, 2.0, 3.0, 9.0]
    assert curve.curve["median"].tolist() == [-600.0, -200.0, -425.0, -120.0]
    assert curve.curve["lo"].tolist() == [-900.0, -800.0, -700.0, -120.0]
    assert curve.curve["hi"].tolist() == [-300.0, -100.0, -150.0, -120.0]
    assert curve.curve["runs"].tolist() == [2, 3, 2, 1]


def test_published_summary_by_hand(tmp_path):
    curve = parse_published(f"brax SAC={write_curve(tmp_path)}")
    row = published_summary([curve], -250.0).iloc[0]
    # trial_0 first at or above -250 at x = 2 (-200), trial_1 at 2 (-100), trial_2 never (-800, -700).
    assert (row["runs"], row["reached"], row["first_x_median"]) == (3, 2, 2.0)
    assert row["last_value_median"] == -120.0, "last values -120, -100, -700"
    assert (row["x_from"], row["x_to"]) == (1.0, 9.0)
    assert math.isinf(published_summary([curve], -110.0).iloc[0]["first_x_median"]), "1 of 3 reach -110: never"
    unknown = published_summary([curve], math.nan).iloc[0]
    assert math.isnan(unknown["reached"]) and math.isnan(unknown["first_x_median"]), "no threshold, no claim"
    assert unknown["last_value_median"] == -120.0


def test_report_draws_the_published_curve_on_the_wall_clock_panel_only(tmp_path, drawn):
    spec, *_ = fake_study(tmp_path)
    result = report(spec, tmp_path, published=(parse_published(f"brax SAC={write_curve(tmp_path)}"),))
    figure = drawn["fake-quick-classic-pendulum"]
    wall, steps = figure.axes[:2]
    assert (wall.get_xlabel(), steps.get_xlabel()) == ("wall-clock time (s)", "environment steps")
    label = "brax SAC (published, median of 3)"
    published = [line for line in wall.get_lines() if line.get_label() == label]
    assert len(published) == 1
    np.testing.assert_array_equal(published[0].get_xdata(), [1.0, 2.0, 3.0, 9.0])
    np.testing.assert_array_equal(published[0].get_ydata(), [-600.0, -200.0, -425.0, -120.0])
    assert label not in [line.get_label() for line in steps.get_lines()]
    assert wall.get_xlim()[1] == pytest.approx(1.02 * 3.0), "the runs' time range (the fake runs end at 3 s)"
    legend = [text.get_text() for text in figure.axes[-1].get_legend().get_texts()]
    assert label in legend and len(legend) == 6, "the four cells, the threshold once each, the published curve"
    assert legend.count("threshold -250") == 1
    text = result.markdown.read_text()
    assert "## Published curves beside classic/pendulum" in text
    assert "| brax SAC | " + str(tmp_path / "published.csv") + " | 3 | 1 | 9 | -250 | 2 | 2 | -120 |" in text


@pytest.mark.parametrize("arg, named", [
    ("no-label-here", "expected LABEL=CSV"),
    ("x={missing}", "no file"),
    ("x={bad}", "non-numeric values in column(s) trial_1"),
    ("x={one}", "needs an x column and one column per run"),
    ("x={empty}", "no value in any run column"),
    ("x={blank}", "not a CSV file pandas can read"),
])
def test_a_bad_published_argument_is_refused_naming_it(tmp_path, capsys, arg, named):
    files = {"bad": "steps,trial_0,trial_1\n1,2,three\n", "one": "steps\n1\n", "empty": "steps,trial_0\n1,\n",
             "blank": ""}
    paths = {name: write_curve(tmp_path, text, f"{name}.csv") for name, text in files.items()}
    arg = arg.format(missing=tmp_path / "nope.csv", **paths)
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        parse_published(arg)
    spec, *_ = fake_study(tmp_path)
    assert main(["report", str(spec), "--results", str(tmp_path / "results"), "--plots", str(tmp_path / "plots"),
                 "--published", arg]) == 2
    assert named in capsys.readouterr().err
