"""Results a reviewer would trust: the baselines' defaults are the authors', and PQL-D's atoms fit the task."""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from pql.ablate.matrix import expand
from pql.ablate.spec import load_spec
from pql.algos.sac import GaussianActor
from pql.config import ConfigError, atom_range, return_bounds, value_support
from pql.resolve import build_config
from pql.store.run_dir import RunDir
from pql.training.run import resolve, run_training
from pql.training.sync import SyncTrainer
from pql.workers.plan import plan_run


def test_sac_defaults_are_the_authors():
    """Improbable-AI/pql's cfg/algo/sac_algo.yaml and models/mlp.py: alpha_lr 0.005, log std in [-5, 5],
    log alpha starting at 0."""
    algo = build_config({"algo": "sac", "max_env_steps": "10"}).algo
    assert algo.alpha_lr == 5e-3 and algo.init_temperature == 1.0
    assert (GaussianActor.log_std_min, GaussianActor.log_std_max) == (-5.0, 5.0)


def test_the_playground_ppo_profile_is_playgrounds_tuned_brax_ppo():
    """The algorithms study's playground-ppo profile in our PPO's terms, read against the installed
    Playground's own tuned settings for CartpoleBalance (a minibatch of brax's: batch_size unrolls)."""
    params = pytest.importorskip("mujoco_playground.config.dm_control_suite_params",
                                 reason="MuJoCo Playground is not installed: pip install playground")
    brax = params.brax_ppo_config("CartpoleBalance")
    study = expand(load_spec(Path(__file__).parent.parent / "ablations" / "algorithms.yaml"), "playground-ppo")
    cfg = study.cells[0].config
    algo, ppo = cfg.algo, cfg.algo.ppo
    assert (cfg.task, algo.name, cfg.num_envs) == ("playground/CartpoleBalance", "ppo", brax.num_envs)
    assert (algo.gamma, algo.reward_scale, ppo.lr, ppo.entropy_coef) == (
        brax.discounting, brax.reward_scaling, brax.learning_rate, brax.entropy_cost)
    assert (ppo.horizon, ppo.epochs, ppo.minibatch_size) == (
        brax.unroll_length, brax.num_updates_per_batch, brax.batch_size * brax.unroll_length)
    assert ppo.lr_schedule == "fixed" and algo.normalize_obs == brax.normalize_observations


def test_return_bounds_follow_from_the_reward_bounds():
    lo, hi = return_bounds("classic/pendulum", 0.99)
    assert lo == pytest.approx(-16.2736 * (1 - 0.99**200) / 0.01) and hi == 0.0
    assert return_bounds("classic/mountaincar", 0.99) == pytest.approx((-0.1 * (1 - 0.99**999) / 0.01, 100.0))
    assert return_bounds("playground/CartpoleBalance", 1.0) == (0.0, 1000.0)
    assert return_bounds("isaacgym/Ant", 0.99) is None


def test_pql_d_atoms_are_derived_from_the_task_and_a_range_too_narrow_is_refused():
    cfg = build_config({"algo": "pql-d", "max_env_steps": "10"})
    lo, hi = value_support(cfg)
    assert lo == pytest.approx(0.1 * -16.2736 * (1 - 0.99**200) / 0.01, abs=1e-3) and hi == 0.0
    assert (cfg.algo.v_min, cfg.algo.v_max) == atom_range((lo, hi))
    margin = 0.05 * (hi - lo)
    assert cfg.algo.v_min == pytest.approx(lo - margin, abs=1e-3) and cfg.algo.v_max == pytest.approx(margin, abs=1e-3)
    delta = (cfg.algo.v_max - cfg.algo.v_min) / (cfg.algo.num_atoms - 1)
    assert margin >= 2 * delta, "a return at a bound projects onto atoms at least two inside the edges"
    with pytest.raises(ConfigError, match=r"algo.v_min/v_max \[-10.0, 10.0\] cannot hold classic/pendulum's returns"):
        build_config({"algo": "pql-d", "algo.v_min": "-10", "algo.v_max": "10", "max_env_steps": "10"})
    wider = build_config({"algo": "pql-d", "algo.v_min": "-200", "max_env_steps": "10"})
    assert (wider.algo.v_min, wider.algo.v_max) == (-200.0, atom_range((lo, hi))[1]), "a set bound is kept"


