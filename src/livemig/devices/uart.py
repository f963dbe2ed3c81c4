"""A 16550-style UART (COM1 at 0x3f8): what a boot sector needs to print.

Transmit is instant: every byte written to the transmit holding register goes
straight to the output sink, so line status always reads "transmitter
holding register empty, transmitter empty". There is no receive path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from .base import RegisterState, register

# Register offsets (with DLAB clear unless noted).
THR_RBR_DLL = 0
IER_DLM = 1
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

LCR_DLAB = 0x80
LSR_THRE = 0x20
LSR_TEMT = 0x40
IIR_NO_INTERRUPT = 0x01
MSR_IDLE = 0xB0  # DCD, DSR and CTS asserted: a cable with a listener on it

_STATE_KEYS = ("ier", "lcr", "mcr", "scr", "dll", "dlm", "fcr")


class UartState(RegisterState):
    """The UART's programmable registers (transmit is instant: no FIFO state)."""

    DEVICE: ClassVar[str] = "serial0"
    ier: int = register()
    lcr: int = register()
    mcr: int = register()
    scr: int = register()
    dll: int = register()
    dlm: int = register()
    fcr: int = register()


class Uart16550:
    """COM port model; ``output`` receives each transmitted byte."""

    STATE = UartState

    def __init__(self, output: Callable[[bytes], None], name: str = "serial0") -> None:
        self.name = name
        self._output = output
        self.reset()

    def reset(self) -> None:
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.dll = 0x0C  # 9600 baud divisor, the usual power-on value
        self.dlm = 0
        self.fcr = 0

    def read(self, offset: int, size: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if offset == THR_RBR_DLL:
            return self.dll if dlab else 0
        if offset == IER_DLM:
            return self.dlm if dlab else self.ier
        if offset == IIR_FCR:
            return IIR_NO_INTERRUPT | (0xC0 if self.fcr & 1 else 0)
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            return LSR_THRE | LSR_TEMT
        if offset == MSR:
            return MSR_IDLE
        return self.scr

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if offset == THR_RBR_DLL:
            if dlab:
                self.dll = value
            else:
                self._output(bytes((value,)))
        elif offset == IER_DLM:
            if dlab:
                self.dlm = value
            else:
                self.ier = value & 0x0F
        elif offset == IIR_FCR:
            self.fcr = value & 0xC9
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & 0x1F
        elif offset == SCR:
            self.scr = value

    def state(self) -> UartState:
        return UartState(**{key: getattr(self, key) for key in _STATE_KEYS})

    def from_state(self, state: UartState) -> None:
        for key in _STATE_KEYS:
            setattr(self, key, getattr(state, key))
