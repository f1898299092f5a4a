"""Shared fixtures: a tiny, fast training configuration; the Isaac simulator fakes."""

import sys
from pathlib import Path

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


FAKES = Path(__file__).parent / "fakes"
FAKE_PACKAGES = ("isaacgym", "isaacgymenvs", "isaaclab", "isaaclab_tasks")


@pytest.fixture
def isaac_fakes(monkeypatch):
    """The Isaac Gym / Isaac Lab fakes (tests/fakes) importable; afterwards their modules are forgotten
    and Isaac Sim counts as not started."""
    import gymnasium as gym

    import pql.envs.isaaclab_backend as lab

    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.setattr(lab, "_app", None)
    yield FAKES
    for name in list(sys.modules):
        if name.split(".")[0] in FAKE_PACKAGES:
            del sys.modules[name]
    gym.registry.pop("Isaac-Ant-Direct-v0", None)
