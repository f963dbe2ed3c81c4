"""The Unicorn engine behind the ``tcg`` accelerator (QEMU's TCG as a library).

Loaded through ``tcg.TcgAccelerator``, which defers this module (and
libunicorn's 24 MB) until the machine starts.

Guest RAM is mapped into Unicorn with ``mem_map_ptr`` from the machine's own
mmap, so emulator, VMM and migration code share one copy. Port I/O goes to
the I/O bus through instruction hooks; physical addresses with no RAM behind
them read as all ones and drop writes, as on a PC.
"""

from __future__ import annotations

import threading

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_INSN,
    UC_MODE_16,
    UC_MODE_32,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as X

from ..devices import IoBus
from ..errors import AccelError
from ..memory import GuestRam
from . import tcg_stop
from .base import Crashed, Halted, Kicked, RunResult
from .cpustate import GPR_NAMES, CpuState, Segment

_GPR32 = {
    "rax": X.UC_X86_REG_EAX, "rbx": X.UC_X86_REG_EBX, "rcx": X.UC_X86_REG_ECX,
    "rdx": X.UC_X86_REG_EDX, "rsi": X.UC_X86_REG_ESI, "rdi": X.UC_X86_REG_EDI,
    "rsp": X.UC_X86_REG_ESP, "rbp": X.UC_X86_REG_EBP,
}
_SEGS = {
    "ds": X.UC_X86_REG_DS, "es": X.UC_X86_REG_ES, "fs": X.UC_X86_REG_FS,
    "gs": X.UC_X86_REG_GS, "ss": X.UC_X86_REG_SS, "cs": X.UC_X86_REG_CS,
}
_HLT = 0xF4
_NEVER = 2**64 - 1  # an "until" address execution can never reach
_FOUR_GIB = 1 << 32


