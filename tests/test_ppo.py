"""PPO: GAE and losses against hand-computed values, and a run through the shared harness."""

import csv
import json
import math

import pytest
import torch

from pql.algos.ppo import PPOPolicy, adapt_learning_rate, bootstrap_truncated, bounds_loss, gae, ppo_losses
from pql.config import ConfigError
from pql.normalizer import RunningNormalizer
from pql.resolve import build_config
from pql.store.run_dir import RunDir
from pql.training.export import export_policy
from pql.training.on_policy import PPOTrainer
from pql.training.run import train
from pql.workers.plan import plan_run

G, L = 0.9, 0.8


def test_gae_by_hand_with_termination():
    # one env, three steps, terminated at step 1: nothing flows from step 2 back into steps 0-1
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    done = torch.tensor([[False], [True], [False]])
    next_value = torch.tensor([2.0])
    out = gae(rewards, values, next_value, done, G, L)
    d2 = 3.0 + G * 2.0 - 1.5  # bootstraps from the value after the rollout
    d1 = 2.0 - 1.0  # terminal: no bootstrap
    d0 = 1.0 + G * 1.0 - 0.5
    a2, a1 = d2, d1
    a0 = d0 + G * L * a1
    assert torch.allclose(out.advantages[:, 0], torch.tensor([a0, a1, a2]))
    assert torch.allclose(out.returns, out.advantages + values)


def test_truncation_bootstraps_from_the_final_observation_termination_does_not():
    rewards = torch.tensor([[1.0, 1.0, 1.0]])
    truncated = torch.tensor([[True, True, False]])
    terminated = torch.tensor([[False, True, False]])  # env 1 both: termination wins
    final_values = torch.tensor([[10.0, 10.0, 10.0]])
    out = bootstrap_truncated(rewards, truncated, terminated, final_values, G)
    assert out.tolist() == [[1.0 + G * 10.0, 1.0, 1.0]]
    # then GAE ends the episode at the truncation (the value is already in the reward)
    adv = gae(out, torch.zeros(1, 3), torch.full((3,), 99.0), truncated | terminated, G, L).advantages
    assert torch.allclose(adv, torch.tensor([[1.0 + G * 10.0, 1.0, 1.0 + G * 99.0]]))


def _losses(log_std=0.0, entropy_coef=0.0, advantages=None, ratio_shift=0.0, values=None, returns=None,
            mean=None, bounds_coef=0.0):
    torch.manual_seed(0)
    mean = torch.zeros(4, 1) if mean is None else mean
    log_std_param = torch.full((1,), log_std, requires_grad=True)
    dist = torch.distributions.Normal(mean, log_std_param.exp().expand_as(mean))
    actions = torch.zeros(4, 1)
    old_log_prob = dist.log_prob(actions).sum(-1).detach() - ratio_shift
    adv = torch.zeros(4) if advantages is None else advantages
    v = torch.zeros(4, requires_grad=True) if values is None else values
    ret = torch.zeros(4) if returns is None else returns
    out = ppo_losses(dist, mean, torch.ones(4, 1), actions, old_log_prob, adv, v, torch.zeros(4), ret,
                     clip=0.2, value_clip=True, value_coef=1.0, entropy_coef=entropy_coef, bounds_coef=bounds_coef)
    return out, log_std_param


def test_entropy_bonus_pushes_the_policy_wider():
    """With nothing else to learn, a positive entropy_coef must lower the loss by widening the policy
    (the reference code subtracted a constant, whose gradient is zero)."""
    out, log_std = _losses(entropy_coef=0.1)
    out.total.backward()
    assert log_std.grad is not None and log_std.grad.item() == pytest.approx(-0.1)  # d(-0.1 * entropy)/d log std
    assert out.entropy.item() == pytest.approx(0.5 * math.log(2 * math.pi * math.e))


def test_clipped_surrogate_by_hand():
    # ratio = e^0.5 = 1.65 > 1.2: with positive advantages the objective is capped at 1.2 * A
    out, _ = _losses(advantages=torch.ones(4), ratio_shift=0.5)
    assert out.policy.item() == pytest.approx(-1.2)
    # with negative advantages the unclipped (worse) term counts: -A * ratio = e^0.5
    out, _ = _losses(advantages=-torch.ones(4), ratio_shift=0.5)
    assert out.policy.item() == pytest.approx(math.exp(0.5))


def test_value_clipping_by_hand():
    values = torch.full((4,), 1.0, requires_grad=True)  # old values 0, clip 0.2 -> clipped prediction 0.2
    out, _ = _losses(values=values, returns=torch.full((4,), 2.0))
    assert out.value.item() == pytest.approx(max((1.0 - 2.0) ** 2, (0.2 - 2.0) ** 2))


def test_bounds_loss_by_hand():
    # rows [M=2, A=2]: only the parts beyond +-1.1 count, squared, summed over actions, averaged over rows
    mean = torch.tensor([[1.0, -1.1], [3.1, -2.1]])
    assert bounds_loss(mean).item() == pytest.approx((0.0 + (2.0**2 + 1.0**2)) / 2)


