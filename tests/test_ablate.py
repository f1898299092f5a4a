"""Study specs, the results store and the local/debug launchers (no SLURM needed)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pql.ablate.launchers import DebugLauncher
from pql.ablate.matrix import expand
from pql.ablate.runner import plan_study, run_study, status_report
from pql.ablate.slurm_launcher import ClusterProfile, SlurmLauncher
from pql.ablate.spec import load_spec
from pql.config import ConfigError, DeviceConfig
from pql.resolve import build_config

from .conftest import wait_gone
from .warm_pql import run_pql, start_pql

HERE = Path(__file__).parent
TINY = HERE / "data" / "tiny_study.yaml"
UPDATE = os.environ.get("PQL_UPDATE_GOLDEN") == "1"


def golden(name: str, text: str) -> None:
    path = HERE / "golden" / name
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with PQL_UPDATE_GOLDEN=1 if intended"


def test_matrix_expansion_matches_golden_file():
    study = expand(load_spec(TINY), "quick")
    rows = [{"run_id": c.run_id, "label": c.label, "seed": c.seed, "overrides": c.overrides} for c in study.cells]
    assert len(rows) == 2 * 2 * 2
    golden("tiny_matrix.json", json.dumps(rows, indent=1, sort_keys=True) + "\n")


def test_axis_dicts_profiles_and_overrides():
    cells = expand(load_spec(TINY), "quick", {"num_envs": "32"}).cells
    fixed = [c for c in cells if c.axis_values["noise"]["kind"] == "fixed"]
    assert all(c.config.noise.kind == "fixed" and c.config.noise.sigma == 0.3 for c in fixed)
    assert {c.config.algo.name for c in cells} == {"pql", "pql-d"}
    assert all(c.config.num_envs == 32 for c in cells), "KEY=VALUE overrides every cell"
    one = expand(load_spec(TINY), "one").cells
    assert len(one) == 1 and one[0].config.algo.name == "pql"


def test_extra_cells_join_the_axes_product_with_their_keys_as_axis_values(tmp_path):
    """The algorithms study's FastTD3 under PQL's processes: one cell beside the algo axis, at the root's keys."""
    from pql.report.study import legend_label

    spec = tmp_path / "extra.yaml"
    spec.write_text("study: s\nbase: {max_env_steps: 10}\naxes: {algo: [pql, fast_td3]}\n"
                    "extra_cells: [{algo: fast_td3, mode: async}]\nseeds: [0, 1]\nprofiles: {quick: {}, none: "
                    "{extra_cells: []}}\n")
    cells = expand(load_spec(spec), "quick").cells
    async_td3 = ({"algo": "fast_td3", "mode": "async"}, "async")
    assert [(c.axis_values, c.config.mode) for c in cells[-2:]] == [async_td3] * 2
    assert {c.config.mode for c in cells[:4]} == {"async", "sync"}  # pql's preset async, fast_td3's sync
    assert len({c.run_id for c in cells}) == 6 and len(expand(load_spec(spec), "none").cells) == 4
    assert legend_label(cells[-1].axis_values, None, []) == "FastTD3, async"
    with pytest.raises(ConfigError, match=r"\{'algo': 'fast_td3', 'mode': 'asink'\}: mode must be one of"):
        expand({**load_spec(spec), "extra_cells": [{"algo": "fast_td3", "mode": "asink"}]}, "quick")
    with pytest.raises(ConfigError, match=r"extra_cells must be a list of non-empty mappings"):
        expand({**load_spec(spec), "extra_cells": ["fast_td3"]}, "quick")


def test_run_ids_are_stable_and_ignore_display_keys():
    a = expand(load_spec(TINY), "quick").cells
    b = expand(load_spec(TINY), "quick", {"progress": "false", "tensorboard": "true"}).cells
    assert [c.run_id for c in a] == [c.run_id for c in b]
    assert len({c.run_id for c in a}) == len(a)


