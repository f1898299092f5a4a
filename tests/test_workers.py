"""Each worker alone on a tiny deterministic env, against values computed by hand here."""

import torch

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
