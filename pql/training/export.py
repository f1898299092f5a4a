"""Export a trained policy as a self-contained TorchScript module (``policy.pt``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pql.algos import algorithm
from pql.envs import make_env
from pql.normalizer import RunningNormalizer
from pql.store.run_dir import RunDir


class DeployedPolicy(nn.Module):
    """Raw observations ``[B, D]`` -> actions ``[B, A]`` in the environment's own units."""

    def __init__(self, normalizer: RunningNormalizer, actor: nn.Module, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", normalizer.mean.clone())
        self.register_buffer("std", torch.sqrt(normalizer.var + normalizer.eps))
        self.register_buffer("low", low.clone().float())
        self.register_buffer("high", high.clone().float())
        self.clip = float(normalizer.clip)
        self.normalize = bool(normalizer.enabled)
        self.actor = actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The action ``[B, act_dim]`` in env units for raw observations ``obs [B, obs_dim]``."""
        x = obs.to(self.mean.dtype)
        if self.normalize:
            x = (x - self.mean) / self.std
        x = x.clamp(-self.clip, self.clip)
        return self.low + (self.actor(x) + 1.0) * 0.5 * (self.high - self.low)


def export_policy(run_path: str | Path, out: str | Path | None = None) -> Path:
    """Write ``policy.pt`` (TorchScript, CPU) from the run's checkpoint; returns its path."""
    run = RunDir(run_path, create=False)
    if not run.checkpoint_path.exists():
        raise FileNotFoundError(f"{run.path}: no checkpoint.pt to export from")
    cfg = run.read_config()
    env = make_env(cfg.task, 1, device="cpu")
    state = run.load_checkpoint("cpu")
    actor = algorithm(cfg.algo.name).make_policy(cfg.algo, env.obs_dim, env.act_dim)
    actor.load_state_dict(state["policy"])
    normalizer = RunningNormalizer(env.obs_dim, cfg.algo.obs_clip, enabled=cfg.algo.normalize_obs)
    normalizer.load_state_dict(state["normalizer"])
    module = torch.jit.script(DeployedPolicy(normalizer, actor, env.action_low, env.action_high).eval())
    path = Path(out) if out is not None else run.path / "policy.pt"
    module.save(str(path))
    return path
