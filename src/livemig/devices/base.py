"""The device-model protocol shared by every port-mapped device."""

from __future__ import annotations

from typing import Any, Protocol


class PortDevice(Protocol):
    """A device on the I/O port bus.

    ``offset`` is relative to the base port the device was mapped at. Models
    are pure state machines: no threads, no I/O of their own; output and
    interrupts leave through sinks injected by whoever builds the machine.
    """

    name: str

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...

    def state(self) -> dict[str, Any]:
        """Everything a destination needs to carry on (JSON-serialisable)."""
        ...

    def load_state(self, state: dict[str, Any]) -> None:
        """Adopt a state produced by :meth:`state` (raises DeviceError if bad)."""
        ...

    def reset(self) -> None: ...
