"""An exact way to stop Unicorn from another thread.

``Uc.emu_stop`` called from another thread is not exact on x86: Unicorn
skips re-synchronising EIP from the last translation block when a stop was
requested, so EIP can lag the other registers and a resumed guest repeats
instructions (unicorn-engine/unicorn#1355; we saw the guest's ``incb`` run
twice). A stop requested from *inside* the emulation, in a block hook,
lands exactly on a block boundary, with EIP synchronised.

A Python block hook would cost a callback per translation block (several
times slower). Instead the hook is ten bytes of native x86-64 code:

    mov  eax, [rcx]        ; rcx = user_data -> StopControl.requested
    test eax, eax
    jz   done
    jmp  [rcx + 8]         ; tail call StopControl.stop(uc): rdi still holds uc
  done:
    ret

Unicorn calls a block hook as ``cb(uc, address, size, user_data)`` (System V
x86-64: rdi, rsi, edx, rcx). ``stop`` is ``uc_emu_stop``, whose one
argument is the ``uc`` already in rdi. Measured here: no speed difference
from running without the hook.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform

from unicorn import UC_HOOK_BLOCK, Uc
from unicorn.unicorn_py3 import unicorn as _binding

from ..errors import AccelError

_CODE = bytes([0x8B, 0x01, 0x85, 0xC0, 0x74, 0x03, 0xFF, 0x61, 0x08, 0xC3])
_PROT_READ, _PROT_EXEC = 0x1, 0x4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class StopControl(ctypes.Structure):
    """The hook's user data: offsets 0 and 8 are what the native code reads."""

    _fields_ = [("requested", ctypes.c_int), ("_pad", ctypes.c_int), ("stop", ctypes.c_void_p)]


assert StopControl.stop.offset == 8


class _NativeHook:
    """The executable page holding the hook code (one per process)."""

    def __init__(self) -> None:
        if platform.machine() not in ("x86_64", "AMD64"):
            raise AccelError(f"tcg: the exact-stop hook needs an x86-64 host, not "
                             f"{platform.machine()}")
        self._page = mmap.mmap(-1, mmap.PAGESIZE)
        self._page.write(_CODE)
        # Safe: the page is ours, holds exactly _CODE, and stays mapped for the
        # life of the process (this object is a module-level singleton).
        self._holder = ctypes.c_char.from_buffer(self._page)
        self.address = ctypes.addressof(self._holder)
        if _libc.mprotect(self.address, mmap.PAGESIZE, _PROT_READ | _PROT_EXEC) != 0:
            code = ctypes.get_errno()
            raise AccelError(f"tcg: cannot make the stop hook executable: {os.strerror(code)}")


_hook: _NativeHook | None = None


def install(uc: Uc) -> StopControl:
    """Add the exact-stop block hook to ``uc``; setting ``requested`` stops it.

    The returned StopControl must be kept alive as long as ``uc`` runs: the
    hook reads it through a raw pointer.
    """
    global _hook
    if _hook is None:
        _hook = _NativeHook()
    control = StopControl(0, 0, ctypes.cast(_binding.uclib.uc_emu_stop, ctypes.c_void_p).value)
    handle = ctypes.c_size_t()
    # uc_hook_add(uc, &handle, UC_HOOK_BLOCK, callback, user_data, begin=1, end=0):
    # begin > end means "every address" (unicorn.h).
    err = _binding.uclib.uc_hook_add(
        uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK, ctypes.c_void_p(_hook.address),
        ctypes.c_void_p(ctypes.addressof(control)), ctypes.c_uint64(1), ctypes.c_uint64(0))
    if err != 0:
        raise AccelError(f"tcg: uc_hook_add(UC_HOOK_BLOCK) failed with error {err}")
    return control