class UnicornVcpu:
    """One vCPU emulated by Unicorn (32-bit x86: real and protected mode)."""

    def __init__(self, ram: GuestRam, bus: IoBus, state: CpuState) -> None:
        self._ram = ram
        self._bus = bus
        self._kicked = threading.Event()
        self._mode = UC_MODE_16
        self._uc, self._stop = self._engine(UC_MODE_16)
        # An instance for the other mode, built ahead (prepare_other_mode).
        self._spare: tuple[int, tuple[Uc, tcg_stop.StopControl]] | None = None
        self.set_state(state)

    def prepare_other_mode(self) -> None:
        """Build the engine for the mode not in use now, so that a switch to
        it (a migrated state in the other mode) costs nothing then. Called
        before this vCPU is handed to any other thread."""
        other = UC_MODE_32 if self._mode == UC_MODE_16 else UC_MODE_16
        self._spare = (other, self._engine(other))

    def _engine(self, mode: int) -> tuple[Uc, tcg_stop.StopControl]:
        """A Unicorn instance on our RAM, with the port and MMIO hooks.

        The mode only decides how Unicorn's own API treats registers: in
        mode 16 a segment write always sets base = selector * 16, in mode 32
        it loads the descriptor from the GDT. The guest's CPU mode is its
        own (CR0), whichever engine runs it.
        """
        try:
            uc = Uc(UC_ARCH_X86, mode)
            uc.mem_map_ptr(0, self._ram.size, UC_PROT_ALL, self._ram.address)
            if self._ram.size < _FOUR_GIB:
                uc.mmio_map(self._ram.size, _FOUR_GIB - self._ram.size,
                            self._unassigned_read, None, self._unassigned_write, None)
            uc.hook_add(UC_HOOK_INSN, self._port_in, None, 1, 0, X.UC_X86_INS_IN)
            uc.hook_add(UC_HOOK_INSN, self._port_out, None, 1, 0, X.UC_X86_INS_OUT)
        except UcError as err:
            raise AccelError(f"tcg: could not set up Unicorn: {err}") from err
        return uc, tcg_stop.install(uc)

    # --- hooks (called on the vCPU thread, inside emu_start) ---------------
    def _port_in(self, uc: Uc, port: int, size: int, _data: object) -> int:
        return self._bus.read(port, size)

    def _port_out(self, uc: Uc, port: int, size: int, value: int, _data: object) -> None:
        self._bus.write(port, size, value)

    @staticmethod
    def _unassigned_read(uc: Uc, offset: int, size: int, _data: object) -> int:
        return (1 << (8 * size)) - 1

    @staticmethod
    def _unassigned_write(uc: Uc, offset: int, size: int, value: int, _data: object) -> None:
        return None

    # --- running -------------------------------------------------------------
    def arm(self) -> None:
        self._kicked.clear()
        self._stop.requested = 0

    def kick(self) -> None:
        # The block hook (tcg_stop) stops at the next block boundary with EIP
        # exact; the flag also survives until emu_start, so no kick is lost.
        self._kicked.set()
        self._stop.requested = 1

    def run(self) -> RunResult:
        if self._kicked.is_set():
            return Kicked()
        uc = self._uc
        begin = uc.reg_read(X.UC_X86_REG_EIP)
        if self._mode == UC_MODE_16:
            # Unicorn's 16-bit mode turns ``begin`` into EIP by subtracting
            # CS * 16 (real-mode style) even after the switch to protected
            # mode, so add it here to land exactly on the current EIP.
            begin += uc.reg_read(X.UC_X86_REG_CS) << 4
        try:
            uc.emu_start(begin, _NEVER)
        except UcError as err:
            where = uc.reg_read(X.UC_X86_REG_EIP)
            return Crashed(f"tcg: {err} at eip={where:#x}")
        if self._kicked.is_set():
            return Kicked()
        if self._just_halted():
            return Halted()
        return Kicked()

    def _just_halted(self) -> bool:
        eip = self._uc.reg_read(X.UC_X86_REG_EIP)
        cs_base = self._segment("cs", self._uc.reg_read(X.UC_X86_REG_CS)).base
        linear = (cs_base + eip - 1) & 0xFFFFFFFF
        return self._ram.contains(linear) and self._ram.read(linear, 1)[0] == _HLT

    # --- state -----------------------------------------------------------------
    def _segment(self, name: str, selector: int) -> Segment:
        """Rebuild a segment's hidden part: from the GDT in protected mode."""
        cr0 = self._uc.reg_read(X.UC_X86_REG_CR0)
        if not cr0 & 1:
            return Segment.real_mode(selector, code=name == "cs")
        if selector & ~3 == 0:
            return Segment(selector=selector, unusable=1, present=0)
        _, gdt_base, gdt_limit, _ = self._uc.reg_read(X.UC_X86_REG_GDTR)
        offset = selector & ~7
        address = gdt_base + offset
        if offset + 7 > gdt_limit or not self._ram.contains(address, 8):
            raise AccelError(f"tcg: {name} selector {selector:#x} is outside the GDT")
        raw = int.from_bytes(self._ram.read(address, 8), "little")
        return Segment.from_descriptor(selector, raw)

    def get_state(self) -> CpuState:
        uc = self._uc
        state = CpuState()
        state.gprs = dict.fromkeys(GPR_NAMES, 0)
        for name, reg in _GPR32.items():
            state.gprs[name] = uc.reg_read(reg)
        state.rip = uc.reg_read(X.UC_X86_REG_EIP)
        state.rflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
        state.cr0 = uc.reg_read(X.UC_X86_REG_CR0)
        state.cr2 = uc.reg_read(X.UC_X86_REG_CR2)
        state.cr3 = uc.reg_read(X.UC_X86_REG_CR3)
        state.cr4 = uc.reg_read(X.UC_X86_REG_CR4)
        _, gbase, glimit, _ = uc.reg_read(X.UC_X86_REG_GDTR)
        _, ibase, ilimit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
        state.gdt, state.idt = (gbase, glimit), (ibase, ilimit)
        for name, reg in _SEGS.items():
            state.segments[name] = self._segment(name, uc.reg_read(reg))
        state.halted = False  # the machine owns the halted flag
        return state

    def set_state(self, state: CpuState) -> None:
        mode = UC_MODE_32 if state.protected else UC_MODE_16
        if mode != self._mode:
            spare = self._spare
            if spare is not None and spare[0] == mode:
                # The old instance becomes the spare: a switch back is free too.
                self._spare = (self._mode, (self._uc, self._stop))
                self._uc, self._stop = spare[1]
                self._uc.ctl_flush_tb()  # it may have run (and translated) before
            else:
                self._uc, self._stop = self._engine(mode)
            self._mode = mode
        uc = self._uc
        try:
            uc.reg_write(X.UC_X86_REG_GDTR, (0, state.gdt[0], state.gdt[1], 0))
            uc.reg_write(X.UC_X86_REG_IDTR, (0, state.idt[0], state.idt[1], 0))
            uc.reg_write(X.UC_X86_REG_CR3, state.cr3)
            uc.reg_write(X.UC_X86_REG_CR4, state.cr4)
            uc.reg_write(X.UC_X86_REG_CR2, state.cr2)
            uc.reg_write(X.UC_X86_REG_CR0, state.cr0)
            for name, reg in _GPR32.items():
                uc.reg_write(reg, state.gprs[name] & 0xFFFFFFFF)
            uc.reg_write(X.UC_X86_REG_EFLAGS, state.rflags & 0xFFFFFFFF)
            # In mode 32 a selector write reloads the hidden part from the
            # GDT, which is in guest RAM and so already in place; in mode 16
            # (real mode) it sets base = selector * 16, as real mode does.
            for name, reg in _SEGS.items():
                uc.reg_write(reg, state.segments[name].selector)
            uc.reg_write(X.UC_X86_REG_EIP, state.rip & 0xFFFFFFFF)
        except UcError as err:
            raise AccelError(f"tcg: could not load vCPU state: {err}") from err

    def code_changed(self, address: int, length: int) -> None:
        if length >= self._ram.size:
            # All of RAM (a migrated state): dropping every translation at
            # once is far cheaper than a walk over each page (5 ms at 4 GiB).
            self._uc.ctl_flush_tb()
            return
        self._uc.ctl_remove_cache(address, address + max(length, 1))

    def close(self) -> None:
        self._uc = None  # type: ignore[assignment]
