"""The algorithm registry: each algorithm declared in one place, and one more added by a single entry."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from pql.ablate.matrix import run_id
from pql.algos import ALGORITHMS, algorithm
from pql.algos.base import DeterministicObjective
from pql.algos.critic_heads import CategoricalHead
from pql.buffers import observation_buffer
from pql.config import ConfigError, config_to_dict
from pql.nets import Actor, TwinCritic
from pql.normalizer import RunningNormalizer
from pql.resolve import build_config
from pql.training.run import trainer_class
from pql.workers.learners import PLearner
from pql.workers.plan import plan_run

from .warm_pql import run_pql


def test_every_algorithm_is_declared_once_with_its_own_label_and_colour():
    assert list(ALGORITHMS) == ["pql", "pql-d", "ddpg", "sac", "ppo", "fast_td3", "fast_sac"]
    assert len({a.label for a in ALGORITHMS.values()}) == len({a.color for a in ALGORITHMS.values()}) == 7
    assert [n for n, a in ALGORITHMS.items() if a.sequential] == ["ddpg", "sac", "ppo"]
    with pytest.raises(KeyError, match="unknown algo 'td3'; known: pql, pql-d, ddpg, sac, ppo, fast_td3, fast_sac"):
        algorithm("td3")
    with pytest.raises(ConfigError, match="unknown algo 'tom'"):
        build_config({"algo": "tom", "max_env_steps": "10"})


@pytest.mark.parametrize(("name", "expected"), [("pql", "SyncTrainer"), ("ddpg", "SyncTrainer"), ("ppo", "PPOTrainer")])
def test_the_registry_picks_the_trainer(name, expected):
    cfg = build_config({"algo": name, "mode": "sync", "max_env_steps": "10"})
    assert trainer_class(plan_run(cfg)).__name__ == expected
    assert trainer_class(plan_run(build_config({"algo": "pql", "max_env_steps": "10"}))).__name__ == "ProcessTrainer"


def test_categorical_target_is_shifted_by_the_entropy_bonus():
    """SAC's bonus is part of the bootstrap: with one atom's worth of mass at z' = 0, bonus b and discount
    g, the target mass sits at ret + g * (0 + b), not at ret (the head once dropped it)."""
    head = CategoricalHead(num_atoms=5, v_min=-2.0, v_max=2.0, device="cpu")  # atoms -2, -1, 0, 1, 2
    target_out = torch.full((2, 1, 5), -1e9)
    target_out[:, :, 2] = 0.0  # both critics: all mass at 0
    pred = torch.zeros(2, 1, 5, requires_grad=True)  # uniform logits
    ret, discount, bonus = torch.tensor([0.5]), torch.tensor([0.5]), torch.tensor([1.0])
    # target value 0.5 + 0.5 * (0 + 1) = 1.0: all mass on the atom 1
    loss = head.critic_loss(pred, target_out, ret, discount, bonus)
    loss.backward()
    expected_grad = torch.full((5,), 0.2)
    expected_grad[3] -= 1.0  # d/dlogits of -log_softmax at atom 3, per critic (mean over B = 1)
    assert torch.allclose(pred.grad[0, 0], expected_grad, atol=1e-6)
    assert torch.allclose(loss, torch.tensor(2 * torch.log(torch.tensor(5.0)).item()))
    no_bonus = CategoricalHead(5, -2.0, 2.0, "cpu").critic_loss(pred.detach(), target_out, ret + discount * bonus,
                                                                 discount)
    assert torch.allclose(loss, no_bonus)


class PessimisticObjective(DeterministicObjective):
    """A made-up algorithm for the test: the policy maximises the mean of both critics minus their gap."""

    def loss(self, obs, q, noise):
        values = q(obs, self.policy(obs))
        return -(values.mean(0) - (values[0] - values[1]).abs()).mean(), None


PLUGINS = Path(__file__).parent / "plugins"


def _with_plugin(*args: str) -> subprocess.CompletedProcess:
    """``python -m pql ARGS`` (or ``python -c ARGS[1]`` after ``-c``) with the module ``cautious_pql`` registered
    by name, the only place it is named: a registry line outside the package."""
    env = {**os.environ, "PQL_ALGORITHMS": "cautious_pql",
           "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    if args[0] == "-c":
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    return run_pql(*args, env=env)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_algorithm_in_a_module_of_its_own_trains_end_to_end_with_its_own_keys(mode, tiny, tmp_path):
    """tests/plugins/cautious_pql.py declares keys (algo.cautious.*), their ranges and a check of its own; named
    in PQL_ALGORITHMS it trains in both modes (async: its worker processes find it by name), resumes, and its
    run directory holds its keys."""
    words = [f"{k}={v}" for k, v in {**tiny, "mode": mode, "max_env_steps": "1280"}.items()]
    done = _with_plugin("train", "algo=cautious", "algo.cautious.gap_weight=0.25", *words)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert int(rows[-1]["env_steps"]) == 1280 and float(rows[-1]["p_updates"]) > 0
    saved = yaml.safe_load((run / "config.yaml").read_text())["algo"]
    assert saved["name"] == "cautious" and saved["cautious"] == {"gap_weight": 0.25, "max_gap_weight": 1.0}
    resumed = _with_plugin("train", f"resume={run}", "max_env_steps=1920")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "status.json").read_text())["env_steps"] == 1920


def test_an_added_algorithm_s_check_ranges_and_help_and_no_other_run_id_moves(tiny):
    """Its own check and its keys' ranges refuse bad values naming the key; --help lists its keys as its own;
    with it registered, the runs of the built-in algorithms keep their ids and their config.yaml."""
    words = [f"{k}={v}" for k, v in tiny.items()]
    for value, message in (("2", "algo.cautious.gap_weight (2.0) exceeds algo.cautious.max_gap_weight (1.0)"),
                           ("-1", "algo.cautious.gap_weight must be a finite number >= 0, got -1.0")):
        refused = _with_plugin("train", "algo=cautious", f"algo.cautious.gap_weight={value}", *words)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    probe = ("import json; from pql.cli import build_parser; from pql.resolve import build_config; "
             "from pql.ablate.matrix import run_id; from pql.config import config_to_dict; "
             "cfg = build_config({'algo': 'pql-d', 'max_env_steps': '10'}); "
             "train = build_parser()._subparsers._group_actions[0].choices['train']; "
             "print(json.dumps([run_id(cfg), config_to_dict(cfg), train.format_help()]))")
    out = _with_plugin("-c", probe)
    assert out.returncode == 0, out.stderr
    ids, saved, text = json.loads(out.stdout)
    cfg = build_config({"algo": "pql-d", "max_env_steps": "10"})
    assert ids == run_id(cfg) and saved == json.loads(json.dumps(config_to_dict(cfg)))
    assert "algo.cautious.gap_weight (default: 0.5; cautious only)" in text
    assert "algo.preact_penalty (default: 0.0; pql, pql-d, ddpg, fast_td3, cautious only)" in text
    assert "algo.weight_decay (default: 0.01; pql, pql-d, ddpg, sac, fast_td3, fast_sac, cautious only)" in text


def test_the_p_learner_steps_the_objective_it_is_given():
    """The P-learner has no algorithm of its own: a step moves the policy down the objective's loss."""
    torch.manual_seed(0)
    cfg = build_config({"algo": "pql", "algo.batch_size": "32", "max_env_steps": "10"}).algo
    policy = Actor(3, 1, (8,))
    buffer = observation_buffer(64, 3, "cpu")
    buffer.add(obs=torch.randn(64, 3))
    critic = TwinCritic(3, 1, (8,))
    objective = PessimisticObjective(policy, critic, cfg)
    learner = PLearner(policy, algorithm("pql").head(cfg, "cpu"), critic, objective,
                       RunningNormalizer(3), buffer, cfg, torch.Generator().manual_seed(0))
    obs = buffer.storage[:64]
    before = objective.loss(obs, learner.q, None)[0].item()
    for _ in range(20):
        learner.update()
    assert objective.loss(obs, learner.q, None)[0].item() < before - 1e-3


