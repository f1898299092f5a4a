"""Running observation normalisation (mean/std over every observation seen)."""

from __future__ import annotations

import torch
from torch import nn


class RunningNormalizer(nn.Module):
    """Per-feature running mean and variance, merged batch by batch (Chan et al.).

    The count starts at zero, so the first batch sets the statistics exactly: no
    zero-prefill pulls early estimates toward 0. Until any update, ``forward`` only
    clamps. Buffers: ``mean [D]``, ``var [D]`` (float32), ``count []`` (float64).
    """

    def __init__(self, dim: int, clip: float = 5.0, eps: float = 1e-8, enabled: bool = True) -> None:
        super().__init__()
        self.clip, self.eps, self.enabled = clip, eps, enabled
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch ``x [B, D]`` into the statistics."""
        if not self.enabled:
            return
        x = x.to(self.mean.device, torch.float64)
        batch_count = x.shape[0]
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=False)
        total = self.count + batch_count
        delta = batch_mean - self.mean
        new_mean = self.mean + delta * (batch_count / total)
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * (self.count * batch_count / total)
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of the (unclamped) normalisation: ``x * std + mean``."""
        if not self.enabled:
            return x
        return x * torch.sqrt(self.var + self.eps) + self.mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised and clamped ``x [..., D]``."""
        if self.enabled:
            x = (x - self.mean) / torch.sqrt(self.var + self.eps)
        return x.clamp(-self.clip, self.clip)
