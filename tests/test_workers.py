"""Each worker alone on a tiny deterministic env, against values computed by hand here."""

import pytest
import torch

from pql.config import ConfigError
from pql.envs.contract import VecEnv
from pql.resolve import build_config
from pql.workers.builders import build_actor, build_p_learner, build_v_learner, initial_networks
from pql.workers.plan import plan_run


class Counter(VecEnv):
    """Two envs whose observation counts steps; both episodes end at step 2, env 0 by termination and
    env 1 by the time limit. The reward is the action received (in env units, [-2, 2])."""

    def __init__(self) -> None:
        self.num_envs, self.obs_dim, self.act_dim = 2, 1, 1
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.action_low, self.action_high = torch.tensor([-2.0]), torch.tensor([2.0])
        self.max_episode_steps = 2
        self.generator = torch.Generator().manual_seed(0)
        self.t = torch.zeros(2)
        self.received: list[torch.Tensor] = []

    def reset(self) -> torch.Tensor:
        self.t.zero_()
        return self.t[:, None].clone()

    def step(self, actions):
        self.received.append(actions.clone())
        self.t += 1
        final = self.t[:, None].clone()
        done = self.t >= 2
        terminated, truncated = done & torch.tensor([True, False]), done & torch.tensor([False, True])
        self.t[done] = 0
        return self.t[:, None].clone(), actions[:, 0].clone(), terminated, truncated, {"final_obs": final}


def _cfg(**more):
    return build_config({"num_envs": 2, "max_env_steps": 10, "mode": "sync", "algo.nstep": 1, "algo.gamma": 0.5,
                         "algo.normalize_obs": False, "algo.actor_hidden": "[8]", "algo.critic_hidden": "[8]",
                         "algo.batch_size": 1, "algo.buffer_size": 1, "algo.target_noise_std": 0.0,
                         "algo.max_grad_norm": 0.0, "noise.kind": "fixed", "noise.sigma": 0.0, "algo.reward_scale": 3.0,
                         **more})


def test_actor_acts_in_env_units_and_bootstraps_from_the_final_observation():
    torch.manual_seed(0)
    cfg, env = _cfg(), Counter()
    actor = build_actor(plan_run(cfg), env, initial_networks(plan_run(cfg), 1, 1))
    first = actor.step()
    second = actor.step()
    with torch.no_grad():
        policy_action = actor.policy(torch.tensor([[1.0], [1.0]]))  # [-1, 1] at obs 1 (step 2)
    assert torch.allclose(env.received[1], -2 + (policy_action + 1) * 2), "the env gets its own units"
    assert torch.allclose(second.action, policy_action), "the buffer gets the [-1, 1] action"
    assert torch.equal(second.obs, torch.tensor([[1.0], [1.0]]))
    assert torch.equal(second.next_obs, torch.tensor([[2.0], [2.0]])), "the final observation, not the reset one"
    assert torch.allclose(second.ret, 3.0 * env.received[1][:, 0]), "rewards scaled by algo.reward_scale"
    assert torch.equal(second.discount, torch.tensor([0.0, 0.5])), "terminated: 0; truncated: gamma"
    assert torch.equal(first.next_obs, torch.tensor([[1.0], [1.0]])) and torch.equal(first.discount,
                                                                                      torch.tensor([0.5, 0.5]))


def _q(critic, obs, action):
    with torch.no_grad():
        return critic(obs, action)  # [2, B]


