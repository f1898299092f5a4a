"""The env contract on every available backend, and equivalence with gymnasium's own implementations."""

import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import torch

from pql.envs import known_tasks, make_env
from pql.envs.classic import MountainCarContinuous, Pendulum

_NO_PLAYGROUND = pytest.mark.skipif(importlib.util.find_spec("mujoco_playground") is None,
                                    reason="MuJoCo Playground is not installed: pip install playground")
BACKEND_TASKS = [*known_tasks(), "gym/Pendulum-v1", "gym/MountainCarContinuous-v0",
                 pytest.param("playground/CartpoleBalance", marks=_NO_PLAYGROUND),
                 "isaacgym/Ant", "isaaclab/Isaac-Ant-Direct-v0"]  # these two: on the fakes in tests/fakes


@pytest.mark.parametrize("task", BACKEND_TASKS)
def test_contract_shapes_dtypes_and_auto_reset(task, request):
    if task.startswith("isaac"):
        request.getfixturevalue("isaac_fakes")
    n = 4  # as tests/test_playground.py: one compiled Playground step for the session
    env = make_env(task, n, device="cpu", seed=3)
    obs = env.reset()
    assert obs.shape == (n, env.obs_dim) and obs.dtype == env.dtype and obs.device == env.device
    assert env.action_low.shape == (env.act_dim,) and torch.all(env.action_low < env.action_high)
    g = torch.Generator().manual_seed(0)
    steps = env.max_episode_steps
    for taken in range(1, steps + 1):  # noqa: B007  (the step count is checked after the loop)
        actions = env.action_low + (env.action_high - env.action_low) * torch.rand(n, env.act_dim, generator=g)
        obs, reward, term, trunc, info = env.step(actions)
        assert obs.shape == (n, env.obs_dim) and reward.shape == (n,) and reward.dtype == env.dtype
        assert term.dtype == torch.bool and trunc.dtype == torch.bool and term.shape == trunc.shape == (n,)
        final = info["final_obs"]
        assert final.shape == obs.shape
        done = term | trunc
        assert torch.equal(final[~done], obs[~done])  # not done: the final obs is the next obs
        if trunc.any():
            break
    # Isaac Gym and Isaac Lab tasks cut episodes at max_episode_length - 1 steps
    assert trunc.all() and not term.any() and taken >= steps - 1, "every env reaches the time limit together"
    if env.reset_deferred:
        assert torch.equal(final, obs), "the next episode starts during the next step"
        obs, *_ = env.step(torch.zeros(n, env.act_dim))
        assert not torch.equal(final, obs)
    else:
        assert not torch.equal(final, obs), "auto-reset replaced the final obs by a fresh one"


