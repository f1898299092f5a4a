"""PPO in the same harness: on-policy rollouts of all N envs, GAE, epochs of clipped minibatch updates.

A sequential baseline: one thread on the simulation device. It shares the env
contract, observation normalisation, evaluation, metrics, checkpoints and export
with the PQL trainer (value loss is logged as ``critic_loss``, policy loss as
``actor_loss``, minibatch steps as ``v_updates`` and ``p_updates``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from pql.algos.ppo import Losses, PPOPolicy, adapt_learning_rate, bootstrap_truncated, gae, ppo_losses
from pql.devices import seeded_generator, set_generator_state
from pql.envs import make_env
from pql.nets import mlp
from pql.normalizer import RunningNormalizer
from pql.speed import Speed, load_optimizer_state, state_kept, timed_warm_up
from pql.store.run_dir import RunDir
from pql.training.loop import Progress, RunLoop, envs_compile_s, generator_state, restore_generator
from pql.workers.actor import EpisodeReturns, to_env_units
from pql.workers.evaluation import Evaluator, make_eval_env
from pql.workers.plan import RunPlan


class Rollout(NamedTuple):
    """Rows of one rollout, flattened to R = horizon x N: obs ``[R, D]`` (normalised as acted on),
    actions ``[R, A]``, log_prob, values, advantages, returns ``[R]``, mean and std ``[R, A]``."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_prob: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