def test_v_learner_regresses_both_critics_on_the_min_of_the_target_critics_and_moves_the_target():
    torch.manual_seed(1)
    cfg = _cfg()
    v = build_v_learner(plan_run(cfg), initial_networks(plan_run(cfg), 1, 1))
    obs, action, ret, next_obs, discount = (torch.tensor([[0.3]]), torch.tensor([[0.2]]), torch.tensor([1.5]),
                                            torch.tensor([[-0.4]]), torch.tensor([0.5]))
    v.add(torch.cat([obs, action, ret[:, None], next_obs, discount[:, None]], 1))
    with torch.no_grad():
        next_q = _q(v.target, next_obs, v.policy(next_obs))
    assert not torch.allclose(next_q[0], next_q[1]), "the two target critics differ, so min matters"
    y = ret + discount * next_q.min(0).values
    expected = ((_q(v.critic, obs, action) - y) ** 2).sum()
    target_before = [p.clone() for p in v.target.parameters()]
    loss = v.update()
    assert torch.allclose(loss, expected)
    for before, after, online in zip(target_before, v.target.parameters(), v.critic.parameters(), strict=True):
        assert torch.allclose(after, before + cfg.algo.tau * (online - before)), "soft update by tau"


def test_p_learner_maximises_the_min_of_the_two_critics():
    torch.manual_seed(2)
    cfg = _cfg()
    p = build_p_learner(plan_run(cfg), initial_networks(plan_run(cfg), 1, 1))
    obs = torch.tensor([[0.7]])
    p.add(obs)
    with torch.no_grad():
        q = _q(p.critic, obs, p.policy(obs))
    assert not torch.allclose(q[0], q[1])
    before = [t.clone() for t in p.policy.parameters()]
    assert torch.allclose(p.update(), -q.min(0).values.mean())
    assert any(not torch.equal(b, a) for b, a in zip(before, p.policy.parameters(), strict=True)), "it stepped"
    assert all(not t.requires_grad for t in p.critic.parameters()), "the critic copy is not trained"


def test_activation_and_the_small_last_layer_reach_the_networks():
    """algo.activation replaces ELU in the policy and in both critics; algo.actor_out_init_std draws the
    policy's last layer from N(0, std) with a zero bias (FastTD3's 0.01), else torch's default init stays."""
    torch.manual_seed(0)
    cfg = build_config({"algo.activation": "relu", "algo.actor_out_init_std": "0.01", "algo.actor_hidden": "[256]",
                        "algo.critic_hidden": "[8]", "max_env_steps": "10"})
    nets = initial_networks(plan_run(cfg), 3, 4)
    layers = list(nets.policy.net)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear", "Tanh"]
    last = layers[-2]
    assert torch.all(last.bias == 0) and 0.008 < last.weight.std().item() < 0.012  # 1024 draws of N(0, 0.01)
    obs, act = torch.randn(5, 3), torch.randn(5, 4)
    x = torch.cat((obs, act), -1).expand(2, 5, 7)
    first, second = nets.critic.layers
    by_hand = torch.baddbmm(second.bias, torch.relu(torch.baddbmm(first.bias, x, first.weight)), second.weight)
    assert torch.allclose(nets.critic(obs, act), by_hand.squeeze(-1))
    default = initial_networks(plan_run(build_config({"algo.actor_hidden": "[256]", "max_env_steps": "10"})), 3, 4)
    assert isinstance(default.policy.net[1], torch.nn.ELU)
    assert default.policy.net[-2].weight.abs().max() > 0.05  # torch's uniform(+-1/sqrt(256)), not N(0, 0.01)


def test_layer_norm_comes_after_each_hidden_layer_before_its_activation():
    """algo.layer_norm (FastSAC's order: Linear, LayerNorm, activation): the policy's MLP gains one LayerNorm per
    hidden layer, and each of the twin critics computes what nn.LayerNorm between its layers would, with a scale
    and shift of its own; off (the default), the networks keep their parameters, so checkpoints still load."""
    torch.manual_seed(0)
    cfg = build_config({"algo.layer_norm": "true", "algo.activation": "silu", "algo.actor_hidden": "[6, 5]",
                        "algo.critic_hidden": "[8]", "max_env_steps": "10"})
    nets = initial_networks(plan_run(cfg), 3, 4)
    assert [type(m).__name__ for m in nets.policy.net] == ["Linear", "LayerNorm", "SiLU", "Linear", "LayerNorm",
                                                           "SiLU", "Linear", "Tanh"]
    critic = nets.critic
    with torch.no_grad():
        critic.norms[0].weight.copy_(torch.tensor([2.0, 3.0]).view(2, 1, 1))  # each member its own scale
        critic.norms[0].bias.copy_(torch.tensor([0.5, -0.5]).view(2, 1, 1))
    obs, act = torch.randn(5, 3), torch.randn(5, 4)
    first, second = critic.layers
    for k in range(2):
        hidden = torch.cat((obs, act), -1) @ first.weight[k] + first.bias[k]
        centred = hidden - hidden.mean(-1, keepdim=True)
        normed = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-5)
        by_hand = torch.nn.functional.silu(normed * critic.norms[0].weight[k] + critic.norms[0].bias[k])
        assert torch.allclose(critic(obs, act)[k], (by_hand @ second.weight[k] + second.bias[k]).squeeze(-1),
                              atol=1e-6)
    plain = initial_networks(plan_run(build_config({"max_env_steps": "10"})), 3, 4)
    assert plain.critic.norms is None and "LayerNorm" not in str(plain.policy)


