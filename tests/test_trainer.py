"""End-to-end runs of the trainer: files, determinism, resume, export, failures, both modes."""

import csv
import itertools
import json

import pytest
import torch

from pql.envs import register
from pql.envs.classic import Pendulum
from pql.resolve import build_config
from pql.store.run_dir import METRIC_COLUMNS
from pql.training.export import export_policy
from pql.training.run import resolve, train
from pql.workers.actor import exploration_std


def read_rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_sync_run_writes_config_metrics_status_checkpoint(tiny):
    run = train(tiny).path
    assert (run / "config.yaml").exists() and (run / "checkpoint.pt").exists()
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done" and status["env_steps"] == 2560
    rows = read_rows(run)
    assert list(rows[0]) == list(METRIC_COLUMNS)
    steps = [int(r["env_steps"]) for r in rows]
    assert steps == [0, 640, 1280, 1920, 2560]
    last = rows[-1]
    # 80 actor steps, 8 of them warm-up: 72 counted, 8 V-updates each, one P-update per 2 V-updates
    assert int(last["actor_steps"]) == 80 and int(last["v_updates"]) == 72 * 8 and int(last["p_updates"]) == 72 * 4
    assert float(last["critic_loss"]) > 0 and float(last["env_steps_per_s"]) > 0
    assert all(float(a["wall_s"]) <= float(b["wall_s"]) for a, b in itertools.pairwise(rows))


def test_sync_runs_are_bit_for_bit_deterministic(tiny, tmp_path):
    a = train({**tiny, "out": str(tmp_path / "a")}).path
    b = train({**tiny, "out": str(tmp_path / "b")}).path
    c = train({**tiny, "out": str(tmp_path / "c"), "seed": "1"}).path
    keys = ("env_steps", "train_return", "eval_return", "critic_loss", "actor_loss")
    pick = lambda run: [[r[k] for k in keys] for r in read_rows(run)]  # noqa: E731
    assert pick(a) == pick(b)
    assert pick(a) != pick(c)
    sa, sb = torch.load(a / "checkpoint.pt", weights_only=False), torch.load(b / "checkpoint.pt", weights_only=False)
    for part in ("policy", "critic", "critic_target", "normalizer"):
        for key, value in sa[part].items():
            assert torch.equal(value, sb[part][key]), f"{part}.{key}"


def test_resume_continues_the_same_curve_without_duplicate_rows(tiny):
    run = train({**tiny, "max_env_steps": "1280"}).path
    first = read_rows(run)
    assert int(first[-1]["env_steps"]) == 1280
    cfg = resolve({"resume": str(run), "max_env_steps": "2560"})
    assert cfg.out == str(run) and cfg.num_envs == 32 and cfg.max_env_steps == 2560
    train({"resume": str(run), "max_env_steps": "2560"})
    rows = read_rows(run)
    steps = [int(r["env_steps"]) for r in rows]
    assert steps == [0, 640, 1280, 1920, 2560], "no duplicates, continuing from the checkpoint"
    assert rows[:3] == first
    assert float(rows[3]["wall_s"]) >= float(rows[2]["wall_s"])
    assert int(rows[-1]["v_updates"]) > int(first[-1]["v_updates"])
    assert json.loads((run / "status.json").read_text())["state"] == "done"


def test_no_evaluation_envs_logs_the_training_return_and_resumes(tiny):
    run = train({**tiny, "eval_envs": "0", "max_env_steps": "7040"}).path  # Pendulum's episodes end at 200 x 32
    train({"resume": str(run), "max_env_steps": "8320"})
    rows = read_rows(run)
    assert [int(r["env_steps"]) for r in rows] == list(range(0, 8321, 640))
    assert all(r["eval_return"] == "nan" for r in rows)
    assert any(r["train_return"] != "nan" for r in rows)


