"""FastSAC (``algo=fast_sac``): its presets pinned to its code, its policy, independent targets and mean-over-critics
objective against hand-computed values, the temperature the V-learner steps with every critic update and hands to
the P-learner inside the critic, the normaliser fed by replay batches only, and runs in both modes that resume and
export."""

import csv
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from pql.algos.critic_heads import IndependentCategoricalHead
from pql.algos.fast_sac import FastSACActor, MeanQObjective
from pql.config.presets_yaml import presets
from pql.nets import Temperature, TwinCritic
from pql.normalizer import RunningNormalizer
from pql.resolve import build_config
from pql.store.run_dir import RunDir
from pql.training.export import export_policy
from pql.training.run import train
from pql.training.sync import SyncTrainer
from pql.workers.plan import plan_run

# Every preset value against FastSAC's code (amazon-far/holosoma at fc600e7, src/holosoma/holosoma/): our key, the
# value, its source (config_values/algo.py's `fast_sac` preset, line; the same as FastSACConfig's defaults).
FAST_SAC = {
    "mode": ("sync", "agents/fast_sac/fast_sac_agent.py learn(): one loop, updates between env steps"),
    "num_envs": (4096, "config_types/experiment.py:64 TrainingConfig.num_envs = 4096"),
    "algo.actor_lr": (3e-4, "actor_learning_rate=3e-4 (63)"),
    "algo.critic_lr": (3e-4, "critic_learning_rate=3e-4 (62)"),
    "algo.alpha_lr": (3e-4, "alpha_learning_rate=3e-4 (64)"),
    "algo.buffer_per_env": (1024, "buffer_size=1024 (65), per env"),
    "algo.nstep": (1, "num_steps=1 (66)"),
    "algo.gamma": (0.97, "gamma=0.97 (67)"),
    "algo.tau": (0.125, "tau=0.125 (68)"),
    "algo.batch_size": (8192, "batch_size=8192 (69), global: batch_size // num_envs per env"),
    "algo.per_env_sampling": (True, "fast_sac_agent.py: rb.sample(batch_size // num_envs) from every env"),
    "algo.warmup_steps": (11, "learning_starts=10 (70): updates once global_step > 10"),
    "algo.warmup_random": (False, "fast_sac_agent.py: the policy acts from the first step"),
    "algo.critic_actor_ratio": (4, "policy_frequency=4 (71)"),
    "algo.critic_sample_ratio": (8, "num_updates=8 (72)"),
    "algo.fast_sac.target_entropy_ratio": (0.0, "target_entropy_ratio=0.0 (73)"),
    "algo.num_atoms": (101, "num_atoms=101 (74)"),
    "algo.v_min": (-20, "v_min=-20.0 (75)"),
    "algo.v_max": (20, "v_max=20.0 (76)"),
    "algo.critic_hidden": ([768, 384, 192], "critic_hidden_dim=768 (77), then // 2, // 4 (fast_sac.py)"),
    "algo.actor_hidden": ([512, 256, 128], "actor_hidden_dim=512 (78), then // 2, // 4 (fast_sac.py)"),
    "algo.init_temperature": (0.001, "alpha_init=0.001 (80)"),
    "algo.layer_norm": (True, "use_layer_norm=True (87)"),
    "algo.activation": ("silu", "fast_sac.py: nn.SiLU after each LayerNorm"),
    "algo.max_grad_norm": (0.0, "max_grad_norm=0.0 (89)"),
    "algo.weight_decay": (0.001, "weight_decay=0.001 (92)"),
    "algo.adam_beta1": (0.9, "fast_sac_agent.py: AdamW(..., betas=(0.9, 0.95))"),
    "algo.adam_beta2": (0.95, "fast_sac_agent.py: AdamW(..., betas=(0.9, 0.95))"),
    "algo.obs_norm_replay": (True, "obs_normalization=True (86); normalize_obs on the replay batches"),
    "algo.obs_norm_acting": (False, "fast_sac_agent.py: normalize_obs(obs, update=False) when acting"),
}
TINY_SAC = {"algo": "fast_sac", "algo.nstep": "1", "algo.warmup_steps": "1", "algo.actor_hidden": "[16,16]",
            "algo.critic_hidden": "[16,16]", "algo.buffer_per_env": "null"}