class PrefersPositive(nn.Module):
    """A twin critic whose Q rises with the action: Q1 = Q2 = sum of the action's components."""

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return action.sum(-1).expand(2, -1)


def _saturated_learner(penalty: str) -> tuple[PLearner, Actor, torch.Tensor]:
    """A P-learner whose actor outputs tanh(20) for every observation, against :class:`PrefersPositive`."""
    torch.manual_seed(0)
    cfg = build_config({"algo": "pql", "algo.batch_size": "64", "algo.actor_lr": "1e-2",
                        "algo.preact_penalty": penalty, "max_env_steps": "10"}).algo
    policy = Actor(3, 1, (8,))
    with torch.no_grad():
        policy.net[-2].weight.zero_()
        policy.net[-2].bias.fill_(20.0)
    buffer = observation_buffer(64, 3, "cpu")
    buffer.add(obs=torch.randn(64, 3))
    critic = PrefersPositive()
    learner = PLearner(policy, algorithm("pql").head(cfg, "cpu"), critic,
                       algorithm("pql").make_objective(policy, critic, cfg), RunningNormalizer(3), buffer, cfg,
                       torch.Generator().manual_seed(0))
    return learner, policy, buffer.storage[:64]


def test_the_preact_penalty_is_added_to_the_actor_loss_and_frees_a_saturated_actor():
    """At pre-tanh 20 tanh passes no gradient (tanh'(20) ~ 2e-17): without the penalty the actor stays
    there; with weight c the loss is -mean(tanh(x)) + c * mean(x^2), whose minimum for c = 1e-3 is near
    x = 3.2, where the critic's gradient reaches the actor again."""
    stuck, stuck_policy, obs = _saturated_learner("0")
    freed, freed_policy, _ = _saturated_learner("1e-3")
    loss, _ = freed.objective.loss(obs, freed.q, None)
    assert loss.item() == pytest.approx(-torch.tanh(torch.tensor(20.0)).item() + 1e-3 * 400.0, rel=1e-6)
    assert stuck.objective.loss(obs, stuck.q, None)[0].item() == pytest.approx(-1.0, abs=1e-6)
    for _ in range(300):
        stuck.update()
        freed.update()
    assert stuck_policy.pre_tanh(obs).min().item() > 19.0  # AdamW's weight decay alone: 0.01 * lr * x a step
    pre = freed_policy.pre_tanh(obs)
    assert 2.0 < pre.min().item() and pre.max().item() < 5.0, pre
