"""Shared fixtures: a tiny, fast training configuration."""

import pytest

TINY = {
    "task": "classic/pendulum", "num_envs": "32", "eval_envs": "4", "max_env_steps": "2560",
    "eval_every_env_steps": "640", "algo.actor_hidden": "[16,16]", "algo.critic_hidden": "[16,16]",
    "algo.batch_size": "64", "algo.buffer_size": "4096", "algo.warmup_steps": "8", "progress": "false",
}


@pytest.fixture
def tiny(tmp_path):
    """Overrides for a run of a few seconds in ``tmp_path/run``; update the dict to vary it."""
    return {**TINY, "out": str(tmp_path / "run")}
