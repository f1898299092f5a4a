"""Configuration: precedence, validation with clear errors, the command line's handling of bad input."""

import subprocess
import sys

import pytest

from pql.cli import main
from pql.config import ConfigError, all_keys, build_config, parse_overrides


def test_defaults_then_task_preset_then_user():
    cfg = build_config({"task": "classic/pendulum", "max_time_s": "5"})
    assert cfg.algo.batch_size == 512  # from the pendulum preset
    assert cfg.algo.gamma == 0.99  # default
    # the user's value wins even when it equals the dataclass default (reference defect 9)
    cfg = build_config({"task": "classic/pendulum", "algo.batch_size": "8192", "algo.buffer_size": "10000"})
    assert cfg.algo.batch_size == 8192 and cfg.algo.buffer_size == 10000


def test_algo_shorthand_and_types():
    keys = parse_overrides(["algo=pql-d", "num_envs=64", "algo.actor_hidden=[32,32]"])
    cfg = build_config({**keys, "max_env_steps": "10"})
    assert cfg.algo.name == "pql-d" and cfg.num_envs == 64 and cfg.algo.actor_hidden == (32, 32)


def test_unknown_key_names_the_key_and_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'num_env'.*num_envs"):
        parse_overrides(["num_env=3"])
    with pytest.raises(ConfigError, match=r"'algo.batchsize'.*algo.batch_size"):
        parse_overrides(["algo.batchsize=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["num_envs"])


@pytest.mark.parametrize(("overrides", "message"), [
    ({"num_envs": "0"}, "num_envs must be >= 1"),
    ({"algo.batch_size": "100", "algo.buffer_size": "50"}, r"batch_size \(100\) is larger than algo.buffer_size"),
    ({"noise.sigma_min": "0.9", "noise.sigma_max": "0.1"}, "sigma_min .* must not exceed noise.sigma_max"),
    ({"task": "classic/nope"}, "unknown task 'classic/nope'"),
    ({"algo.name": "ppo2"}, "unknown algo 'ppo2'"),
    ({"mode": "fast"}, "mode must be one of"),
    ({"num_envs": "many"}, "bad value for 'num_envs'"),
    ({"algo.critic_lr": "nan"}, "critic_lr must be a finite number"),
    ({"algo.preact_penalty": "-1e-3"}, "preact_penalty must be a finite number >= 0"),
    ({"algo": "sac", "mode": "sync", "algo.preact_penalty": "1e-3"},
     r"preact_penalty \(0.001\) applies to the deterministic tanh actor of pql, pql-d, ddpg; sac has none"),
])
def test_invalid_values_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"max_env_steps": "10", **overrides})


def test_every_key_is_documented_in_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for key in all_keys():
        assert f"  {key} (default:" in out


def test_cli_bad_key_exits_nonzero_before_any_work(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "pql", "train", "num_env=4", f"out={out}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown config key 'num_env'" in proc.stderr and "num_envs" in proc.stderr
    assert not out.exists()


def test_cli_bad_value_exits_nonzero(tmp_path):
    code = main(["train", "num_envs=0", "max_env_steps=10", f"out={tmp_path / 'never'}"])
    assert code == 2 and not (tmp_path / "never").exists()


def test_single_simulation_backends_evaluate_a_slice_of_the_training_envs(isaac_fakes):
    assert build_config({"task": "isaaclab/Isaac-Ant-Direct-v0", "max_time_s": "60"}).eval_envs == 16
    cfg = build_config({"task": "isaacgym/Ant", "algo": "ppo"})
    assert (cfg.eval_envs, cfg.num_envs, cfg.algo.reward_scale, cfg.algo.ppo.horizon) == (16, 4096, 0.01, 16)
    with pytest.raises(ConfigError, match=r"eval_envs \(16\) must be below num_envs \(16\) for isaacgym/Ant"):
        build_config({"task": "isaacgym/Ant", "num_envs": "16"})
