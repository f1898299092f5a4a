"""FastTD3 (``algo=fast_td3``): its presets pinned to its code, its unclamped exploration, per-env buffer sizes,
the normaliser that folds in replay batches, and runs in both modes that resume."""

import csv
import json

import pytest
import torch
from omegaconf import OmegaConf

from pql.algos import algorithm
from pql.algos.fast_td3 import UnclampedActor
from pql.config import ConfigError
from pql.config.presets_yaml import presets
from pql.nets import Actor
from pql.normalizer import RunningNormalizer
from pql.resolve import build_config
from pql.store.run_dir import RunDir
from pql.training.run import train

# Every preset value against FastTD3's code (younggyoseo/FastTD3 at 229ed59, fast_td3/hyperparams.py): our key,
# the value, its source (class.field = value, line).
BASE_ARGS = {
    "mode": ("sync", "train.py: one loop, updates between env steps"),
    "num_envs": (128, "BaseArgs.num_envs = 128 (31)"),
    "noise.kind": ("per_episode", "fast_td3.py Actor.explore: scales redrawn for done envs"),
    "noise.sigma_min": (0.001, "BaseArgs.std_min = 0.001 (57)"),
    "noise.sigma_max": (0.4, "BaseArgs.std_max = 0.4 (59)"),
    "algo.batch_size": (32768, "BaseArgs.batch_size = 32768 (53)"),
    "algo.per_env_sampling": (True, "train.py: rb.sample(max(1, batch_size // num_envs))"),
    "algo.buffer_per_env": (51200, "BaseArgs.buffer_size = 1024 * 50 (45), per env"),
    "algo.nstep": (1, "BaseArgs.num_steps = 1 (47)"),
    "algo.gamma": (0.99, "BaseArgs.gamma = 0.99 (49)"),
    "algo.tau": (0.1, "BaseArgs.tau = 0.1 (51)"),
    "algo.actor_lr": (3e-4, "BaseArgs.actor_learning_rate = 3e-4 (39)"),
    "algo.critic_lr": (3e-4, "BaseArgs.critic_learning_rate = 3e-4 (37)"),
    "algo.max_grad_norm": (0.0, "BaseArgs.use_grad_norm_clipping = False (101)"),
    "algo.weight_decay": (0.1, "BaseArgs.weight_decay = 0.1 (123)"),
    "algo.activation": ("relu", "fast_td3.py: nn.ReLU between the layers"),
    "algo.actor_out_init_std": (0.01, "BaseArgs.init_scale = 0.01 (69)"),
    "algo.critic_sample_ratio": (2, "BaseArgs.num_updates = 2 (67)"),
    "algo.critic_actor_ratio": (2, "BaseArgs.policy_frequency = 2 (63)"),
    "algo.target_noise_std": (0.001, "BaseArgs.policy_noise = 0.001 (55)"),
    "algo.target_noise_clip": (0.5, "BaseArgs.noise_clip = 0.5 (65)"),
    "algo.warmup_steps": (11, "BaseArgs.learning_starts = 10 (61); train.py:643 updates once global_step > 10"),
    "algo.warmup_random": (False, "train.py: the exploring policy acts from the first step"),
    "algo.num_atoms": (101, "BaseArgs.num_atoms = 101 (71)"),
    "algo.v_min": (-250, "BaseArgs.v_min = -250.0 (73)"),
    "algo.v_max": (250, "BaseArgs.v_max = 250.0 (75)"),
    "algo.actor_hidden": ([512, 256, 128], "BaseArgs.actor_hidden_dim = 512 (79), then // 2, // 4"),
    "algo.critic_hidden": ([1024, 512, 256], "BaseArgs.critic_hidden_dim = 1024 (77), then // 2, // 4"),
    "algo.obs_norm_replay": (True, "train.py:646: normalize_obs(data['observations']) updates the statistics"),
}
PLAYGROUND_ARGS = {  # MuJoCoPlaygroundArgs (293-300)
    "num_envs": (1024, "num_envs = 1024 (298)"), "algo.gamma": (0.97, "gamma = 0.97 (300)"),
    "algo.v_min": (-10, "v_min = -10.0 (295)"), "algo.v_max": (10, "v_max = 10.0 (296)"),
    "algo.buffer_per_env": (10240, "buffer_size = 1024 * 10 (297)"),
}
ISAACLAB_ARGS = {  # IsaacLabArgs (441-451)
    "num_envs": (4096, "num_envs = 4096 (445)"), "algo.v_min": (-10, "v_min = -10.0 (442)"),
    "algo.v_max": (10, "v_max = 10.0 (443)"), "algo.buffer_per_env": (10240, "buffer_size = 1024 * 10 (444)"),
    "algo.num_atoms": (251, "num_atoms = 251 (449)"),
}
CHEETAH_RUN_ARGS = {  # CheetahRunArgs (377-385), its DM Control example
    "algo.nstep": (3, "num_steps = 3 (381)"), "algo.v_min": (-500, "v_min = -500.0 (382)"),
    "algo.v_max": (500, "v_max = 500.0 (383)"), "noise.sigma_min": (0.1, "std_min = 0.1 (384)"),
    "algo.target_noise_std": (0.1, "policy_noise = 0.1 (385)"),
}


