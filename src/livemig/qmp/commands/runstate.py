"""Run-state commands: query-status, stop, cont, system_reset, quit."""

from __future__ import annotations

from typing import Any

from ...errors import MachineError, QmpError
from ..context import QmpContext
from ..registry import command


@command("query-status")
def query_status(ctx: QmpContext) -> dict[str, Any]:
    state = ctx.machine.runstate
    return {"status": str(state), "singlestep": False, "running": ctx.machine.running}


@command("stop")
def stop(ctx: QmpContext) -> None:
    ctx.machine.stop()


@command("cont")
def cont(ctx: QmpContext) -> None:
    try:
        ctx.machine.cont()
    except MachineError as err:
        raise QmpError(str(err)) from err


@command("system_reset")
def system_reset(ctx: QmpContext) -> None:
    ctx.machine.system_reset()


@command("system_powerdown")
def system_powerdown(ctx: QmpContext) -> None:
    """QEMU presses the ACPI power button; livemig's machine has none, and
    its guests no driver for one, so it refuses instead of pretending."""
    raise QmpError("livemig's machine has no ACPI power button: the guest cannot be "
                   "asked to power off (quit, or virsh destroy, ends it)")


@command("quit")
def quit_(ctx: QmpContext) -> None:
    ctx.machine.request_shutdown("host-qmp-quit")
