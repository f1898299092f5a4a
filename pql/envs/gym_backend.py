"""``gym/<id>``: any gymnasium environment with a Box observation and action, through its vector API.

For users without a GPU simulator (e.g. MuJoCo's ``Ant-v5`` on CPU). The N copies
step in this process (gymnasium's sync vector env, same-step auto-reset, so the
true final observation arrives with the step that ended the episode); arrays are
converted to torch tensors on the requested device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pql.envs.contract import StepResult, VecEnv

INSTALL = "pip install gymnasium (and gymnasium[mujoco] for the MuJoCo tasks)"


def _gymnasium() -> Any:
    try:
        import gymnasium
    except ImportError as err:
        raise ImportError(f"the gym/ backend needs gymnasium: {INSTALL}") from err
    return gymnasium


def gym_task_problem(env_id: str) -> str | None:
    """Why ``gym/<env_id>`` cannot be made here (gymnasium missing or the id unknown), or None."""
    try:
        gym = _gymnasium()
    except ImportError as err:
        return str(err)
    try:
        gym.spec(env_id)
    except gym.error.Error as err:
        return f"gymnasium has no environment '{env_id}' ({err})"
    return None


class GymVecEnv(VecEnv):
    """N gymnasium environments of one id behind the torch contract (float32 tensors on ``device``)."""

    def __init__(self, env_id: str, num_envs: int, device: str | torch.device = "cpu", seed: int = 0) -> None:
        gym = _gymnasium()
        from gymnasium.vector import AutoresetMode

        self.env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                                vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
        obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
        if len(obs_space.shape or ()) != 1 or len(act_space.shape or ()) != 1:
            raise ValueError(f"gym/{env_id}: needs flat Box observations and actions, got {obs_space} and {act_space}")
        self.num_envs, self.device, self.dtype = num_envs, torch.device(device), torch.float32
        self.obs_dim, self.act_dim = obs_space.shape[0], act_space.shape[0]
        self.action_low = torch.as_tensor(act_space.low, dtype=self.dtype, device=self.device)
        self.action_high = torch.as_tensor(act_space.high, dtype=self.dtype, device=self.device)
        spec = self.env.spec
        self.max_episode_steps = spec.max_episode_steps if spec is not None else None
        self.seed = seed
        self._seeded = False
        # Seeds of the environments' resets after the first: drawn from a torch generator like the classic tasks'.
        self.generator = torch.Generator().manual_seed(seed)

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)

    def reset(self) -> torch.Tensor:
        """Reset every env (seeded on the first call, then from this env's generator); observations ``[N, obs_dim]``."""
        seed = self.seed if not self._seeded else int(torch.randint(2**31 - 1, (), generator=self.generator))
        self._seeded = True
        obs, _ = self.env.reset(seed=seed)
        return self._tensor(obs)

    def step(self, actions: torch.Tensor) -> StepResult:
        """Step every env with ``actions [N, act_dim]``; gymnasium's autoreset, with each ended env's true final
        observation."""
        obs, reward, terminated, truncated, info = self.env.step(actions.detach().cpu().numpy())
        final = np.array(obs, dtype=np.float32, copy=True)
        if "_final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = info["final_obs"][i]
        to_bool = lambda x: torch.as_tensor(np.asarray(x, dtype=bool), device=self.device)  # noqa: E731
        return (self._tensor(obs), self._tensor(reward), to_bool(terminated), to_bool(truncated),
                {"final_obs": self._tensor(final)})
