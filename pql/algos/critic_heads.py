"""Critic heads: how a twin critic's raw output becomes Q-values and a TD loss.

``pql`` uses scalar Q-values and a clipped double-Q (min of two) MSE target;
``pql-d`` uses C51 categorical distributions with a projected n-step target and
cross-entropy. Shapes: B batch, K atoms; critic outputs are ``[2, B]`` (scalar)
or ``[2, B, K]`` logits (categorical).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


class ScalarHead:
    """Twin scalar Q: target r + discount * min(Q1', Q2')."""

    out_features = 1

    def q_values(self, out: torch.Tensor) -> torch.Tensor:
        """``[2, B]`` Q-values of a ``[2, B]`` critic output."""
        return out

    def critic_loss(self, pred: torch.Tensor, target_out: torch.Tensor, ret: torch.Tensor,
                    discount: torch.Tensor, bonus: torch.Tensor | float = 0.0) -> torch.Tensor:
        """MSE of both critics ``pred [2, B]`` against ret + discount * (min Q' + bonus); summed over critics.

        ``bonus [B]`` is SAC's entropy term -alpha * log pi(a' | s'), 0 otherwise.
        """
        with torch.no_grad():
            target = ret + discount * (target_out.min(0).values + bonus)
        return F.mse_loss(pred, target.expand_as(pred), reduction="none").mean(-1).sum()

    def diagnostics(self, target_out: torch.Tensor, ret: torch.Tensor, discount: torch.Tensor,
                    bonus: torch.Tensor | float = 0.0) -> dict[str, torch.Tensor]:
        """Nothing beyond the loss for scalar critics."""
        return {}


class CategoricalHead:
    """Twin C51 critics: the target distribution is the one of lower mean, projected onto the atoms; the lower
    mean taken before the projection (ours), or after it (``pick_after_projection``: FastTD3's, whose clamp to
    [v_min, v_max] can change which critic is lower)."""

    def __init__(self, num_atoms: int, v_min: float, v_max: float, device: torch.device | str,
                 pick_after_projection: bool = False) -> None:
        self.out_features = num_atoms
        self.pick_after_projection = pick_after_projection
        self.v_min, self.v_max = v_min, v_max
        self.atoms = torch.linspace(v_min, v_max, num_atoms, device=device)  # [K]
        self.delta = (v_max - v_min) / (num_atoms - 1)

    def q_values(self, out: torch.Tensor) -> torch.Tensor:
        """``[2, B]`` expected values of ``[2, B, K]`` logits."""
        return (out.softmax(-1) * self.atoms).sum(-1)

    def project(self, probs: torch.Tensor, ret: torch.Tensor, discount: torch.Tensor) -> torch.Tensor:
        """Project the distribution of ``ret + discount * Z`` (``probs [B, K]``) onto the atoms: ``[B, K]``."""
        k = self.atoms.numel()
        tz = (ret[:, None] + discount[:, None] * self.atoms).clamp(self.v_min, self.v_max)
        b = ((tz - self.v_min) / self.delta).clamp(0, k - 1)  # float error must not leave [0, K-1]
        # a NaN return has no atom: index it at 0 (an index out of range fails on a CPU and kills a CUDA
        # context), while its weights below stay NaN, so the loss is NaN and the run fails as non-finite
        at = b.nan_to_num(0.0)
        lower, upper = at.floor().long(), at.ceil().long()
        same = (lower == upper).to(probs.dtype)
        target = torch.zeros_like(probs)
        target.scatter_add_(1, lower, probs * (upper.to(probs.dtype) - b + same))
        target.scatter_add_(1, upper, probs * (b - lower.to(probs.dtype)))
        return target

    def critic_loss(self, pred: torch.Tensor, target_out: torch.Tensor, ret: torch.Tensor,
                    discount: torch.Tensor, bonus: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Cross-entropy of both critics' logits ``[2, B, K]`` against the projected target distribution
        of ret + discount * (Z' + bonus): a ``bonus [B]`` (SAC's entropy term) shifts every atom of Z'."""
        target = self.target_distribution(target_out, ret, discount, bonus)
        return -(target * pred.log_softmax(-1)).sum(-1).mean(-1).sum()

    @torch.no_grad()
    def target_distribution(self, target_out: torch.Tensor, ret: torch.Tensor, discount: torch.Tensor,
                            bonus: torch.Tensor | float = 0.0) -> torch.Tensor:
        """The projected target ``[B, K]``: the pessimistic target critic's distribution of
        ret + discount * (Z' + bonus)."""
        probs, shifted = target_out.softmax(-1), ret + discount * bonus  # [2, B, K], [B]
        if self.pick_after_projection:  # FastTD3 (train.py at 229ed59): critic 1 where its projected mean is lower
            both = torch.stack([self.project(p, shifted, discount) for p in probs])  # [2, B, K]
            means = (both * self.atoms).sum(-1)  # [2, B]
            return torch.where((means[0] < means[1])[:, None], both[0], both[1])
        pick = (probs * self.atoms).sum(-1).argmin(0)  # [B]: the pessimistic critic
        chosen = probs.gather(0, pick[None, :, None].expand(1, *probs.shape[1:]))[0]
        return self.project(chosen, shifted, discount)

    def diagnostics(self, target_out: torch.Tensor, ret: torch.Tensor, discount: torch.Tensor,
                    bonus: torch.Tensor | float = 0.0) -> dict[str, torch.Tensor]:
        """``edge_mass``: the share of the target's mass on the two outermost atoms, where the projection
        piles returns that fall outside [v_min, v_max] (well under 1% when the range fits the task)."""
        target = self.target_distribution(target_out, ret, discount, bonus)
        return {"edge_mass": (target[..., 0] + target[..., -1]).mean()}


class IndependentCategoricalHead(CategoricalHead):
    """Twin C51 critics without a clipped double-Q: each critic regresses to its own target critic's distribution,
    projected (FastSAC's: holosoma ``agents/fast_sac/fast_sac.py`` Critic.projection at fc600e7)."""

    @torch.no_grad()
    def target_distribution(self, target_out: torch.Tensor, ret: torch.Tensor, discount: torch.Tensor,
                            bonus: torch.Tensor | float = 0.0) -> torch.Tensor:
        """The projected targets ``[2, B, K]``: target critic k's distribution of ret + discount * (Z'_k + bonus)."""
        members, batch, k = target_out.shape
        shifted = (ret + discount * bonus).expand(batch)
        flat = self.project(target_out.softmax(-1).reshape(members * batch, k), shifted.repeat(members),
                            discount.repeat(members))
        return flat.view(members, batch, k)
