"""The planner's model: what a migration will do, from a few measured figures.

Pure arithmetic, no VM: ``livemig plan`` measures a guest and its link
(lab/planner.py) and hands the figures here; the tests and the prediction
benchmark check this model against real migrations. docs/planner.md
describes it; in short:

- A pass sends its pages at the link's rate ``B`` (the smaller of
  ``max-bandwidth`` and the link); the first pass sends the RAM that is not
  zero, and scans the zero rest at the VMM's scan rate.
- While a pass of ``t`` seconds runs, the guest dirties ``D(t)`` bytes:
  a curve through the dirty-rate measurements (bytes dirtied in windows of
  1 s and 3 s), so a working set that a window already covers whole stops
  growing. A throttle of ``p`` percent gives the guest ``(1 - p)`` of the
  time: ``D((1 - p) t)``.
- livemig decides at the end of each pass: it switches over when what is
  dirty fits in downtime-limit at ``B`` (its ``qemu`` policy). QEMU 7.2
  checks once every rate-limit slot (100 ms): when what is left to send
  falls under the threshold ``B`` times downtime-limit it syncs the dirty
  bitmap, and completes if what is left then still fits. So QEMU syncs
  more often, with shorter gaps, and ends mid-pass (see docs/planner.md).
  Auto-converge raises the throttle as QEMU 7.2 does, on both. The pages left are
  then sent unthrottled (neither VMM rate-limits its last copy): the
  downtime is the VMM's fixed switchover cost plus those bytes at its
  full speed.
- Postcopy switches after the first pass: the guest stops for the fixed
  switchover cost, then what is dirty streams at full speed (or
  ``max-postcopy-bandwidth``) while the guest runs, faulting on pages it
  touches before they arrive.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace

PAGE = 4096
MAX_PASSES = 10_000
# A window long enough that a dirty curve has reached its working set, if
# it has one (calc-dirty-rate measures 1 s and 3 s windows).
WORKING_SET_WINDOW_S = 600.0
THROTTLE_PERIOD_S = 1.0  # QEMU compares dirtied against sent over periods of a second


@dataclass(frozen=True)
class DirtyCurve:
    """Bytes a guest dirties in a window of ``t`` seconds: straight lines
    through (0, 0) and the measured points, on past the last at its slope,
    never more than ``cap`` (the RAM)."""

    points: tuple[tuple[float, float], ...]  # (seconds, bytes), seconds ascending, > 0
    cap: float

    def __call__(self, t: float) -> float:
        if t <= 0:
            return 0.0
        times = [0.0, *(p[0] for p in self.points)]
        # A longer window cannot see fewer pages than a shorter one; a sampled
        # measurement can say so (QEMU's page-sampling read 0 in 3 s after 1.5
        # MiB in 1 s): each point is at least the one before it.
        values = [0.0]
        for _, v in self.points:
            values.append(max(values[-1], v))
        i = bisect.bisect_left(times, t)
        if i < len(times):
            t0, t1, v0, v1 = times[i - 1], times[i], values[i - 1], values[i]
        else:
            t0, t1, v0, v1 = times[-2], times[-1], values[-2], values[-1]
        slope = max(0.0, (v1 - v0) / (t1 - t0))
        return min(self.cap, max(0.0, v0 + slope * (t - t0)))

    @property
    def rate(self) -> float:
        """Bytes per second over the shortest window: the guest's rate."""
        t, v = self.points[0]
        return v / t

    @property
    def saturated(self) -> bool:
        """The longer window saw less than 80% more per second than the
        shorter one would: the working set is (nearly) covered whole."""
        if len(self.points) < 2:
            return False
        (t0, v0), (t1, v1) = self.points[0], self.points[-1]
        return v1 < 0.8 * v0 * t1 / t0


@dataclass(frozen=True)
class VmmCosts:
    """What a VMM costs beside the link, measured on this project's machines
    (docs/planner.md): the fixed part of a switchover's downtime (stop,
    device state, the destination's start), the time before the first page
    goes, the rate of an unthrottled copy, the rate it scans zero pages at,
    and the time a postcopy fault waits for its page."""

    name: str
    switchover_s: float
    setup_s: float
    full_speed: float       # bytes/s
    zero_scan: float        # bytes/s of zero RAM skipped
    fault_s: float
    check_slot_s: float = 0.0  # QEMU: checks every rate-limit slot, not at a pass's end


@dataclass(frozen=True)
class Settings:
    """The migration parameters the model obeys (QEMU's names and units)."""

    bandwidth: float                     # bytes/s the passes move at
    downtime_limit_ms: float = 300.0
    auto_converge: bool = False
    throttle_initial: int = 20
    throttle_increment: int = 10
    throttle_trigger: int = 50
    max_throttle: int = 99
    tailslow: bool = False
    postcopy_bandwidth: float = 0.0      # max-postcopy-bandwidth; 0: unlimited
    deadline_ms: float = 0.0             # livemig-deadline (the deadline policy)
    horizon_s: float = 300.0             # give up predicting (not converging) after this


