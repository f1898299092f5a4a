"""Replay storage: the n-step transform and device-resident ring buffers.

N = number of parallel environments, D = observation size, A = action size,
C = buffer capacity in rows, B = batch size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Transitions(NamedTuple):
    """A batch of n-step transitions; every field has leading size B (or N).

    obs ``[B, D]``, action ``[B, A]``, ret ``[B]`` (discounted sum of up to n
    rewards, stopping at the episode's end), next_obs ``[B, D]`` (the observation
    to bootstrap from: the true final one where the episode ended inside the n
    steps), discount ``[B]`` (gamma**m for the m rewards summed, 0 after a
    termination; a truncation keeps gamma**m so the value bootstraps).
    """

    obs: torch.Tensor
    action: torch.Tensor
    ret: torch.Tensor
    next_obs: torch.Tensor
    discount: torch.Tensor

    def packed(self) -> torch.Tensor:
        """The fields side by side, ``[B, 2D + A + 2]``, in the column order of :func:`transition_buffer`
        (so the first D columns are the observations)."""
        return torch.cat([self.obs, self.action, self.ret[:, None], self.next_obs, self.discount[:, None]], 1)


class NStepWindow:
    """The last n one-step transitions of every environment, turned into n-step ones.

    ``push`` takes one step of all N envs; once n steps are held, it returns the
    n-step transitions that start at the oldest held step. The window is a ring
    of n slots, so no data moves when it advances.
    """

    def __init__(self, n: int, gamma: float, num_envs: int, obs_dim: int, act_dim: int,
                 device: torch.device | str, dtype: torch.dtype = torch.float32) -> None:
        self.n, self.gamma = n, gamma
        self.head = 0  # slot of the oldest step
        self.filled = 0
        kw = {"device": device, "dtype": dtype}
        self.obs = torch.zeros(n, num_envs, obs_dim, **kw)
        self.action = torch.zeros(n, num_envs, act_dim, **kw)
        self.reward = torch.zeros(n, num_envs, **kw)
        self.next_obs = torch.zeros(n, num_envs, obs_dim, **kw)
        self.terminated = torch.zeros(n, num_envs, dtype=torch.bool, device=device)
        self.done = torch.zeros(n, num_envs, dtype=torch.bool, device=device)
        self.powers = gamma ** torch.arange(n, device=device, dtype=dtype)  # [n]

    def push(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
             terminated: torch.Tensor, truncated: torch.Tensor) -> Transitions | None:
        """Add one step: obs ``[N, D]``, action ``[N, A]``, reward ``[N]``, next_obs ``[N, D]``
        (the true final observation where done), terminated/truncated ``[N]`` bool.

        Returns N n-step transitions starting at the oldest step, or None while fewer
        than n steps are held.
        """
        slot = (self.head + self.filled) % self.n
        if self.filled == self.n:  # full: overwrite the oldest, which was emitted already
            slot = self.head
            self.head = (self.head + 1) % self.n
        else:
            self.filled += 1
        self.obs[slot] = obs
        self.action[slot] = action
        self.reward[slot] = reward
        self.next_obs[slot] = next_obs
        self.terminated[slot] = terminated
        self.done[slot] = terminated | truncated
        return self._emit() if self.filled == self.n else None

    def _emit(self) -> Transitions:
        order = (self.head + torch.arange(self.n, device=self.reward.device)) % self.n  # oldest first
        done = self.done[order]  # [n, N]
        # alive[k] = 1 while no episode end happened in steps 0..k-1 of the window.
        alive = torch.ones(done.shape, dtype=self.reward.dtype, device=done.device)
        alive[1:] = torch.cumprod((~done[:-1]).to(self.reward.dtype), 0)
        ret = (self.powers[:, None] * alive * self.reward[order]).sum(0)  # [N]
        steps = alive.sum(0).long()  # m in 1..n
        last = order[steps - 1]  # slot of the step whose next_obs we bootstrap from, [N]
        envs = torch.arange(done.shape[1], device=done.device)
        terminated = self.terminated[last, envs]
        discount = self.gamma ** steps.to(self.reward.dtype) * (~terminated).to(self.reward.dtype)
        return Transitions(self.obs[self.head].clone(), self.action[self.head].clone(), ret,
                           self.next_obs[last, envs], discount)


def batch_rows(batch_size: int, envs: int) -> int:
    """The rows of a sample of ``batch_size``: itself, or sampled per env (``envs`` > 1) ``E x max(1, B // E)``."""
    return batch_size if envs == 1 else envs * max(1, batch_size // envs)


class RingBuffer:
    """Fixed-capacity FIFO of named fields with uniform sampling (with replacement).

    Fields are scalars (shape ``()``) or vectors (``(k,)``), stored side by side in
    one ``[C, W]`` tensor so that a sample is a single gather; ``data[name]`` is a
    ``[C, *field_shape]`` view. ``add`` writes rows at the write pointer, wrapping
    around the end; ``sample`` draws B random rows. A buffer belongs to one worker:
    other workers hand it rows through a :class:`pql.workers.exchange.TransitionRing`.
    """

    def __init__(self, capacity: int, fields: dict[str, tuple[int, ...]], device: torch.device | str,
                 dtype: torch.dtype = torch.float32, envs: int = 1) -> None:
        if capacity % envs or capacity < envs:
            raise ValueError(f"a buffer sampled per env holds whole steps: capacity {capacity} is not a multiple "
                             f"of {envs} envs")
        self.capacity, self.envs = capacity, envs
        self.ptr = 0
        self.size = 0
        self.columns: dict[str, tuple[int, int, bool]] = {}  # name -> (start, stop, scalar)
        width = 0
        for name, shape in fields.items():
            if len(shape) > 1:
                raise ValueError(f"field '{name}': only scalar or vector fields, got shape {shape}")
            size = shape[0] if shape else 1
            self.columns[name] = (width, width + size, not shape)
            width += size
        self.storage = torch.zeros(capacity, width, device=device, dtype=dtype)
        self.data = self._split(self.storage)
        self.width = width

    def _split(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: rows[:, a] if scalar else rows[:, a:b] for name, (a, b, scalar) in self.columns.items()}

    def add(self, **rows: torch.Tensor) -> None:
        """Append rows: each named field ``[R, *field_shape]`` with the same R."""
        self.add_rows(torch.cat([rows[name].reshape(rows[name].shape[0], -1) for name in self.columns], 1))

    def add_rows(self, packed: torch.Tensor) -> torch.Tensor:
        """Append ``packed [R, W]`` (fields side by side, in column order, any device); returns the
        copy on this buffer's device (the caller may wait for it, see :func:`pql.workers.exchange.settle`)."""
        packed = packed.to(self.storage)
        if packed.shape[0] % self.envs:
            raise ValueError(f"a buffer sampled per env takes whole steps of {self.envs} rows, got {packed.shape[0]}")
        if packed.shape[0] > self.capacity:  # only the newest rows fit
            packed = packed[-self.capacity:]
        count = packed.shape[0]
        idx = (self.ptr + torch.arange(count, device=self.storage.device)) % self.capacity
        self.storage.index_copy_(0, idx, packed)
        self.ptr = (self.ptr + count) % self.capacity
        self.size = min(self.size + count, self.capacity)
        return self.storage

    def batch_rows(self, batch_size: int) -> int:
        """The rows a sample of ``batch_size`` holds (:func:`batch_rows`)."""
        return batch_rows(batch_size, self.envs)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Rows drawn uniformly from the filled part: ``{name: [R, *field_shape]}``, R = :meth:`batch_rows`. Per
        env (``envs`` E > 1; rows are added E at a time, one per env, so env e's rows are those at e mod E):
        ``max(1, B // E)`` of each env's rows, env-major, as FastTD3's per-env buffer samples."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty buffer")
        device = self.storage.device
        if self.envs == 1:
            idx = torch.randint(self.size, (batch_size,), generator=generator, device=device)
        else:
            steps = torch.randint(self.size // self.envs, (self.envs, self.batch_rows(batch_size) // self.envs),
                                  generator=generator, device=device)  # [E, B // E]: which step of each env
            idx = (steps * self.envs + torch.arange(self.envs, device=device)[:, None]).reshape(-1)
        return self._split(self.storage[idx])

    def stand_in(self, batch_size: int) -> dict[str, torch.Tensor]:
        """:meth:`batch_rows` rows of zeros laid out as :meth:`sample`'s (same shapes and strides), to compile on."""
        return self._split(self.storage.new_zeros(self.batch_rows(batch_size), self.width))


def transition_buffer(capacity: int, obs_dim: int, act_dim: int, device: torch.device | str,
                      envs: int = 1) -> RingBuffer:
    """The V-learner's buffer of n-step transitions (fields as in :class:`Transitions`); ``envs`` > 1: sampled
    per env (the capacity rounded down to whole steps)."""
    return RingBuffer(capacity - capacity % envs, {"obs": (obs_dim,), "action": (act_dim,), "ret": (),
                                                   "next_obs": (obs_dim,), "discount": ()}, device, envs=envs)


def observation_buffer(capacity: int, obs_dim: int, device: torch.device | str, envs: int = 1) -> RingBuffer:
    """The P-learner's buffer of observations only; ``envs`` as :func:`transition_buffer`'s."""
    return RingBuffer(capacity - capacity % envs, {"obs": (obs_dim,)}, device, envs=envs)
