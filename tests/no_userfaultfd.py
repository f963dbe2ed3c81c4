"""Run a program with userfaultfd(2) denied (EPERM), as on a host whose
policy forbids it: ``python no_userfaultfd.py PROGRAM ARGS...``.

A seccomp filter is inherited across execve, so the VMM started here sees
userfaultfd fail exactly as it would without permission.
"""

from __future__ import annotations

import ctypes
import os
import sys

# <linux/filter.h>
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
# <linux/seccomp.h>, <linux/audit.h>, <linux/prctl.h>
SECCOMP_MODE_FILTER, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 2, 0x7FFF0000, 0x00050000
AUDIT_ARCH_X86_64 = 0xC000003E
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 38, 22
NR_USERFAULTFD = 323  # x86-64
EPERM = 1
# struct seccomp_data: int nr at offset 0, u32 arch at offset 4.
NR_OFFSET, ARCH_OFFSET = 0, 4


class SockFilter(ctypes.Structure):
    """struct sock_filter (linux/filter.h)."""

    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    """struct sock_fprog (linux/filter.h)."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def deny_userfaultfd() -> None:
    program = [
        SockFilter(BPF_LD_W_ABS, 0, 0, ARCH_OFFSET),
        SockFilter(BPF_JEQ_K, 0, 3, AUDIT_ARCH_X86_64),   # another ABI: allow
        SockFilter(BPF_LD_W_ABS, 0, 0, NR_OFFSET),
        SockFilter(BPF_JEQ_K, 0, 1, NR_USERFAULTFD),
        SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
        SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    filters = (SockFilter * len(program))(*program)
    # Safe: ``filters`` outlives the prctl call, which copies the program.
    fprog = SockFprog(len(program), ctypes.cast(filters, ctypes.POINTER(SockFilter)))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


if __name__ == "__main__":
    deny_userfaultfd()
    os.execv(sys.argv[1], sys.argv[1:])
