"""QEMU's ``isa-debug-exit``: a guest write ends the VMM with (value << 1) | 1."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from .base import RegisterState


class DebugExitState(RegisterState):
    """isa-debug-exit has no state; the record still says the device exists."""

    DEVICE: ClassVar[str] = "isa-debug-exit"


class IsaDebugExit:
    """Write-only; reads return all ones as an empty port would."""

    STATE = DebugExitState

    def __init__(self, exit_process: Callable[[int], None], name: str = "isa-debug-exit") -> None:
        self.name = name
        self._exit = exit_process

    def reset(self) -> None:
        pass

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        self._exit(((value & ((1 << (8 * size)) - 1)) << 1) | 1)

    def state(self) -> DebugExitState:
        return DebugExitState()

    def from_state(self, state: DebugExitState) -> None:
        pass
