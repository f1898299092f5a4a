"""The speed-ratio controller, driven by a fake clock."""

import heapq

import pytest

from pql.workers.balance import RatioController


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_durations_are_measured_with_the_injected_clock():
    clock = FakeClock()
    ctl = RatioController(8, 2, clock=clock, smoothing=0.5)
    ctl.begin("v")
    clock.now += 0.2
    ctl.end("v")
    assert ctl.durations["v"] == pytest.approx(0.2) and ctl.counts["v"] == 1
    ctl.begin("v")
    clock.now += 0.4
    ctl.end("v")
    assert ctl.durations["v"] == pytest.approx(0.3)  # EMA with smoothing 0.5


@pytest.mark.parametrize(("beta_av", "beta_pv", "expected"), [
    (8, 2, {"actor": 10, "v": 80, "p": 40}),
    (8, 1, {"actor": 10, "v": 80, "p": 80}),  # DDPG(n) / SAC(n)
    (0.5, 3, {"actor": 10, "v": 5, "p": 1}),  # fractional: a V-update every other step
])
def test_sync_schedule_holds_both_ratios_exactly(beta_av, beta_pv, expected):
    ctl = RatioController(beta_av, beta_pv)
    for _ in range(10):
        ctl.counts["actor"] += 1
        while ctl.v_due():
            ctl.counts["v"] += 1
            while ctl.p_due():
                ctl.counts["p"] += 1
    assert ctl.counts == expected


def test_waits_are_lead_times_partner_duration():
    clock = FakeClock()
    ctl = RatioController(8, 2, clock=clock, smoothing=1.0)
    ctl.durations.update(actor=0.08, v=0.01, p=0.02)
    ctl.counts.update(actor=3, v=8, p=4)  # actor leads V by 16 V-updates, 8 beyond its one-step allowance
    assert ctl.wait_s("actor") == pytest.approx(8 * 0.01)
    assert ctl.wait_s("v") == 0.0
    assert ctl.wait_s("p") == 0.0  # P at 8 == V at 8: may go on
    ctl.counts.update(p=6)  # P leads V by 4 V-updates
    assert ctl.wait_s("p") == pytest.approx(4 * 0.01)
    ctl.counts.update(actor=1, v=30, p=15)  # V leads the actor by 22, 14 beyond the allowance; P keeps up
    assert ctl.wait_s("v") == pytest.approx(14 * 0.08 / 8)
    ctl.counts.update(actor=4, p=10)  # now V leads P by 10 V-updates, 8 beyond the allowance of one P-update
    assert ctl.wait_s("v") == pytest.approx(8 * 0.02 / 2)


@pytest.mark.parametrize("durations", [
    {"actor": 0.010, "v": 0.002, "p": 0.003},  # the V-learner is the bottleneck
    {"actor": 0.200, "v": 0.001, "p": 0.001},  # simulation is the bottleneck
    {"actor": 0.001, "v": 0.001, "p": 0.030},  # the P-learner is slow
])
def test_simulated_concurrent_workers_hold_the_ratios(durations):
    """Discrete-event run of three workers that sleep as told; the achieved ratios approach 8 and 2."""
    clock = FakeClock()
    ctl = RatioController(8, 2, clock=clock)
    events = [(0.0, name) for name in ("actor", "v", "p")]
    heapq.heapify(events)
    while clock.now < 200.0:
        clock.now, name = heapq.heappop(events)
        wait = ctl.wait_s(name)
        if wait > 0:
            heapq.heappush(events, (clock.now + min(wait, 0.01), name))
            continue
        ctl.begin(name)
        clock.now += durations[name]
        ctl.end(name)
        heapq.heappush(events, (clock.now, name))
        clock.now -= durations[name]  # the other workers run concurrently
    c = ctl.counts
    assert c["actor"] > 100
    assert c["v"] / c["actor"] == pytest.approx(8, rel=0.05)
    assert c["v"] / c["p"] == pytest.approx(2, rel=0.05), "held also where the P-learner is the slowest"


def test_critic_sample_ratio_scales_only_above_the_reference_env_count():
    from pql.workers.balance import critic_sample_ratio

    assert critic_sample_ratio(8, 16384, None) == 8, "null: the paper's fixed ratio"
    assert critic_sample_ratio(8, 16384, 1024) == 128
    assert critic_sample_ratio(8, 2048, 1024) == 16
    assert critic_sample_ratio(8, 64, 1024) == 8, "never fewer updates than the base"
