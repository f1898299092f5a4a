"""A toy direct env with ``DirectRLEnv.step``'s order: physics, episode counters, dones, rewards,
``_reset_idx`` of finished envs, then observations (so the returned ones start the new episodes)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch


@dataclass
class SimCfg:
    dt: float = 1 / 120
    device: str = "cuda:0"


@dataclass
class SceneCfg:
    num_envs: int = 4096


@dataclass
class AntEnvCfg:
    episode_length_s: float = 15.0
    decimation: int = 2
    action_space: int = 8
    observation_space: int = 36
    seed: int | None = None
    sim: SimCfg = field(default_factory=SimCfg)
    scene: SceneCfg = field(default_factory=SceneCfg)


class AntEnv(gym.Env):
    def __init__(self, cfg: AntEnvCfg, render_mode: str | None = None, **kwargs: object) -> None:
        self.cfg, self.num_envs, self.device = cfg, cfg.scene.num_envs, torch.device(cfg.sim.device)
        self.step_dt = cfg.sim.dt * cfg.decimation
        self.max_episode_length = math.ceil(cfg.episode_length_s / self.step_dt)
        self.single_observation_space = gym.spaces.Dict(
            {"policy": gym.spaces.Box(-np.inf, np.inf, (cfg.observation_space,))})
        self.single_action_space = gym.spaces.Box(-np.inf, np.inf, (cfg.action_space,))
        n, a = self.num_envs, cfg.action_space
        self.episode_length_buf = torch.zeros(n, dtype=torch.long, device=self.device)
        self.reset_terminated = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.reset_time_outs = torch.zeros_like(self.reset_terminated)
        self.pos = torch.zeros(n, a, device=self.device)
        self.vel = torch.zeros_like(self.pos)
        self.extras: dict = {}
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            torch.manual_seed(seed)
        self._reset_idx(torch.arange(self.num_envs, device=self.device))
        return self._get_observations(), self.extras

    def step(self, action: torch.Tensor):
        self._pre_physics_step(action.to(self.device))
        for _ in range(self.cfg.decimation):
            self._apply_action()
        self.episode_length_buf += 1
        self.reset_terminated[:], self.reset_time_outs[:] = self._get_dones()
        self.reset_buf = self.reset_terminated | self.reset_time_outs
        self.reward_buf = self._get_rewards()
        reset_env_ids = self.reset_buf.nonzero(as_tuple=False).squeeze(-1).int()
        if len(reset_env_ids) > 0:
            self._reset_idx(reset_env_ids)
        self.obs_buf = self._get_observations()
        return self.obs_buf, self.reward_buf, self.reset_terminated, self.reset_time_outs, self.extras

    def _reset_idx(self, env_ids) -> None:
        env_ids = torch.as_tensor(env_ids, dtype=torch.long, device=self.device)
        self.pos[env_ids] = 0.1 * (torch.rand(len(env_ids), self.cfg.action_space, device=self.device) - 0.5)
        self.vel[env_ids] = 0.0
        self.episode_length_buf[env_ids] = 0

    def _pre_physics_step(self, actions: torch.Tensor) -> None:
        self.actions = actions.clamp(-1.0, 1.0)

    def _apply_action(self) -> None:
        dt = 2 * self.cfg.sim.dt  # damped: random actions stay near 0, pushing falls
        self.vel += dt * (self.actions - self.vel)
        self.pos += dt * (self.vel - 0.5 * self.pos)

    def _get_dones(self) -> tuple[torch.Tensor, torch.Tensor]:
        time_out = self.episode_length_buf >= self.max_episode_length - 1
        return (self.pos.abs() > 0.5).any(-1), time_out

    def _get_rewards(self) -> torch.Tensor:
        return 1.0 - self.pos.abs().mean(-1)

    def _get_observations(self) -> dict[str, torch.Tensor]:
        obs = torch.cat([self.pos, self.vel, self.pos.new_zeros(self.num_envs, 20)], dim=-1)
        return {"policy": obs}
