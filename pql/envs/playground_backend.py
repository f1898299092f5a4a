"""``playground/<Env>``: MuJoCo Playground environments (real MuJoCo physics in JAX) behind the torch contract.

The N copies are one ``jax.vmap`` of the environment's ``reset``/``step``, compiled
once with ``jax.jit``; tensors cross between JAX and torch through DLPack, without
copies, on the torch device (CPU here, the same GPU as torch where there is one).

Playground's own auto-reset wrapper replaces a finished episode's state before the
caller sees it, so the terminal observation is lost (its issue #305). This adapter
does its own auto-reset inside the compiled step: it keeps the stepped state's
observation as ``final_obs`` and only then swaps in a fresh episode, and it counts
steps itself so that the time limit (``episode_length``) is truncation while the
environment's ``done`` (e.g. a NaN state, a fall) is termination.

JAX preallocates 75 % of a GPU's memory at start-up; the first import here sets
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (unless the user set it) so that torch can
share the GPU. It also turns on JAX's persistent compilation cache in
``~/.cache/pql/jax`` (``$XDG_CACHE_HOME/pql/jax``; unless ``JAX_COMPILATION_CACHE_DIR``
names another): compiling a task's step takes 10-30 s on a CPU, and every later
process with the same task, env count and device (each cell of a study, each async
worker, each resume) loads it instead. The time limit is an argument of the compiled
step, not a constant in it, so runs with other episode lengths share it too.
``JAX_ENABLE_COMPILATION_CACHE=false`` turns the cache off.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from pql.envs.contract import StepResult, VecEnv

INSTALL = "pip install playground"
# Physics implementation of mujoco.mjx: 'jax' compiles once per process and needs no extra runtime.
DEFAULT_IMPL = "jax"


def _modules() -> tuple[Any, Any, Any]:
    """jax, jax.numpy and mujoco_playground.registry, imported on first use with GPU sharing on."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
        import jax.numpy as jnp
        from mujoco_playground import registry
    except ImportError as err:
        raise ImportError(f"the playground/ backend needs MuJoCo Playground: {INSTALL}") from err
    if jax.config.jax_compilation_cache_dir is None:  # neither the user nor JAX_COMPILATION_CACHE_DIR set one
        jax.config.update("jax_compilation_cache_dir", str(compilation_cache_dir()))
    return jax, jnp, registry


