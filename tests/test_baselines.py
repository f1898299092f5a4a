"""DDPG(n) and SAC(n): the sequential baselines in the same harness."""

import csv
import json

import pytest
import torch

from pql.algos.critic_heads import ScalarHead
from pql.algos.sac import EntropyRegularisedObjective, GaussianActor
from pql.buffers import observation_buffer
from pql.config import ConfigError
from pql.nets import TwinCritic
from pql.normalizer import RunningNormalizer
from pql.resolve import build_config
from pql.training.export import export_policy
from pql.training.run import train
from pql.workers.learners import PLearner


def last_row(run):
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))[-1]


def test_baseline_presets_and_sequential_mode():
    cfg = build_config({"algo": "ddpg", "max_env_steps": "10"})
    assert (cfg.algo.critic_sample_ratio, cfg.algo.critic_actor_ratio) == (8, 1)
    cfg = build_config({"algo": "sac", "algo.critic_actor_ratio": "2", "max_env_steps": "10"})
    assert cfg.algo.critic_actor_ratio == 2, "the user's value wins over the algorithm's preset"
    with pytest.raises(ConfigError, match="algo=ddpg is a sequential baseline"):
        build_config({"algo": "ddpg", "mode": "async", "max_env_steps": "10"})


def test_sac_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    actor = GaussianActor(3, 2, (16,))
    obs = torch.randn(256, 3)
    action, log_prob = actor.sample(obs, torch.randn(256, 2, generator=torch.Generator().manual_seed(1)))
    mean, log_std = actor.net(obs).chunk(2, -1)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.clamp(-5, 2).exp()), [torch.distributions.TanhTransform()])
    inside = action.abs().max(-1).values < 0.999  # away from float32 saturation of tanh
    expected = dist.log_prob(action).sum(-1)
    assert inside.sum() > 200
    assert torch.allclose(log_prob[inside], expected[inside], atol=1e-3)
    assert torch.equal(actor(obs), torch.tanh(mean))  # deterministic action for evaluation and export


@pytest.mark.parametrize(("log_std_bias", "direction"), [(0.0, -1), (-4.0, +1)])
def test_sac_temperature_moves_toward_the_target_entropy(log_std_bias, direction):
    """A spread policy (std 1 before tanh: entropy about 0.6 > -|A| = -1) lowers alpha;
    a narrow one (std 0.02: entropy about -2.7 < -1) raises it."""
    torch.manual_seed(0)
    actor = GaussianActor(3, 1, (16,))
    with torch.no_grad():
        actor.net[-1].weight[1:].zero_()
        actor.net[-1].bias[1:] = log_std_bias
    cfg = build_config({"algo": "sac", "algo.batch_size": "64", "algo.actor_lr": "1e-9", "max_env_steps": "1"}).algo
    buffer = observation_buffer(128, 3, "cpu")
    buffer.add(obs=torch.randn(128, 3))
    critic = TwinCritic(3, 1, (16,))
    learner = PLearner(actor, ScalarHead(), critic, EntropyRegularisedObjective(actor, critic, cfg),
                       RunningNormalizer(3), buffer, cfg,
                       torch.Generator().manual_seed(0))
    before = actor.log_alpha.item()
    for _ in range(20):
        learner.update()
    assert (actor.log_alpha.item() - before) * direction > 0.005


def test_ddpg_runs_eight_critic_and_eight_policy_updates_per_step_resumes_and_exports(tiny):
    run = train({**tiny, "algo": "ddpg", "max_env_steps": "1280"}).path
    train({"resume": str(run), "max_env_steps": "2560"})
    row = last_row(run)
    # uncounted: 8 warm-up steps, and after the resume another 8 while the empty buffers refill
    counted = int(row["actor_steps"]) - 8 - 8
    assert int(row["env_steps"]) == 2560
    assert int(row["v_updates"]) == 8 * counted and int(row["p_updates"]) == 8 * counted
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    module = torch.jit.load(str(export_policy(run)))
    assert module(torch.randn(5, 3)).abs().max() <= 2.0


def test_sac_trains_resumes_and_exports(tiny):
    run = train({**tiny, "algo": "sac", "max_env_steps": "1280"}).path
    train({"resume": str(run), "max_env_steps": "2560"})
    assert int(last_row(run)["env_steps"]) == 2560
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert "log_alpha" in state["policy"] and state["policy"]["log_alpha"].item() != 0.0, "the temperature learned"
    module = torch.jit.load(str(export_policy(run)))
    actor = GaussianActor(3, 1, (16, 16))
    actor.load_state_dict(state["policy"])
    norm = RunningNormalizer(3)
    norm.load_state_dict(state["normalizer"])
    obs = torch.randn(32, 3)
    assert torch.allclose(module(obs), 2.0 * actor(norm(obs)), atol=1e-5)  # Pendulum: [-2, 2]