def test_resume_refuses_to_change_the_experiment(tiny):
    run = train({**tiny, "max_env_steps": "640"}).path
    from pql.config import ConfigError

    with pytest.raises(ConfigError, match=r"cannot change algo\.batch_size"):
        resolve({"resume": str(run), "algo.batch_size": "32"})
    with pytest.raises(ConfigError, match=r"no config\.yaml"):
        resolve({"resume": str(run / "nope")})


def test_export_maps_raw_obs_to_env_units(tiny):
    run = train(tiny).path
    path = export_policy(run)
    module = torch.jit.load(str(path))
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    from pql.nets import Actor
    from pql.normalizer import RunningNormalizer

    actor = Actor(3, 1, (16, 16))
    actor.load_state_dict(state["policy"])
    norm = RunningNormalizer(3)
    norm.load_state_dict(state["normalizer"])
    obs = Pendulum(64, seed=5).reset()
    expected = -2.0 + (actor(norm(obs)) + 1.0) * 2.0  # Pendulum's torque range is [-2, 2]
    actions = module(obs)
    assert actions.shape == (64, 1)
    assert torch.allclose(actions, expected, atol=1e-5)
    assert actions.abs().max() <= 2.0


def _nan_after(steps: int):
    class NaNPendulum(Pendulum):
        def step(self, actions):
            obs, reward, term, trunc, info = super().step(actions)
            self.count = getattr(self, "count", 0) + 1
            if self.count > steps:
                reward = torch.full_like(reward, float("nan"))
            return obs, reward, term, trunc, info

    return NaNPendulum


@pytest.mark.parametrize("algo", ["pql", "pql-d"])
def test_nan_loss_fails_the_run_and_keeps_rows(tiny, algo):
    """PQL-D too: a NaN return once indexed the C51 projection out of range (an IndexError on a CPU, a
    device-side assert that kills the CUDA context on a GPU) before the loss could be found non-finite."""
    register("test/nan-pendulum", _nan_after(30))
    with pytest.raises(RuntimeError, match="non-finite loss"):
        train({**tiny, "task": "test/nan-pendulum", "algo": algo, "algo.v_min": "-2000", "algo.v_max": "0"})
    run = tiny["out"]
    status = json.loads(open(f"{run}/status.json").read())
    assert status["state"] == "failed" and "non-finite" in status["error"]
    assert status["env_steps"] > 30 * 32 and "critic_loss" in status["losses"]
    rows = read_rows(__import__("pathlib").Path(run))
    assert [int(r["env_steps"]) for r in rows] == [0, 640], "rows written before the failure are kept"


def test_pql_d_runs_on_one_device(tiny):
    run = train({**tiny, "algo.name": "pql-d"}).path
    rows = read_rows(run)
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert 0 < float(rows[-1]["critic_loss"]) < 10  # a cross-entropy over 51 atoms


def test_mixed_and_fixed_exploration_std():
    assert torch.allclose(exploration_std("mixed", 5, 0.05, 0.85, 0.3, "cpu"),
                          torch.tensor([0.05, 0.25, 0.45, 0.65, 0.85]))
    assert torch.equal(exploration_std("fixed", 3, 0.05, 0.8, 0.3, "cpu"), torch.full((3,), 0.3))


