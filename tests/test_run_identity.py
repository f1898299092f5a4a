"""Runs identified by their whole config: ids, stale runs, the job running exactly the planned config,
metrics files with more or fewer columns than this version writes."""

import csv
import json
from dataclasses import replace

import pytest
import yaml

from pql.ablate import matrix, spec
from pql.ablate.job import cell_config
from pql.ablate.launchers import DebugLauncher
from pql.ablate.runner import describe_plan, plan_study, run_study
from pql.ablate.store import metrics_problem
from pql.config import config_to_dict
from pql.config import presets_yaml as config_module
from pql.report.study import EmptyStudy, report_study
from pql.resolve import build_config
from pql.store.run_dir import METRIC_COLUMNS, RunDir

from .test_ablate import TINY


def test_the_id_hashes_every_value_and_the_schema_but_not_the_display(monkeypatch):
    cfg = build_config({"max_env_steps": "100"})
    assert cfg.algo.tau == 0.05
    tweaked = replace(cfg, algo=replace(cfg.algo, tau=0.0501))
    assert matrix.run_id(tweaked) != matrix.run_id(cfg), "a default's value is part of the id"
    assert matrix.run_id(replace(cfg, progress=False, out="elsewhere", checkpoint_every_s=5.0)) == matrix.run_id(cfg)
    before = matrix.run_id(cfg)
    monkeypatch.setattr(matrix, "RUN_ID_SCHEMA", matrix.RUN_ID_SCHEMA + 1)
    assert matrix.run_id(cfg) != before


def test_a_key_added_since_the_schema_leaves_earlier_ids_alone_at_its_earlier_value():
    """Runs made before algo.preact_penalty existed computed what preact_penalty=0 computes: they keep
    their ids (the golden matrix pins them); any other value is a different run."""
    cfg = build_config({"max_env_steps": "100"})
    assert cfg.algo.preact_penalty == 0.0 and "algo.preact_penalty" not in matrix.run_identity(cfg)
    penalised = replace(cfg, algo=replace(cfg.algo, preact_penalty=1e-3))
    assert matrix.run_identity(penalised)["algo.preact_penalty"] == "0.001"
    assert matrix.run_id(penalised) != matrix.run_id(cfg)



@pytest.mark.parametrize(("key", "value"), [("algo.activation", "relu"), ("algo.weight_decay", "0.1"),
                                            ("algo.adam_beta1", "0.8"), ("algo.adam_beta2", "0.99"),
                                            ("algo.actor_out_init_std", "0.01"), ("algo.cdq_after_projection", "True"),
                                            ("algo.per_env_sampling", "True"), ("algo.warmup_random", "False")])
def test_the_network_and_optimiser_keys_stay_out_of_earlier_ids_at_the_values_they_had(key, value):
    """activation, AdamW's weight decay and betas, the last layer's init, C51's pick after the projection: added
    since schema 2 (for FastTD3);
    at torch's and the reference code's values they are left out, so earlier runs keep their ids."""
    cfg = build_config({"max_env_steps": "100"})
    assert key not in matrix.run_identity(cfg)
    assert matrix.run_identity(build_config({"max_env_steps": "100", key: value}))[key] == value

def _plan_and_run(results, profile="one"):
    plan = plan_study(TINY, profile, {}, results, claim=True)
    return plan, run_study(plan, DebugLauncher(), progress=False)


def test_a_run_whose_config_differs_from_its_cell_is_stale_and_redone(tmp_path):
    plan, problems = _plan_and_run(tmp_path)
    assert problems == []
    cell = plan.to_run[0]
    run = plan.store.run_path(cell)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["algo"]["tau"] = 0.5  # as if the job had run other settings than the cell's
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    state = plan.store.state(cell)
    assert state.state == "stale" and "algo.tau 0.5 -> 0.05" in state.detail
    with pytest.raises(EmptyStudy, match="stale"):  # the report decides as the store does: not aggregated
        report_study(TINY, "one", tmp_path, tmp_path / "plots", reps=10)
    again = plan_study(TINY, "one", {}, tmp_path)
    assert again.to_run == [cell] and "stale" in describe_plan(again)
    _, problems = _plan_and_run(tmp_path)
    assert problems == [] and plan.store.state(cell).state == "done"
    aside = list(plan.store.path.glob(f"{run.name}.stale-*"))
    assert len(aside) == 1 and yaml.safe_load((aside[0] / "config.yaml").read_text())["algo"]["tau"] == 0.5
    assert yaml.safe_load((run / "config.yaml").read_text())["algo"]["tau"] == 0.05