def test_bounds_loss_pulls_a_runaway_mean_back_and_leaves_a_mean_in_range_alone():
    """A mean far beyond the action clip gets no gradient from the surrogate when the advantages say nothing
    (every sampled action clips to one bound); the bounds loss alone pulls it back toward 1.1."""
    runaway = torch.full((4, 1), 50.0, requires_grad=True)
    out, _ = _losses(mean=runaway, bounds_coef=1e-4)
    out.total.backward()
    assert out.bounds.item() == pytest.approx((50.0 - 1.1) ** 2)
    assert runaway.grad is not None and torch.all(runaway.grad > 0)  # gradient descent lowers the mean
    inside = torch.full((4, 1), 1.05, requires_grad=True)
    out, _ = _losses(mean=inside, bounds_coef=1e-4)
    out.total.backward()
    assert out.bounds.item() == 0.0 and inside.grad is not None and torch.all(inside.grad == 0)


def test_ppo_preset_sets_the_bounds_loss_of_isaacgymenvs_and_nothing_else_gets_it():
    for task in ("classic/pendulum", "playground/CartpoleBalance"):
        assert build_config({"algo": "ppo", "task": task}).algo.ppo.bounds_loss_coef == pytest.approx(1e-4)
    assert build_config({"algo": "ppo", "algo.ppo.bounds_loss_coef": "0"}).algo.ppo.bounds_loss_coef == 0.0
    assert build_config({"algo": "pql"}).algo.ppo.bounds_loss_coef == 0.0
    with pytest.raises(ConfigError, match=r"algo.ppo.bounds_loss_coef must be a finite number >= 0, got -1.0"):
        build_config({"algo": "ppo", "algo.ppo.bounds_loss_coef": "-1"})


def test_adaptive_learning_rate():
    assert adapt_learning_rate(1e-3, 0.05, 0.008) == pytest.approx(1e-3 / 1.5)
    assert adapt_learning_rate(1e-3, 0.001, 0.008) == pytest.approx(1.5e-3)
    assert adapt_learning_rate(1e-3, 0.008, 0.008) == 1e-3
    assert adapt_learning_rate(1e-6, 1.0, 0.008) == 1e-6  # floor


def test_minibatch_larger_than_a_rollout_is_refused():
    with pytest.raises(ConfigError, match=r"minibatch_size \(32768\) is larger than a rollout"):
        build_config({"algo": "ppo", "task": "classic/pendulum", "algo.ppo.minibatch_size": "32768",
                      "max_env_steps": "1"})


def test_ppo_runs_resumes_and_exports(tiny):
    ppo = {**tiny, "algo": "ppo", "algo.ppo.minibatch_size": "128", "algo.ppo.horizon": "8"}
    run = train({**ppo, "max_env_steps": "1280"}).path
    train({"resume": str(run), "max_env_steps": "2560"})
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["env_steps"]) for r in rows] == [0, 768, 1280, 2048, 2560]
    # 256 rows a rollout, 2 minibatches of 128, 5 epochs: 10 updates per 8 env steps
    assert int(rows[-1]["v_updates"]) == 10 * 2560 // (8 * 32)
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    policy = PPOPolicy(3, 1, (16, 16))
    policy.load_state_dict(state["policy"])
    norm = RunningNormalizer(3)
    norm.load_state_dict(state["normalizer"])
    module = torch.jit.load(str(export_policy(run)))
    obs = torch.randn(32, 3) * 3
    assert torch.allclose(module(obs), 2.0 * policy.net(norm(obs)).clamp(-1, 1), atol=1e-5)


def test_staggered_episodes_start_the_exploring_envs_at_spread_steps(tiny, tmp_path):
    """The ppo preset staggers the envs' first episodes over the time limit (rsl_rl's init_at_random_ep_len);
    without it every env's episode would end at the same step, each rollout holding one phase of it."""
    def elapsed(**over: str) -> torch.Tensor:
        cfg = build_config({**tiny, "algo": "ppo", "num_envs": "64", "algo.ppo.minibatch_size": "128", **over})
        trainer = PPOTrainer(plan_run(cfg), RunDir(tmp_path / str(len(over))))
        return trainer.env.elapsed.clone()

    spread = elapsed()
    assert spread.min() >= 0 and spread.max() < 200 and spread.unique().numel() > 32
    assert torch.equal(elapsed(**{"algo.ppo.stagger_episodes": "false"}), torch.zeros(64, dtype=torch.long))


def test_staggering_a_backend_that_cannot_names_the_key(tiny):
    assert build_config({"algo": "ppo", "task": "gym/Pendulum-v1"}).algo.ppo.stagger_episodes is False
    with pytest.raises(NotImplementedError, match=r"set algo\.ppo\.stagger_episodes=false"):
        train({**tiny, "algo": "ppo", "task": "gym/Pendulum-v1", "num_envs": "8", "algo.ppo.minibatch_size": "64",
               "algo.ppo.stagger_episodes": "true", "max_env_steps": "64"})