def test_spec_errors_name_the_bad_key_or_value(tmp_path):
    bad_axis = tmp_path / "bad_axis.yaml"
    bad_axis.write_text("study: s\naxes: {num_env: [1]}\nprofiles: {quick: {}}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'num_env'.*num_envs"):
        expand(load_spec(bad_axis), "quick", {"max_env_steps": "10"})
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text("study: s\nbase: {max_env_steps: 10}\naxes: {num_envs: [4, 0]}\nprofiles: {quick: {}}\n")
    with pytest.raises(ConfigError, match=r"cell \{'num_envs': 0\}: num_envs must be >= 1"):
        expand(load_spec(bad_value), "quick")
    with pytest.raises(ConfigError, match="no profile 'paperz'"):
        expand(load_spec(TINY), "paperz")
    typo = tmp_path / "typo.yaml"
    typo.write_text("study: s\naxis: {}\n")
    with pytest.raises(ConfigError, match=r"unknown spec key.*axis"):
        load_spec(typo)


@pytest.mark.parametrize("spec", sorted((HERE.parent / "ablations").glob("*.yaml")))
def test_shipped_specs_expand_in_their_quick_profile(spec):
    study = expand(load_spec(spec), "quick")
    assert study.cells and study.description
    assert all(c.config.task.startswith("classic/") for c in study.cells)


@pytest.mark.parametrize("spec", sorted((HERE.parent / "ablations").glob("*.yaml")))
def test_shipped_specs_have_a_playground_and_a_paper_profile(spec, isaac_fakes):
    pytest.importorskip("mujoco_playground", reason="MuJoCo Playground is not installed: pip install playground")
    playground = expand(load_spec(spec), "playground")
    assert playground.cells and all(c.config.task == "playground/CartpoleBalance" for c in playground.cells)
    paper = expand(load_spec(spec), "paper")  # validates against the Isaac Gym fake
    assert all(c.config.task == "isaacgym/Ant" and c.config.max_time_s == 3600 for c in paper.cells)


def test_paper_profile_without_isaac_gym_names_its_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "isaacgym", None)
    with pytest.raises(ConfigError, match="Isaac Gym Preview 4"):
        expand(load_spec(HERE.parent / "ablations" / "envs.yaml"), "paper")


def test_sbatch_script_matches_golden_file():
    launcher = SlurmLauncher(ClusterProfile.load(HERE.parent / "ablations" / "clusters" / "default.yaml"),
                             Path("/RESULTS/envs/slurm"), "pql-envs")
    golden("sbatch_a100.sh", launcher.sbatch_script("A100", 6))
    golden("sbatch_rtx4090.sh", launcher.sbatch_script("RTX4090", 3))
    with pytest.raises(ConfigError, match="gpu_model=V100 has no entry"):
        launcher.sbatch_script("V100", 1)


def test_a_cpu_array_asks_for_no_gpu_and_gpu_arrays_for_as_many_as_their_cells_need():
    """GPUs come from the cell, not the cluster profile: CPU work submits to a CPU-only cluster."""
    launcher = SlurmLauncher(ClusterProfile.load(HERE.parent / "ablations" / "clusters" / "default.yaml"),
                             Path("/RESULTS/envs/slurm"), "pql-envs")
    cpu = launcher.sbatch_script(None, 4)
    golden("sbatch_cpu.sh", cpu)
    assert "gpu" not in cpu and "gres" not in cpu
    assert launcher.sbatch_script(None, 4, gpus=0) == cpu
    assert "#SBATCH --gpus-per-node=2\n" in launcher.sbatch_script(None, 1, gpus=2)
    a100 = launcher.sbatch_script("A100", 1, gpus=3)
    assert "#SBATCH --gpus-per-node=3\n" in a100 and "#SBATCH --constraint=a100\n" in a100
    rtx = launcher.sbatch_script("RTX4090", 1, gpus=2)
    assert "#SBATCH --gres=gpu:rtx4090:2\n" in rtx and "gpus-per-node" not in rtx


def test_gpus_needed_counts_the_highest_cuda_index_the_model_and_the_backend():
    from pql.devices import gpus_needed

    def need(**overrides):
        return gpus_needed(replace(build_config({"max_env_steps": "10"}), **overrides))

    assert need() == 0, "auto on every role names no GPU"
    assert need(device=DeviceConfig("cpu", "cpu", "cpu")) == 0
    assert need(device=DeviceConfig("cuda", "cuda", "cuda")) == 1
    assert need(device=DeviceConfig("cuda:0", "cuda:1", "cuda:1")) == 2
    assert need(device=DeviceConfig("cpu", "cpu", "cuda:2")) == 3
    assert need(gpu_model="A100") == 1
    assert need(gpu_model="A100", device=DeviceConfig("cuda:0", "cuda:1", "auto")) == 2
    assert need(task="isaacgym/Ant") == need(task="isaaclab/Isaac-Ant-Direct-v0") == 1


