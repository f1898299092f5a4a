"""Critic targets: clipped double-Q and the C51 projection, against hand-computed values."""

import torch

from pql.algos.critic_heads import CategoricalHead, ScalarHead


def test_scalar_target_uses_min_of_twin_critics_and_discount():
    head = ScalarHead()
    pred = torch.tensor([[1.0, 0.0], [2.0, 0.0]], requires_grad=True)  # [2 critics, B=2]
    target_out = torch.tensor([[5.0, 1.0], [3.0, 4.0]])  # min per sample: 3, 1
    ret, discount = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.0])  # second: terminal
    loss = head.critic_loss(pred, target_out, ret, discount)
    y = torch.tensor([1.0 + 0.5 * 3.0, 2.0])  # 2.5, 2.0
    expected = ((pred.detach() - y) ** 2).mean(-1).sum()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert pred.grad is not None and torch.all(pred.grad.abs().sum(-1) > 0)


def test_c51_projection_hand_computed():
    head = CategoricalHead(num_atoms=3, v_min=-1.0, v_max=1.0, device="cpu")  # atoms -1, 0, 1
    probs = torch.tensor([[0.0, 1.0, 0.0]])  # all mass at 0
    # target atom = 0.5 + 1 * 0 = 0.5: split evenly between 0 and 1
    assert torch.allclose(head.project(probs, torch.tensor([0.5]), torch.tensor([1.0])),
                          torch.tensor([[0.0, 0.5, 0.5]]))
    # discount 0 (terminal): everything lands on ret = -0.25 -> 0.25 at -1, 0.75 at 0
    assert torch.allclose(head.project(torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([-0.25]), torch.tensor([0.0])),
                          torch.tensor([[0.25, 0.75, 0.0]]))
    # beyond the support: clamped to the last atom, exactly on it
    assert torch.allclose(head.project(probs, torch.tensor([7.0]), torch.tensor([0.9])),
                          torch.tensor([[0.0, 0.0, 1.0]]))


def test_c51_projection_keeps_mass_and_the_mean_when_nothing_is_clamped():
    torch.manual_seed(0)
    head = CategoricalHead(51, -10.0, 10.0, "cpu")
    logits = torch.full((64, 51), -1e9)
    logits[:, 15:36] = torch.randn(64, 21)  # mass only on atoms in [-4, 4]
    probs = torch.softmax(logits, -1)
    ret, discount = torch.rand(64) * 2 - 1, torch.full((64,), 0.97)
    out = head.project(probs, ret, discount)
    assert torch.allclose(out.sum(-1), torch.ones(64), atol=1e-5) and torch.all(out >= 0)
    mean_in, mean_out = (probs * head.atoms).sum(-1), (out * head.atoms).sum(-1)
    assert torch.allclose(mean_out, ret + discount * mean_in, atol=1e-4)


def test_c51_target_takes_the_pessimistic_critic():
    head = CategoricalHead(3, -1.0, 1.0, "cpu")
    low = torch.tensor([10.0, 0.0, -10.0])  # mean near -1
    high = torch.tensor([-10.0, 0.0, 10.0])  # mean near +1
    target_out = torch.stack([high[None], low[None]])  # [2, B=1, 3]
    pred = torch.zeros(2, 1, 3, requires_grad=True)
    loss = head.critic_loss(pred, target_out, torch.tensor([0.0]), torch.tensor([1.0]))
    loss.backward()
    # the gradient pushes mass toward the low atom (the target is the pessimistic critic's distribution)
    assert pred.grad[0, 0, 0] < 0 and pred.grad[0, 0, 2] > 0


def test_the_pessimistic_critic_picked_after_the_projection_as_fasttd3_does():
    """Atoms -1, 0, 1; ret 0.5, discount 1, so the top atom's mass lands at 1.5 and is clamped to 1. Critic A puts
    all its mass on 0 (mean 0; projected: at 0.5, mean 0.5); critic B 0.45 on -1 and 0.55 on 1 (mean 0.1;
    projected: 0.45 at -0.5 and 0.55 at 1, mean 0.325). Before the projection A is the lower; after it, B."""
    logits = torch.log(torch.tensor([[[1e-12, 1.0, 1e-12]], [[0.45, 1e-12, 0.55]]]))  # [2, B=1, K=3]
    ret, discount = torch.tensor([0.5]), torch.tensor([1.0])
    before = CategoricalHead(3, -1.0, 1.0, "cpu").target_distribution(logits, ret, discount)
    after = CategoricalHead(3, -1.0, 1.0, "cpu", pick_after_projection=True).target_distribution(logits, ret, discount)
    assert torch.allclose(before, torch.tensor([[0.0, 0.5, 0.5]]), atol=1e-6)  # A's mass at 0.5: half on 0, half on 1
    assert torch.allclose(after, torch.tensor([[0.225, 0.225, 0.55]]), atol=1e-6)  # B's: -0.5 split, 1.5 -> 1


def test_a_nan_return_makes_its_projected_row_nan_and_leaves_the_others_exact():
    head = CategoricalHead(5, -2.0, 2.0, "cpu")  # atoms -2, -1, 0, 1, 2
    probs = torch.full((3, 5), 0.2)
    ret, discount = torch.tensor([0.5, float("nan"), 0.1]), torch.tensor([1.0, 1.0, 0.0])
    target = head.project(probs, ret, discount)
    assert target[1].isnan().any(), "no index out of range: the NaN reaches the loss"
    kept = head.project(probs[[0, 2]], ret[[0, 2]], discount[[0, 2]])
    assert torch.equal(target[[0, 2]], kept)
    assert torch.allclose(target[2], torch.tensor([0.0, 0.0, 0.9, 0.1, 0.0]))  # 0.1 all on atoms 0 and 1
    pred = torch.zeros(2, 3, 5)
    assert head.critic_loss(pred, torch.zeros(2, 3, 5), ret, discount).isnan()
