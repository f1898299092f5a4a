"""The isaacgym/ and isaaclab/ adapters against fakes of IsaacGymEnvs' VecTask and Isaac Lab's DirectRLEnv
(tests/fakes/README.md says what they keep of the real interfaces)."""

import csv
import os
import subprocess
import sys

import pytest
import torch
import yaml

from pql.envs import make_env, task_problem

N = 6
PUSH = torch.ones(N, 8)


def _fall_some(env, fall):
    """Push the envs in ``fall`` until they fall, the others stay still; returns the step results."""
    actions = torch.zeros(N, env.act_dim)
    actions[fall] = 1.0
    for t in range(200):
        obs, reward, term, trunc, info = env.step(actions)
        if term.any():
            return t, obs, reward, term, trunc, info
    raise AssertionError("no env fell")


def test_isaacgym_termination_truncation_and_final_obs(isaac_fakes):
    env = make_env("isaacgym/Ant", N, device="cpu", seed=0)
    assert (env.obs_dim, env.act_dim, env.max_episode_steps) == (60, 8, 1000) and env.reset_deferred
    obs = env.reset()
    assert obs.abs().sum() > 0, "reset() returns computed observations, not VecTask's zero buffer"
    assert obs[:, :8].abs().max() <= 0.05 and torch.equal(env.env.progress_buf, torch.zeros(N, dtype=torch.long))
    t, obs, _, term, trunc, info = _fall_some(env, [0, 2])
    assert term.tolist() == [True, False, True, False, False, False] and not trunc.any()
    assert (obs[[0, 2], :8].abs() > 1.0).any(-1).all(), "the step that ends the episode shows its last state"
    assert torch.equal(info["final_obs"], obs)
    obs, *_ = env.step(torch.zeros(N, 8))
    assert obs[[0, 2], :8].abs().max() <= 0.05, "Isaac Gym restarts them during the next step"
    steps = t + 2  # since reset(), for the envs that never fell
    while steps < 1000:
        obs, _, term, trunc, info = env.step(torch.zeros(N, 8))
        steps += 1
        if trunc.any():
            break
    # VecTask: time_outs where progress_buf >= max_episode_length - 1
    assert steps == 999 and trunc.tolist() == [False, True, False, True, True, True] and not term.any()


def test_isaacgym_tensors_are_copies_of_vectask_buffers(isaac_fakes):
    env = make_env("isaacgym/Ant", N, device="cpu", seed=0)
    env.reset()
    obs, reward, *_ = env.step(PUSH)
    obs2, reward2, *_ = env.step(PUSH)
    assert not torch.equal(obs, obs2) and not torch.equal(reward, reward2)


def test_isaaclab_recovers_the_final_observation(isaac_fakes):
    env = make_env("isaaclab/Isaac-Ant-Direct-v0", N, device="cpu", seed=0)
    from isaaclab.app import launched

    assert launched == [{"headless": True, "device": "cpu"}]
    assert (env.obs_dim, env.act_dim, env.max_episode_steps) == (36, 8, 900) and not env.reset_deferred
    assert torch.equal(env.action_low, -torch.ones(8)), "an unbounded action space becomes [-1, 1]"
    env.reset()
    _, obs, _, term, trunc, info = _fall_some(env, [1])
    assert term.tolist() == [False, True, False, False, False, False] and not trunc.any()
    assert (info["final_obs"][1, :8].abs() > 0.5).any(), "the final observation is the fallen state"
    assert obs[1, :8].abs().max() <= 0.05, "the returned observation starts the new episode"
    keep = [0, 2, 3, 4, 5]
    assert torch.equal(info["final_obs"][keep], obs[keep])


def test_isaaclab_time_limit_is_truncation(isaac_fakes):
    env = make_env("isaaclab/Isaac-Ant-Direct-v0", N, device="cpu", seed=0)
    env.reset()
    for t in range(env.max_episode_steps):
        obs, _, term, trunc, info = env.step(torch.zeros(N, 8))
        assert bool(trunc.any()) == (t == env.max_episode_steps - 2)  # Isaac Lab: length >= max - 1
        if trunc.any():
            break
    assert trunc.all() and not term.any() and not torch.equal(info["final_obs"], obs)


def test_isaaclab_seeded_resets_are_reproducible(isaac_fakes):
    a = make_env("isaaclab/Isaac-Ant-Direct-v0", N, device="cpu", seed=3)
    first = a.reset()
    b = make_env("isaaclab/Isaac-Ant-Direct-v0", N, device="cpu", seed=3)
    assert torch.equal(first, b.reset())


@pytest.mark.parametrize(("task", "needs"), [("isaacgym/Ant", "Isaac Gym Preview 4"),
                                             ("isaaclab/Isaac-Ant-Direct-v0", "pip install 'isaaclab")])
def test_missing_simulators_name_their_install(task, needs, monkeypatch):
    for name in ("isaacgym", "isaacgymenvs", "isaaclab", "isaaclab_tasks"):
        monkeypatch.setitem(sys.modules, name, None)
    assert needs in task_problem(task)