def test_gpus_per_node_of_a_profile_is_a_floor_for_gpu_cells_only(tmp_path):
    floor = ClusterProfile(gpus_per_node=4, gpu_models={"A100": {"constraint": "a100"}})
    assert [floor.gpus(n) for n in (0, 1, 2, 5)] == [0, 4, 4, 5]
    assert "gpus_per_node" not in floor.parameters(None, 0)
    assert floor.parameters("A100", 1)["gpus_per_node"] == 4
    path = tmp_path / "c.yaml"
    for bad in ("0", "1.5", "two", "true"):
        path.write_text(f"gpus_per_node: {bad}\n")
        with pytest.raises(ConfigError, match=r"gpus_per_node must be null or an integer >= 1"):
            ClusterProfile.load(path)


def _sbatch_arrays(out: str) -> dict[str, str]:
    """The dry run's sbatch scripts by their heading line."""
    parts = out.split("\n# sbatch script of the array for ")[1:]
    return {part.split("\n", 1)[0]: part for part in parts}


def test_dry_run_of_a_cpu_study_on_slurm_asks_for_no_gpu(tmp_path, capsys):
    from pql.cli import main

    assert main(["ablate", str(HERE.parent / "ablations" / "envs.yaml"), "--launcher", "slurm", "--dry-run",
                 "--results", str(tmp_path)]) == 0
    arrays = _sbatch_arrays(capsys.readouterr().out)
    assert list(arrays) == ["gpu_model=None, 0 GPU(s) per task (15 tasks)"]
    assert "--gpus-per-node" not in arrays["gpu_model=None, 0 GPU(s) per task (15 tasks)"]
    assert "--gres" not in arrays["gpu_model=None, 0 GPU(s) per task (15 tasks)"]


def test_dry_run_of_the_gpus_study_asks_for_the_gpus_each_cell_names(tmp_path, capsys, isaac_fakes):
    from pql.cli import main

    spec = str(HERE.parent / "ablations" / "gpus.yaml")
    assert main(["ablate", spec, "--launcher", "slurm", "--dry-run", "--results", str(tmp_path)]) == 0
    quick = _sbatch_arrays(capsys.readouterr().out)
    assert set(quick) == {f"gpu_model={m}, {n} GPU(s) per task (5 tasks)"
                          for m, n in (("None", 0), ("RTX4090", 1), ("A100", 1), ("H100", 1))}
    cpu = quick["gpu_model=None, 0 GPU(s) per task (5 tasks)"]
    assert "--gpus-per-node" not in cpu and "--gres" not in cpu
    assert "--gres=gpu:rtx4090:1\n" in quick["gpu_model=RTX4090, 1 GPU(s) per task (5 tasks)"]
    assert main(["ablate", spec, "--launcher", "slurm", "--dry-run", "--profile", "paper",
                 "--results", str(tmp_path)]) == 0
    paper = _sbatch_arrays(capsys.readouterr().out)
    assert len(paper) == 12, "4 GPU models x 1, 2 or 3 GPUs (sim on cuda:0, learners up to cuda:2)"
    for model, gres in (("RTX3090", "gpu:rtx3090"), ("RTX4090", "gpu:rtx4090")):
        for n in (1, 2, 3):
            script = paper[f"gpu_model={model}, {n} GPU(s) per task (5 tasks)"]
            assert f"--gres={gres}:{n}\n" in script and "gpus-per-node" not in script
    for model in ("A100", "H100"):
        for n in (1, 2, 3):
            script = paper[f"gpu_model={model}, {n} GPU(s) per task (5 tasks)"]
            assert f"--gpus-per-node={n}\n" in script and f"--constraint={model.lower()}\n" in script


def test_cluster_profile_rejects_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("partition: gpu\ntimeout: 5\n")
    with pytest.raises(ConfigError, match=r"unknown cluster key.*timeout"):
        ClusterProfile.load(path)


def _run(results: Path, profile: str = "quick", retry_failed: bool = False, **overrides):
    plan = plan_study(TINY, profile, {k: str(v) for k, v in overrides.items()}, results, retry_failed)
    problems = run_study(plan, DebugLauncher(), progress=False)
    return plan, problems


