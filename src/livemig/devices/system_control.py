"""Port 0x92, "system control port A": the fast A20 gate and fast reset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import DeviceError

A20_ENABLE = 0x02
FAST_RESET = 0x01


class SystemControlPortA:
    """Keeps the A20 bit a guest set; a write with bit 0 asks for a reset.

    Guest memory is never wrapped at 1 MiB: livemig behaves as if A20 were
    always on, which is what every guest that sets the bit wants.
    """

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

    def state(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state(self, state: dict[str, Any]) -> None:
        try:
            self.value = int(state["value"]) & A20_ENABLE
        except (KeyError, TypeError, ValueError) as err:
            raise DeviceError(f"{self.name}: bad saved state {state!r}") from err
