"""A toy task with Ant's sizes and IsaacGymEnvs' reset pattern: finished envs reset in the next step's
``post_physics_step`` before the observations are computed; falling (|position| > 1) ends an episode."""

from __future__ import annotations

import torch

from isaacgymenvs.tasks.base.vec_task import VecTask


class Ant(VecTask):
    def __init__(self, cfg: dict, rl_device: str, sim_device: str, graphics_device_id: int, headless: bool):
        cfg["env"].update(numObservations=60, numActions=8)
        super().__init__(cfg, rl_device, sim_device, graphics_device_id, headless)
        self.pos = torch.zeros(self.num_envs, self.num_actions, device=self.device)
        self.vel = torch.zeros_like(self.pos)
        self.dt = 0.05

    def reset_idx(self, env_ids: torch.Tensor) -> None:
        self.pos[env_ids] = 0.1 * (torch.rand(len(env_ids), self.num_actions, device=self.device) - 0.5)
        self.vel[env_ids] = 0.0
        self.progress_buf[env_ids] = 0
        self.reset_buf[env_ids] = 0

    def pre_physics_step(self, actions: torch.Tensor) -> None:
        self.actions = actions.clone()

    def simulate(self) -> None:
        self.vel += self.dt * (self.actions - self.vel)  # damped: random actions stay near 0, pushing falls
        self.pos += self.dt * (self.vel - 0.5 * self.pos)

    def post_physics_step(self) -> None:
        self.progress_buf += 1
        env_ids = self.reset_buf.nonzero(as_tuple=False).squeeze(-1)
        if len(env_ids) > 0:
            self.reset_idx(env_ids)
        self.obs_buf[:] = torch.cat([self.pos, self.vel, self.pos.new_zeros(self.num_envs, 44)], dim=-1)
        self.rew_buf[:] = 1.0 - self.pos.abs().mean(-1)
        fallen = (self.pos.abs() > 1.0).any(-1)
        self.reset_buf[:] = torch.where(fallen | (self.progress_buf >= self.max_episode_length - 1), 1, 0)
