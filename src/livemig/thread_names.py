"""``-name …,debug-threads=on``: every thread started afterwards carries its
Python name as its OS name (what ps, top, perf and /proc/PID/task/*/comm
show), as QEMU names its threads: ``CPU 0/TCG``, ``live_migration``,
``mig/src/rp``, …

threading.setprofile installs a hook that each new thread runs once, as it
starts and before its target; the hook names the thread and removes itself
from that thread, so nothing else runs per call."""

from __future__ import annotations

import ctypes
import sys
import threading
from types import FrameType
from typing import Any

PR_SET_NAME = 15  # linux/prctl.h: the calling thread's name, 15 bytes and a NUL


def set_os_name(name: str) -> None:
    """Name the calling thread (truncated to the kernel's 15 bytes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def _name_and_leave(frame: FrameType, event: str, arg: Any) -> None:
    sys.setprofile(None)  # this thread only: later calls pay nothing
    set_os_name(threading.current_thread().name)


def install() -> None:
    threading.setprofile(_name_and_leave)
