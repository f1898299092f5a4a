"""The V-learner and the P-learner, as plain classes with ``update()``.

They share nothing but what the trainer hands them: each owns its networks and buffer on its own
device.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from pql.algos.base import ActorObjective, CriticHead
from pql.buffers import RingBuffer
from pql.config import AlgoConfig
from pql.devices import set_generator_state
from pql.nets import OffPolicyActor, SampledActor, Temperature
from pql.normalizer import RunningNormalizer
from pql.speed import Speed, load_optimizer_state, state_kept, timed_warm_up

Bonus = torch.Tensor | float  # what a target adds to each next value: [B], or 0.0


class VLearner:
    """Owns the transition buffer and the twin critic; one ``update()`` is one critic gradient step."""

    def __init__(self, critic: nn.Module, head: CriticHead, policy: OffPolicyActor,
                 normalizer: RunningNormalizer, buffer: RingBuffer, cfg: AlgoConfig,
                 generator: torch.Generator, speed: Speed | None = None) -> None:
        self.critic, self.head, self.policy, self.normalizer = critic, head, policy, normalizer
        self.target = copy.deepcopy(critic).requires_grad_(False)
        self.buffer, self.cfg, self.generator = buffer, cfg, generator
        # FastSAC's critic carries a temperature, stepped with every critic step by its own parameter group
        self.temperature: Temperature | None = getattr(critic, "temperature", None)
        self._params, self._target_params = _q_parameters(critic), _q_parameters(self.target)
        groups: list[dict[str, Any]] = [{"params": self._params}]
        if self.temperature is not None:
            assert isinstance(policy, SampledActor), "a learned temperature weighs a sampled policy's entropy"
            groups.append({"params": [self.temperature.log_alpha], "lr": cfg.alpha_lr,
                           "weight_decay": self.temperature.weight_decay})
        self.device = buffer.storage.device
        self.speed = speed or Speed(device=self.device)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.critic_lr, weight_decay=cfg.weight_decay,
                                           betas=(cfg.adam_beta1, cfg.adam_beta2),
                                           fused=self.speed.fused_optimizer(step_compiled=True))
        self._loss = self.speed.compile(self.td_loss)
        self._apply = self.speed.compile(self.apply_gradients, graphs=False)

    @property
    def owns_normalizer(self) -> bool:
        """Whether this learner folds observations into the run's normaliser (``algo.obs_norm_replay``): the
        stored ones and every batch's, FastTD3's scheme; otherwise it reads the actor's."""
        return self.cfg.obs_norm_replay

    def add(self, rows: torch.Tensor) -> torch.Tensor:
        """Store packed transitions ``[B, 2D + A + 2]`` (:meth:`Transitions.packed`), folding their observations
        ``[B, D]`` into the normaliser when it owns it and ``algo.obs_norm_acting``; returns the buffer's storage."""
        if self.owns_normalizer and self.cfg.obs_norm_acting:
            self.normalizer.update(rows[:, :self.normalizer.mean.numel()])
        return self.buffer.add_rows(rows)

    def state_dict(self) -> dict[str, Any]:
        """The V-learner's part of a checkpoint (with the normaliser when it owns it)."""
        state = {"critic": self.critic.state_dict(), "critic_target": self.target.state_dict(),
                 "critic_optimizer": self.optimizer.state_dict(), "rng": {"v": self.generator.get_state()}}
        if self.owns_normalizer:
            state["normalizer"] = self.normalizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if self.owns_normalizer:
            self.normalizer.load_state_dict(state["normalizer"])
        self.critic.load_state_dict(state["critic"])
        self.target.load_state_dict(state["critic_target"])
        load_optimizer_state(self.optimizer, state["critic_optimizer"])
        set_generator_state(self.generator, state["rng"]["v"])

    def update(self) -> torch.Tensor:
        """One critic step on a sampled batch; returns the (detached) loss. Owning the normaliser, it folds in
        the batch's observations and next observations first, as FastTD3 does (train.py:646-649 at 229ed59)."""
        batch = self.buffer.sample(self.cfg.batch_size, self.generator)
        if self.owns_normalizer:
            self.normalizer.update(batch["obs"])
            self.normalizer.update(batch["next_obs"])
        noise = torch.randn(batch["action"].shape, generator=self.generator, device=self.device)
        return self.step(batch["obs"], batch["action"], batch["ret"], batch["discount"], batch["next_obs"], noise)

    def step(self, obs: torch.Tensor, action: torch.Tensor, ret: torch.Tensor, discount: torch.Tensor,
             next_obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One critic step on a given batch (shapes as :meth:`td_loss`'s); returns the (detached) loss."""
        self.speed.begin_step()
        loss = self._loss(obs, action, ret, discount, next_obs, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._apply()
        return self.speed.kept(loss.detach())

    def td_loss(self, obs: torch.Tensor, action: torch.Tensor, ret: torch.Tensor, discount: torch.Tensor,
                next_obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The TD loss of raw ``obs [B, D]``, ``action [B, A]``, n-step ``ret [B]``, ``discount [B]``,
        ``next_obs [B, D]``, with standard normal ``noise [B, A]`` for the target action (pure: compilable)."""
        obs = self.normalizer(obs)
        target_out, bonus, log_prob = self.target_outputs(next_obs, noise)
        with self.speed.autocast():
            pred = self.critic(obs, action).float()
        loss = self.head.critic_loss(pred, target_out, ret, discount, bonus)
        if self.temperature is not None:  # FastSAC: the temperature steps with the critic, on next-state log-probs
            assert log_prob is not None
            loss = loss + self.temperature.loss(log_prob)
        return loss

    @torch.no_grad()
    def target_outputs(self, next_obs: torch.Tensor, noise: torch.Tensor, noise_std: float | None = None,
                       noise_clip: float | None = None) -> tuple[torch.Tensor, Bonus, torch.Tensor | None]:
        """The target critic's outputs at raw ``next_obs [B, D]`` and the target action (standard normal
        ``noise [B, A]``; target smoothing at the config's std and clip unless given), with the bonus ``[B]``
        added to the target's value (SAC's entropy term, or -alpha * log pi with the critic's temperature) and
        those log-probs ``[B]`` (None without a critic temperature). Always in float32, also under
        ``amp=bf16``: bf16 keeps about 3 significant digits, as coarse as one step's reward against a return,
        and the TD target is what every update regresses to."""
        cfg, next_obs = self.cfg, self.normalizer(next_obs)
        std = cfg.target_noise_std if noise_std is None else noise_std
        clip = cfg.target_noise_clip if noise_clip is None else noise_clip
        log_prob: torch.Tensor | None = None
        with torch.autocast(self.device.type, enabled=False):
            if self.temperature is None:
                next_action, bonus = self.policy.target_action(next_obs, noise, std, clip)
            else:
                assert isinstance(self.policy, SampledActor)
                next_action, log_prob = self.policy.sample(next_obs, noise)
                bonus = -self.temperature.alpha() * log_prob
            return self.target(next_obs, next_action).float(), bonus, log_prob

    @torch.no_grad()
    def diagnostics(self, seed: int = 0) -> dict[str, float]:
        """The head's diagnostics (e.g. C51's edge mass) on a batch drawn with its own generator (the
        training one is left alone); {} for an empty buffer or a head without any."""
        if self.buffer.size == 0:
            return {}
        batch = self.buffer.sample(self.cfg.batch_size, torch.Generator(device=self.device).manual_seed(seed))
        target_out, bonus, _ = self.target_outputs(batch["next_obs"], torch.zeros_like(batch["action"]), 0.0, 0.0)
        found = self.head.diagnostics(target_out, batch["ret"], batch["discount"], bonus)
        return {name: float(value) for name, value in found.items()}

    def apply_gradients(self) -> None:
        """Clip the critic's gradients, step AdamW, move the target toward the critic."""
        if self.cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self._params, self.cfg.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._params, self.cfg.tau)

    def warm_up(self) -> float:
        """Compile the update on a stand-in batch, leaving the networks and optimiser as they were;
        returns the seconds it took (0 when not compiling)."""
        if not self.speed.compiling:
            return 0.0
        batch = self.buffer.stand_in(self.cfg.batch_size)
        noise = torch.zeros_like(batch["action"])
        with state_kept([self.critic, self.target], [self.optimizer]):
            return timed_warm_up([lambda: self.step(batch["obs"], batch["action"], batch["ret"], batch["discount"],
                                                    batch["next_obs"], noise)], self.device)


def _q_parameters(critic: nn.Module) -> list[nn.Parameter]:
    """The parameters a critic's TD loss trains and its target tracks: a twin critic's without its temperature."""
    q_parameters = getattr(critic, "q_parameters", None)
    return list(q_parameters() if q_parameters is not None else critic.parameters())


class PLearner:
    """Owns the observation buffer and the policy; ``update()`` is one step of the algorithm's actor
    objective (:class:`~pql.algos.base.ActorObjective`) against its copy of the critic."""

    def __init__(self, policy: OffPolicyActor, head: CriticHead, critic: nn.Module, objective: ActorObjective,
                 normalizer: RunningNormalizer, buffer: RingBuffer, cfg: AlgoConfig,
                 generator: torch.Generator, speed: Speed | None = None) -> None:
        self.policy, self.head, self.objective, self.normalizer = policy, head, objective, normalizer
        self.critic = critic.requires_grad_(False)
        self.buffer, self.cfg, self.generator = buffer, cfg, generator
        self._policy_params = objective.parameters()
        self.device = buffer.storage.device
        self.speed = speed or Speed(device=self.device)
        self.optimizer = torch.optim.AdamW(self._policy_params, lr=cfg.actor_lr, weight_decay=cfg.weight_decay,
                                           betas=(cfg.adam_beta1, cfg.adam_beta2),
                                           fused=self.speed.fused_optimizer(step_compiled=True))
        with torch.no_grad():
            self.act_dim = int(policy(torch.zeros(1, buffer.width, device=self.device)).shape[-1])
        self._loss = self.speed.compile(self.policy_loss)
        self._apply = self.speed.compile(self.apply_gradients, graphs=False)

    def add(self, rows: torch.Tensor) -> torch.Tensor:
        """Store the observations of packed transitions ``[B, >= D]`` (their first D columns); returns the
        buffer's storage."""
        return self.buffer.add_rows(rows[:, :self.buffer.width])

    def q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q-values ``[2, B]`` of the critic copy at ``obs [B, D]``, ``action [B, A]``."""
        return self.head.q_values(self.critic(obs, action))

    def state_dict(self) -> dict[str, Any]:
        """The P-learner's part of a checkpoint."""
        return {"policy": self.policy.state_dict(), "policy_optimizer": self.optimizer.state_dict(),
                "objective": self.objective.state_dict(), "rng": {"p": self.generator.get_state()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.policy.load_state_dict(state["policy"])
        load_optimizer_state(self.optimizer, state["policy_optimizer"])
        self.objective.load_state_dict(state["objective"])
        set_generator_state(self.generator, state["rng"]["p"])

    def update(self) -> torch.Tensor:
        """One policy step (then the objective's own, e.g. SAC's temperature) on sampled observations;
        returns the policy loss."""
        obs = self.buffer.sample(self.cfg.batch_size, self.generator)["obs"]
        noise = (torch.randn((obs.shape[0], self.act_dim), generator=self.generator, device=self.device)
                 if self.objective.stochastic else None)
        return self.step(obs, noise)

    def step(self, obs: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """One policy step on raw observations ``obs [B, D]`` (``noise [B, A]`` for a stochastic
        objective, else None); returns the (detached) loss."""
        self.speed.begin_step()
        loss, aux = self._loss(obs, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._apply()
        self.objective.after_step(aux)
        return self.speed.kept(loss.detach())

    def policy_loss(self, obs: torch.Tensor,
                    noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The objective's loss (and its ``aux``) at raw ``obs [B, D]`` (pure: compilable)."""
        with self.speed.autocast():
            loss, aux = self.objective.loss(self.normalizer(obs), self.q, noise)
        return loss.float(), aux

    def apply_gradients(self) -> None:
        """Clip the policy's gradients and step AdamW."""
        if self.cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self._policy_params, self.cfg.max_grad_norm)
        self.optimizer.step()

    def warm_up(self) -> float:
        """Compile the update on stand-in observations, leaving the policy, the objective's state and the
        optimisers as they were; returns the seconds it took (0 when not compiling)."""
        if not self.speed.compiling:
            return 0.0
        obs = self.buffer.stand_in(self.cfg.batch_size)["obs"]
        noise = torch.zeros(obs.shape[0], self.act_dim, device=self.device) if self.objective.stochastic else None
        with state_kept([self.policy], [self.optimizer, *self.objective.optimizers()]):
            return timed_warm_up([lambda: self.step(obs, noise)], self.device)
