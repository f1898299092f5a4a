"""``isaaclab/<gym id>``: Isaac Lab environments (e.g. ``Isaac-Ant-Direct-v0``) behind the torch contract.

Isaac Lab environments are gymnasium environments over torch tensors on the GPU:
``reset() -> (obs, extras)`` and ``step(action) -> (obs, reward, terminated, time_outs, extras)``
with ``obs["policy"]`` ``[N, D]``, ``reward`` ``[N]``, ``terminated`` and ``time_outs`` ``[N]`` bool.
Inside ``step`` they reset finished environments (``_reset_idx``) before computing the
observations, so the returned observation already starts the next episode and the
terminal one is lost. This adapter wraps the environment's ``_reset_idx`` to compute
the observations of the environments about to be reset just before they are, and
reports them as ``info["final_obs"]``.

Creating an Isaac Lab environment first starts Isaac Sim (``isaaclab.app.AppLauncher``,
headless), once per process.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from pql.envs.contract import StepResult, VecEnv

INSTALL = ("Isaac Lab with Isaac Sim (NVIDIA GPU, Linux or Windows): "
           "pip install 'isaaclab[isaacsim,all]' --extra-index-url https://pypi.nvidia.com "
           "(see https://isaac-sim.github.io/IsaacLab)")

_app: Any = None  # the running Isaac Sim application, started once per process


def isaaclab_task_problem(gym_id: str) -> str | None:
    """Why ``isaaclab/<gym_id>`` cannot be made here (Isaac Lab missing), or None.

    Whether the id exists is only known once Isaac Sim runs (its tasks register on import)."""
    if importlib.util.find_spec("isaaclab") is None or importlib.util.find_spec("isaaclab_tasks") is None:
        return f"the isaaclab/ backend needs Isaac Lab: {INSTALL}"
    return None


def _launch(device: torch.device) -> tuple[Any, Any]:
    """Start Isaac Sim headless (once), then import the task registry; returns (gymnasium, parse_env_cfg)."""
    global _app
    try:
        from isaaclab.app import AppLauncher
    except ImportError as err:
        raise ImportError(f"the isaaclab/ backend needs Isaac Lab: {INSTALL}") from err
    if _app is None:
        _app = AppLauncher(headless=True, device=str(device)).app
    import gymnasium
    import isaaclab_tasks  # noqa: F401  (registers the Isaac-* gymnasium ids)
    from isaaclab_tasks.utils import parse_env_cfg

    return gymnasium, parse_env_cfg


def _policy_obs(unwrapped: Any) -> torch.Tensor:
    """The policy observations ``[N, D]`` of every env, computed from the current simulation state."""
    if hasattr(unwrapped, "observation_manager"):  # manager-based envs
        return unwrapped.observation_manager.compute()["policy"]
    return unwrapped._get_observations()["policy"]  # direct envs


class IsaacLabVecEnv(VecEnv):
    """The N environments of one Isaac Lab task, with the true final observation recovered."""

    def __init__(self, gym_id: str, num_envs: int, device: str | torch.device = "cuda:0", seed: int = 0) -> None:
        self.device, self.dtype = torch.device(device), torch.float32
        gym, parse_env_cfg = _launch(self.device)
        cfg = parse_env_cfg(gym_id, device=str(self.device), num_envs=num_envs)
        cfg.seed = seed
        self.env = gym.make(gym_id, cfg=cfg)
        base = self.env.unwrapped
        obs_space, act_space = base.single_observation_space["policy"], base.single_action_space
        if len(obs_space.shape) != 1 or len(act_space.shape) != 1:
            raise ValueError(f"isaaclab/{gym_id}: needs flat observations and actions, got {obs_space}, {act_space}")
        self.num_envs, self.obs_dim, self.act_dim = base.num_envs, obs_space.shape[0], act_space.shape[0]
        # Isaac Lab's action spaces are usually unbounded: the policy's [-1, 1] then.
        low = torch.as_tensor(act_space.low, dtype=self.dtype)
        high = torch.as_tensor(act_space.high, dtype=self.dtype)
        self.action_low = torch.where(torch.isfinite(low), low, -1.0).to(self.device)
        self.action_high = torch.where(torch.isfinite(high), high, 1.0).to(self.device)
        self.max_episode_steps = int(base.max_episode_length)
        self.seed = seed
        self._seeded = False
        self.generator = torch.Generator().manual_seed(seed)
        self._finals: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._wrap_reset_idx(base)

    def _wrap_reset_idx(self, base: Any) -> None:
        """Make ``base._reset_idx`` keep the observations of the envs it is about to reset (during ``step``)."""
        reset_idx = base._reset_idx

        def reset_idx_keeping_final_obs(env_ids: Any, *args: Any, **kwargs: Any) -> Any:
            if self._stepping:
                ids = torch.as_tensor(env_ids, device=self.device, dtype=torch.long)
                self._finals.append((ids, _policy_obs(base)[ids].to(self.dtype).clone()))
            return reset_idx(env_ids, *args, **kwargs)

        self._stepping = False
        base._reset_idx = reset_idx_keeping_final_obs

    def reset(self) -> torch.Tensor:
        """Restart every environment; returns obs ``[N, D]``."""
        seed = self.seed if not self._seeded else int(torch.randint(2**31 - 1, (), generator=self.generator))
        self._seeded = True
        obs, _ = self.env.reset(seed=seed)
        return obs["policy"].to(self.dtype).clone()

    def set_episode_steps(self, steps: torch.Tensor) -> None:
        """Steps into the current episodes ``[N]`` (long): the env's ``episode_length_buf``, as rsl_rl's
        ``init_at_random_ep_len`` sets it."""
        buf = self.env.unwrapped.episode_length_buf
        buf[:] = steps.to(buf)

    def step(self, actions: torch.Tensor) -> StepResult:
        """Actions ``[N, A]`` -> obs ``[N, D]``, reward ``[N]``, terminated ``[N]``, truncated ``[N]``,
        info ``{"final_obs": [N, D]}``."""
        self._finals.clear()
        self._stepping = True
        try:
            obs, reward, terminated, truncated, _ = self.env.step(actions.to(self.device))
        finally:
            self._stepping = False
        obs = obs["policy"].to(self.dtype).clone()
        final = obs.clone()
        for ids, last in self._finals:
            final[ids] = last
        return (obs, reward.to(self.dtype).clone(), terminated.to(torch.bool).clone(),
                truncated.to(torch.bool).clone(), {"final_obs": final})
