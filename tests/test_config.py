"""Configuration: precedence, validation with clear errors, the command line's handling of bad input."""

import json
import re
import subprocess
import sys

import pytest

from pql.cli import main
from pql.config import ConfigError, all_keys, parse_overrides
from pql.resolve import build_config

from .conftest import TINY


def test_defaults_then_task_preset_then_user():
    cfg = build_config({"task": "classic/pendulum", "max_time_s": "5"})
    assert cfg.algo.batch_size == 512  # from the pendulum preset
    assert cfg.algo.gamma == 0.99  # default
    # the user's value wins even when it equals the dataclass default (reference defect 9)
    cfg = build_config({"task": "classic/pendulum", "algo.batch_size": "8192", "algo.buffer_size": "10000"})
    assert cfg.algo.batch_size == 8192 and cfg.algo.buffer_size == 10000


def test_swingup_gives_pql_and_pql_d_fixed_noise_and_every_algorithm_else_its_cartpole_balance_preset():
    """CartpoleSwingup merges the Playground CPU preset and adds to its by_algo table: PQL and PQL-D explore
    with fixed sigma 0.8 (the noise study's best cell there); nothing else differs from CartpoleBalance."""
    for algo in ("pql", "pql-d", "ppo", "fast_td3", "fast_sac", "ddpg", "sac"):
        swingup = build_config({"task": "playground/CartpoleSwingup", "algo": algo})
        balance = build_config({"task": "playground/CartpoleBalance", "algo": algo})
        if algo in ("pql", "pql-d"):
            assert (swingup.noise.kind, swingup.noise.sigma) == ("fixed", 0.8)
            assert balance.noise.kind == "mixed"
        else:
            assert swingup.noise == balance.noise
        assert {k: v for k, v in vars(swingup).items() if k not in ("task", "noise")} == \
            {k: v for k, v in vars(balance).items() if k not in ("task", "noise")}, algo
    assert build_config({"task": "playground/CartpoleSwingup", "algo": "fast_td3"}).noise.kind == "per_episode"


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
     r"algo.preact_penalty \(0.001\) is a key of pql, pql-d, ddpg, fast_td3 only; sac does not read it, "
     r"so leave it 0.0"),
    ({"algo.per_env_sampling": "true", "num_envs": "64", "algo.buffer_size": "32", "algo.batch_size": "16"},
     r"algo.per_env_sampling keeps whole steps of num_envs \(64\) rows: algo.buffer_size \(32\) holds none"),
    ({"algo.activation": "gelu"}, "algo.activation must be one of elu, relu, silu, tanh, got 'gelu'"),
    ({"algo.weight_decay": "-0.1"}, "algo.weight_decay must be a finite number >= 0, got -0.1"),
    ({"algo.adam_beta2": "1"}, r"algo.adam_beta2 must be a finite number in \[0, 1\), got 1.0"),
    ({"algo.actor_out_init_std": "0"}, "algo.actor_out_init_std must be a finite number > 0, got 0.0"),
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


@pytest.mark.parametrize(("overrides", "message"), [
    ({"max_time_s": "inf"}, r"^max_time_s must be a finite number > 0, got inf$"),
    ({"max_time_s": "nan"}, r"^max_time_s must be a finite number > 0, got nan$"),
    ({"max_time_s": "-5"}, r"^max_time_s must be a finite number > 0, got -5.0$"),
    ({"seed": "99999999999999999999"}, r"^seed must be in \[0, 2147483647\], got 99999999999999999999$"),
    ({"seed": "-1"}, r"^seed must be in \[0, 2147483647\], got -1$"),
    ({"num_envs": str(2**63)}, r"^num_envs must fit a 64-bit integer"),
    ({"algo.gamma": "1.5"}, r"^algo.gamma must be a finite number in \(0, 1\], got 1.5$"),
    ({"algo.tau": "0"}, r"^algo.tau must be a finite number in \(0, 1\], got 0.0$"),
    ({"algo.ppo.gae_lambda": "1.01"}, r"^algo.ppo.gae_lambda must be a finite number in \[0, 1\]"),
    ({"algo.ppo.init_log_std": "100"}, r"^algo.ppo.init_log_std must be a finite number in \[-20, 20\]"),
    ({"noise.sigma": "inf"}, r"^noise.sigma must be a finite number >= 0, got inf$"),
    ({"algo.v_min": "-inf"}, r"^algo.v_min must be a finite number, got -inf$"),
    ({"algo.actor_hidden": "[64,0]"}, r"^algo.actor_hidden must hold integers >= 1, got \[64,0\]$"),
    ({"eval_every_s": "nan"}, r"^eval_every_s must be a finite number > 0, got nan$"),
    ({"checkpoint_every_s": "inf"}, r"^checkpoint_every_s must be a finite number >= 0, got inf$"),
])
def test_numbers_must_be_finite_and_in_range_naming_the_key_written(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"max_env_steps": "10", **overrides})