def test_edge_mass_is_logged_and_small_when_the_atoms_fit_pendulum(tiny, tmp_path):
    """On the Pendulum preset's reward scale the derived atoms keep the projected target off the two edge
    atoms; the reference code's [-10, 10] (which validation now refuses) piles it there."""
    cfg = build_config({**tiny, "algo": "pql-d", "max_env_steps": "7680"})
    edge = {}
    for name, (lo, hi) in {"derived": (cfg.algo.v_min, cfg.algo.v_max), "reference": (-10.0, 10.0)}.items():
        out = str(tmp_path / name)
        SyncTrainer(plan_run(replace(cfg, out=out, algo=replace(cfg.algo, v_min=lo, v_max=hi))), RunDir(out)).run()
        edge[name] = pd.read_csv(f"{out}/metrics.csv")["edge_mass"].dropna()
    # A fresh critic's near-uniform logits put 2/51 of the mass on the edges; learning moves it inward.
    assert len(edge["derived"]) >= 10 and (edge["derived"].iloc[-5:] < 0.01).all(), edge["derived"]
    assert (edge["reference"].iloc[-5:] > 0.5).all(), edge["reference"]


def test_a_resumed_run_refills_its_buffers_before_learning_again(tiny):
    """The replay buffers are not in the checkpoint: a resumed run steps warmup_steps with its current
    policy (not random actions) before the learners start again, so they never train on a near-empty buffer."""
    run = run_training(resolve({**tiny, "max_env_steps": "1280"})).path
    cfg = resolve({"resume": str(run), "max_env_steps": "2560"})
    trainer = SyncTrainer(plan_run(cfg), RunDir(str(run)))
    trainer.load_state_dict(RunDir(str(run)).load_checkpoint())
    start, warmup, v_before = trainer.progress.actor_steps, cfg.algo.warmup_steps, trainer.controller.counts["v"]
    assert trainer.learn_from == start + warmup
    for _ in range(warmup):
        trainer.step()
        assert trainer.controller.counts["v"] == v_before, "learnt before the buffer was refilled"
    assert trainer.v.buffer.size == (warmup - cfg.algo.nstep + 1) * cfg.num_envs
    trainer.step()
    assert trainer.controller.counts["v"] > v_before


def test_a_time_budget_sets_the_evaluation_cadence(tiny):
    """Rows come every eval_every_s of training time (default: a 40th of max_time_s) as well as every
    eval_every_env_steps, so a time to threshold is known to within a small share of the budget."""
    assert build_config({"max_time_s": "180"}).eval_every_s == 4.5
    assert build_config({"max_time_s": "null", "max_env_steps": "10"}).eval_every_s is None
    tiny.update({"eval_every_s": "0.2", "eval_every_env_steps": "10000000", "max_env_steps": "null",
                 "max_time_s": "1.5", "num_envs": "64"})
    rows = pd.read_csv(run_training(resolve(tiny)).path / "metrics.csv")
    gaps = rows["wall_s"].diff().dropna()
    rounding = 1e-4  # wall_s is written to 4 decimals, so a gap of exactly 0.2 s may read 0.19999...
    # a row at the first step past each mark, so no gap is shorter than the cadence and none spans two marks
    # (how far past a mark the row comes is one step's time, 0.1 s or more on a busy 2-core machine)
    assert len(rows) >= 7 and (gaps.iloc[:-1] >= 0.2 - rounding).all() and (gaps < 2 * 0.2).all(), rows["wall_s"]
