"""Stand-in for IsaacGymEnvs' ``make``; see tests/fakes/README.md."""

from __future__ import annotations

import torch

from isaacgymenvs.tasks import isaacgym_task_map

__version__ = "fake"


def make(seed: int, task: str, num_envs: int, sim_device: str, rl_device: str, graphics_device_id: int = -1,
         headless: bool = False, multi_gpu: bool = False, virtual_screen_capture: bool = False,
         force_render: bool = True, cfg: dict | None = None):
    """Build task ``task`` with ``num_envs`` environments, seeding torch like IsaacGymEnvs' set_seed."""
    torch.manual_seed(seed)
    task_cfg = {"env": {"numEnvs": num_envs, "episodeLength": 1000, "clipActions": 1.0, "clipObservations": 5.0}}
    if cfg:
        task_cfg["env"].update(cfg.get("env", {}))
    return isaacgym_task_map[task](task_cfg, rl_device, sim_device, graphics_device_id, headless)