def test_every_numeric_key_has_a_range_and_refuses_what_is_not_finite():
    """No numeric key is left unchecked: each has its range, and an infinite float or an integer past int64
    is refused naming that key (even where another key is derived from it, or it from another)."""
    from pql.config import numeric_keys
    from pql.config.ranges import key_ranges

    keys = numeric_keys()  # with every registered algorithm's own keys (FastSAC's algo.fast_sac.*)
    assert set(keys) == set(key_ranges()), "add the range of a new numeric key to NUMBER_RANGES (or key_ranges)"
    for key, kind in keys.items():
        hostile = {float: ["inf", "nan", "-inf"], int: [str(2**64)], tuple: [f"[{2**64}]"]}[kind]
        for value in hostile:
            with pytest.raises(ConfigError, match=rf"^{re.escape(key)} must "):
                build_config({"max_env_steps": "10", "max_time_s": "60", key: value})


def test_a_derived_value_never_takes_the_blame_and_never_rounds_to_zero():
    with pytest.raises(ConfigError, match=r"^max_time_s") as err:
        build_config({"max_time_s": "-5"})
    assert "eval_every_s" not in str(err.value)
    assert build_config({"max_time_s": "1e-6"}).eval_every_s > 0
    assert build_config({"max_time_s": "60"}).eval_every_s == 1.5


def test_cli_hostile_numbers_exit_2_naming_the_key_and_value(tmp_path, capsys):
    for word, shown in (("max_time_s=inf", "max_time_s must be a finite number > 0, got inf"),
                        ("seed=99999999999999999999", "seed must be in [0, 2147483647], got 99999999999999999999"),
                        ("max_time_s=nan", "max_time_s must be a finite number > 0, got nan"),
                        ("max_time_s=-5", "max_time_s must be a finite number > 0, got -5.0")):
        assert main(["train", word, f"out={tmp_path / 'never'}"]) == 2
        err = capsys.readouterr().err
        assert f"pql: error: {shown}\n" == err and "eval_every_s" not in err
        assert not (tmp_path / "never").exists(), "a bad value creates no run directory"


def _stopped_run(path, state="interrupted"):
    """A run directory as a stopped run leaves it: config, a checkpoint file, a status."""
    from pql.store.run_dir import RunDir

    run = RunDir(path)
    run.write_config(build_config({**TINY, "out": str(path)}))
    run.checkpoint_path.write_bytes(b"not read before the config is checked")
    run.write_status(state, env_steps=640)
    return run


def test_a_failure_before_training_is_recorded_only_where_the_run_has_no_outcome(tmp_path, capsys):
    queued = _stopped_run(tmp_path / "queued", "queued")
    assert main(["train", f"resume={queued.path}", "max_time_s=nan"]) == 2
    status = queued.read_status()
    assert status["state"] == "failed" and status["before_training"] is True
    assert status["error"] == "max_time_s must be a finite number > 0, got nan"
    for state in ("done", "interrupted"):  # pql ablate must still keep or resume these
        run = _stopped_run(tmp_path / state, state)
        assert main(["train", f"resume={run.path}", "max_time_s=inf"]) == 2
        assert run.read_status()["state"] == state
    assert "max_time_s must be a finite number > 0, got inf" in capsys.readouterr().err


def test_a_failure_building_the_trainer_is_recorded_where_nothing_else_is(tiny, monkeypatch, tmp_path):
    import pql.training.run

    def broken(cfg):
        raise RuntimeError("cannot build it")

    monkeypatch.setattr(pql.training.run, "trainer_class", broken)
    assert main(["train", *(f"{k}={v}" for k, v in tiny.items())]) == 1
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == "RuntimeError: cannot build it"
    assert "cannot build it" in status["traceback"]
    plain = tmp_path / "plain"  # an existing directory that is not a run's: out=. must not get a status.json
    plain.mkdir()
    assert main(["train", *(f"{k}={v}" for k, v in {**tiny, "out": str(plain)}.items())]) == 1
    assert not (plain / "status.json").exists()


def test_a_study_cell_whose_config_no_longer_validates_fails_with_the_key(tmp_path):
    from pql.ablate.job import run_cell
    from pql.config import config_to_dict
    from pql.store.run_dir import RunDir

    run = RunDir(tmp_path / "cell")
    config = config_to_dict(build_config({**TINY}))
    run.write_cell({"config": {**config, "seed": 2**40}})
    run.write_status("queued", slurm_job_id="7_0")
    with pytest.raises(ConfigError, match=r"seed must be in \[0, 2147483647\], got 1099511627776"):
        run_cell(str(run.path))
    status = run.read_status()
    assert status["state"] == "failed" and "seed must be in" in status["error"]


def test_a_run_held_by_another_process_keeps_its_status(tmp_path):
    from pql.store.locks import RunLocked
    from pql.training.failures import failure_recorded

    run = _stopped_run(tmp_path / "run", "running")
    before = (run.path / "status.json").read_bytes()
    with pytest.raises(RunLocked), failure_recorded(run.path):
        raise RunLocked("in use by another process")
    assert (run.path / "status.json").read_bytes() == before
