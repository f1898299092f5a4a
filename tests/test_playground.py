"""The playground/ adapter against MuJoCo Playground itself: final observations, termination, zero-copy."""

import csv
import sys

import numpy as np
import pytest
import torch

from pql.envs import task_problem

pytest.importorskip("mujoco_playground", reason="MuJoCo Playground is not installed: pip install playground")
import jax
import jax.numpy as jnp

from pql.envs.playground_backend import PlaygroundVecEnv

N, LENGTH = 4, 30  # every Playground test (and tests/test_envs.py) steps N envs: one program to compile


@pytest.fixture(scope="module")
def cartpole():
    return PlaygroundVecEnv("CartpoleBalance", N, seed=1, episode_length=LENGTH)


def _actions(t: int) -> torch.Tensor:
    return torch.sin(torch.arange(N * 1.0) + 0.3 * t)[:, None]


def test_final_observation_is_the_stepped_state_not_the_next_episode(cartpole):
    """Replay the same start with Playground's own step: the adapter's final_obs is its last observation
    (Playground's auto-reset wrapper would have replaced it by the next episode's first one)."""
    env = cartpole
    env.reset()
    state = env.jax_state
    raw_step = jax.jit(jax.vmap(env.env.step))
    for t in range(LENGTH):
        obs, reward, term, trunc, info = env.step(_actions(t))
        state = raw_step(state, jnp.asarray(_actions(t).numpy()))
        np.testing.assert_allclose(reward.numpy(), np.asarray(state.reward), rtol=1e-6)
        assert not term.any()
        assert bool(trunc.all()) == (t == LENGTH - 1), f"time limit at step {LENGTH}, not {t + 1}"
    np.testing.assert_allclose(info["final_obs"].numpy(), np.asarray(state.obs), rtol=1e-5, atol=1e-6)
    assert not np.allclose(obs.numpy(), np.asarray(state.obs)), "the next observation starts a new episode"
    np.testing.assert_array_equal(obs.numpy(), np.asarray(env.jax_state.obs))
    for t in range(LENGTH):  # the step counters restarted with the new episodes
        *_, trunc, _ = env.step(_actions(t))
        assert bool(trunc.all()) == (t == LENGTH - 1)


def test_a_diverged_env_terminates_alone_with_a_finite_final_observation(cartpole):
    env = cartpole
    env.reset()
    actions = torch.zeros(N, env.act_dim)
    actions[0] = float("nan")  # NaN control -> NaN state -> Playground's done
    obs, reward, term, trunc, info = env.step(actions)
    assert term.tolist() == [True, False, False, False] and not trunc.any()
    assert torch.isfinite(info["final_obs"]).all() and torch.isfinite(obs).all() and torch.isfinite(reward).all()
    assert torch.equal(info["final_obs"][1:], obs[1:])
    assert not torch.equal(info["final_obs"][0], obs[0]), "env 0 restarted"


def test_the_step_compiles_once_for_any_time_limit(cartpole):
    """reset() compiles the step with the actions placed as step() places them (else the first step compiles
    a second program, on the clock), and the time limit is an argument, not a constant of the program."""
    env = cartpole
    env.reset()
    compiled = env._step_fn._cache_size()
    env.step(_actions(0))
    other = PlaygroundVecEnv("CartpoleBalance", N, seed=1, episode_length=LENGTH + 7)
    other._step_fn = env._step_fn  # the same jitted function: a new limit must not need a new program
    other.reset()
    other.step(_actions(0))
    assert env._step_fn._cache_size() == compiled == 1


def test_compiled_steps_are_cached_on_disk_unless_the_user_chose(monkeypatch, tmp_path):
    from pql.envs import playground_backend

    assert jax.config.jax_compilation_cache_dir, "tests/conftest.py names the session's cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    chosen = jax.config.jax_compilation_cache_dir
    playground_backend._modules()
    assert jax.config.jax_compilation_cache_dir == chosen, "a directory already chosen is kept"
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        playground_backend._modules()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "pql" / "jax")
    finally:
        jax.config.update("jax_compilation_cache_dir", chosen)


def test_tensors_cross_from_jax_without_copies(cartpole):
    env = cartpole
    env.reset()
    obs, *_ = env.step(torch.zeros(N, env.act_dim))
    assert obs.data_ptr() == env.jax_state.obs.unsafe_buffer_pointer()


def test_seeded_resets_are_reproducible():
    a, b = (PlaygroundVecEnv("CartpoleBalance", N, seed=7, episode_length=5) for _ in range(2))
    assert torch.equal(a.reset(), b.reset())
    assert torch.equal(a.reset(), b.reset()), "later resets follow the seed too"


def test_unknown_playground_env_is_named():
    problem = task_problem("playground/CheetahSprint")
    assert "no environment 'CheetahSprint'" in problem and "CheetahRun" in problem


def test_missing_playground_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco_playground", None)
    assert "pip install playground" in task_problem("playground/CartpoleBalance")


@pytest.mark.slow
def test_pql_learns_cartpole_balance_on_real_physics(tmp_path):
    """About 3 minutes on 2 CPU cores: PQL with the CPU preset balances the pole (return > 900 of 1000)."""
    from pql.training.run import train

    run = train({"task": "playground/CartpoleBalance", "algo": "pql", "seed": "0", "max_time_s": "150",
                 "out": str(tmp_path / "run"), "progress": "false"}).path
    returns = [float(r["eval_return"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert returns[0] < 600 and max(returns) > 900, returns