def test_both_learners_step_adamw_with_the_configured_weight_decay_and_betas():
    """AdamW's decoupled decay: a parameter whose gradient is zero shrinks by lr * weight_decay per step."""
    cfg = _cfg(**{"algo.weight_decay": "0.5", "algo.adam_beta1": "0.8", "algo.adam_beta2": "0.99"})
    nets = initial_networks(plan_run(cfg), 1, 1)
    for learner in (build_v_learner(plan_run(cfg), nets), build_p_learner(plan_run(cfg), nets)):
        (group,) = learner.optimizer.param_groups
        assert group["weight_decay"] == 0.5 and group["betas"] == (0.8, 0.99)
        param = group["params"][0]
        before = param.detach().clone()
        param.grad = torch.zeros_like(param)
        learner.optimizer.step()
        assert torch.allclose(param, before * (1 - group["lr"] * 0.5))


def test_per_episode_noise_is_redrawn_for_the_envs_whose_episode_ended_and_resumes():
    """noise.kind=per_episode (FastTD3's): each env's std starts from U[sigma_min, sigma_max] and is redrawn
    from it when that env's episode ends, from the actor's generator after the step's action noise (the draws
    repeated by hand from a copy of the generator); a checkpoint carries the stds to the resumed actor."""
    cfg = _cfg(**{"noise.kind": "per_episode", "noise.sigma_min": "0.1", "noise.sigma_max": "0.3"})
    torch.manual_seed(0)
    nets = initial_networks(plan_run(cfg), 1, 1)
    hand = torch.Generator().manual_seed(cfg.seed + 1)  # the actor's seed (builders.ACTOR_SEED)
    actor = build_actor(plan_run(cfg), Counter(), nets)
    start = 0.1 + 0.2 * torch.rand(2, generator=hand)
    assert torch.equal(actor.noise_std[:, 0], start) and ((start >= 0.1) & (start <= 0.3)).all()
    actor.step()  # step 1: no episode ends, the std stays
    torch.randn(2, 1, generator=hand), torch.rand(2, generator=hand)
    assert torch.equal(actor.noise_std[:, 0], start)
    actor.step()  # step 2: both episodes end (Counter), both stds redrawn
    torch.randn(2, 1, generator=hand)
    redrawn = 0.1 + 0.2 * torch.rand(2, generator=hand)
    assert torch.equal(actor.noise_std[:, 0], redrawn) and not torch.equal(redrawn, start)
    resumed = build_actor(plan_run(cfg), Counter(), nets)
    resumed.load_state_dict(actor.state_dict())
    assert torch.equal(resumed.noise_std, actor.noise_std)
    fixed = build_actor(plan_run(_cfg(**{"noise.kind": "fixed", "noise.sigma": "0.2"})), Counter(), nets)
    fixed.step(), fixed.step()
    assert torch.equal(fixed.noise_std[:, 0], torch.full((2,), 0.2)) and "noise_std" not in fixed.state_dict()


