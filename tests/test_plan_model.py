"""The planner's model (lab/plan_model.py): pure arithmetic, checked on
guests whose outcome can be worked out by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livemig.lab import plan_model as model

MiB = 1 << 20
LIVEMIG = model.VmmCosts("livemig", switchover_s=0.002, setup_s=0.02, full_speed=1.2e9,
                         zero_scan=6e9, fault_s=0.0008)
QEMU = replace(LIVEMIG, name="QEMU", zero_scan=8e9, fault_s=0.0002, check_slot_s=0.1)


def guest(rate_mib_s: float, wss_mib: float = 32, ram_mib: int = 160,
          nonzero_mib: float = 34) -> model.Guest:
    """A sequential writer: ``rate`` MiB/s over a ``wss`` MiB set, measured
    in windows of 1 s and 3 s (saturating at the set, as calc-dirty-rate sees)."""
    wss = wss_mib * MiB
    points = tuple((t, min(wss, rate_mib_s * MiB * t)) for t in (1.0, 3.0))
    return model.Guest(ram_mib * MiB, nonzero_mib * MiB, model.DirtyCurve(points, ram_mib * MiB))


LINK = model.Settings(bandwidth=20e6, downtime_limit_ms=300)


def test_dirty_curve_interpolates_and_caps() -> None:
    curve = model.DirtyCurve(((1.0, 10.0), (3.0, 20.0)), cap=25.0)
    assert curve(0) == 0 and curve(-1) == 0
    assert curve(0.5) == pytest.approx(5.0)
    assert curve(2.0) == pytest.approx(15.0)
    assert curve(5.0) == 25.0          # past the last point at its slope, then the cap
    assert curve.rate == 10.0
    assert curve.saturated             # 20 in 3 s is far below 3 x 10
    assert not model.DirtyCurve(((1.0, 10.0), (3.0, 30.0)), cap=1e9).saturated


@pytest.mark.parametrize("costs", [LIVEMIG, QEMU], ids=["livemig", "qemu"])
def test_an_idle_guest_goes_in_one_pass(costs: model.VmmCosts) -> None:
    g = guest(0)
    pred = model.precopy(g, LINK, costs)
    assert pred.converges and pred.passes == 1
    first_pass = g.nonzero / LINK.bandwidth + (g.ram - g.nonzero) / costs.zero_scan
    whole = costs.setup_s + first_pass + costs.switchover_s
    if costs.check_slot_s:
        # QEMU stops the guest once what is left fits in the limit at the
        # link's rate, and sends that rest unthrottled: up to downtime-limit
        # sooner than a whole pass at the link's rate.
        assert whole - LINK.downtime_limit_ms / 1000 <= pred.total_s < whole
        assert pred.downtime_s > costs.switchover_s
    else:
        assert pred.total_s == pytest.approx(whole, rel=0.01)
        assert pred.downtime_s == costs.switchover_s
    assert pred.downtime_s < costs.switchover_s + g.nonzero / costs.full_speed
    assert pred.sent == pytest.approx(g.nonzero, rel=0.01)


@pytest.mark.parametrize("costs", [LIVEMIG, QEMU], ids=["livemig", "qemu"])
def test_a_guest_faster_than_the_link_never_converges(costs: model.VmmCosts) -> None:
    pred = model.precopy(guest(40), LINK, costs)
    assert not pred.converges
    assert "above the downtime-limit of 300 ms" in pred.why
    assert pred.passes < model.MAX_PASSES  # it saw it was stuck; it did not run out


@pytest.mark.parametrize("rate", [4, 12])
@pytest.mark.parametrize("costs", [LIVEMIG, QEMU], ids=["livemig", "qemu"])
def test_a_writer_slower_than_the_link_converges_with_more_passes(costs: model.VmmCosts,
                                                                  rate: float) -> None:
    """12 MiB/s on a 20 MB/s link shrinks each pass to ~0.63 of the last:
    several passes, then it fits (QEMU 7.2 really does, in 7-8)."""
    idle, slow = model.precopy(guest(0), LINK, costs), model.precopy(guest(rate), LINK, costs)
    assert slow.converges, slow.why
    assert slow.passes > idle.passes
    assert slow.total_s > idle.total_s and slow.sent > idle.sent


def test_auto_converge_throttles_until_it_fits() -> None:
    stuck = model.precopy(guest(40), LINK, LIVEMIG)
    throttled = model.precopy(guest(40), replace(LINK, auto_converge=True), LIVEMIG)
    assert not stuck.converges and throttled.converges
    assert 20 <= throttled.throttle <= 99
    # The throttle only rises: initial, then by the increment.
    seen = [p.throttle for p in throttled.history]
    assert seen == sorted(seen) and seen[0] == 0
    assert {t for t in seen if t} <= {20 + 10 * k for k in range(9)} | {99}


def test_postcopy_always_ends_and_costs_block_time() -> None:
    pred = model.postcopy(guest(40), LINK, LIVEMIG)
    assert pred.converges and pred.passes == 1
    assert pred.downtime_s == LIVEMIG.switchover_s
    assert pred.block_s is not None and pred.block_s > 0
    quiet = model.postcopy(guest(0), LINK, LIVEMIG)
    assert quiet.block_s == 0  # nothing dirtied after the first pass: no fault


def test_auto_postcopy_switches_when_precopy_is_stuck() -> None:
    pred = model.precopy(guest(40), LINK, LIVEMIG, "auto-postcopy", postcopy_allowed=True)
    assert pred.converges and pred.block_s is not None
    assert "switches to postcopy" in pred.why
    alone = model.precopy(guest(40), LINK, LIVEMIG, "auto-postcopy", postcopy_allowed=False)
    assert not alone.converges


def test_deadline_switches_before_it() -> None:
    s = replace(LINK, deadline_ms=10_000)
    pred = model.precopy(guest(40), s, LIVEMIG, "deadline")
    assert pred.converges and "deadline" in pred.why
    assert pred.total_s <= 10.0
    # It gave up on the limit to end: what it left would take longer than
    # downtime-limit at the link's rate (it goes at full speed, stopped).
    assert pred.history[-1].dirtied / s.bandwidth > s.downtime_limit_ms / 1000
    assert not model.precopy(guest(40), s, LIVEMIG).converges


@pytest.mark.parametrize("costs", [LIVEMIG, QEMU], ids=["livemig", "qemu"])
def test_the_advised_limits_are_tight(costs: model.VmmCosts) -> None:
    g = guest(40)  # saturates at its 32 MiB set: a large enough limit ends it
    assert not model.precopy(g, LINK, costs).converges
    limit = model.lowest_downtime_limit(g, LINK, costs)
    assert limit is not None
    assert model.precopy(g, replace(LINK, downtime_limit_ms=limit * 1.02), costs).converges
    assert not model.precopy(g, replace(LINK, downtime_limit_ms=limit * 0.9), costs).converges
    bw = model.lowest_bandwidth(g, LINK, costs)
    assert bw is not None and bw > LINK.bandwidth
    assert model.precopy(g, replace(LINK, bandwidth=bw * 1.02), costs).converges


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0, 500), wss=st.floats(1, 150), bw=st.floats(1e6, 2e9),
       limit=st.floats(1, 5000), ac=st.booleans(), qemu=st.booleans(),
       profile=st.lists(st.floats(0, 1), max_size=64))
def test_every_prediction_is_sane(rate: float, wss: float, bw: float, limit: float,
                                  ac: bool, qemu: bool, profile: list[float]) -> None:
    """Whatever the guest, where its content lies, and the link: a verdict
    within the horizon, no negative figure, a converged run that sent at
    least the RAM that is not zero."""
    g = replace(guest(rate, wss), profile=tuple(profile))
    for part in (0.0, g.ram / 3, g.ram):
        assert 0.0 <= g.tail_share(part) <= 1.0
    s = model.Settings(bandwidth=bw, downtime_limit_ms=limit, auto_converge=ac,
                       horizon_s=60)
    pred = model.precopy(g, s, QEMU if qemu else LIVEMIG)
    assert pred.passes >= 1 and pred.total_s >= 0 and pred.downtime_s >= 0
    assert 0 <= pred.throttle <= 99
    if pred.converges:
        assert pred.sent >= g.nonzero * 0.99 - bw * 0.1
        assert pred.total_s >= pred.downtime_s
    else:
        assert pred.why


def test_tail_share_follows_the_content_profile() -> None:
    g = guest(0)
    assert g.tail_share(g.ram / 4) == pytest.approx(0.25)   # no profile: spread evenly
    at_start = replace(g, profile=(1.0, 1.0) + (0.0,) * 14)
    assert at_start.tail_share(g.ram / 2) == 0.0
    assert at_start.tail_share(g.ram * 15 / 16) == pytest.approx(0.5)
    assert at_start.tail_share(g.ram) == 1.0
    at_end = replace(g, profile=(0.0,) * 15 + (1.0,))
    assert at_end.tail_share(g.ram / 16) == pytest.approx(1.0)
    assert at_end.tail_share(g.ram / 32) == pytest.approx(0.5)


def test_qemu_rules_a_set_rewritten_within_a_large_limit_converges() -> None:
    """QEMU 7.2 with a 2 s downtime-limit on a 20 MB/s link (a 40 MB
    threshold), a guest rewriting its 32 MiB set at 40 MiB/s, the set at the
    start of RAM: measured, it completes at its second sync, the first pass
    having sent the whole set. The pages the guest rewrites are the pending
    ones, not more of them (a model that added them up said it never
    converges), and the scan leaves only zero pages behind at its first sync."""
    g = replace(guest(40), profile=(1.0,) * 32 + (0.0,) * 128)  # 32 of 160 MiB, first
    limit = replace(LINK, downtime_limit_ms=2000)
    pred = model.precopy(g, limit, QEMU)
    assert pred.converges and pred.passes == 2
    whole_set = 32 * MiB / LINK.bandwidth
    assert whole_set < pred.total_s < whole_set + 0.5
    assert pred.downtime_s == pytest.approx(QEMU.switchover_s + 32 * MiB / QEMU.full_speed,
                                            rel=0.3)
