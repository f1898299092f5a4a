"""``isaacgym/<Task>``: IsaacGymEnvs tasks (the paper's simulator) behind the torch contract.

IsaacGymEnvs' ``VecTask`` (``isaacgymenvs.make(seed, task, num_envs, sim_device, rl_device, ...)``)
returns from ``step(actions)`` a tuple ``(obs_dict, rew_buf, reset_buf, extras)``:
``obs_dict["obs"]`` ``[N, D]`` float, ``rew_buf`` ``[N]`` float, ``reset_buf`` ``[N]`` long (non-zero:
the episode ended) and ``extras["time_outs"]`` ``[N]`` (non-zero: it ended at the time limit).
Here ``truncated = time_outs`` and ``terminated = reset_buf & ~time_outs``.

Isaac Gym resets a finished environment during the *next* step, so the observation
returned with ``reset_buf`` set is the true final observation (``final_obs``) and is
also what the policy acts on next: the first observation of the new episode only
arrives one step later. ``reset()`` starts every episode afresh by setting
``reset_buf`` and stepping with zero actions (``VecTask.reset()`` itself computes no
observations). Isaac Gym runs one simulation per process (``_create_sim_once``).

Isaac Gym must be imported before torch; ``pql train`` and the ablation jobs do so
for ``isaacgym/`` tasks (:mod:`pql.preload`).
"""

from __future__ import annotations

from typing import Any

import torch

from pql.envs.contract import StepResult, VecEnv

INSTALL = ("Isaac Gym Preview 4 (Python <= 3.8) from https://developer.nvidia.com/isaac-gym: "
           "pip install -e isaacgym/python; then IsaacGymEnvs: git clone "
           "https://github.com/isaac-sim/IsaacGymEnvs && pip install -e IsaacGymEnvs")
# The IsaacGymEnvs tasks of the paper (and BallBalance, configured in the reference code).
PAPER_TASKS = ("Ant", "Humanoid", "Anymal", "ShadowHand", "AllegroHand", "FrankaCubeStack", "BallBalance")


def _isaacgymenvs() -> Any:
    try:
        import isaacgym  # noqa: F401
        import isaacgymenvs
    except ImportError as err:
        if "imported before isaacgym" in str(err):
            raise ImportError(f"{err}: start Python with `import isaacgym` before torch (pql train does)") from err
        raise ImportError(f"the isaacgym/ backend needs Isaac Gym and IsaacGymEnvs: {INSTALL}") from err
    return isaacgymenvs


def isaacgym_task_problem(task: str) -> str | None:
    """Why ``isaacgym/<task>`` cannot be made here (Isaac Gym missing or the task unknown), or None."""
    try:
        igenvs = _isaacgymenvs()
    except ImportError as err:
        return str(err)
    from isaacgymenvs.tasks import isaacgym_task_map

    if task not in isaacgym_task_map:
        return f"IsaacGymEnvs has no task '{task}' (version {getattr(igenvs, '__version__', '?')}); " \
               f"known: {', '.join(sorted(isaacgym_task_map))}"
    return None


class IsaacGymVecEnv(VecEnv):
    """The N environments of one IsaacGymEnvs task on one GPU (sim and tensors on ``device``)."""

    reset_deferred = True

    def __init__(self, task: str, num_envs: int, device: str | torch.device = "cuda:0", seed: int = 0) -> None:
        igenvs = _isaacgymenvs()
        self.device = torch.device(device)
        self.env = igenvs.make(seed=seed, task=task, num_envs=num_envs, sim_device=str(self.device),
                               rl_device=str(self.device), graphics_device_id=-1, headless=True)
        self.num_envs, self.obs_dim, self.act_dim = self.env.num_envs, self.env.num_obs, self.env.num_actions
        self.dtype = torch.float32
        clip = float(self.env.clip_actions)
        space = self.env.action_space
        self.action_low = torch.as_tensor(space.low, dtype=self.dtype, device=self.device).clamp(min=-clip)
        self.action_high = torch.as_tensor(space.high, dtype=self.dtype, device=self.device).clamp(max=clip)
        self.max_episode_steps = int(self.env.max_episode_length)
        # Isaac Gym draws its resets from torch's global generator (seeded by make); this one is kept for
        # the contract and checkpoints.
        self.generator = torch.Generator().manual_seed(seed)

    def reset(self) -> torch.Tensor:
        """Restart every environment; returns obs ``[N, D]`` of the new episodes."""
        self.env.reset_buf[:] = 1
        obs_dict, *_ = self.env.step(torch.zeros(self.num_envs, self.act_dim, device=self.device))
        return obs_dict["obs"].to(self.dtype).clone()

    def set_episode_steps(self, steps: torch.Tensor) -> None:
        """Steps into the current episodes ``[N]`` (long): VecTask's ``progress_buf``."""
        self.env.progress_buf[:] = steps.to(self.env.progress_buf)

    def step(self, actions: torch.Tensor) -> StepResult:
        """Actions ``[N, A]`` -> obs ``[N, D]``, reward ``[N]``, terminated ``[N]``, truncated ``[N]``,
        info ``{"final_obs": [N, D]}`` (equal to obs: see the module docstring)."""
        obs_dict, reward, reset_buf, extras = self.env.step(actions.to(self.device))
        # VecTask reuses its buffers on every step: copy them out.
        obs = obs_dict["obs"].to(self.dtype).clone()
        done = reset_buf != 0
        truncated = extras["time_outs"].to(torch.bool) & done
        return obs, reward.to(self.dtype).clone(), done & ~truncated, truncated, {"final_obs": obs}