def test_presets_are_fastSAC_s_code():
    layer = OmegaConf.create(presets("classic/pendulum", "fast_sac")[0])
    for key, (value, source) in FAST_SAC.items():
        assert OmegaConf.select(layer, key, default="<unset>") == value, f"{key}: {source}"
    assert (FastSACActor.log_std_min, FastSACActor.log_std_max) == (-5.0, 0.0)  # log_std_min/max (84, 83)
    cpu = build_config({"algo": "fast_sac", "task": "classic/pendulum"})
    assert (cpu.num_envs, cpu.algo.batch_size, cpu.algo.buffer_size) == (128, 256, 1_000_000)
    assert cpu.algo.v_min < -50 and cpu.algo.v_max >= 0  # from the reward bounds (-54 at reward scale 0.1)
    dmc = build_config({"algo": "fast_sac", "task": "playground/CartpoleBalance"})
    assert (dmc.num_envs, dmc.algo.batch_size, dmc.algo.gamma, dmc.algo.nstep) == (256, 512, 0.99, 3)
    assert dmc.algo.v_min <= 0 and dmc.algo.v_max >= 99.9  # a return of up to 1 / (1 - 0.99) = 100


def test_the_policy_starts_at_mean_zero_and_log_std_minus_2_5_and_its_log_prob_is_theirs():
    """Zero-initialised heads: mean 0 and tanh-rescaled log std -5 + 2.5 * (tanh(0) + 1) = -2.5; the log-prob
    is the Gaussian's minus log(1 - tanh(u)^2 + 1e-6) per dimension (fast_sac.py Actor)."""
    torch.manual_seed(0)
    policy = FastSACActor(3, 2, (8, 8))
    obs, eps = torch.randn(4, 3), torch.randn(4, 2)
    assert torch.equal(policy(obs), torch.zeros(4, 2))
    action, log_prob = policy.sample(obs, eps)
    std = math.exp(-2.5)
    u = eps * std
    expected = (torch.distributions.Normal(0.0, std).log_prob(u) - torch.log(1 - torch.tanh(u) ** 2 + 1e-6)).sum(-1)
    assert torch.allclose(action, torch.tanh(u)) and torch.allclose(log_prob, expected, atol=1e-5)
    assert torch.equal(policy.explore(obs, torch.full((4, 1), 9.0), eps), action)  # no noise of ours on top
    with torch.no_grad():
        policy.net[-1].bias[2:] = 50.0  # raw log std far above: the log std reaches its bound 0, never beyond
    assert torch.allclose(policy.sample(obs, torch.ones(4, 2))[0], torch.tanh(torch.ones(4, 2)))


def test_each_critic_regresses_to_its_own_projected_target():
    """Atoms 0, 1, 2; return 0.5, discount 0.5: the target atoms 0.5, 1, 1.5 split as (1/2, 1/2), (0, 1),
    (1/2, 1/2). Critic 1's target is all on atom 0 -> [0.5, 0.5, 0]; critic 2's all on atom 2 -> [0, 0.5, 0.5]
    (a clipped double-Q would give both critic 1's)."""
    head = IndependentCategoricalHead(3, 0.0, 2.0, "cpu")
    big = 30.0
    target_out = torch.tensor([[[big, 0.0, 0.0]], [[0.0, 0.0, big]]])  # [2, 1, 3]: one-hot, nearly
    ret, discount = torch.tensor([0.5]), torch.tensor([0.5])
    target = head.target_distribution(target_out, ret, discount)
    assert torch.allclose(target, torch.tensor([[[0.5, 0.5, 0.0]], [[0.0, 0.5, 0.5]]]), atol=1e-6)
    pred = torch.tensor([[[0.0, 1.0, 2.0]], [[2.0, 1.0, 0.0]]])
    by_hand = -(target * pred.log_softmax(-1)).sum(-1).sum()  # batch of 1: the mean is the value
    assert torch.allclose(head.critic_loss(pred, target_out, ret, discount), by_hand)
    bonus = torch.tensor([-1.0])  # -alpha log pi shifts every atom: 0.5 + 0.5 * (z - 1) = 0, 0.5, 1
    shifted = head.target_distribution(target_out, ret, discount, bonus)
    assert torch.allclose(shifted, torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]]), atol=1e-6)


