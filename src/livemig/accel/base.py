"""The protocol every vCPU backend implements, and what ``run`` reports."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

from .cpustate import CpuState

if TYPE_CHECKING:
    from ..memory import GuestRam
    from ..memory.dirty import DirtyTracker


# What run() returns. Plain classes rather than dataclasses: start-up
# imports this module, and a dataclass costs ~1 ms to create here.
class _Outcome:
    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Kicked(_Outcome):
    """``run`` returned because :meth:`Accelerator.kick` asked it to."""

    __slots__ = ()


class Halted(_Outcome):
    """The guest executed ``hlt``; with no interrupt source it stays halted."""

    __slots__ = ()


class TripleFault(_Outcome):
    """The guest reset itself the hard way."""

    __slots__ = ()


class Crashed(NamedTuple):
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

    def preload(self, incoming: bool = False) -> None:
        """Start building whatever ``run`` will need, without waiting for it.
        ``incoming``: the vCPU state will come from a migration, in whatever
        mode the guest is in by then."""
        ...

    def wait_ready(self) -> None:
        """Wait until what preload started is built (a failure shows at run)."""
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