@pytest.mark.parametrize("task", [t for t in BACKEND_TASKS if not str(t).startswith("gym/")])
def test_set_episode_steps_moves_each_time_limit_by_its_offset(task, request):
    """An env moved k steps into its episode reaches the time limit k steps sooner than one left at 0."""
    if task.startswith("isaac"):
        request.getfixturevalue("isaac_fakes")
    env = make_env(task, 4, device="cpu", seed=3)
    env.reset()
    limit = env.max_episode_steps
    offsets = torch.tensor([0, limit // 2, limit - 5, limit // 4])
    env.set_episode_steps(offsets)
    first = torch.full((4,), -1)
    for t in range(1, limit + 1):
        _, _, term, trunc, _ = env.step(torch.zeros(4, env.act_dim))
        assert not term.any()
        first = torch.where(trunc & (first < 0), t, first)
        if (first >= 0).all():
            break
    assert (first >= 0).all() and torch.equal(first[0] - first, offsets), f"first truncations at {first.tolist()}"


def test_gym_backend_cannot_set_episode_steps():
    env = make_env("gym/Pendulum-v1", 2)
    env.reset()
    with pytest.raises(NotImplementedError, match="GymVecEnv cannot set its episodes' step counts"):
        env.set_episode_steps(torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("task", ["classic/pendulum", "gym/Pendulum-v1"])
def test_seeded_resets_are_reproducible(task):
    a, b = make_env(task, 4, seed=7), make_env(task, 4, seed=7)
    assert torch.equal(a.reset(), b.reset())
    assert torch.equal(a.reset(), b.reset()), "later resets follow the seed too"
    assert not torch.equal(a.reset(), make_env(task, 4, seed=8).reset())


def test_gym_backend_reports_the_true_final_observation():
    """The last observation of each episode equals that of a lone gymnasium env replayed from the
    same seed (the vector env seeds copy i with seed + i), not the next episode's first one."""
    env = make_env("gym/Pendulum-v1", 3, seed=5)
    env.reset()
    for _ in range(200):
        obs, _, _, trunc, info = env.step(torch.full((3, 1), 0.5))
    assert trunc.all()
    for i in range(3):
        lone = gym.make("Pendulum-v1")
        lone.reset(seed=5 + i)
        for _ in range(200):
            last, *_ = lone.step(np.full(1, 0.5, dtype=np.float32))
        np.testing.assert_allclose(info["final_obs"][i].numpy(), last, rtol=0, atol=1e-6)
        assert not np.allclose(obs[i].numpy(), last)


def _side_by_side(gym_id, port_cls, n):
    """n seeded gymnasium envs and a float64 port of the same task started in their states."""
    envs = [gym.make(gym_id) for _ in range(n)]
    for i, e in enumerate(envs):
        e.reset(seed=i)
    port = port_cls(n, dtype=torch.float64)
    port.state = tuple(torch.tensor([float(e.unwrapped.state[k]) for e in envs], dtype=torch.float64)
                       for k in range(2))
    return envs, port


def test_pendulum_matches_gymnasium():
    n = 16
    envs, port = _side_by_side("Pendulum-v1", Pendulum, n)
    rng = np.random.default_rng(0)
    for _ in range(200):
        actions = rng.uniform(-2.5, 2.5, size=(n, 1)).astype(np.float32)  # also beyond the torque limit
        _, reward, term, trunc, info = port.step(torch.from_numpy(actions))
        for i, e in enumerate(envs):
            g_obs, g_rew, g_term, g_trunc, _ = e.step(actions[i])
            state = np.array(e.unwrapped.state)
            assert abs(g_rew - reward[i].item()) < 1e-9
            np.testing.assert_allclose(info["final_obs"][i].numpy().astype(np.float32), g_obs, rtol=0, atol=1e-6)
            assert (g_term, g_trunc) == (term[i].item(), trunc[i].item())
            if not trunc[i]:  # full-precision states, while no reset replaced the port's
                np.testing.assert_allclose(torch.stack(port.state, -1)[i].numpy(), state, rtol=0, atol=1e-9)
    assert trunc.all() and not term.any()


def test_mountaincar_matches_gymnasium_including_termination():
    n = 8
    envs, port = _side_by_side("MountainCarContinuous-v0", MountainCarContinuous, n)
    active = np.ones(n, dtype=bool)
    terminations = 0
    for _ in range(999):
        velocity = port.state[1].numpy()
        # push along the velocity (a policy that reaches the goal), 1.5 exceeds the force limit
        actions = (1.5 * np.where(velocity >= 0, 1.0, -1.0)).astype(np.float32)[:, None]
        _, reward, term, trunc, info = port.step(torch.from_numpy(actions))
        for i, e in enumerate(envs):
            if not active[i]:
                continue
            g_obs, g_rew, g_term, g_trunc, _ = e.step(actions[i])
            # gymnasium stores the state as float32 after every step: agreement to float32 precision
            assert abs(g_rew - reward[i].item()) < 1e-4
            np.testing.assert_allclose(info["final_obs"][i].numpy(), g_obs, rtol=0, atol=1e-5)
            assert (g_term, g_trunc) == (term[i].item(), trunc[i].item())
            if g_term or g_trunc:
                active[i] = False
                terminations += g_term
        if not active.any():
            break
    assert terminations == n, "every car reached the goal, so termination was compared"