def _value(layer: dict, dotted: str):
    return OmegaConf.select(OmegaConf.create(layer), dotted, default="<unset>")


@pytest.mark.parametrize(("layer", "table"), [(0, BASE_ARGS), (2, PLAYGROUND_ARGS)])
def test_presets_are_fastTD3_s_code(layer, table):
    """The algorithm's layer is BaseArgs, the Playground backend's layer for it MuJoCoPlaygroundArgs."""
    layers = presets("playground/HumanoidRun", "fast_td3")
    for key, (value, source) in table.items():
        assert _value(layers[layer], key) == value, f"{key}: {source}"


def test_isaac_lab_and_cheetah_run_presets_are_fastTD3_s_code():
    isaaclab = presets("isaaclab/Isaac-Velocity-Flat-H1-v0", "fast_td3")[2]
    for key, (value, source) in ISAACLAB_ARGS.items():
        assert _value(isaaclab, key) == value, f"{key}: {source}"
    cheetah = presets("playground/CheetahRun", "fast_td3")[4]
    for key, (value, source) in CHEETAH_RUN_ARGS.items():
        assert _value(cheetah, key) == value, f"{key}: {source}"
    cfg = build_config({"algo": "fast_td3", "task": "playground/CheetahRun", "max_time_s": "60"})
    assert (cfg.algo.nstep, cfg.algo.v_min, cfg.noise.sigma_min, cfg.algo.gamma) == (3, -500, 0.1, 0.97)


def test_cpu_sized_tasks_derive_their_atoms_and_keep_their_buffer():
    """On CPU tasks the atoms come from the task's reward bounds (FastTD3's Playground -10/10 cannot hold a DM
    Control return: up to 100 at gamma 0.99, which the range check refuses) and the buffer is the task's; DM
    Control tasks take the DM Control horizon (BaseArgs gamma 0.99, CheetahRunArgs n-step 3) and PQL-D's 8
    critic updates per env step, the policy every 2nd (policy_frequency 2)."""
    cfg = build_config({"algo": "fast_td3", "task": "playground/CartpoleBalance", "max_time_s": "60"})
    assert (cfg.algo.gamma, cfg.algo.nstep, cfg.algo.critic_sample_ratio, cfg.algo.critic_actor_ratio) == (
        0.99, 3, 8, 2)
    assert cfg.algo.v_min < 0 < 99.9 < cfg.algo.v_max <= 105.0
    assert cfg.algo.buffer_size == 1_000_000 and cfg.algo.buffer_per_env is None
    with pytest.raises(ConfigError, match=r"cannot hold playground/CartpoleBalance's returns"):
        build_config({"algo": "fast_td3", "task": "playground/CartpoleBalance", "algo.v_min": "-10",
                      "algo.v_max": "10", "max_time_s": "60"})
    pendulum = build_config({"algo": "fast_td3", "task": "classic/pendulum"})
    assert (pendulum.num_envs, pendulum.algo.batch_size, pendulum.algo.critic_hidden) == (128, 4096, (128, 128))


def test_buffer_per_env_sets_the_buffer_size_and_is_checked(tiny):
    assert build_config({**tiny, "num_envs": "64", "algo.buffer_per_env": "100"}).algo.buffer_size == 6400
    assert build_config({**tiny, "algo.buffer_per_env": "null"}).algo.buffer_size == 4096
    with pytest.raises(ConfigError, match=r"algo.buffer_per_env must be >= 1, got 0"):
        build_config({**tiny, "algo.buffer_per_env": "0"})


def test_exploration_is_not_clamped_and_the_critic_pick_is_after_the_projection():
    torch.manual_seed(0)
    policy = UnclampedActor(3, 2, (8,), "relu")
    clamped = Actor(3, 2, (8,), "relu")
    clamped.load_state_dict(policy.state_dict())
    obs, noise, std = torch.randn(4, 3), torch.full((4, 2), 3.0), torch.full((4, 1), 0.5)
    expected = policy(obs) + 1.5  # mean in (-1, 1), plus 3 * 0.5: above 1 everywhere
    assert torch.equal(policy.explore(obs, std, noise), expected) and (expected > 1).all()
    assert torch.equal(clamped.explore(obs, std, noise), torch.ones(4, 2))
    cfg = build_config({"algo": "fast_td3", "task": "classic/pendulum"})
    assert algorithm("fast_td3").head(cfg.algo, "cpu").pick_after_projection


