"""The protocol every vCPU backend implements, and what ``run`` reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .cpustate import CpuState

if TYPE_CHECKING:
    from ..memory import GuestRam
    from ..memory.dirty import DirtyTracker


@dataclass(frozen=True)
class Kicked:
    """``run`` returned because :meth:`Accelerator.kick` asked it to."""


@dataclass(frozen=True)
class Halted:
    """The guest executed ``hlt``; with no interrupt source it stays halted."""


@dataclass(frozen=True)
class TripleFault:
    """The guest reset itself the hard way."""


@dataclass(frozen=True)
class Crashed:
    """The vCPU cannot continue; ``reason`` says why."""

    reason: str


RunResult = Kicked | Halted | TripleFault | Crashed


class Accelerator(Protocol):
    """One vCPU on one backend. ``run`` is called from the vCPU thread only;
    ``kick`` from any thread; state calls only while the vCPU is not running."""

    name: str

    def run(self) -> RunResult:
        """Execute guest code until kicked or until the guest needs us."""
        ...

    def arm(self) -> None:
        """Forget earlier kicks; called by the vCPU thread just before ``run``."""
        ...

    def kick(self) -> None:
        """Make a ``run`` in progress (or about to start) return soon."""
        ...

    def preload(self) -> None:
        """Start building whatever ``run`` will need, without waiting for it."""
        ...

    def get_state(self) -> CpuState: ...

    def set_state(self, state: CpuState) -> None: ...

    def code_changed(self, address: int, length: int) -> None:
        """Guest code may have changed behind the backend's back (loads, qtest)."""
        ...

    def dirty_tracker(self, ram: GuestRam) -> DirtyTracker:
        """The dirty-page tracker that sees this backend's guest writes."""
        ...

    def dirty_ring_counts(self) -> list[int] | None:
        """Pages taken so far from each vCPU's dirty ring; None without one."""
        ...

    def close(self) -> None: ...
