"""Stand-in for ``isaaclab_tasks.utils.parse_env_cfg``: the task's config class with device and num_envs set."""

from __future__ import annotations

import importlib

import gymnasium as gym


def parse_env_cfg(task_name: str, device: str = "cuda:0", num_envs: int | None = None, use_fabric: bool | None = None):
    module, name = gym.spec(task_name).kwargs["env_cfg_entry_point"].split(":")
    cfg = getattr(importlib.import_module(module), name)()
    cfg.sim.device = device
    if num_envs is not None:
        cfg.scene.num_envs = num_envs
    return cfg