def test_the_v_learner_folds_stored_and_sampled_observations_into_the_normaliser(tiny, tmp_path):
    """algo.obs_norm_replay: the actor folds nothing; the V-learner folds each stored step's observations and
    each batch's observations and next observations, and the actor, the P-learner and the checkpoint read
    its normaliser."""
    from pql.store.run_dir import RunDir
    from pql.training.sync import SyncTrainer
    from pql.workers.plan import plan_run

    cfg = build_config({**tiny, "algo": "fast_td3", "algo.nstep": "1", "algo.warmup_steps": "1",
                        "algo.obs_norm_replay": "true"})
    trainer = SyncTrainer(plan_run(cfg), RunDir(tmp_path / "t"))
    first = trainer.actor.obs.clone()
    trainer.actor_step()
    v_norm = trainer.v.normalizer
    expected = RunningNormalizer(3)
    expected.update(first)
    assert v_norm.count == 32 and torch.allclose(v_norm.mean, expected.mean) and torch.allclose(v_norm.var,
                                                                                                expected.var)
    torch.manual_seed(1)
    generator_state = trainer.v.generator.get_state()
    trainer.v_update()
    twin = torch.Generator().manual_seed(0)
    twin.set_state(generator_state)
    batch = trainer.v.buffer.sample(cfg.algo.batch_size, twin)
    expected.update(batch["obs"])
    expected.update(batch["next_obs"])
    assert v_norm.count == 32 + 2 * 64 and torch.allclose(v_norm.mean, expected.mean)
    trainer.p_update()
    trainer.actor_step()  # the actor reads the V-learner's statistics before it acts, and folds nothing itself
    assert trainer.actor.normalizer.count == 32 + 128 and trainer.p.normalizer.count == 32 + 128
    assert v_norm.count == 32 + 128 + 32
    assert torch.equal(trainer.model_state()["normalizer"]["mean"], v_norm.mean)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_fast_td3_trains_and_resumes_in_both_modes(mode, tiny, tmp_path):
    """Its presets (per-episode noise, per-env sampling, replay-folded normaliser) at tiny sizes, sync and
    async (PQL's processes with FastTD3's recipe); a resumed run continues its counts."""
    over = {**tiny, "algo": "fast_td3", "mode": mode, "num_envs": "16", "algo.batch_size": "64",
            "algo.buffer_per_env": "64", "algo.critic_hidden": "[16,16]", "algo.actor_hidden": "[16,16]",
            "max_env_steps": "1280"}
    run = train(over).path
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert int(rows[-1]["env_steps"]) == 1280 and float(rows[-1]["p_updates"]) > 0
    saved = json.loads((run / "status.json").read_text())
    assert saved["state"] == "done"
    # the V-learner's normaliser, in the checkpoint: every stored step's observations (n-step 1: one row per env
    # step) and each update's batch of 16 x 4 observations and next observations
    count = RunDir(str(run)).load_checkpoint()["normalizer"]["count"]
    assert count == 1280 + 2 * 64 * int(float(rows[-1]["v_updates"]))
    resumed = train({"resume": str(run), "max_env_steps": "1920"}).path
    assert json.loads((resumed / "status.json").read_text())["env_steps"] == 1920


def test_updates_start_in_the_twelfth_step_two_critic_steps_then_one_policy_step(tiny, tmp_path):
    """FastTD3's loop (train.py:578-676 at 229ed59) updates once global_step > learning_starts = 10: nothing in
    its first 11 env steps, then each step 2 critic updates with the policy's after the 2nd."""
    from pql.store.run_dir import RunDir
    from pql.training.sync import SyncTrainer
    from pql.workers.plan import plan_run

    preset = build_config({"algo": "fast_td3", "task": "classic/pendulum"}).algo
    over = {**tiny, "algo": "fast_td3", "algo.warmup_steps": str(preset.warmup_steps),
            "algo.critic_sample_ratio": str(preset.critic_sample_ratio),
            "algo.critic_actor_ratio": str(preset.critic_actor_ratio)}
    trainer = SyncTrainer(plan_run(build_config(over)), RunDir(tmp_path / "t"))
    for _ in range(11):
        trainer.step()
    assert trainer.update_counts() == (0, 0)
    order = []
    trainer.step(lambda worker, fn: (order.append(worker), fn()))
    assert order == ["actor", "v", "v", "p"]
    trainer.step()
    assert trainer.update_counts() == (4, 2)
