"""Port 0x92, "system control port A": the fast A20 gate and fast reset."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from .base import RegisterState, register

A20_ENABLE = 0x02
FAST_RESET = 0x01


class Port92State(RegisterState):
    DEVICE: ClassVar[str] = "port92"
    value: int = register()


class SystemControlPortA:
    """Keeps the A20 bit a guest set; a write with bit 0 asks for a reset.

    Guest memory is never wrapped at 1 MiB: livemig behaves as if A20 were
    always on, which is what every guest that sets the bit wants.
    """

    STATE = Port92State

    def __init__(self, request_reset: Callable[[], None], name: str = "port92") -> None:
        self.name = name
        self._request_reset = request_reset
        self.reset()

    def reset(self) -> None:
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        self.value = value & A20_ENABLE
        if value & FAST_RESET:
            self._request_reset()

    def state(self) -> Port92State:
        return Port92State(self.value)

    def from_state(self, state: Port92State) -> None:
        self.value = state.value & A20_ENABLE
