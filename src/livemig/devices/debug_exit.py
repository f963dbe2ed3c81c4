"""QEMU's ``isa-debug-exit``: a guest write ends the VMM with (value << 1) | 1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class IsaDebugExit:
    """Write-only; reads return all ones as an empty port would."""

    def __init__(self, exit_process: Callable[[int], None], name: str = "isa-debug-exit") -> None:
        self.name = name
        self._exit = exit_process

    def reset(self) -> None:
        pass

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        self._exit(((value & ((1 << (8 * size)) - 1)) << 1) | 1)

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass
