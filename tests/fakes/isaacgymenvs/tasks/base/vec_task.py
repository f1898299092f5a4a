"""Stand-in for IsaacGymEnvs' ``VecTask``: the same buffers and the same ``step``/``reset`` order."""

from __future__ import annotations

import abc
from typing import Any

import gymnasium as gym
import numpy as np
import torch


class VecTask(abc.ABC):
    def __init__(self, config: dict, rl_device: str, sim_device: str, graphics_device_id: int, headless: bool):
        self.cfg = config
        self.rl_device, self.device, self.headless = rl_device, sim_device, headless
        self.num_envs = config["env"]["numEnvs"]
        self.num_obs, self.num_actions, self.num_states = config["env"]["numObservations"], \
            config["env"]["numActions"], 0
        self.max_episode_length = config["env"]["episodeLength"]
        self.clip_actions, self.clip_obs = config["env"]["clipActions"], config["env"]["clipObservations"]
        self.control_freq_inv = 1
        self.control_steps = 0
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.num_obs,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.num_actions,), np.float32)
        self.allocate_buffers()
        self.obs_dict: dict[str, torch.Tensor] = {}

    def allocate_buffers(self) -> None:
        n, dev = self.num_envs, self.device
        self.obs_buf = torch.zeros((n, self.num_obs), device=dev, dtype=torch.float)
        self.rew_buf = torch.zeros(n, device=dev, dtype=torch.float)
        self.reset_buf = torch.ones(n, device=dev, dtype=torch.long)
        self.timeout_buf = torch.zeros(n, device=dev, dtype=torch.long)
        self.progress_buf = torch.zeros(n, device=dev, dtype=torch.long)
        self.extras: dict[str, Any] = {}

    @abc.abstractmethod
    def pre_physics_step(self, actions: torch.Tensor) -> None: ...

    @abc.abstractmethod
    def simulate(self) -> None: ...

    @abc.abstractmethod
    def post_physics_step(self) -> None: ...

    def step(self, actions: torch.Tensor):
        action_tensor = torch.clamp(actions, -self.clip_actions, self.clip_actions)
        self.pre_physics_step(action_tensor)
        for _ in range(self.control_freq_inv):
            self.simulate()
        self.post_physics_step()
        self.control_steps += 1
        self.timeout_buf = (self.progress_buf >= self.max_episode_length - 1) & (self.reset_buf != 0)
        self.extras["time_outs"] = self.timeout_buf.to(self.rl_device)
        self.obs_dict["obs"] = torch.clamp(self.obs_buf, -self.clip_obs, self.clip_obs).to(self.rl_device)
        return self.obs_dict, self.rew_buf.to(self.rl_device), self.reset_buf.to(self.rl_device), self.extras

    def reset(self):
        """Called once at the start: computes no observations (the buffer is still zeros)."""
        self.obs_dict["obs"] = torch.clamp(self.obs_buf, -self.clip_obs, self.clip_obs).to(self.rl_device)
        return self.obs_dict