def test_the_actor_maximises_the_mean_of_the_critics_minus_alpha_log_pi():
    torch.manual_seed(0)
    policy = FastSACActor(3, 1, (8,))
    critic = TwinCritic(3, 1, (8,), temperature=Temperature(0.25, 0.0))
    objective = MeanQObjective(policy, critic, build_config({"algo": "fast_sac"}).algo)
    obs, eps = torch.randn(5, 3), torch.randn(5, 1)

    def q(o: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.stack([a[:, 0] * 4.0, -a[:, 0] * 2.0])  # mean: a

    loss, _ = objective.loss(obs, q, eps)
    action, log_prob = policy.sample(obs, eps)
    assert torch.allclose(loss, (0.25 * log_prob - action[:, 0]).mean())


def test_the_v_learner_steps_the_temperature_with_every_critic_update_and_the_p_learner_reads_it(tiny, tmp_path):
    """One V-step moves log alpha as AdamW's first step on -alpha * (mean next-state log pi + target entropy),
    with torch's weight decay 0.01 (theirs) and alpha_lr; the critic's own group keeps its weight decay. The
    temperature reaches the P-learner with the critic, and the checkpoint with the critic's state."""
    cfg = build_config({**tiny, **TINY_SAC, "algo.init_temperature": "0.5", "algo.alpha_lr": "0.01"})
    trainer = SyncTrainer(plan_run(cfg), RunDir(tmp_path / "t"))
    trainer.actor_step()
    v = trainer.v
    groups = v.optimizer.param_groups
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"], groups[1]["lr"]) == (0.001, 0.01, 0.01)
    batch = v.buffer.sample(64, torch.Generator().manual_seed(0))
    noise = torch.randn(batch["action"].shape)
    log_pi = v.policy.sample(v.normalizer(batch["next_obs"]), noise)[1]
    before = v.critic.temperature.log_alpha.item()
    grad = -0.5 * (log_pi.mean().item() + 0.0)
    v.step(batch["obs"], batch["action"], batch["ret"], batch["discount"], batch["next_obs"], noise)
    expected = before * (1 - 0.01 * 0.01) - 0.01 * math.copysign(1.0, grad)
    assert v.critic.temperature.log_alpha.item() == pytest.approx(expected, abs=1e-6)
    for _ in range(3):
        trainer.v_update()
    assert v.optimizer.state[v.critic.temperature.log_alpha]["step"] == 4  # one step per critic update
    trainer.p_update()
    assert trainer.p.critic.temperature.log_alpha.item() == v.critic.temperature.log_alpha.item()
    assert torch.equal(trainer.model_state()["critic"]["temperature.log_alpha"], v.critic.temperature.log_alpha)


def test_only_replay_batches_feed_the_normaliser(tiny, tmp_path):
    """algo.obs_norm_acting=false: stored steps fold nothing; each V-update folds its batch's observations and
    next observations (64 + 64); the actor reads the V-learner's statistics."""
    cfg = build_config({**tiny, **TINY_SAC})
    trainer = SyncTrainer(plan_run(cfg), RunDir(tmp_path / "t"))
    trainer.actor_step()
    assert trainer.v.normalizer.count == 0
    trainer.v_update()
    trainer.v_update()
    trainer.actor_step()
    assert trainer.v.normalizer.count == 4 * 64 and trainer.actor.normalizer.count == 4 * 64


def test_acting_observations_off_without_replay_folding_is_refused(tiny):
    from pql.config import ConfigError

    with pytest.raises(ConfigError, match=r"algo.obs_norm_acting=false folds no observation"):
        build_config({**tiny, "algo": "fast_sac", "algo.obs_norm_replay": "false"})


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_fast_sac_trains_and_resumes_in_both_modes(mode, tiny, tmp_path):
    """Its presets at tiny sizes, sync and async (PQL's processes with FastSAC's recipe); the temperature moved
    from its start and is in the checkpoint; a resumed run continues its counts."""
    over = {**tiny, "algo": "fast_sac", "mode": mode, "num_envs": "16", "algo.batch_size": "64",
            "algo.buffer_per_env": "64", "algo.critic_hidden": "[16,16]", "algo.actor_hidden": "[16,16]",
            "max_env_steps": "1280"}
    run = train(over).path
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert int(rows[-1]["env_steps"]) == 1280 and float(rows[-1]["p_updates"]) > 0
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    state = RunDir(str(run)).load_checkpoint()
    assert state["critic"]["temperature.log_alpha"].item() != pytest.approx(math.log(0.001))
    assert state["normalizer"]["count"] == 2 * 64 * int(float(rows[-1]["v_updates"]))
    resumed = train({"resume": str(run), "max_env_steps": "1920"}).path
    assert json.loads((resumed / "status.json").read_text())["env_steps"] == 1920
    if mode == "sync":  # the exported policy: tanh of the mean, on the V-learner's normaliser, scaled to Pendulum's
        state = RunDir(str(run)).load_checkpoint()
        actor, norm = FastSACActor(3, 1, (16, 16)), RunningNormalizer(3)
        actor.load_state_dict(state["policy"])
        norm.load_state_dict(state["normalizer"])
        obs = torch.randn(32, 3)
        assert torch.allclose(torch.jit.load(str(export_policy(run)))(obs), 2.0 * actor(norm(obs)), atol=1e-5)