@dataclass(frozen=True)
class Guest:
    """What the planner measured of the guest."""

    ram: int
    nonzero: float                       # bytes of RAM that are not zero now
    dirty: DirtyCurve
    growth: float = 0.0                  # bytes/s of zero RAM the guest writes for the first time
    # Where the content is: the share of non-zero pages in each of equal
    # slices of RAM, in address order (empty: spread evenly).
    profile: tuple[float, ...] = ()

    def tail_share(self, nbytes: float) -> float:
        """The share of the content that lies in the last ``nbytes`` of RAM
        (what a scan in address order reaches last)."""
        if nbytes <= 0:
            return 0.0
        if nbytes >= self.ram:
            return 1.0
        total = sum(self.profile)
        if not self.profile or total <= 0:
            return nbytes / self.ram
        slices = nbytes / self.ram * len(self.profile)
        whole = int(slices)
        tail = sum(self.profile[len(self.profile) - whole:]) if whole else 0.0
        if whole < len(self.profile):
            tail += self.profile[len(self.profile) - whole - 1] * (slices - whole)
        return min(1.0, tail / total)


def first_pass_bytes(guest: Guest, bw: float, setup_s: float, head_start: float = 0.0) -> float:
    """What a first pass sends: the RAM that is not zero when it starts,
    plus what the guest writes for the first time while the pass runs ahead
    of it (half of it on average: the pass meets a fresh page before or after
    the guest's write to it with equal chance). ``head_start``: bytes the VMM
    sends before its rate limit bites."""
    start = min(guest.ram, guest.nonzero + guest.growth * setup_s)
    seconds = max(0.0, start - head_start) / max(bw - guest.growth / 2, bw / 2)
    return min(float(guest.ram), start + guest.growth * seconds / 2)


@dataclass
class Pass:
    seconds: float
    sent: float          # bytes
    dirtied: float       # bytes dirty at its end
    throttle: int        # percent, during the pass


@dataclass
class Prediction:
    """One way of migrating, predicted."""

    method: str                          # "precopy (qemu)", "postcopy", …
    converges: bool
    passes: int = 0
    total_s: float = 0.0
    downtime_s: float = 0.0
    sent: float = 0.0                    # bytes
    throttle: int = 0                    # the highest throttle, percent
    block_s: float | None = None         # postcopy: expected vCPU block time
    why: str = ""
    history: list[Pass] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {"method": self.method, "converges": self.converges, "passes": self.passes,
                "total-time-ms": round(self.total_s * 1000, 1),
                "downtime-ms": round(self.downtime_s * 1000, 1),
                "transferred": int(self.sent), "throttle": self.throttle,
                "postcopy-blocktime-ms": (None if self.block_s is None
                                          else round(self.block_s * 1000, 1)),
                "why": self.why}


def _switch(pred: Prediction, t: float, dirty: float, costs: VmmCosts) -> Prediction:
    pred.converges = True
    pred.downtime_s = costs.switchover_s + dirty / costs.full_speed
    pred.total_s = t + pred.downtime_s
    pred.sent += dirty
    return pred