class PPOTrainer(RunLoop):
    """One PPO run."""

    def __init__(self, plan: RunPlan, run_dir: RunDir,
                 on_row: Callable[[dict[str, float]], None] | None = None) -> None:
        cfg, sim = plan.cfg, plan.sim
        self.devices = (sim, sim, sim)
        super().__init__(cfg, run_dir, on_row, {"critic_loss": sim, "actor_loss": sim})
        torch.manual_seed(cfg.seed)
        algo, self.ppo = cfg.algo, cfg.algo.ppo
        self.env = make_env(cfg.task, cfg.num_envs, device=sim, seed=cfg.seed)
        self.eval_env = make_eval_env(cfg, sim)
        d, a = self.env.obs_dim, self.env.act_dim
        policy = plan.algorithm.make_policy(algo, d, a).to(sim)
        assert isinstance(policy, PPOPolicy)
        self.policy = policy
        self.value = mlp([d, *algo.critic_hidden, 1], activation=algo.activation, layer_norm=algo.layer_norm).to(sim)
        self.normalizer = RunningNormalizer(d, algo.obs_clip, enabled=algo.normalize_obs).to(sim)
        self.value_normalizer = RunningNormalizer(1, clip=float("inf"), enabled=self.ppo.normalize_value).to(sim)
        self.params = [*self.policy.parameters(), *self.value.parameters()]
        self.generator = seeded_generator(sim, cfg.seed + 1)
        self.evaluator = None if self.eval_env is None else Evaluator(self.eval_env, self.policy, self.normalizer)
        # The first k envs act with the mean action; their episodes are the evaluation and their rows stay
        # out of the rollout (one-simulation-per-process backends, see eval_slice).
        self.eval_slice = plan.eval_slice
        self.episodes = EpisodeReturns(cfg.num_envs - self.eval_slice, sim, self.env.dtype)
        self.eval_episodes = EpisodeReturns(self.eval_slice, sim, self.env.dtype)
        self.obs = self.env.reset()
        self.stagger_episodes()
        self.updates = 0
        self.speed = Speed(cfg.compile, cfg.amp, sim)
        # the optimiser step is never compiled here (only the minibatch losses are)
        self.optimizer = torch.optim.Adam(self.params, lr=self.ppo.lr,
                                          fused=self.speed.fused_optimizer(step_compiled=False))
        self._losses = self.speed.compile(self.minibatch_losses)

    def minibatch_losses(self, obs: torch.Tensor, old_mean: torch.Tensor, old_std: torch.Tensor,
                         actions: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                         old_values: torch.Tensor, returns: torch.Tensor) -> Losses:
        """The losses of one minibatch of M rows (``obs [M, D]``, ``old_mean``, ``old_std``, ``actions [M, A]``,
        the rest ``[M]``; values and returns in normalised units); pure, so it may be compiled."""
        ppo = self.ppo
        if ppo.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        with self.speed.autocast():
            mean = self.policy.net(obs).float()
            values = self.value(obs).squeeze(-1).float()
        dist = torch.distributions.Normal(mean, self.policy.log_std.exp().expand_as(mean), validate_args=False)
        return ppo_losses(dist, old_mean, old_std, actions, old_log_prob, advantages, values, old_values, returns,
                          ppo.clip, ppo.value_clip, ppo.value_coef, ppo.entropy_coef, ppo.bounds_loss_coef)

    def minibatch_step(self, *rows: torch.Tensor) -> Losses:
        """One gradient step on a minibatch (the arguments of :meth:`minibatch_losses`)."""
        self.speed.begin_step()
        losses = self._losses(*rows)
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        if self.cfg.algo.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.params, self.cfg.algo.max_grad_norm)
        self.optimizer.step()
        return self.speed.kept(losses)

    def warm_up(self) -> float:
        """The envs' compilation, and compiling the update on a stand-in minibatch when ``compile`` is on;
        the seconds it took."""
        compile_s = envs_compile_s(self.env, self.eval_env)
        if not self.speed.compiling:
            return compile_s
        m, d, a, dev = self.ppo.minibatch_size, self.env.obs_dim, self.env.act_dim, self.obs.device
        rows = (torch.zeros(m, d, device=dev), torch.zeros(m, a, device=dev), torch.ones(m, a, device=dev),
                torch.zeros(m, a, device=dev), *(torch.zeros(m, device=dev) for _ in range(4)))
        with state_kept([self.policy, self.value], [self.optimizer]):
            return compile_s + timed_warm_up([lambda: self.minibatch_step(*rows)], dev)

    def stagger_episodes(self) -> None:
        """With ``algo.ppo.stagger_episodes``, move each exploring env to a random step of its first episode
        (the evaluating envs of the slice keep theirs at 0: their episodes are the evaluation)."""
        limit = self.env.max_episode_steps
        if not self.ppo.stagger_episodes or limit is None:
            return
        steps = torch.randint(limit, (self.cfg.num_envs,), generator=self.generator, device=self.generator.device)
        steps[: self.eval_slice] = 0
        try:
            self.env.set_episode_steps(steps)
        except NotImplementedError as err:
            raise NotImplementedError(f"{err}: {self.cfg.task} cannot stagger its episodes, "
                                      "set algo.ppo.stagger_episodes=false") from err

    def value_of(self, obs: torch.Tensor) -> torch.Tensor:
        """Values ``[B]`` in return units of normalised observations ``[B, D]``."""
        return self.value_normalizer.denormalize(self.value(obs)).squeeze(-1)

    @torch.no_grad()
    def collect(self) -> Rollout:
        """Step all N environments ``horizon`` times with sampled actions; advantages by GAE."""
        env, algo, horizon, k = self.env, self.cfg.algo, self.ppo.horizon, self.eval_slice
        steps: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "actions", "log_prob", "values", "rewards",
                                                                "terminated", "truncated", "final_values", "mean")}
        for _ in range(horizon):
            self.normalizer.update(self.obs)
            obs = self.normalizer(self.obs)
            dist = self.policy.distribution(obs)
            noise = torch.randn(dist.mean.shape, generator=self.generator, device=obs.device)
            if k:
                noise[:k] = 0.0
            action = dist.mean + dist.stddev * noise
            next_obs, reward, terminated, truncated, info = env.step(
                to_env_units(action.clamp(-1.0, 1.0), env.action_low, env.action_high))
            done = terminated | truncated
            self.episodes.record(reward[k:], done[k:])
            if k:
                self.eval_episodes.record(reward[:k], done[:k])
            for key, value in (("obs", obs), ("actions", action), ("log_prob", dist.log_prob(action).sum(-1)),
                               ("values", self.value_of(obs)), ("rewards", reward * algo.reward_scale),
                               ("terminated", terminated), ("truncated", truncated),
                               ("final_values", self.value_of(self.normalizer(info["final_obs"]))),
                               ("mean", dist.mean)):
                steps[key].append(value)
            self.obs = next_obs
        t = {name: torch.stack(v)[:, k:] for name, v in steps.items()}  # [H, N - k, ...]: the exploring envs
        rewards = bootstrap_truncated(t["rewards"], t["truncated"], t["terminated"], t["final_values"], algo.gamma)
        next_value = self.value_of(self.normalizer(self.obs[k:]))
        adv = gae(rewards, t["values"], next_value, t["terminated"] | t["truncated"], algo.gamma,
                  self.ppo.gae_lambda)
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        std = self.policy.log_std.exp().expand_as(flat(t["mean"]))
        return Rollout(flat(t["obs"]), flat(t["actions"]), flat(t["log_prob"]), flat(t["values"]),
                       flat(adv.advantages), flat(adv.returns), flat(t["mean"]), std.clone())

    def update(self, rollout: Rollout) -> None:
        """``epochs`` passes of shuffled minibatches over the rollout (a remainder smaller than a minibatch
        is left out of that pass)."""
        ppo = self.ppo
        if ppo.normalize_value:
            self.value_normalizer.update(rollout.returns[:, None])
        returns = self.value_normalizer(rollout.returns[:, None]).squeeze(-1)
        old_values = self.value_normalizer(rollout.values[:, None]).squeeze(-1)
        rows, size = rollout.obs.shape[0], ppo.minibatch_size
        for _ in range(ppo.epochs):
            order = torch.randperm(rows, generator=self.generator, device=rollout.obs.device)
            for start in range(0, rows - size + 1, size):
                idx = order[start : start + size]
                losses = self.minibatch_step(rollout.obs[idx], rollout.mean[idx], rollout.std[idx],
                                             rollout.actions[idx], rollout.log_prob[idx], rollout.advantages[idx],
                                             old_values[idx], returns[idx])
                self.add_loss("critic_loss", losses.value.detach())
                self.add_loss("actor_loss", losses.policy.detach())
                self.updates += 1
                if ppo.lr_schedule == "adaptive":
                    lr = adapt_learning_rate(self.optimizer.param_groups[0]["lr"], float(losses.kl), ppo.kl_threshold)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr

    def run(self) -> Progress:
        """Alternate rollouts and updates until the budget is spent."""
        pr = self.progress
        if pr.rows == 0:
            self.evaluate_and_log()
        start = self.start_clock()
        while not self.done():
            with self.clock.phase("collect"):
                rollout = self.collect()
            with self.clock.phase("learn"):
                self.update(rollout)
            pr.actor_steps += self.ppo.horizon
            pr.env_steps += self.ppo.horizon * self.cfg.num_envs
            pr.wall_s = time.monotonic() - start
            start = self.log_if_due(start)
        return self.finish()

    # -- what the run loop needs ----------------------------------------------------------
    def evaluate(self) -> float:
        """The mean return of the noise-free slice's episodes, or one episode of the evaluation envs."""
        if self.eval_slice:
            return self.eval_episodes.take_mean()
        return math.nan if self.evaluator is None else self.evaluator.run()

    def take_train_return(self) -> float:
        """Mean return of the training episodes finished since the last call."""
        return self.episodes.take_mean()

    def update_counts(self) -> tuple[int, int]:
        """(updates, updates): PPO's minibatch updates, counted for both columns."""
        return self.updates, self.updates

    def model_state(self) -> dict[str, Any]:
        """Policy, value net, optimiser, normalisers and counters."""
        return {"policy": self.policy.state_dict(), "value": self.value.state_dict(),
                "optimizer": self.optimizer.state_dict(), "normalizer": self.normalizer.state_dict(),
                "value_normalizer": self.value_normalizer.state_dict(), "updates": self.updates,
                "rng": {"torch": torch.get_rng_state(), "ppo": self.generator.get_state(),
                        "env": self.env.generator.get_state(), "eval_env": generator_state(self.eval_env)}}

    def load_model_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`model_state`."""
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.value_normalizer.load_state_dict(state["value_normalizer"])
        self.updates = state["updates"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        set_generator_state(self.generator, rng["ppo"])
        set_generator_state(self.env.generator, rng["env"])
        restore_generator(self.eval_env, rng["eval_env"])
        self.obs = self.env.reset()
        self.stagger_episodes()
