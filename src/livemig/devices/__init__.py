"""Device models (pure state machines) and the I/O port bus."""

from .base import PortDevice, RegisterState
from .bus import IoBus
from .debug_exit import IsaDebugExit
from .system_control import SystemControlPortA
from .uart import Uart16550

__all__ = ["IoBus", "IsaDebugExit", "PortDevice", "RegisterState", "SystemControlPortA",
           "Uart16550"]
