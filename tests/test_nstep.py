"""n-step transitions against hand-computed values; ring buffer wrap-around."""

import pytest
import torch

from pql.buffers import NStepWindow, RingBuffer

G = 0.9


def push_steps(window: NStepWindow, steps: list[tuple[float, bool, bool]]) -> list:
    """Push one env's steps (reward, terminated, truncated); obs/next_obs encode the step index."""
    out = []
    for t, (r, term, trunc) in enumerate(steps):
        emitted = window.push(torch.tensor([[float(t)]]), torch.tensor([[0.0]]), torch.tensor([r]),
                              torch.tensor([[100.0 + t]]), torch.tensor([term]), torch.tensor([trunc]))
        out.append(emitted)
    return out


def unpack(t):
    return t.obs.item(), t.ret.item(), t.next_obs.item(), t.discount.item()


def test_three_step_return_without_episode_end():
    w = NStepWindow(3, G, 1, 1, 1, "cpu")
    out = push_steps(w, [(1.0, False, False), (2.0, False, False), (3.0, False, False), (4.0, False, False)])
    assert out[0] is None and out[1] is None
    obs, ret, nxt, disc = unpack(out[2])
    assert obs == 0.0 and abs(ret - (1 + G * 2 + G * G * 3)) < 1e-6
    assert nxt == 102.0 and abs(disc - G**3) < 1e-6
    obs, ret, nxt, disc = unpack(out[3])
    assert obs == 1.0 and abs(ret - (2 + G * 3 + G * G * 4)) < 1e-6 and nxt == 103.0


def test_termination_stops_sum_and_bootstrap():
    # step 1 terminates: transitions from step 0 and 1 stop there, with discount 0.
    w = NStepWindow(3, G, 1, 1, 1, "cpu")
    out = push_steps(w, [(1.0, False, False), (2.0, True, False), (5.0, False, False), (7.0, False, False),
                         (11.0, False, False)])
    obs, ret, nxt, disc = unpack(out[2])  # starts at step 0
    assert obs == 0.0 and abs(ret - (1 + G * 2)) < 1e-6 and nxt == 101.0 and disc == 0.0
    obs, ret, nxt, disc = unpack(out[3])  # starts at step 1, the terminal one
    assert obs == 1.0 and abs(ret - 2.0) < 1e-6 and disc == 0.0
    obs, ret, nxt, disc = unpack(out[4])  # starts at step 2, a new episode
    assert obs == 2.0 and abs(ret - (5 + G * 7 + G * G * 11)) < 1e-6 and nxt == 104.0
    assert abs(disc - G**3) < 1e-6


def test_truncation_stops_sum_but_bootstraps_from_final_obs():
    w = NStepWindow(3, G, 1, 1, 1, "cpu")
    out = push_steps(w, [(1.0, False, False), (2.0, False, True), (5.0, False, False), (7.0, False, False)])
    obs, ret, nxt, disc = unpack(out[2])
    assert obs == 0.0 and abs(ret - (1 + G * 2)) < 1e-6
    assert nxt == 101.0 and abs(disc - G**2) < 1e-6  # bootstraps from the final obs of step 1
    obs, ret, nxt, disc = unpack(out[3])
    assert obs == 1.0 and abs(ret - 2.0) < 1e-6 and nxt == 101.0 and abs(disc - G) < 1e-6


def test_terminated_and_truncated_together_is_terminal():
    w = NStepWindow(2, G, 1, 1, 1, "cpu")
    out = push_steps(w, [(1.0, True, True), (2.0, False, False)])
    assert unpack(out[1])[3] == 0.0


