"""Run states, with QEMU's names (as ``query-status`` reports them)."""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    DEBUG = "debug"
    INMIGRATE = "inmigrate"
    INTERNAL_ERROR = "internal-error"
    IO_ERROR = "io-error"
    PAUSED = "paused"
    POSTMIGRATE = "postmigrate"
    PRELAUNCH = "prelaunch"
    FINISH_MIGRATE = "finish-migrate"
    RESTORE_VM = "restore-vm"
    RUNNING = "running"
    SAVE_VM = "save-vm"
    SHUTDOWN = "shutdown"
    SUSPENDED = "suspended"
    WATCHDOG = "watchdog"
    GUEST_PANICKED = "guest-panicked"
    COLO = "colo"


# States from which `cont` must refuse: the guest needs a reset first.
NEEDS_RESET = frozenset({RunState.INTERNAL_ERROR, RunState.SHUTDOWN, RunState.GUEST_PANICKED})