def test_rerun_runs_only_what_is_missing(tmp_path):
    plan, problems = _run(tmp_path, "one")
    assert problems == [] and len(plan.to_run) == 1
    run = plan.store.run_path(plan.to_run[0])
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert (run / "cell.json").exists() and (plan.store.path / "index-one.csv").exists()
    mtime = (run / "metrics.csv").stat().st_mtime_ns
    again, _ = _run(tmp_path, "one")
    assert again.to_run == [], "a finished run is never rerun"
    assert (run / "metrics.csv").stat().st_mtime_ns == mtime


def test_corrupt_result_is_detected_and_redone(tmp_path):
    plan, _ = _run(tmp_path, "one")
    run = plan.store.run_path(plan.to_run[0])
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text[: len(text) // 2])  # truncated mid-file
    state = plan.store.state(plan.to_run[0])
    assert state.state == "pending" and state.corrupt and "corrupt result" in state.detail
    again, problems = _run(tmp_path, "one")
    assert len(again.to_run) == 1 and problems == []
    assert plan.store.state(plan.to_run[0]).state == "done"
    assert list(plan.store.path.glob(f"{run.name}.corrupt-*")), "the corrupt files are kept aside, not aggregated"


def test_failed_cell_is_reported_and_retried_only_when_asked(tmp_path):
    plan, problems = _run(tmp_path, "one", **{"algo.gamma": "1.0", "algo.reward_scale": "1e39"})
    assert len(problems) == 1 and "non-finite loss" in problems[0]
    report = status_report(plan.study, plan.store)
    assert "failed 1" in report and "non-finite loss" in report
    again, _ = _run(tmp_path, "one", **{"algo.gamma": "1.0", "algo.reward_scale": "1e39"})
    assert again.to_run == []
    retry, _ = _run(tmp_path, "one", retry_failed=True, **{"algo.gamma": "1.0", "algo.reward_scale": "1e39"})
    assert len(retry.to_run) == 1


def test_cell_asking_for_an_absent_gpu_is_skipped(tmp_path):
    plan = plan_study(TINY, "one", {"gpu_model": "H100"}, tmp_path)
    assert plan.to_run == []
    (reason,) = plan.skipped.values()
    assert "gpu_model=H100 asked for" in reason
    assert "skipped 1" in status_report(plan.study, plan.store, plan.skipped)


@pytest.mark.parametrize("gpus", [0, 1])
def test_cell_naming_a_gpu_index_this_machine_lacks_is_skipped_not_a_crash(tmp_path, monkeypatch, gpus):
    """The gpus study's cuda:1 and cuda:2 cells on a machine with fewer GPUs: skipped, saying why (asking
    torch for the name of an absent GPU raised before)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "NVIDIA H200")  # the GPUs there are
    plan = plan_study(TINY, "one", {"device.sim": "cuda:0", "device.v_learner": "cuda:1",
                                    "device.p_learner": "cuda:1"}, tmp_path)
    assert plan.to_run == []
    assert list(plan.skipped.values()) == [f"device.* names cuda:1, and this machine shows {gpus} GPU(s)"]


def test_local_jobs_get_gpus_of_their_own_or_a_refusal_naming_the_numbers(tmp_path, monkeypatch):
    from pql.ablate.gpu_share import GpuShare

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cells = plan_study(TINY, "quick", {"device.sim": "cuda:0", "device.v_learner": "cuda:1",
                                       "device.p_learner": "cuda:1"}, tmp_path, check_local_gpu=False).study.cells
    share = GpuShare(cells, 2, {})
    first, second = share.take(cells[0]), share.take(cells[1])
    assert (first, second) == ({"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"})
    share.give_back(first)
    assert share.take(cells[2]) == {"CUDA_VISIBLE_DEVICES": "0,1"}, "an ended job's GPUs go to the next"
    mapped = GpuShare(cells, 2, {"CUDA_VISIBLE_DEVICES": "5,7,2,3"})
    assert mapped.take(cells[0]) == {"CUDA_VISIBLE_DEVICES": "5,7"}, "the user's own list, in its order"
    assert GpuShare(cells, 1, {}).take(cells[0]) == {}, "one job at a time keeps every GPU"
    with pytest.raises(ConfigError, match=r"--jobs 3 runs 3 cells at once, each with GPUs of its own, and a cell "
                                          r"here needs 2: that is 6 GPUs, and this machine shows 4 "
                                          r"\(CUDA_VISIBLE_DEVICES=0,1,2,3\); use --jobs 2"):
        GpuShare(cells, 3, {})
    auto = plan_study(TINY, "one", {}, tmp_path / "auto", check_local_gpu=False).study.cells
    assert GpuShare(auto, 4, {}).take(auto[0]) == {"CUDA_VISIBLE_DEVICES": "0"}, "auto uses one where GPUs exist"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert GpuShare(auto, 4, {}).take(auto[0]) == {}, "no GPU: a CPU run, nothing to share"


def test_kill_9_mid_run_then_rerun_resumes(tmp_path):
    args = ["ablate", str(TINY), "--profile", "one", "--results", str(tmp_path), "--no-progress",
            "max_env_steps=8000", "max_time_s=null", "eval_every_env_steps=800", "checkpoint_every_s=0"]
    proc = start_pql(*args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study_dir = tmp_path / "tiny"
    deadline = time.monotonic() + 120
    run = None
    while time.monotonic() < deadline:
        runs = [p for p in study_dir.glob("*") if p.is_dir()] if study_dir.exists() else []
        if runs and (runs[0] / "checkpoint.pt").exists() and (runs[0] / "metrics.csv").exists() \
                and len((runs[0] / "metrics.csv").read_text().splitlines()) >= 4:
            run = runs[0]
            break
        time.sleep(0.1)
    assert run is not None, "the run wrote a checkpoint and rows"
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "running"
    os.kill(status["pid"], signal.SIGKILL)  # the training process (in a session of its own), then pql ablate
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_gone(status["pid"])
    before = (run / "metrics.csv").read_text().splitlines()
    checkpoint_steps = __import__("torch").load(run / "checkpoint.pt", weights_only=True)["progress"]["env_steps"]
    plan, problems = _run(tmp_path, "one", max_env_steps=8000, max_time_s="null", eval_every_env_steps=800,
                          checkpoint_every_s=0)
    assert problems == [] and len(plan.to_run) == 1
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    rows = (run / "metrics.csv").read_text().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 8000, "continued, no duplicate rows"
    kept = [r for r in before[1:] if int(r.split(",")[0]) <= checkpoint_steps]
    assert rows[1 : 1 + len(kept)] == kept, "rows up to the checkpoint are kept as they were"
    assert steps[0] == 0 and len(kept) >= 2, "resumed, not restarted"


def test_status_cli_counts(tmp_path):
    _run(tmp_path, "one")
    out = run_pql("status", str(TINY), "--profile", "one", "--results", str(tmp_path)).stdout
    assert "done 1  running 0  queued 0  failed 0  stale 0  pending 0" in out
    shutil.rmtree(tmp_path / "tiny")
    out = run_pql("status", str(TINY), "--results", str(tmp_path)).stdout
    assert "done 0  running 0  queued 0  failed 0  stale 0  pending 8" in out


def test_dry_run_shows_cells_and_the_sbatch_script_without_running(tmp_path, capsys):
    from pql.cli import main

    cluster = HERE.parent / "ablations" / "clusters" / "default.yaml"
    code = main(["ablate", str(TINY), "--launcher", "slurm", "--cluster", str(cluster), "--dry-run",
                 "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and out.count("  run   pending") == 8
    assert "#SBATCH --array=0-7%8" in out and "#SBATCH --job-name=pql-tiny" in out
    assert not list((tmp_path / "tiny").glob("*/cell.json")), "nothing was prepared or submitted"


def test_a_study_started_on_a_dirty_checkout_names_the_changed_files(tmp_path, capsys, monkeypatch):
    """Runs made on uncommitted code cannot be redone from their commit: pql ablate says so before it starts,
    naming the files (and says nothing on a clean checkout)."""
    import pql.store.manifest
    from pql.cli import main

    state = {"commit": "ab" * 20, "dirty": True, "changed": ["pql/config.py", "tests/test_x.py"],
             "diff_sha256": "c" * 64}
    monkeypatch.setattr(pql.store.manifest, "git_state", lambda: state)
    assert main(["ablate", str(TINY), "--dry-run", "--results", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "uncommitted changes (pql/config.py, tests/test_x.py)" in err and "commit first" in err
    monkeypatch.setattr(pql.store.manifest, "git_state", lambda: {**state, "dirty": False, "changed": []})
    main(["ablate", str(TINY), "--dry-run", "--results", str(tmp_path)])
    assert "uncommitted" not in capsys.readouterr().err
