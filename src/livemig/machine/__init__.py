"""One VM: RAM, accelerator, devices, vCPU thread and run state."""

from .config import DEFAULT_RAM, DebugExitConfig, MachineConfig
from .machine import EventSink, Machine
from .runstate import NEEDS_RESET, RunState

__all__ = [
    "DEFAULT_RAM", "NEEDS_RESET", "DebugExitConfig", "EventSink", "Machine", "MachineConfig",
    "RunState",
]