class _Throttle:
    """QEMU 7.2's auto-converge trigger: over periods of at least a second,
    dirtied above throttle-trigger-threshold percent of sent, twice, raises
    the throttle (initial, then by the increment, at most max)."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.percent = 0
        self._period_s = self._sent = self._dirtied = 0.0
        self._high = 0

    def after_pass(self, p: Pass) -> None:
        if not self.s.auto_converge:
            return
        self._period_s += p.seconds
        self._sent += p.sent
        self._dirtied += p.dirtied
        if self._period_s < THROTTLE_PERIOD_S:
            return
        dirtied, threshold = self._dirtied, self._sent * self.s.throttle_trigger / 100
        self._period_s = self._sent = self._dirtied = 0.0
        if dirtied <= threshold:
            return
        self._high += 1
        if self._high < 2:
            return
        self._high = 0
        if self.percent == 0:
            self.percent = self.s.throttle_initial
            return
        step = self.s.throttle_increment
        if self.s.tailslow:
            cpu_now = 100 - self.percent
            step = min(int(cpu_now - cpu_now * threshold / dirtied), step)
        self.percent = min(self.percent + step, self.s.max_throttle)

    @property
    def can_rise(self) -> bool:
        return self.s.auto_converge and self.percent < self.s.max_throttle


def precopy(guest: Guest, settings: Settings, costs: VmmCosts, policy: str = "qemu",
            postcopy_allowed: bool = False) -> Prediction:
    """Precopy under livemig's policy ``policy`` (``qemu``: QEMU's rules;
    ``auto-postcopy``; ``deadline``). Passes are simulated one by one."""
    if policy == "qemu" and costs.check_slot_s > 0:
        return _precopy_slotted(guest, settings, costs)
    pred = Prediction(f"precopy ({policy})", converges=False)
    bw = settings.bandwidth
    limit_s = settings.downtime_limit_ms / 1000
    throttle = _Throttle(settings)
    t = costs.setup_s
    send = first_pass_bytes(guest, bw, costs.setup_s)
    expected: list[float] = []
    best = float("inf")
    stuck = 0
    for n in range(1, MAX_PASSES + 1):
        seconds = send / bw + ((guest.ram - send) / costs.zero_scan if n == 1 else 0)
        window = seconds + (costs.setup_s if n == 1 else 0)
        dirtied = guest.dirty(window * (100 - throttle.percent) / 100)
        p = Pass(seconds, send, dirtied, throttle.percent)
        pred.history.append(p)
        pred.passes, pred.sent = n, pred.sent + send
        pred.throttle = max(pred.throttle, throttle.percent)
        t += seconds
        expect_s = dirtied / bw
        if expect_s <= limit_s:
            pred.why = f"what is left after pass {n} fits in downtime-limit"
            return _switch(pred, t, dirtied, costs)
        if policy == "deadline" and settings.deadline_ms > 0:
            shrinking = expect_s < best * 0.9
            best = min(best, expect_s)
            if t + seconds + expect_s > settings.deadline_ms / 1000 or not shrinking:
                pred.why = f"deadline: switches after pass {n} with what is left"
                return _switch(pred, t, dirtied, costs)
        if policy == "auto-postcopy" and postcopy_allowed:
            expected.append(expect_s)
            window3 = expected[-3:]
            if len(window3) == 3 and min(window3[1:]) > window3[0] / 2:
                post = _postcopy_after(pred, t, dirtied, guest, settings, costs)
                post.method = pred.method
                post.why = f"precopy stuck after pass {n}: switches to postcopy"
                return post
        throttle.after_pass(p)
        stuck = stuck + 1 if dirtied >= send * 0.999 and not throttle.can_rise else 0
        if stuck >= 3 or t > settings.horizon_s:
            break
        send = dirtied
    pred.total_s = t
    steady = pred.history[-1].dirtied
    pred.why = (f"~{steady / (1 << 20):.1f} MiB stay dirty each pass: at "
                f"{bw / 1e6:.1f} MB/s that is {steady / bw * 1000:.0f} ms, above the "
                f"downtime-limit of {settings.downtime_limit_ms:.0f} ms")
    return pred


def _overlap(pending: float, dirtied: float, guest: Guest) -> float:
    """Of ``dirtied`` bytes the guest wrote since the last sync, those
    already among the ``pending`` ones (dirty, not yet sent): a guest that
    rewrites one working set hits a pending page as often as the pending
    pages' share of that set. The set's size is what the dirty curve levels
    off at (the RAM for a curve that does not level off)."""
    working_set = max(guest.dirty(WORKING_SET_WINDOW_S), pending, 1.0)
    return pending * min(1.0, dirtied / working_set)


def _precopy_slotted(guest: Guest, settings: Settings, costs: VmmCosts) -> Prediction:
    """QEMU 7.2's loop. Every page still marked counts as pending, zero
    pages too (its bitmap starts all set), and once a rate-limit slot it
    compares pending with the threshold ``bandwidth x downtime-limit``:
    above it, it sends on; under it, it syncs the bitmap, and completes if
    what is pending then (the unsent rest plus what was dirtied since the
    last sync) is still under it. So the first pass scans all RAM but the
    last threshold's worth, and the check lands on average half a slot's
    bytes under the threshold. Each sync is a pass, as dirty-sync-count
    counts them. The first slot's budget goes out at once: a head start of
    one slot's bytes."""
    pred = Prediction("precopy (qemu)", converges=False)
    bw = settings.bandwidth
    slot = costs.check_slot_s
    threshold = bw * settings.downtime_limit_ms / 1000
    under = max(0.0, threshold - bw * slot / 2)  # pending at a check
    throttle = _Throttle(settings)
    t = last_sync = costs.setup_s
    # The first pass: content goes at the link's rate, zero pages at the scan
    # rate, and what the scan leaves (the last `under` bytes of pages) holds
    # the content measured there (the RAM's share if where it lies is not known).
    content = first_pass_bytes(guest, bw, costs.setup_s, head_start=bw * slot)
    scanned = max(0.0, guest.ram - under)
    pending = guest.ram - scanned                # bytes of pages still marked
    pending_content = content * guest.tail_share(pending)   # … of which content
    step = content - pending_content
    seconds = max(0.0, step - bw * slot) / bw + (scanned - step) / costs.zero_scan
    stuck = 0
    for n in range(1, MAX_PASSES + 1):
        t += seconds
        dirtied = guest.dirty((t - last_sync) * (100 - throttle.percent) / 100)
        last_sync = t
        fresh = dirtied - _overlap(pending_content, dirtied, guest)
        pending = min(pending + fresh, float(guest.ram))
        pending_content = min(pending_content + fresh, pending)
        p = Pass(seconds, step, dirtied, throttle.percent)
        pred.history.append(p)
        pred.passes, pred.sent = n, pred.sent + step
        pred.throttle = max(pred.throttle, throttle.percent)
        if pending < threshold:
            pred.why = f"what is left at sync {n} fits in downtime-limit"
            pred.converges = True
            pred.downtime_s = (costs.switchover_s + pending_content / costs.full_speed
                               + (pending - pending_content) / costs.zero_scan)
            pred.total_s = t + pred.downtime_s
            pred.sent += pending_content
            return pred
        throttle.after_pass(p)
        stuck = stuck + 1 if dirtied >= p.sent * 0.999 and not throttle.can_rise else 0
        if stuck >= 3 or t > settings.horizon_s:
            break
        # Send until under the threshold again, on from where the scan is:
        # the zero pages still marked at the first pass's end first (at
        # the scan rate), then the pages the guest dirtied (at the link's).
        scan = max(0.0, pending - under)             # marked pages it goes over
        zeros = min(scan, pending - pending_content)
        step = scan - zeros                          # … of which content, sent
        seconds = step / bw + zeros / costs.zero_scan if scan else slot
        pending_content = max(0.0, pending_content - step)
        pending -= scan
    pred.total_s = t
    pred.why = (f"~{pending / (1 << 20):.1f} MiB stay dirty: at {bw / 1e6:.1f} MB/s that is "
                f"{pending / bw * 1000:.0f} ms, above the downtime-limit of "
                f"{settings.downtime_limit_ms:.0f} ms")
    return pred


