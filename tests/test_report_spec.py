"""The report as the spec and the store drive it: thresholds from the presets, figure kinds and settings
checked when the spec is read, runs found through the store's index, provenance and ``--by``.

The results are small but real run directories: the cells of a real expansion, their files written by
``RunDir`` and the index by ``ResultsStore.write_index``; only the metrics rows are made up.
"""

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pql.ablate.matrix import expand
from pql.ablate.spec import load_spec
from pql.ablate.store import ResultsStore
from pql.cli import main
from pql.config import ConfigError, presets, thresholds
from pql.report import study as report_module
from pql.report.aggregate import per_run, summarize
from pql.report.figures import FIGURES, HATCHES, FigureData, Series, series_styles, threshold_bars_figure
from pql.report.provenance import MANIFEST_FIELDS, PROVENANCE_COLUMNS, field_text, lookup
from pql.report.study import report_study
from pql.resolve import build_config
from pql.store.manifest import session
from pql.store.run_dir import RunDir

SHIPPED = sorted((Path(__file__).parent.parent / "ablations").glob("*.yaml"))
SPEC = """\
study: fake
description: a made-up study of two algorithms and two env counts
base: {task: classic/pendulum, mode: sync, max_env_steps: 300, eval_every_env_steps: 100}
axes:
  algo: [pql, ddpg]
  num_envs: [16, 32]
seeds: [0, 1]
profiles: {quick: {}}
"""
# Per cell (algo, num_envs): the eval return at env steps 100, 200, 300 (wall_s = env_steps / 100).
RETURNS = {("pql", 16): [-900, -200, -100], ("pql", 32): [-900, -600, -240],
           ("ddpg", 16): [-900, -800, -700], ("ddpg", 32): [-300, -100, -50]}


