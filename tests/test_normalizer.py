"""Running observation statistics: exact from the first batch, equal to whole-data statistics after many."""

import torch

from pql.normalizer import RunningNormalizer


def test_first_batch_sets_statistics_exactly_no_zero_prefill():
    norm = RunningNormalizer(2)
    x = torch.tensor([[10.0, -4.0], [12.0, -6.0]])
    norm.update(x)
    assert torch.allclose(norm.mean, torch.tensor([11.0, -5.0]))
    assert torch.allclose(norm.var, torch.tensor([1.0, 1.0]))


def test_merged_batches_equal_whole_data_statistics():
    torch.manual_seed(0)
    data = torch.randn(1000, 3) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([3.0, -2.0, 7.0])
    norm = RunningNormalizer(3)
    for chunk in data.split(37):
        norm.update(chunk)
    assert torch.allclose(norm.mean, data.mean(0), atol=1e-5)
    assert torch.allclose(norm.var, data.var(0, unbiased=False), rtol=1e-4)
    assert norm.count.item() == 1000


def test_forward_normalises_and_clamps():
    norm = RunningNormalizer(1, clip=2.0)
    norm.update(torch.tensor([[0.0], [2.0]]))  # mean 1, std 1
    out = norm(torch.tensor([[1.0], [2.0], [100.0], [-100.0]]))
    assert torch.allclose(out.squeeze(), torch.tensor([0.0, 1.0, 2.0, -2.0]), atol=1e-6)


def test_disabled_only_clamps():
    norm = RunningNormalizer(1, clip=5.0, enabled=False)
    norm.update(torch.tensor([[100.0], [200.0]]))
    assert norm.count.item() == 0
    assert torch.equal(norm(torch.tensor([[3.0], [9.0]])), torch.tensor([[3.0], [5.0]]))