def _postcopy_after(pred: Prediction, t: float, dirty: float, guest: Guest,
                    settings: Settings, costs: VmmCosts) -> Prediction:
    """Switch to postcopy at ``t`` with ``dirty`` bytes still to go."""
    out = replace(pred, history=list(pred.history), converges=True)
    rate = settings.postcopy_bandwidth or costs.full_speed
    stream_s = dirty / rate
    out.downtime_s = costs.switchover_s
    out.total_s = t + costs.switchover_s + stream_s
    out.sent = pred.sent + dirty
    # Faults: the guest's writes while the rest streams, to pages still on
    # their way (on average half of them are by then), at most every page.
    touched = min(dirty, guest.dirty(stream_s))
    out.block_s = touched / 2 / PAGE * costs.fault_s
    return out


def postcopy(guest: Guest, settings: Settings, costs: VmmCosts) -> Prediction:
    """migrate-start-postcopy once the first pass is done (as the reference
    test and most orchestrators do)."""
    first = precopy(guest, replace(settings, downtime_limit_ms=0, auto_converge=False),
                    costs)
    p = first.history[0]
    head = Prediction("postcopy", converges=True, passes=1, sent=p.sent,
                      history=[p])
    out = _postcopy_after(head, costs.setup_s + p.seconds, p.dirtied, guest, settings, costs)
    out.why = "postcopy always ends: the rest is fetched after the switch"
    return out


def lowest_downtime_limit(guest: Guest, settings: Settings, costs: VmmCosts) -> float | None:
    """The smallest downtime-limit (ms) with which QEMU's rules converge, up
    to 10 s; None if none does."""
    lo, hi = 1.0, 10_000.0
    if not precopy(guest, replace(settings, downtime_limit_ms=hi), costs).converges:
        return None
    for _ in range(30):
        mid = (lo + hi) / 2
        if precopy(guest, replace(settings, downtime_limit_ms=mid), costs).converges:
            hi = mid
        else:
            lo = mid
    return hi


def lowest_bandwidth(guest: Guest, settings: Settings, costs: VmmCosts) -> float | None:
    """The smallest bandwidth (bytes/s) with which QEMU's rules converge at
    this downtime-limit, up to the VMM's full speed; None if none does."""
    lo, hi = 1e5, costs.full_speed
    if not precopy(guest, replace(settings, bandwidth=hi), costs).converges:
        return None
    for _ in range(40):
        mid = (lo * hi) ** 0.5
        if precopy(guest, replace(settings, bandwidth=mid), costs).converges:
            hi = mid
        else:
            lo = mid
    return hi
