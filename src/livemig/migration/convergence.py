"""The decision after every dirty sync of a precopy migration: go on,
throttle the guest (CPU throttle or dirty limit), or switch over.

One small protocol: after each pass the source builds a :class:`PassReport`
(what the pass did and what is left) and asks its policy to ``decide``; the
answer is a :class:`Decision`. The source obeys it and records both in
``query-migrate``'s ``livemig-passes`` list. QEMU's behaviour is the default
policy, :class:`QemuPolicy`, auto-converge and dirty-limit included. Shipped besides:
:class:`AutoPostcopy` and :class:`Deadline`. The migration parameter
``livemig-convergence-policy`` picks one by name, or a user's class by
``module:Class`` or by the name of an entry point in the group
``livemig.convergence_policies``; ``load_policy`` makes it, one per job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

Action = Literal["continue", "throttle", "limit", "switchover", "postcopy"]

# QEMU evaluates auto-converge over periods of at least this long.
THROTTLE_PERIOD_S = 1.0


@dataclass(frozen=True)
class PassReport:
    """One precopy pass, as a policy sees it. Byte figures are RAM bytes
    (``sent``: bytes on the wire; ``moved``: the RAM bytes they carried)."""

    number: int                  # dirty-sync count after this pass
    duration_s: float
    sent: int
    moved: int
    dirty_pages: int             # dirty after the sync: what the next pass sends
    page_size: int
    throttle: int                # the guest's CPU throttle during the pass, percent
    downtime_limit_ms: int
    elapsed_s: float = 0.0       # since the migrate command

    @property
    def bandwidth(self) -> float:
        """RAM bytes moved per second this pass."""
        return max(self.sent, self.moved) / max(self.duration_s, 1e-6)

    @property
    def remaining(self) -> int:
        return self.dirty_pages * self.page_size

    @property
    def dirty_rate(self) -> float:
        """Bytes dirtied per second during this pass."""
        return self.remaining / max(self.duration_s, 1e-6)

    @property
    def expected_downtime_ms(self) -> float:
        bandwidth = self.bandwidth
        return self.remaining / bandwidth * 1000 if bandwidth > 0 else float("inf")


@dataclass(frozen=True)
class Decision:
    action: Action
    throttle: int = 0            # for "throttle": the new percentage
    reason: str = ""
    dirty_limit: int = 0         # for "limit": every vCPU's quota, MB/s

    def describe(self) -> str:
        if self.action == "throttle":
            return f"throttle {self.throttle}%"
        if self.action == "limit":
            return f"dirty-limit {self.dirty_limit} MB/s"
        return self.action


class Policy(Protocol):
    """What a convergence policy implements. ``params`` and ``caps`` are the
    migration's parameters and capabilities, read-only."""

    def decide(self, report: PassReport, params: dict[str, Any],
               caps: dict[str, bool]) -> Decision: ...


class QemuPolicy:
    """QEMU 7.2's rules. Switch over once the rest fits in downtime-limit at
    this pass's bandwidth. With auto-converge: over periods of at least a
    second, when the bytes dirtied exceed throttle-trigger-threshold percent
    of the bytes sent, for the second time since the last raise, throttle
    the guest: cpu-throttle-initial at first, then up by
    cpu-throttle-increment (with cpu-throttle-tailslow, by no more than what
    would bring the dirty rate down to the threshold), at most
    max-cpu-throttle. With dirty-limit (QEMU 8.1), the same trigger limits
    every vCPU to vcpu-dirty-limit MB/s instead."""

    def __init__(self) -> None:
        self._period_s = 0.0
        self._period_sent = 0
        self._period_dirtied = 0
        self._high = 0

    def decide(self, report: PassReport, params: dict[str, Any],
               caps: dict[str, bool]) -> Decision:
        if report.expected_downtime_ms <= report.downtime_limit_ms:
            return Decision("switchover")
        if not (caps.get("auto-converge") or caps.get("dirty-limit")):
            return Decision("continue")
        self._period_s += report.duration_s
        self._period_sent += max(report.sent, report.moved)
        self._period_dirtied += report.remaining
        if self._period_s < THROTTLE_PERIOD_S:
            return Decision("continue")
        dirtied, threshold = (self._period_dirtied,
                              self._period_sent * params["throttle-trigger-threshold"] / 100)
        self._period_s, self._period_sent, self._period_dirtied = 0.0, 0, 0
        if dirtied <= threshold:
            return Decision("continue")
        self._high += 1
        if self._high < 2:
            return Decision("continue")
        self._high = 0
        if caps.get("dirty-limit"):
            return Decision("limit", reason=f"dirtied {dirtied} bytes against a threshold of "
                            f"{int(threshold)}", dirty_limit=int(params["vcpu-dirty-limit"]))
        return Decision("throttle", self._next_throttle(report.throttle, dirtied, threshold,
                                                        params),
                        f"dirtied {dirtied} bytes against a threshold of {int(threshold)}")

    @staticmethod
    def _next_throttle(now: int, dirtied: float, threshold: float,
                       params: dict[str, Any]) -> int:
        if now == 0:
            return int(params["cpu-throttle-initial"])
        step = int(params["cpu-throttle-increment"])
        if params["cpu-throttle-tailslow"]:
            cpu_now = 100 - now
            cpu_ideal = cpu_now * (threshold / dirtied)
            step = min(int(cpu_now - cpu_ideal), step)
        return min(now + step, int(params["max-cpu-throttle"]))


