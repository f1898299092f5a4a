"""PQL learns Pendulum (CPU preset) far from its 1024 envs: 64 envs with the defaults, 16384 with the
ratio scaled by ``algo.ratio_scale_envs``; FastTD3 learns it with its CPU preset. Budgets are in env steps
(sync mode is deterministic), so a loaded machine makes these slower, never different."""

import pandas as pd
import pytest

from pql.training.run import resolve, run_training


def _train(tmp_path, **overrides) -> pd.DataFrame:
    base = {"task": "classic/pendulum", "algo": "pql", "mode": "sync", "seed": "0", "max_time_s": "null",
            "progress": "false", "out": str(tmp_path / "run")}
    run = run_training(resolve({**base, **{k: str(v) for k, v in overrides.items()}}))
    return pd.read_csv(run.path / "metrics.csv")


def test_v_updates_per_actor_step_follow_the_scaled_ratio(tiny, tmp_path):
    tiny.update({"algo.ratio_scale_envs": "8", "max_env_steps": "3200"})  # 32 envs -> 4 x 8 = 32 per step
    rows = pd.read_csv(run_training(resolve(tiny)).path / "metrics.csv")
    learning_steps = rows["actor_steps"].iloc[-1] - int(tiny["algo.warmup_steps"])
    assert rows["v_updates"].iloc[-1] == pytest.approx(32 * learning_steps, abs=32)


@pytest.mark.slow
def test_pendulum_learns_with_64_envs(tmp_path):
    rows = _train(tmp_path, num_envs=64, max_env_steps=102_400, eval_every_env_steps=12_800)
    assert rows["eval_return"].max() >= -250, rows[["env_steps", "eval_return"]].to_string()


@pytest.mark.slow
def test_pendulum_learns_with_16384_envs_and_the_scaled_ratio(tmp_path):
    rows = _train(tmp_path, num_envs=16_384, max_env_steps=1_638_400, eval_every_env_steps=409_600,
                  **{"algo.ratio_scale_envs": 1024})
    assert rows["eval_return"].max() >= -250, rows[["env_steps", "eval_return"]].to_string()


@pytest.mark.slow
def test_fast_td3_learns_pendulum_with_its_cpu_preset(tmp_path):
    """FastTD3's classic/pendulum preset (128 envs, batch 4096); its 3 seeds here first reached -250 between
    62,848 and 77,056 env steps, sync and async (issue 30's measurements)."""
    rows = _train(tmp_path, algo="fast_td3", max_env_steps=153_600, eval_every_env_steps=12_800)
    assert rows["eval_return"].max() >= -250, rows[["env_steps", "eval_return"]].to_string()


@pytest.mark.slow
def test_fast_sac_learns_pendulum_with_its_cpu_preset(tmp_path):
    """FastSAC's classic/pendulum preset (128 envs, batch 256, 8 critic updates per env step); its 3 seeds in
    the algorithms study first reached -250 between 27,008 and 29,952 env steps (issue 31's measurements)."""
    rows = _train(tmp_path, algo="fast_sac", max_env_steps=76_800, eval_every_env_steps=6_400)
    assert rows["eval_return"].max() >= -250, rows[["env_steps", "eval_return"]].to_string()


@pytest.mark.slow
def test_pql_solves_mountaincar_with_its_correlated_noise(tmp_path):
    """classic/mountaincar's preset explores with AR(1) noise (noise.correlation 0.99): PQL gets the +100 at the
    hill top, where with white noise it stays at the do-nothing policy (README, classic/mountaincar)."""
    rows = _train(tmp_path, task="classic/mountaincar", max_env_steps=1_228_800, eval_every_env_steps=102_400)
    assert rows["eval_return"].max() >= 90, rows[["env_steps", "eval_return"]].to_string()