def test_window_wraps_around_many_times_matching_a_direct_computation():
    torch.manual_seed(0)
    n, envs, steps = 4, 3, 41  # 41 pushes wrap the 4-slot ring ten times
    rewards = torch.randn(steps, envs)
    term = torch.rand(steps, envs) < 0.1
    trunc = torch.rand(steps, envs) < 0.1
    w = NStepWindow(n, G, envs, 1, 1, "cpu")
    emitted = []
    for t in range(steps):
        e = w.push(torch.full((envs, 1), float(t)), torch.zeros(envs, 1), rewards[t],
                   torch.full((envs, 1), 100.0 + t), term[t], trunc[t])
        if e is not None:
            emitted.append(e)
    assert len(emitted) == steps - n + 1
    for start, e in enumerate(emitted):
        for i in range(envs):
            ret, k = 0.0, 0
            while True:  # the textbook definition, one env at a time
                ret += G**k * rewards[start + k, i].item()
                if term[start + k, i] or trunc[start + k, i] or k == n - 1:
                    break
                k += 1
            last = start + k
            disc = 0.0 if term[last, i] else G ** (k + 1)
            assert e.obs[i].item() == start
            assert abs(e.ret[i].item() - ret) < 1e-5
            assert e.next_obs[i].item() == 100.0 + last
            assert abs(e.discount[i].item() - disc) < 1e-6


def test_one_step_window():
    w = NStepWindow(1, G, 1, 1, 1, "cpu")
    out = push_steps(w, [(3.0, False, False), (4.0, True, False)])
    obs, ret, nxt, disc = unpack(out[0])
    assert (obs, ret, nxt) == (0.0, 3.0, 100.0) and abs(disc - G) < 1e-6
    assert unpack(out[1])[3] == 0.0


def test_ring_buffer_wraps_and_keeps_newest_rows():
    buf = RingBuffer(5, {"x": ()}, "cpu")
    buf.add(x=torch.tensor([0.0, 1.0, 2.0]))
    buf.add(x=torch.tensor([3.0, 4.0, 5.0]))  # crosses the end: 5 overwrites 0
    assert buf.size == 5 and buf.ptr == 1
    assert sorted(buf.data["x"].tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    buf.add(x=torch.arange(10.0, 17.0))  # more rows than capacity: only the newest 5
    assert sorted(buf.data["x"].tolist()) == [12.0, 13.0, 14.0, 15.0, 16.0]


def test_ring_buffer_samples_only_filled_rows():
    buf = RingBuffer(100, {"x": (2,)}, "cpu")
    buf.add(x=torch.ones(7, 2))
    g = torch.Generator().manual_seed(0)
    batch = buf.sample(256, g)["x"]
    assert batch.shape == (256, 2) and torch.all(batch == 1.0)


def test_per_env_sampling_draws_equally_from_every_env_of_the_filled_steps():
    """envs=2, capacity 6 (3 steps): rows are added a step (one row per env) at a time; a sample of B=5 holds
    max(1, 5 // 2) = 2 rows of each env, env-major, at steps drawn uniformly (repeated by hand); after 4 steps
    the oldest step is overwritten, so steps 1-3 remain."""
    buffer = RingBuffer(6, {"x": ()}, "cpu", envs=2)
    for step in range(2):
        buffer.add(x=torch.tensor([10.0 * step, 10.0 * step + 1]))  # env e of step s holds 10 s + e
    batch = buffer.sample(5, torch.Generator().manual_seed(3))["x"]
    steps = torch.randint(2, (2, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(batch, (10.0 * steps + torch.tensor([[0.0], [1.0]])).reshape(-1))
    assert buffer.batch_rows(5) == 4 and buffer.batch_rows(1) == 2 and buffer.stand_in(5)["x"].shape == (4,)
    for step in range(2, 4):
        buffer.add(x=torch.tensor([10.0 * step, 10.0 * step + 1]))
    drawn = buffer.sample(600, torch.Generator().manual_seed(0))["x"].reshape(2, 300)
    assert set(drawn[0].tolist()) == {10.0, 20.0, 30.0} and set(drawn[1].tolist()) == {11.0, 21.0, 31.0}


def test_a_buffer_sampled_per_env_takes_whole_steps_only():
    with pytest.raises(ValueError, match="capacity 5 is not a multiple of 2 envs"):
        RingBuffer(5, {"x": ()}, "cpu", envs=2)
    with pytest.raises(ValueError, match="whole steps of 2 rows, got 3"):
        RingBuffer(4, {"x": ()}, "cpu", envs=2).add(x=torch.zeros(3))