def test_unknown_isaacgym_task_lists_the_known_ones(isaac_fakes):
    assert "no task 'Antt'" in task_problem("isaacgym/Antt") and "Ant" in task_problem("isaacgym/Antt")


def test_pql_train_on_isaacgym_imports_it_before_torch_and_applies_the_task_preset(tmp_path):
    """Through the CLI in a fresh process whose fake isaacgym, like the real one, refuses to load after torch."""
    from tests.conftest import FAKES, TINY

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES), *sys.path]), "PQL_FAKE_ISAACGYM_STRICT": "1"}
    overrides = {**TINY, "task": "isaacgym/Ant", "out": str(tmp_path / "run"), "max_env_steps": "640"}
    overrides.pop("eval_envs")
    done = subprocess.run([sys.executable, "-m", "pql.cli", "train", *(f"{k}={v}" for k, v in overrides.items())],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (config["eval_envs"], config["max_time_s"], config["algo"]["reward_scale"]) == (16, 3600, 0.01)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert rows[-1]["env_steps"] == "640"


@pytest.mark.parametrize("algo", ["pql", "sac", "ppo"])
def test_one_simulation_backends_evaluate_the_noise_free_slice(isaac_fakes, tmp_path, algo):
    """No separate evaluation envs can be made: the first eval_envs training envs act deterministically
    (whatever the algorithm's exploration), and only their finished episodes make eval_return."""
    from pql.resolve import build_config
    from pql.store.run_dir import RunDir
    from pql.training.run import trainer_class
    from pql.workers.plan import plan_run

    cfg = build_config({"task": "isaaclab/Isaac-Ant-Direct-v0", "algo": algo, "mode": "sync", "num_envs": "8",
                        "eval_envs": "2", "max_env_steps": "800", "algo.actor_hidden": "[16]",
                        "algo.critic_hidden": "[16]", "algo.batch_size": "32", "algo.warmup_steps": "0",
                        "algo.ppo.horizon": "4", "algo.ppo.minibatch_size": "12", "device.sim": "cpu",
                        "out": str(tmp_path / "run")})
    plan = plan_run(cfg)
    trainer = trainer_class(plan)(plan, RunDir(cfg.out))
    policy = trainer.policy if algo == "ppo" else trainer.actor.policy
    env = trainer.env if algo == "ppo" else trainer.actor.env
    normalizer = trainer.normalizer if algo == "ppo" else trainer.actor.normalizer
    with torch.no_grad():  # a policy that pushes: deterministic envs fall within a few dozen steps
        last = [m for m in policy.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.fill_(1.0)
    sent = []
    step = env.step
    env.step = lambda actions: (sent.append((trainer.obs if algo == "ppo" else trainer.actor.obs, actions)),
                                step(actions))[1]
    for _ in range(40 if algo == "ppo" else 160):  # 160 env steps
        trainer.collect() if algo == "ppo" else trainer.actor.step()
    obs, actions = sent[-1]
    with torch.no_grad():
        deterministic = policy(normalizer(obs))
    assert torch.allclose(actions[:2], deterministic[:2], atol=1e-6), "the slice acts without noise"
    assert not torch.allclose(actions[2:], deterministic[2:], atol=1e-3), "the others explore"
    evaluation, training = trainer.evaluate(), trainer.take_train_return()
    assert evaluation == evaluation, "the slice finished episodes: eval_return is their mean"
    slice_episodes = trainer.eval_episodes if algo == "ppo" else trainer.actor.eval_episodes
    assert slice_episodes.current.shape == (2,)
    assert training != evaluation


def test_entry_points_load_torch_only_after_the_simulator():
    """``pql train`` and the ablation job module (unpickled by submitit on SLURM) import no torch at import time."""
    probe = "import sys, pql.cli, pql.ablate.job; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_async_pql_on_a_one_simulation_backend_reports_the_slice_returns(tmp_path):
    """mode=async through the CLI on the Isaac Lab fake: the actor process hands the noise-free slice's
    finished episodes to the run loop (through the board), so eval_return is theirs, not NaN."""
    from tests.conftest import FAKES, TINY

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES), *sys.path])}
    overrides = {**TINY, "task": "isaaclab/Isaac-Ant-Direct-v0", "mode": "async", "num_envs": "8",
                 "eval_envs": "2", "max_env_steps": "8000", "eval_every_env_steps": "1600",
                 "device.sim": "cpu", "out": str(tmp_path / "run"),
                 "algo.critic_sample_ratio": "1"}  # the slice's episodes (about 900 steps) matter, not learning
    done = subprocess.run([sys.executable, "-m", "pql.cli", "train", *(f"{k}={v}" for k, v in overrides.items())],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert rows[-1]["env_steps"] == "8000"
    evaluated = [float(r["eval_return"]) for r in rows[1:] if r["eval_return"] != "nan"]
    assert evaluated and all(abs(v) < 1e6 for v in evaluated), rows
