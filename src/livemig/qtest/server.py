"""The qtest wire protocol: one text command per line, one answer per line.

Answers follow QEMU's formats (``OK 0x…`` for reads, ``OK`` for writes,
``FAIL reason`` when a command cannot be done). Memory commands act on guest
RAM through the VMM, so their writes are seen by the guest and by dirty
tracking. Addresses outside RAM are refused with FAIL rather than read as
all ones, so a test that strays is told so.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Callable
from typing import IO

from ..chardev import Stream
from ..logs import get_logger
from ..machine import Machine

log = get_logger(__name__)

_SIZES = {"b": 1, "w": 2, "l": 4, "q": 8}


class QtestFail(Exception):
    """A command that is answered with FAIL."""


def _num(text: str) -> int:
    """strtoull(text, 0): 0x hex, leading-0 octal, decimal; negatives wrap."""
    try:
        value = int(text, 0) if not (text.startswith("0") and text[1:2].isdigit()) \
            else int(text, 8)
    except ValueError as err:
        raise QtestFail(f"bad number '{text}'") from err
    return value % (1 << 64)


class QtestServer:
    """Serves the qtest protocol on one stream."""

    def __init__(self, machine: Machine, log_file: IO[str] | None = None) -> None:
        self.machine = machine
        self._log = log_file
        self._start = time.monotonic()
        self._clock_ns = 0
        self._lock = threading.Lock()
        self._handlers: dict[str, Callable[[list[str]], str]] = {
            "read": self._read, "write": self._write,
            "b64read": self._b64read, "b64write": self._b64write,
            "memset": self._memset,
            "clock_step": self._clock_step, "clock_set": self._clock_set,
            "endianness": lambda _a: "OK little",
            "irq_intercept_in": lambda _a: "OK", "irq_intercept_out": lambda _a: "OK",
        }
        for suffix, size in _SIZES.items():
            self._handlers["read" + suffix] = self._make_read(size)
            self._handlers["write" + suffix] = self._make_write(size)
            if size <= 4:
                self._handlers["in" + suffix] = self._make_in(size)
                self._handlers["out" + suffix] = self._make_out(size)

    # --- protocol loop -------------------------------------------------------
    def attach(self, stream: Stream) -> None:
        buffer = b""
        while True:
            data = stream.read()
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                answer = self.execute(line.decode("utf-8", errors="replace").strip())
                if answer is not None and not stream.write(answer.encode() + b"\n"):
                    return

    def _note(self, direction: str, text: str) -> None:
        if self._log is not None:
            self._log.write(f"[{direction} +{time.monotonic() - self._start:.6f}] {text}\n")
            self._log.flush()

    def execute(self, line: str) -> str | None:
        """Answer one command line (None for a blank line)."""
        words = line.split()
        if not words:
            return None
        self._note("R", line)
        handler = self._handlers.get(words[0])
        try:
            if handler is None:
                raise QtestFail(f"Unknown command '{words[0]}'")
            with self._lock:
                answer = handler(words[1:])
        except QtestFail as err:
            answer = f"FAIL {err}"
        except ValueError as err:  # out-of-range memory access
            answer = f"FAIL {err}"
        self._note("S", answer)
        return answer

    # --- helpers --------------------------------------------------------------
    @staticmethod
    def _args(args: list[str], count: int, usage: str) -> list[int]:
        if len(args) < count:
            raise QtestFail(f"usage: {usage}")
        return [_num(a) for a in args[:count]]

    def _guest_write(self, address: int, data: bytes) -> None:
        self.machine.ram.write(address, data)
        if self.machine.accel is not None:
            self.machine.accel.code_changed(address, len(data))

    # --- memory -----------------------------------------------------------------
    def _read(self, args: list[str]) -> str:
        address, size = self._args(args, 2, "read ADDR SIZE")
        return "OK 0x" + self.machine.ram.read(address, size).hex()

    def _write(self, args: list[str]) -> str:
        address, size = self._args(args, 2, "write ADDR SIZE 0xDATA")
        if len(args) < 3 or not args[2].startswith("0x"):
            raise QtestFail("usage: write ADDR SIZE 0xDATA")
        digits = args[2][2:]
        digits = (digits + "0" * (2 * size))[:2 * size]
        try:
            data = bytes.fromhex(digits)
        except ValueError as err:
            raise QtestFail(f"bad hex data '{args[2]}'") from err
        self._guest_write(address, data)
        return "OK"

    def _b64read(self, args: list[str]) -> str:
        address, size = self._args(args, 2, "b64read ADDR SIZE")
        return "OK " + base64.b64encode(self.machine.ram.read(address, size)).decode()

    def _b64write(self, args: list[str]) -> str:
        address, size = self._args(args, 2, "b64write ADDR SIZE B64DATA")
        if len(args) < 3:
            raise QtestFail("usage: b64write ADDR SIZE B64DATA")
        try:
            data = base64.b64decode(args[2], validate=True)
        except (binascii.Error, ValueError) as err:
            raise QtestFail("b64write: invalid base64 data") from err
        data = (data + bytes(size))[:size]
        self._guest_write(address, data)
        return "OK"

    def _memset(self, args: list[str]) -> str:
        address, size, value = self._args(args, 3, "memset ADDR SIZE VALUE")
        self.machine.ram.fill(address, size, value)
        if self.machine.accel is not None:
            self.machine.accel.code_changed(address, size)
        return "OK"

    def _make_read(self, size: int) -> Callable[[list[str]], str]:
        def read(args: list[str]) -> str:
            (address,) = self._args(args, 1, "readX ADDR")
            value = int.from_bytes(self.machine.ram.read(address, size), "little")
            return f"OK 0x{value:016x}"
        return read

    def _make_write(self, size: int) -> Callable[[list[str]], str]:
        def write(args: list[str]) -> str:
            address, value = self._args(args, 2, "writeX ADDR VALUE")
            self._guest_write(address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
            return "OK"
        return write

    # --- ports ------------------------------------------------------------------------
    def _make_in(self, size: int) -> Callable[[list[str]], str]:
        def port_in(args: list[str]) -> str:
            (port,) = self._args(args, 1, "inX PORT")
            return f"OK 0x{self.machine.bus.read(port & 0xFFFF, size):04x}"
        return port_in

    def _make_out(self, size: int) -> Callable[[list[str]], str]:
        def port_out(args: list[str]) -> str:
            port, value = self._args(args, 2, "outX PORT VALUE")
            self.machine.bus.write(port & 0xFFFF, size, value & ((1 << (8 * size)) - 1))
            return "OK"
        return port_out

    # --- clock (livemig has no timers: the clock only moves when told to) ----------
    def _clock_step(self, args: list[str]) -> str:
        if args:
            self._clock_ns += _num(args[0])
        return f"OK {self._clock_ns}"

    def _clock_set(self, args: list[str]) -> str:
        (target,) = self._args(args, 1, "clock_set NS")
        self._clock_ns = max(self._clock_ns, target)
        return f"OK {self._clock_ns}"