def test_tensorboard_writer_records_every_row(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train({**tiny, "tensorboard": "true"}).path
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    evals = events.Scalars("eval_return")
    rows = read_rows(run)
    assert [e.step for e in evals] == [int(r["env_steps"]) for r in rows]
    assert [round(e.value, 3) for e in evals] == [round(float(r["eval_return"]), 3) for r in rows]


def test_progress_bar_shows_return_and_throughput(tiny, capsys):
    train({**tiny, "progress": "true"})
    err = capsys.readouterr().err
    assert "classic/pendulum pql" in err and "eval " in err and "env-steps/s" in err


def test_manifest_records_code_packages_and_hardware_of_every_session(tiny):
    import subprocess
    from importlib.metadata import version
    from pathlib import Path

    import pql

    run = train(tiny).path
    manifest = json.loads((run / "manifest.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(pql.__file__).parent).stdout.strip()
    if head:  # the package runs from a git checkout
        assert manifest["git"]["commit"] == head and isinstance(manifest["git"]["dirty"], bool)
    else:
        assert manifest["git"] is None
    assert manifest["schema"] == 1 and manifest["packages"]["torch"] == version("torch")
    assert manifest["cpu"] and manifest["cpus"] >= 1 and manifest["memory_gib"] > 0
    assert manifest["devices"] == {"sim": manifest["devices"]["sim"], "v_learner": manifest["devices"]["sim"],
                                   "p_learner": manifest["devices"]["sim"]} and manifest["resumes"] == []
    train({"resume": str(run), "max_env_steps": "3200"})
    resumed = json.loads((run / "manifest.json").read_text())
    assert resumed["started"] == manifest["started"] and len(resumed["resumes"]) == 1
    assert resumed["resumes"][0]["git"] == manifest["git"]


def test_the_manifest_records_the_simulator_stack_under_its_distribution_names():
    """Each package is looked up by its distribution name (an import name such as mujoco_playground finds
    nothing, so its version went unrecorded); jaxlib and mujoco-mjx, which change results, are there."""
    import importlib.metadata
    import importlib.util
    import re

    from pql.store.manifest import PACKAGES, package_versions

    assert {"playground", "jaxlib", "mujoco-mjx", "jax", "mujoco", "warp-lang", "brax"} <= set(PACKAGES)
    assert "mujoco_playground" not in PACKAGES
    versions = package_versions()
    for name in PACKAGES:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            assert name not in versions
            continue
        assert versions[name] == dist.version
        assert re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower() == name, f"{name} is not its distribution name"
    if importlib.util.find_spec("mujoco_playground") is not None:  # installed: all of its stack is recorded
        assert {"playground", "jax", "jaxlib", "mujoco", "mujoco-mjx", "warp-lang", "brax"} <= set(versions)


def test_the_manifest_names_uncommitted_changes_and_hashes_their_diff(tmp_path):
    """A dirty checkout's runs say which tracked files differ from the commit and hash that diff, so runs
    made on the same uncommitted state are told apart from the others; untracked files do not count."""
    import subprocess

    from pql.store.manifest import git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (tmp_path / "notes.txt").write_text("untracked\n")
    clean = git_state(tmp_path)
    assert clean["dirty"] is False and clean["changed"] == [] and clean["diff_sha256"] == ""
    (tmp_path / "a.py").write_text("x = 2\n")
    first = git_state(tmp_path)
    assert first["dirty"] is True and first["changed"] == ["a.py"] and len(first["diff_sha256"]) == 64
    assert git_state(tmp_path)["diff_sha256"] == first["diff_sha256"], "the same state, the same hash"
    (tmp_path / "a.py").write_text("x = 3\n")
    assert git_state(tmp_path)["diff_sha256"] != first["diff_sha256"]
    assert first["commit"] == clean["commit"]
    for name in ("my notes.py", "réglages.py"):  # names with a space or a non-ASCII letter stay whole
        (tmp_path / name).write_text("y = 1\n")
        git("add", name)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "two")
    (tmp_path / "my notes.py").write_text("y = 2\n")
    (tmp_path / "réglages.py").write_text("y = 2\n")
    assert git_state(tmp_path)["changed"] == ["a.py", "my notes.py", "réglages.py"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_per_env_sampling_trains_both_learners_on_whole_steps(mode, tiny):
    """algo.per_env_sampling: both learners' buffers hold whole steps of num_envs rows (capacity rounded down)
    and every batch takes max(1, batch_size // num_envs) rows of each env; a run trains in both modes."""
    from pql.workers.builders import build_p_learner, build_v_learner, initial_networks
    from pql.workers.plan import plan_run

    over = {**tiny, "mode": mode, "num_envs": "24", "algo.per_env_sampling": "true", "algo.buffer_size": "1000",
            "max_env_steps": "1920"}
    cfg = build_config(over)
    nets = initial_networks(plan_run(cfg), 3, 1)
    v, p = build_v_learner(plan_run(cfg), nets), build_p_learner(plan_run(cfg), nets)
    assert v.buffer.capacity == p.buffer.capacity == 984 and v.buffer.batch_rows(64) == 48  # 41 steps; 2 per env
    run = train(over).path
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert int(rows[-1]["env_steps"]) == 1920 and float(rows[-1]["v_updates"]) > 0 and float(rows[-1]["p_updates"]) > 0


@pytest.mark.parametrize("warmup_random", [True, False])
def test_the_warm_up_acts_at_random_or_with_the_exploring_policy(warmup_random, tiny, tmp_path):
    """algo.warmup_random=false (FastTD3's): the warm-up steps act with the policy (noise 0 here), so the stored
    actions are the policy's at the stored observations; true (the reference code's): uniform actions, far from
    it. Learning waits for the warm-up either way."""
    from pql.store.run_dir import RunDir
    from pql.training.sync import SyncTrainer
    from pql.workers.plan import plan_run

    cfg = build_config({**tiny, "algo.nstep": "1", "algo.warmup_steps": "4", "noise.kind": "fixed",
                        "noise.sigma": "0", "algo.warmup_random": str(warmup_random).lower()})
    trainer = SyncTrainer(plan_run(cfg), RunDir(tmp_path / "t"))
    trainer.actor_step()
    stored = trainer.v.buffer.data
    rows = trainer.v.buffer.size
    with torch.no_grad():
        policy = trainer.actor.policy(trainer.actor.normalizer(stored["obs"][:rows]))
    gap = (stored["action"][:rows] - policy).abs().max().item()
    assert (gap < 1e-6) != warmup_random, gap
    assert trainer.learn_from == 4


@pytest.mark.parametrize("algo", [{"algo": "pql"}, {"algo": "ppo", "algo.ppo.minibatch_size": "128"}])
def test_a_checkpoint_made_on_cuda_resumes_on_the_cpu_reseeded_the_same_way_each_time(tiny, tmp_path, algo):
    """A CUDA generator's state (Philox: 16 bytes) does not fit a CPU generator (mt19937: 5056 bytes): every
    device generator of a checkpoint doctored to look saved on CUDA is seeded from its saved bytes instead,
    status.json says so, and two resumes from that checkpoint give the same rows."""
    run = train({**tiny, **algo, "max_env_steps": "640"}).path
    state = torch.load(run / "checkpoint.pt", weights_only=False)

    def as_if_cuda(rng: dict) -> dict:
        return {k: v if k == "torch" or v is None else torch.arange(16, dtype=torch.uint8) + i
                for i, (k, v) in enumerate(rng.items())}

    state["device_types"] = {"sim": "cuda", "v_learner": "cuda", "p_learner": "cuda"}
    for part in (state, *(v for v in state.values() if isinstance(v, dict) and "rng" in v)):
        if "rng" in part:
            part["rng"] = as_if_cuda(part["rng"])
    torch.save(state, run / "checkpoint.pt")
    copy = tmp_path / "copy"
    __import__("shutil").copytree(run, copy)
    rows = []
    for where in (run, copy):
        train({"resume": str(where), "max_env_steps": "1280"})
        status = json.loads((where / "status.json").read_text())
        assert status["state"] == "done" and "sim cuda -> cpu" in status["resume_note"], status
        rows.append([{k: v for k, v in r.items() if not k.endswith("_s")} for r in read_rows(where)])
    assert rows[0] == rows[1] and len(rows[0]) == 3


def test_a_costly_row_spaces_the_next_one_due_by_env_steps_at_the_last_rate(tiny, tmp_path):
    from pql.store.run_dir import RunDir
    from pql.training.sync import SyncTrainer
    from pql.workers.plan import plan_run

    trainer = SyncTrainer(plan_run(build_config({**tiny, "eval_max_share": "0.25"})), RunDir(str(tmp_path / "t")))
    trainer._last_row_time, trainer._last_row_steps, trainer._last_rate = 10.0, 1000, 500.0
    trainer.progress.next_eval, trainer._next_eval_s = 1200, 12.0
    trainer.space_rows(0.01)  # 0.03 s of training would do: the rows as due already leave more
    assert (trainer.progress.next_eval, trainer._next_eval_s) == (1200, 12.0)
    trainer.space_rows(1.0)  # 1 s at most 25%: 3 s of training first, 1500 env steps at 500 per second
    assert trainer.progress.next_eval == 2500
    assert trainer._next_eval_s == 12.0, "rows by time are the budget's resolution: as due"
    trainer._last_rate = float("nan")  # the row at step 0 has no rate: nothing to convert the time with
    trainer.progress.next_eval = 1200
    trainer.space_rows(2.0)
    assert trainer.progress.next_eval == 1200
    off = SyncTrainer(plan_run(build_config(tiny)), RunDir(str(tmp_path / "off")))
    off._last_rate, off.progress.next_eval = 500.0, 1200
    off.space_rows(5.0)
    assert off.progress.next_eval == 1200, "eval_max_share=0: rows exactly as due"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rows_take_at_most_their_share_of_real_time_at_65536_envs(tiny, tmp_path, mode, monkeypatch):
    """At 65536 envs the preset's 51200 env steps between rows is less than one actor step: every step would
    evaluate. With each evaluation made to cost 0.15 s, rows stay within eval_max_share=0.25 of real time (rows
    by time are off here, as in every tiny run)."""
    import time

    from pql.training.loop import RunLoop
    from pql.training.run import run_training

    real = RunLoop.evaluate_and_log

    def slow(self, *args, **kwargs):
        time.sleep(0.15)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RunLoop, "evaluate_and_log", slow)
    cfg = {**tiny, "mode": mode, "num_envs": "65536", "eval_envs": "2", "algo.buffer_size": "131072",
           "max_env_steps": "null", "max_time_s": "3", "eval_every_env_steps": "51200", "eval_max_share": "0.25",
           "out": str(tmp_path / mode)}
    begun = time.monotonic()
    run = run_training(resolve(cfg)).path
    spent = time.monotonic() - begun
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    wall = float(json.loads((run / "status.json").read_text())["wall_s"])
    actor_steps = int(rows[-1]["actor_steps"])
    assert actor_steps >= 3 and len(rows) < actor_steps, "a row at every actor step"
    gaps = [float(b["wall_s"]) - float(a["wall_s"]) for a, b in itertools.pairwise(rows[1:-1])]
    assert all(g >= 0.45 for g in gaps), f"rows costing >= 0.15 s each need >= 0.45 s of training between: {gaps}"
    assert len(rows) * 0.15 <= 0.25 / 0.75 * wall + 0.15 * 3, (len(rows), wall, spent)


def test_a_new_run_into_a_finished_run_s_directory_is_refused_before_it_starts(tiny, capsys):
    """``pql train out=DIR`` where DIR holds a run (its config.yaml), without resume=: exit 2 naming both ways on,
    and the old run's rows and status untouched (a new run there once failed at its first row, its rows mixed
    into the old run's metrics)."""
    from pql.cli import main

    run = train(tiny).path
    before = [(run / name).read_text() for name in ("metrics.csv", "status.json", "config.yaml")]
    assert main(["train", *(f"{k}={v}" for k, v in {**tiny, "seed": "1"}.items())]) == 2
    err = capsys.readouterr().err
    assert f"out={run} holds a run already (its config.yaml): continue it with pql train resume={run}" in err
    assert [(run / name).read_text() for name in ("metrics.csv", "status.json", "config.yaml")] == before