def test_correlated_noise_is_an_ar1_process_per_env_restarted_with_each_episode():
    """noise.correlation rho: the standard normal noise handed to the policy is rho n + sqrt(1 - rho^2) e with
    e the actor's draws (repeated by hand from a copy of its generator), a new draw where an episode began
    (Counter's end at step 2) and after a resume; rho 0 keeps the draws themselves (white noise)."""
    rho = 0.9
    cfg = _cfg(**{"noise.correlation": str(rho), "noise.sigma": "0.1"})
    torch.manual_seed(0)
    nets = initial_networks(plan_run(cfg), 1, 1)
    actor = build_actor(plan_run(cfg), Counter(), nets)
    handed: list[torch.Tensor] = []
    actor._act = lambda obs, noise: handed.append(noise.clone()) or torch.zeros_like(noise)
    hand = torch.Generator().manual_seed(cfg.seed + 1)  # the actor's seed (builders.ACTOR_SEED)
    for _ in range(4):
        actor.step()
    e = [torch.randn(2, 1, generator=hand) for _ in range(4)]
    keep = (1 - rho * rho) ** 0.5
    assert torch.equal(handed[0], e[0])
    assert torch.allclose(handed[1], rho * e[0] + keep * e[1])
    assert torch.equal(handed[2], e[2]), "both episodes ended at step 2: a new process"
    assert torch.allclose(handed[3], rho * e[2] + keep * e[3])
    actor.load_state_dict(actor.state_dict())
    actor.step()
    assert torch.equal(handed[4], torch.randn(2, 1, generator=hand)), "a resumed actor restarts its envs' noise"
    white = build_actor(plan_run(_cfg(**{"noise.sigma": "0.1"})), Counter(), nets)
    white._act = actor._act
    white.step(), white.step()
    again = torch.Generator().manual_seed(cfg.seed + 1)
    assert torch.equal(handed[5], torch.randn(2, 1, generator=again))
    assert torch.equal(handed[6], torch.randn(2, 1, generator=again))
    with pytest.raises(ConfigError, match=r"noise\.correlation"):
        _cfg(**{"noise.correlation": "1.0"})


TINY_NETS = {"algo.actor_hidden": "[16,16]", "algo.critic_hidden": "[16,16]", "algo.batch_size": 64}
CPU_ONLY_READ = "envs/classic.py"  # the classic env asks done.any() on a CPU only (a GPU always draws fresh states)


def _sites(sites, allowed):
    return {site: n for site, n in sites.items() if not site.startswith(allowed)}


def test_the_sync_hot_loop_reads_nothing_back_from_its_device(tmp_path):
    """A host read added to the actor step, the V- or P-update or the sync schedule fails this test: over 20
    sync steps (8 V- and 4 P-updates each) only the classic env's CPU-only done check reads, once a step."""
    from pql.bench.host_reads import count_host_reads, sync_loop

    loop = sync_loop(TINY_NETS, torch.device("cpu"), 64, str(tmp_path))
    sites, steps, updates = count_host_reads(loop, torch.device("cpu"), 20)
    assert steps == 20 and updates == 20 * 12
    assert _sites(sites, CPU_ONLY_READ) == {}, "host reads in the sync hot loop"
    assert sum(sites.values()) <= 20


def test_the_async_workers_read_nothing_back_but_the_periodic_nan_check(tmp_path):
    """The actor's and both learners' work() in async mode (stepped here, in one process): no host read but
    the classic env's CPU-only done check and each learner's NaN check every NAN_CHECK_EVERY updates."""
    from pql.bench.host_reads import async_loop, count_host_reads
    from pql.training.processes import NAN_CHECK_EVERY

    loop = async_loop(TINY_NETS, torch.device("cpu"), 64, str(tmp_path))
    sites, steps, updates = count_host_reads(loop, torch.device("cpu"), 60)
    assert updates > 0 and steps > 5
    assert _sites(sites, (CPU_ONLY_READ, "training/processes.py")) == {}, "host reads in an async worker's loop"
    nan_checks = sum(n for site, n in sites.items() if site.startswith("training/processes.py"))
    assert nan_checks <= updates // NAN_CHECK_EVERY + 2