def compilation_cache_dir() -> Path:
    """Where compiled Playground steps are kept between processes: ``$XDG_CACHE_HOME/pql/jax``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pql" / "jax"


def playground_task_problem(name: str) -> str | None:
    """Why ``playground/<name>`` cannot be made here (Playground missing, unknown or non-flat env), or None."""
    try:
        _, _, registry = _modules()
    except ImportError as err:
        return str(err)
    if name not in registry.ALL_ENVS:
        suite = ", ".join(registry.dm_control_suite.ALL_ENVS)
        return f"MuJoCo Playground has no environment '{name}'; the DM Control Suite ones (offline): {suite}"
    return None


def _jax_device(jax: Any, device: torch.device) -> Any:
    """The JAX device that shares memory with the torch ``device``."""
    if device.type == "cpu":
        return jax.devices("cpu")[0]
    if device.type == "cuda":
        try:
            gpus = jax.devices("cuda")
        except RuntimeError as err:
            raise RuntimeError(f"torch device {device} but JAX sees no CUDA GPU: pip install 'jax[cuda12]'") from err
        return gpus[device.index or 0]
    raise ValueError(f"playground/ runs on cpu or cuda devices, not {device}")


class PlaygroundVecEnv(VecEnv):
    """N copies of one MuJoCo Playground environment, stepped by one compiled JAX function."""

    def __init__(self, name: str, num_envs: int, device: str | torch.device = "cpu", seed: int = 0,
                 impl: str = DEFAULT_IMPL, episode_length: int | None = None) -> None:
        jax, jnp, registry = _modules()
        self.name, self.num_envs, self.device, self.dtype = name, num_envs, torch.device(device), torch.float32
        config = registry.get_default_config(name)
        config.impl = impl
        if episode_length is not None:
            config.episode_length = episode_length
        self.env = registry.load(name, config=config)
        obs_size = self.env.observation_size
        if not isinstance(obs_size, int):
            raise ValueError(f"playground/{name}: needs a flat observation vector, got {obs_size}")
        self.obs_dim, self.act_dim = obs_size, self.env.action_size
        model = self.env.mj_model
        limited = torch.as_tensor(model.actuator_ctrllimited, dtype=torch.bool)
        ctrl = torch.as_tensor(model.actuator_ctrlrange, dtype=self.dtype)
        self.action_low = torch.where(limited, ctrl[:, 0], -1.0).to(self.device)
        self.action_high = torch.where(limited, ctrl[:, 1], 1.0).to(self.device)
        self.max_episode_steps = int(config.episode_length)
        self.seed = seed
        self._seeded = False
        # Seeds of resets after the first, drawn like the other backends' so that checkpoints restore them.
        self.generator = torch.Generator().manual_seed(seed)
        self._jax, self._jnp, self._device = jax, jnp, _jax_device(jax, self.device)
        self._reset_fn = jax.jit(self._reset_batch)
        self._step_fn = jax.jit(self._step_batch)
        # The time limit is an argument of the step, so that one compiled program serves any limit.
        self._limit = jax.device_put(jnp.int32(self.max_episode_steps), self._device)
        self._state = self._steps = self._key = None

    # ---- compiled JAX functions (pure) ----------------------------------------------------
    def _reset_batch(self, key: Any) -> tuple[Any, Any]:
        """Fresh states of all N envs from ``key``; returns (state, the next key)."""
        key, sub = self._jax.random.split(key)
        return self._jax.vmap(self.env.reset)(self._jax.random.split(sub, self.num_envs)), key

    def _step_batch(self, state: Any, steps: Any, key: Any, action: Any, limit: Any) -> tuple[Any, ...]:
        """One step of every env, then a fresh episode wherever one ended (``limit``: steps per episode),
        keeping the final observation."""
        jax, jnp = self._jax, self._jnp
        stepped = jax.vmap(self.env.step)(state, action)
        steps = steps + 1
        terminated = stepped.done > 0
        truncated = steps >= limit
        done = terminated | truncated
        # A diverged (NaN) state terminates; its observation and reward must not poison the replay buffer.
        final_obs = jnp.nan_to_num(stepped.obs, nan=0.0, posinf=0.0, neginf=0.0)
        reward = jnp.nan_to_num(stepped.reward, nan=0.0, posinf=0.0, neginf=0.0)

        def with_resets(key: Any) -> tuple[Any, Any]:
            fresh, key = self._reset_batch(key)

            def pick(new: Any, old: Any) -> Any:
                if old.size == 0:  # empty leaves (e.g. contact arrays of a contact-free model) have nothing to pick
                    return new
                return jnp.where(done.reshape(done.shape + (1,) * (old.ndim - 1)), new, old)

            return jax.tree_util.tree_map(pick, fresh, stepped), key

        state, key = jax.lax.cond(done.any(), with_resets, lambda key: (stepped, key), key)
        steps = jnp.where(done, 0, steps)
        return state, steps, key, reward, terminated, truncated, final_obs

    @property
    def jax_state(self) -> Any:
        """The batched Playground ``State`` the next step starts from (leaves ``[N, ...]``), for inspection."""
        return self._state

    # ---- the contract ----------------------------------------------------------------------
    def reset(self) -> torch.Tensor:
        """Start all N episodes afresh; returns obs ``[N, D]``."""
        seed = self.seed if not self._seeded else int(torch.randint(2**31 - 1, (), generator=self.generator))
        self._seeded = True
        key = self._jax.device_put(self._jax.random.PRNGKey(seed), self._device)
        compiling = self.compile_s == 0.0
        begun = time.perf_counter()
        self._state, self._key = self._reset_fn(key)
        self._steps = self._jax.device_put(self._jnp.zeros(self.num_envs, self._jnp.int32), self._device)
        if compiling:  # compile the step now (a pure function: the result is dropped), not in the first step
            # Placed on the device as the actions will be (from DLPack): an uncommitted array compiles another
            # program, and the first step would compile again, on the clock.
            idle = self._jax.device_put(self._jnp.zeros((self.num_envs, self.act_dim), self._jnp.float32),
                                        self._device)
            self._jax.block_until_ready(self._step_fn(self._state, self._steps, self._key, idle, self._limit))
            self.compile_s = time.perf_counter() - begun
        return torch.from_dlpack(self._state.obs)

    def set_episode_steps(self, steps: torch.Tensor) -> None:
        """Steps into the current episodes ``[N]`` (long); the step counter is the adapter's own."""
        counts = self._jnp.asarray(steps.to(torch.int32).cpu().numpy())
        self._steps = self._jax.device_put(counts, self._device)

    def step(self, actions: torch.Tensor) -> StepResult:
        """Actions ``[N, A]`` -> obs ``[N, D]``, reward ``[N]``, terminated ``[N]``, truncated ``[N]``,
        info ``{"final_obs": [N, D]}``; the tensors share memory with JAX's arrays."""
        action = self._jnp.from_dlpack(actions.detach().to(self.device, self.dtype).contiguous())
        self._state, self._steps, self._key, reward, term, trunc, final = self._step_fn(
            self._state, self._steps, self._key, action, self._limit)
        return (torch.from_dlpack(self._state.obs), torch.from_dlpack(reward), torch.from_dlpack(term),
                torch.from_dlpack(trunc), {"final_obs": torch.from_dlpack(final)})