class PassLog:
    """Every pass's report and decision, for query-migrate's livemig-passes
    (the newest MAX_ENTRIES)."""

    MAX_ENTRIES = 1000

    def __init__(self) -> None:
        self.entries: list[tuple[PassReport, Decision]] = []
        self.limits = 0  # "limit" decisions, ever (entries keep only the newest)

    def record(self, report: PassReport, decision: Decision) -> None:
        self.entries.append((report, decision))
        del self.entries[:-self.MAX_ENTRIES]
        self.limits += decision.action == "limit"

    @property
    def limited(self) -> bool:
        """A dirty limit was set by this migration (and ends with it)."""
        return self.limits > 0

    def to_qmp(self) -> list[dict[str, Any]]:
        return [{"pass": r.number, "duration-ms": round(r.duration_s * 1000, 1),
                 "bytes": r.sent, "ram-bytes": r.moved, "dirty-pages": r.dirty_pages,
                 "dirty-rate": int(r.dirty_rate), "bandwidth": int(r.bandwidth),
                 "expected-downtime": int(min(r.expected_downtime_ms, 2**62)),
                 "throttle": r.throttle, "decision": d.describe()}
                for r, d in list(self.entries)]


class AutoPostcopy(QemuPolicy):
    """QEMU's rules, and when precopy is judged not to converge, switch to
    postcopy on its own (the ``postcopy-ram`` capability must be on; without
    it this is QEMU's policy). Not converging: after at least
    ``MIN_PASSES`` passes, the last ``WINDOW`` passes' expected downtime has
    not fallen below half of the window's first."""

    MIN_PASSES = 3
    WINDOW = 3

    def __init__(self) -> None:
        super().__init__()
        self._expected: list[float] = []

    def decide(self, report: PassReport, params: dict[str, Any],
               caps: dict[str, bool]) -> Decision:
        decision = super().decide(report, params, caps)
        if decision.action != "continue" or not caps.get("postcopy-ram"):
            return decision
        self._expected.append(report.expected_downtime_ms)
        window = self._expected[-self.WINDOW:]
        if (len(self._expected) >= self.MIN_PASSES and len(window) == self.WINDOW
                and min(window[1:]) > window[0] / 2):
            return Decision("postcopy", reason=f"expected downtime stuck near "
                                               f"{int(window[-1])} ms")
        return decision


class Deadline(QemuPolicy):
    """Finish within ``livemig-deadline`` ms of the migrate command, with the
    least downtime it can: passes go on while downtime shrinks and one more
    pass (as long as the last) still leaves time for the switchover at this
    bandwidth; otherwise switch over now, whatever downtime-limit says.
    With no deadline set, QEMU's rules."""

    def __init__(self) -> None:
        super().__init__()
        self._best = float("inf")

    def decide(self, report: PassReport, params: dict[str, Any],
               caps: dict[str, bool]) -> Decision:
        decision = super().decide(report, params, caps)
        deadline_s = params.get("livemig-deadline", 0) / 1000
        if decision.action == "switchover" or deadline_s <= 0:
            return decision
        expected_s = report.expected_downtime_ms / 1000
        shrinking = report.expected_downtime_ms < self._best * 0.9
        self._best = min(self._best, report.expected_downtime_ms)
        time_after_next = report.elapsed_s + report.duration_s + expected_s
        if time_after_next > deadline_s or not shrinking:
            return Decision("switchover", reason=f"deadline {int(deadline_s * 1000)} ms: "
                                                 f"switch with ~{int(expected_s * 1000)} ms")
        return decision


BUILTIN: dict[str, type] = {"qemu": QemuPolicy, "auto-postcopy": AutoPostcopy,
                            "deadline": Deadline}
ENTRY_POINT_GROUP = "livemig.convergence_policies"


class PolicyError(ValueError):
    """A policy name that cannot be loaded."""


def policy_class(name: str) -> type:
    """The class ``name`` stands for: a built-in, ``module:Class``, or an
    entry point in ENTRY_POINT_GROUP."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        import importlib

        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise PolicyError(f"cannot load convergence policy '{name}': {err}") from err
    else:
        from importlib.metadata import entry_points

        points = [p for p in entry_points(group=ENTRY_POINT_GROUP) if p.name == name]
        if not points:
            raise PolicyError(f"unknown convergence policy '{name}' (built in: "
                              f"{', '.join(BUILTIN)}; or module:Class, or an entry point "
                              f"in {ENTRY_POINT_GROUP})")
        try:
            found = points[0].load()
        except Exception as err:
            raise PolicyError(f"cannot load convergence policy '{name}': {err}") from err
    if not isinstance(found, type) or not callable(getattr(found, "decide", None)):
        raise PolicyError(f"convergence policy '{name}' is not a class with a decide() method")
    return found


def load_policy(name: str) -> Policy:
    """A fresh policy object for one migration."""
    try:
        policy: Policy = policy_class(name)()
    except PolicyError:
        raise
    except Exception as err:
        raise PolicyError(f"convergence policy '{name}' failed to start: {err}") from err
    return policy