def write_spec(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "fake.yaml"
    path.write_text(SPEC + extra)
    return path


def manifest(commit: str = "ab" * 20, v_learner: str = "NVIDIA H100") -> dict:
    return {"git": {"commit": commit, "dirty": False}, "packages": {"torch": "2.9.0"}, "host": "node7",
            "cpu": "a CPU", "gpus": [{"name": v_learner, "memory_gib": 80.0}],
            "devices": {"sim": "NVIDIA H100", "v_learner": v_learner, "p_learner": v_learner}}


def write_run(run: Path, cell, facts: dict | None, offset: float = 0.0) -> None:
    """A finished run of ``cell`` at ``run``: config.yaml, metrics.csv, status.json, manifest.json (if ``facts``)."""
    files = RunDir(run)
    files.write_config(cell.config)
    for i, ret in enumerate(RETURNS[cell.config.algo.name, cell.config.num_envs]):
        steps = 100 * (i + 1)
        files.append_metrics({"env_steps": steps, "wall_s": steps / 100, "eval_return": ret + offset})
    files.write_status("done", env_steps=300, host="oldhost", devices={"sim": "cpu (x86_64)", "v_learner":
                       "cpu (x86_64)", "p_learner": "cpu (x86_64)"})
    if facts is not None:
        files.record_session(facts, resumed=False)


def fake_study(tmp_path: Path, extra: str = "", facts=manifest, index: bool = True):
    """Every cell of the fake spec finished, with a manifest from ``facts(cell)`` (None: no manifest)."""
    spec = write_spec(tmp_path, extra)
    study = expand(load_spec(spec), "quick")
    store = ResultsStore(tmp_path / "results", study.name)
    for cell in study.cells:
        write_run(store.prepare(cell), cell, facts() if facts else None)  # prepare: cell.json, as pql ablate
    if index:
        store.write_index(study, {})
    return spec, study, store


def report(spec: Path, tmp_path: Path, **kwargs):
    return report_study(spec, "quick", tmp_path / "results", tmp_path / "plots", reps=50, **kwargs)


def test_two_profiles_on_the_same_task_keep_their_own_figures(tmp_path):
    """Figure files are named by profile too: a second profile of the same task (playground and
    playground-ppo) must not overwrite the first one's figures."""
    spec = tmp_path / "fake.yaml"
    spec.write_text(SPEC.replace("profiles: {quick: {}}", "profiles: {quick: {}, again: {}}"))
    names = {}
    for profile in ("quick", "again"):
        study = expand(load_spec(spec), profile)
        store = ResultsStore(tmp_path / "results", study.name)
        for cell in study.cells:
            write_run(store.prepare(cell), cell, manifest())
        store.write_index(study, {})
        result = report_study(spec, profile, tmp_path / "results", tmp_path / "plots", reps=20)
        names[profile] = {p.name for p in result.figures}
    assert "fake-quick-classic-pendulum.png" in names["quick"]
    assert "fake-again-classic-pendulum.png" in names["again"]
    assert all((tmp_path / "plots" / "fake" / name).exists() for profile in names for name in names[profile])


# -- thresholds: presets < the spec's figure.threshold < --threshold --------------------------------------
def test_thresholds_come_from_the_presets_and_no_config_reads_them():
    assert thresholds()["classic/pendulum"] == -250.0 and thresholds()["classic/mountaincar"] == 90.0
    assert all("thresholds" not in layer and "classic/pendulum" not in layer
               for layer in presets("classic/pendulum", "pql"))
    assert build_config({"task": "classic/pendulum"}).task == "classic/pendulum"


def test_threshold_precedence(tmp_path, monkeypatch):
    spec, _, store = fake_study(tmp_path)
    table = {"thresholds": {"classic/pendulum": -123}}
    monkeypatch.setattr("pql.config.presets_yaml._preset_table", lambda: table)
    assert report(spec, tmp_path).summary["threshold"].tolist() == [-123.0] * 4, "the preset's"
    spec.write_text(SPEC + "figure: {threshold: -500}\n")
    assert report(spec, tmp_path).summary["threshold"].tolist() == [-500.0] * 4, "the spec's wins"
    assert report(spec, tmp_path, threshold=-100).summary["threshold"].tolist() == [-100.0] * 4, "--threshold wins"
    code = main(["report", str(spec), "--results", str(tmp_path / "results"), "--plots", str(tmp_path / "plots"),
                 "--threshold", "-99"])
    assert code == 0 and set(pd.read_csv(store.path / "summary-quick.csv")["threshold"]) == {-99.0}


# -- figure settings: checked when the spec is read ------------------------------------------------------
@pytest.mark.parametrize("spec", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_spec_validates_with_every_profile(spec):
    data = load_spec(spec)
    figure = data.get("figure") or {}
    for name, profile in data["profiles"].items():  # the hue: an axis of every profile
        axes = {**data.get("axes", {}), **((profile or {}).get("axes") or {})}
        assert figure.get("hue") is None or figure["hue"] in axes, name
    quick = expand(data, "quick")  # the style: an axis or an extra cell's key, set in some cell of the quick profile
    assert figure.get("style") is None or any(figure["style"] in c.axis_values for c in quick.cells)
    assert quick.figures == tuple(data.get("figures", ["curves"]))


@pytest.mark.parametrize(("extra", "named"), [
    ("figures: [curves, violin]\n", r"unknown figure kind\(s\) violin; allowed: curves, threshold_bars"),
    ("figure: {hue: seed}\n", r"figure.hue 'seed' is not an axis of the study; its axes: algo, num_envs"),
    ("figure: {style: device}\n", r"figure.style 'device' is not an axis"),
    ("figure: {x: [wall_s, updates]}\n", r"figure.x \['wall_s', 'updates'\] must list x axes of wall_s, env_steps"),
    ("figure: {colour: algo}\n", r"unknown figure key\(s\) colour; allowed: hue, legend, style, threshold, x"),
    ("figure: {legend: 'N = {num_env}'}\n", r"figure.legend names num_env, not an axis"),
    ("figure: {threshold: high}\n", r"figure.threshold must be a number"),
])
def test_bad_figure_settings_are_refused_naming_them(tmp_path, capsys, extra, named):
    spec = write_spec(tmp_path, extra)
    with pytest.raises(ConfigError, match=named):
        load_spec(spec)
    assert main(["ablate", str(spec), "--dry-run", "--results", str(tmp_path / "results")]) == 2
    assert "pql: error:" in capsys.readouterr().err and not (tmp_path / "results").exists(), "before anything runs"


# -- figures: what each kind draws -----------------------------------------------------------------------
def test_threshold_bars_draw_the_summary_medians():
    rows = []
    for cell, points in {"A": [(1, 10, -900), (2, 20, -200)], "B": [(3, 30, -100)], "C": [(1, 10, -900)]}.items():
        for run in range(2):
            rows += [{"run_id": f"{cell}{run}", "cell": cell, "task": "t", "env_steps": steps + run,
                      "wall_s": wall + run, "eval_return": ret} for wall, steps, ret in points]
    runs = per_run(pd.DataFrame(rows), -250)
    table = summarize(runs, -250, reps=50)
    series = [Series(c, f"cell {c}", c) for c in "ABC"]
    fig = threshold_bars_figure(FigureData("t", series, {}, table))
    summary = table.set_index("cell")
    for ax, metric in zip(fig.axes, ("time_to_threshold", "steps_to_threshold"), strict=True):
        heights = [bar.get_height() for bar in ax.patches]
        assert heights[:2] == [summary.loc["A", f"{metric}_median"], summary.loc["B", f"{metric}_median"]]
        assert heights[2] == 0 and math.isinf(summary.loc["C", f"{metric}_median"])
        texts = [t.get_text() for t in ax.texts]
        assert texts == ["2/2", "2/2", "never\n(0/2)"], "runs that got there; never shown as never"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["cell A", "cell B", "cell C"]
    assert summary.loc["A", "time_to_threshold_median"] == 2.5  # runs reached it at 2 and 3 s
    assert summary.loc["A", "time_to_threshold_ci_lo"] == 2 and summary.loc["A", "time_to_threshold_ci_hi"] == 3


def test_summary_intervals_of_the_threshold_medians_keep_never_as_never():
    runs = pd.DataFrame({"cell": "A", "task": "t", "final_return": [0.0, -1.0, -2.0], "late_return": [0.0, -1.0, -2.0],
                         "time_to_threshold": [1.0, math.inf, math.inf], "steps_to_threshold": [10.0, 20.0, 30.0],
                         "time_to_stay": [4.0, 5.0, math.inf], "steps_to_stay": [40.0, 50.0, math.inf]})
    out = summarize(runs, -250, reps=200).iloc[0]
    assert out["time_to_threshold_ci_lo"] == 1.0 and math.isinf(out["time_to_threshold_ci_hi"])
    assert 10.0 <= out["steps_to_threshold_ci_lo"] <= out["steps_to_threshold_ci_hi"] <= 30.0
    assert (out["reached"], out["stayed"]) == (1, 2)
    assert out["time_to_stay_median"] == 5.0 and out["time_to_stay_ci_lo"] == 4.0
    assert math.isinf(out["time_to_stay_ci_hi"]), "a run that ended below the threshold counts as never"
    assert out["steps_to_stay_ci_lo"] == 40.0 and math.isinf(out["steps_to_stay_ci_hi"])


def test_an_extra_cell_with_a_style_value_is_drawn_unlike_the_cells_without_one():
    """The algorithms study's FastTD3 sync cell (no mode in its cell) and its async extra cell share a colour:
    their line styles and hatches must differ."""
    series = [Series("a", "PQL", "pql", None, "pql"), Series("b", "FastTD3", "fast_td3", None, "fast_td3"),
              Series("c", "FastTD3, async", "fast_td3", "async", "fast_td3")]
    assert series_styles(series) == {"a": "-", "b": "-", "c": "--"}
    assert series_styles(series, HATCHES) == {"a": "", "b": "", "c": "//"}
    grouped = [replace(s, style_group=g) for s, g in zip(series, ["16", "32", "16"], strict=True)]
    assert series_styles(grouped) == {"a": "-", "b": "--", "c": "-"}, "every series in a group: from the first"


def test_report_draws_the_kinds_and_settings_the_spec_asks_for(tmp_path, drawn):
    assert list(FIGURES) == ["curves", "threshold_bars", "profile"]
    spec, *_ = fake_study(tmp_path, "figures: [curves, threshold_bars, profile]\n"
                                    "figure: {x: [env_steps], hue: algo, style: num_envs}\n")
    result = report(spec, tmp_path)
    assert sorted(p.name for p in result.figures) == ["fake-quick-classic-pendulum-profile.pdf",
                                                       "fake-quick-classic-pendulum-profile.png",
                                                       "fake-quick-classic-pendulum-threshold_bars.pdf",
                                                       "fake-quick-classic-pendulum-threshold_bars.png",
                                                       "fake-quick-classic-pendulum.pdf",
                                                       "fake-quick-classic-pendulum.png"]
    profile = drawn["fake-quick-classic-pendulum-profile"]
    assert len(profile.axes[0].get_lines()) == 4 and len(profile.axes[1].get_yticklabels()) == 3
    assert "## Probability of improvement" in result.markdown.read_text()
    curves_fig = drawn["fake-quick-classic-pendulum"]
    assert [ax.get_xlabel() for ax in curves_fig.axes] == ["environment steps"], "figure.x"
    lines = {ln.get_label(): ln for ln in curves_fig.axes[0].get_lines()}
    assert set(lines) == {"PQL, N = 16", "PQL, N = 32", "DDPG(n), N = 16", "DDPG(n), N = 32", "threshold -250"}
    np.testing.assert_array_equal(lines.pop("threshold -250").get_ydata(), [-250, -250])  # the preset's, across
    color = {label: line.get_color() for label, line in lines.items()}
    style = {label: line.get_linestyle() for label, line in lines.items()}
    assert color["PQL, N = 16"] == color["PQL, N = 32"] != color["DDPG(n), N = 16"] == color["DDPG(n), N = 32"]
    assert style["PQL, N = 16"] == style["DDPG(n), N = 16"] == "-" and style["PQL, N = 32"] == "--"
    bars = drawn["fake-quick-classic-pendulum-threshold_bars"]
    summary = result.summary.set_index("cell")
    cells = [t.get_text() for t in bars.axes[0].get_xticklabels()]
    keys = ["algo=pql, num_envs=16", "algo=pql, num_envs=32", "algo=ddpg, num_envs=16", "algo=ddpg, num_envs=32"]
    assert cells == ["PQL, N = 16", "PQL, N = 32", "DDPG(n), N = 16", "DDPG(n), N = 32"]
    np.testing.assert_array_equal([b.get_height() for b in bars.axes[1].patches],
                                  [0 if math.isinf(v) else v for v in summary.loc[keys, "steps_to_threshold_median"]])
    assert summary.loc["algo=pql, num_envs=16", "steps_to_threshold_median"] == 200
    assert "never\n(0/2)" in [t.get_text() for t in bars.axes[1].texts], "ddpg with 16 envs never got there"



def test_a_task_with_no_threshold_known_has_no_threshold_line_and_no_bars(tmp_path, drawn, monkeypatch):
    monkeypatch.setattr(report_module, "thresholds", lambda: {})  # a task the presets give no threshold
    spec, *_ = fake_study(tmp_path, "figures: [curves, threshold_bars]\n")
    result = report(spec, tmp_path)
    assert list(drawn) == ["fake-quick-classic-pendulum"], "no threshold bars"
    labels = [line.get_label() for ax in drawn["fake-quick-classic-pendulum"].axes for line in ax.get_lines()]
    assert labels and not [label for label in labels if label.startswith("threshold")]
    assert "No threshold_bars figure of classic/pendulum: no threshold is known" in result.markdown.read_text()

# -- runs from the store's index -------------------------------------------------------------------------
def test_report_finds_the_runs_through_the_index(tmp_path):
    spec, study, store = fake_study(tmp_path)
    index = store.path / "index-quick.csv"
    rows = list(csv.DictReader(index.open()))
    # A run that the index lists under an id the spec's expansion would not give it (e.g. a changed
    # run id scheme): it is used, and its cell's metrics come from its own files.
    moved = rows[0]["run_id"]
    (store.path / moved).rename(store.path / "0123456789ab")
    index.write_text(index.read_text().replace(moved, "0123456789ab"))
    # A stray run directory that the index does not list: not used, although it is complete.
    write_run(store.path / "feedfacecafe", study.cells[0], manifest(), offset=10_000)
    result = report(spec, tmp_path)
    runs = pd.read_csv(store.path / "per_run-quick.csv")
    assert "0123456789ab" in set(runs["run_id"]) and "feedfacecafe" not in set(runs["run_id"])
    assert len(runs) == len(study.cells) and result.missing == []
    assert runs["final_return"].max() < 0, "nothing of the stray run"
    assert "index-quick.csv" in result.markdown.read_text()


def test_report_without_an_index_expands_the_spec_and_says_so(tmp_path):
    spec, study, store = fake_study(tmp_path, index=False)
    result = report(spec, tmp_path)
    assert len(pd.read_csv(store.path / "per_run-quick.csv")) == len(study.cells)
    assert "the runs were found by expanding the spec" in result.markdown.read_text()


def test_runs_of_the_index_with_other_overrides_are_left_out(tmp_path):
    spec, _, _ = fake_study(tmp_path)
    with pytest.raises(report_module.EmptyStudy, match="ran with other KEY=VALUE"):
        report(spec, tmp_path, overrides={"max_time_s": "5"})


# -- provenance ------------------------------------------------------------------------------------------
def test_manifest_fields_are_those_a_run_records():
    facts = session({"sim": torch.device("cpu")})
    assert set(facts) | {"schema", "resumes", "resumed_without_manifest"} == set(MANIFEST_FIELDS)


def test_per_run_has_each_runs_provenance(tmp_path):
    spec, study, store = fake_study(tmp_path)
    old = study.cells[0]  # a run from before manifests
    (store.run_path(old) / "manifest.json").unlink()
    report(spec, tmp_path)
    runs = pd.read_csv(store.path / "per_run-quick.csv", dtype=str, keep_default_na=False).set_index("run_id")
    assert list(runs.columns)[-len(PROVENANCE_COLUMNS):] == list(PROVENANCE_COLUMNS)
    new = runs.loc[study.cells[1].run_id]
    assert (new["commit"], new["dirty"], new["torch"], new["host"]) == ("ab" * 6, "False", "2.9.0", "node7")
    assert (new["sim_device"], new["v_learner_device"]) == ("NVIDIA H100", "NVIDIA H100")
    before = runs.loc[old.run_id]
    assert (before["commit"], before["dirty"], before["torch"]) == ("", "", ""), "no manifest: empty"
    assert (before["host"], before["v_learner_device"]) == ("oldhost", "cpu (x86_64)"), "status.json records these"


def test_report_by_a_manifest_field_splits_the_cells(tmp_path, drawn):
    spec, study, store = fake_study(tmp_path, "figure: {hue: algo, style: num_envs}\n")
    seed1 = [c for c in study.cells if c.seed == 1]
    for cell in seed1:  # the two seeds of each cell ran on different GPUs
        RunDir(store.run_path(cell)).record_session(manifest(v_learner="NVIDIA A100"), resumed=False)
    result = report(spec, tmp_path, by="devices.v_learner")
    labels = [ln.get_label() for ln in drawn["fake-quick-classic-pendulum-by-devices.v_learner"].axes[0].get_lines()]
    assert "PQL, N = 16 [NVIDIA H100]" in labels and "PQL, N = 16 [NVIDIA A100]" in labels and len(labels) == 9
    assert labels[-1] == "threshold -250"
    assert "algo=pql, num_envs=16 [NVIDIA A100]" in set(result.summary["cell"]) and (result.summary["runs"] == 1).all()
    assert [p.name for p in result.tables] == ["summary-quick-by-devices.v_learner.csv",
                                               "per_run-quick-by-devices.v_learner.csv"]
    assert result.markdown.name == "README-quick-by-devices.v_learner.md"
    colors = {ln.get_label(): ln.get_color() for ln in drawn["fake-quick-classic-pendulum-by-devices.v_learner"].axes[0]
              .get_lines()}
    assert colors["PQL, N = 16 [NVIDIA H100]"] != colors["PQL, N = 16 [NVIDIA A100]"], "the split lines differ"


def test_status_by_counts_runs_per_value_and_state(tmp_path, capsys):
    spec, study, store = fake_study(tmp_path)
    (store.run_path(study.cells[0]) / "manifest.json").unlink()
    (store.run_path(study.cells[0]) / "status.json").unlink()  # and it never finished: pending
    RunDir(store.run_path(study.cells[1])).record_session(manifest(v_learner="NVIDIA A100"), resumed=False)
    args = ["status", str(spec), "--results", str(tmp_path / "results")]
    assert main([*args, "--by", "devices.v_learner"]) == 0
    table = capsys.readouterr().out.split("runs by devices.v_learner:\n")[1].splitlines()
    counts = {" ".join(line.split()[:-7]): [int(v) for v in line.split()[-7:]] for line in table[1:]}
    assert table[0].split() == ["devices.v_learner", "done", "running", "queued", "failed", "stale", "pending",
                                "skipped"]
    assert counts == {"NVIDIA A100": [1, 0, 0, 0, 0, 0, 0], "NVIDIA H100": [6, 0, 0, 0, 0, 0, 0],
                      "unknown": [0, 0, 0, 0, 0, 1, 0]}
    assert main([*args, "--by", "gpus.0.name"]) == 0 and "NVIDIA A100" in capsys.readouterr().out
    assert main([*args, "--by", "gpu.0.name"]) == 2
    err = capsys.readouterr().err
    assert "'gpu' is not a field of a run's manifest.json" in err and "gpus" in err
    assert main(["report", str(spec), "--results", str(tmp_path / "results"), "--by", "nope"]) == 2


def test_manifest_values_are_read_by_dotted_path(tmp_path):
    _, study, store = fake_study(tmp_path)
    facts = json.loads((store.run_path(study.cells[0]) / "manifest.json").read_text())
    assert lookup(facts, "gpus.0.name") == "NVIDIA H100" and lookup(facts, "gpus.3.name") is None
    assert field_text(lookup(facts, "git.dirty")) == "false" and field_text(lookup(facts, "nothing")) == "unknown"