def test_a_config_of_another_version_is_stale(tmp_path):
    plan, _ = _plan_and_run(tmp_path)
    run = plan.store.run_path(plan.to_run[0])
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "retired_key: 1\n")
    state = plan.store.state(plan.to_run[0])
    assert state.state == "stale" and "not a config of this version" in state.detail and "retired_key" in state.detail


def test_the_job_runs_the_resolved_config_it_was_given_not_a_new_resolution(tmp_path, monkeypatch):
    plan = plan_study(TINY, "one", {}, tmp_path, claim=True)
    try:
        cell = plan.to_run[0]
        run = plan.store.prepare(cell)
    finally:
        plan.release()
    body = json.loads((run / "cell.json").read_text())
    assert body["config"] == config_to_dict(cell.config)
    table = config_module._preset_table()
    changed = {**table, "tasks": {**table["tasks"], "classic/pendulum": {"algo": {"nstep": 7}}}}
    monkeypatch.setattr(config_module, "_preset_table", lambda: changed)  # presets edited after planning
    assert build_config(cell.overrides).algo.nstep == 7, "re-resolving the overrides would pick up the edit"
    job = cell_config(RunDir(run, create=False))
    assert job.algo.nstep == cell.config.algo.nstep == 3
    assert replace(job, out=None, progress=True) == cell.config and job.out == str(run) and job.progress is False


def test_metrics_files_with_extra_or_older_columns_stay_valid(tmp_path):
    run = RunDir(tmp_path / "run")
    row = {"env_steps": 10, "wall_s": 1.0, "train_return": -5.0, "eval_return": -4.0}
    with open(run.metrics_path, "w", newline="") as fh:  # an older version: four columns
        writer = csv.DictWriter(fh, fieldnames=[*row, "gpu_temp"])
        writer.writeheader()
        writer.writerow({**row, "gpu_temp": 61})
    assert metrics_problem(run.metrics_path, 10) is None, "an extra column is no corruption"
    run.append_metrics({**row, "env_steps": 20, "critic_loss": 0.5})
    with open(run.metrics_path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == ["env_steps", "wall_s", "train_return", "eval_return", "gpu_temp",
                                 *METRIC_COLUMNS[4:]]
    assert [r["env_steps"] for r in rows] == ["10", "20"] and rows[0]["gpu_temp"] == "61"
    assert rows[0]["critic_loss"] == "" and rows[1]["critic_loss"] == "0.5"
    assert metrics_problem(run.metrics_path, 20) is None
    run.truncate_metrics(1)  # the checkpoint was taken after the first row
    with open(run.metrics_path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert [r["env_steps"] for r in reader] == ["10"] and "gpu_temp" in reader.fieldnames
    with open(run.metrics_path, "w", newline="") as fh:
        fh.write("env_steps,wall_s\n10,1.0\n")
    assert "lacks the column(s) train_return, eval_return" in metrics_problem(run.metrics_path, 10)


@pytest.mark.parametrize("name", ["envs", "algorithms", "preact"])
def test_config_dicts_are_what_omegaconf_writes(name):
    """config_to_dict (which run ids hash and config.yaml holds) builds the dict without OmegaConf, for speed:
    the same keys in the same order, the same values and types, as OmegaConf's container of the config."""
    from omegaconf import OmegaConf

    def lists(value):
        if isinstance(value, dict):
            return {k: lists(v) for k, v in value.items()}
        return [lists(v) for v in value] if isinstance(value, tuple | list) else value

    from pql.config.sections import sections

    study = spec.load_spec(TINY.parent.parent.parent / "ablations" / f"{name}.yaml")
    configs = [build_config({}), *(c.config for c in matrix.expand(study, "quick").cells)]
    for cfg in configs:
        expected = lists(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))
        for owner in set(sections()) - {cfg.algo.name}:  # another algorithm's own keys are not this run's
            del expected["algo"][owner]
        assert repr(config_to_dict(cfg)) == repr(expected)
