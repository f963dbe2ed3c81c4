"""The x86 I/O port bus: routes port reads and writes to device models."""

from __future__ import annotations

import bisect
import threading
from typing import NamedTuple

from ..errors import DeviceError
from ..logs import get_logger
from .base import PortDevice

log = get_logger(__name__)


class _Mapping(NamedTuple):
    base: int
    length: int
    device: PortDevice


class IoBus:
    """Port space 0..0xffff. Unmapped reads return all ones, writes are dropped.

    One lock serialises device access: the vCPU thread and the VMM's own
    threads (qtest ``outb``, migration state save) both come through here.
    """

    def __init__(self) -> None:
        self._maps: list[_Mapping] = []
        self._bases: list[int] = []
        self.lock = threading.Lock()
        self.unassigned_reads = 0
        self.unassigned_writes = 0

    def map(self, base: int, length: int, device: PortDevice) -> None:
        for m in self._maps:
            if base < m.base + m.length and m.base < base + length:
                raise DeviceError(
                    f"{device.name} at {base:#x} overlaps {m.device.name} at {m.base:#x}"
                )
        index = bisect.bisect(self._bases, base)
        self._bases.insert(index, base)
        self._maps.insert(index, _Mapping(base, length, device))

    @property
    def devices(self) -> list[PortDevice]:
        return [m.device for m in self._maps]

    def _find(self, port: int) -> _Mapping | None:
        index = bisect.bisect(self._bases, port) - 1
        if index >= 0:
            m = self._maps[index]
            if port < m.base + m.length:
                return m
        return None

    def read(self, port: int, size: int) -> int:
        with self.lock:
            m = self._find(port)
            if m is None:
                self.unassigned_reads += 1
                log.debug("read of unassigned port %#x (size %d)", port, size)
                return (1 << (8 * size)) - 1
            return m.device.read(port - m.base, size)

    def write(self, port: int, size: int, value: int) -> None:
        with self.lock:
            m = self._find(port)
            if m is None:
                self.unassigned_writes += 1
                log.debug("write %#x to unassigned port %#x (size %d)", value, port, size)
                return
            m.device.write(port - m.base, size, value)

    def reset(self) -> None:
        with self.lock:
            for m in self._maps:
                m.device.reset()
