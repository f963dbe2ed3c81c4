"""human-monitor-command: the few HMP commands scripts send through QMP."""

from __future__ import annotations

from collections.abc import Callable

from ...machine import RunState
from ..context import QmpContext
from ..registry import COMMANDS, call, command


def _info_status(ctx: QmpContext) -> str:
    machine = ctx.machine
    if machine.running:
        return "VM status: running\r\n"
    if machine.runstate == RunState.PAUSED:
        return "VM status: paused\r\n"
    return f"VM status: paused ({machine.runstate})\r\n"


def _info_name(ctx: QmpContext) -> str:
    name = ctx.machine.config.name
    return f"{name}\r\n" if name else ""


def _info_kvm(ctx: QmpContext) -> str:
    enabled = ctx.machine.accel_name == "kvm"
    return f"kvm support: {'enabled' if enabled else 'disabled'}\r\n"


INFO: dict[str, Callable[[QmpContext], str]] = {
    "status": _info_status,
    "name": _info_name,
    "kvm": _info_kvm,
}

# HMP words that are plain QMP commands without arguments.
_SIMPLE = {"stop": "stop", "cont": "cont", "c": "cont", "system_reset": "system_reset",
           "q": "quit", "quit": "quit"}


@command("human-monitor-command", {"command-line": "str", "*cpu-index": "int"})
def human_monitor_command(ctx: QmpContext, command_line: str, cpu_index: int = 0) -> str:
    words = command_line.split()
    if not words:
        return ""
    if words[0] == "info" and len(words) == 2 and words[1] in INFO:
        return INFO[words[1]](ctx)
    if len(words) == 1 and words[0] in _SIMPLE:
        call(COMMANDS[_SIMPLE[words[0]]], ctx, {})
        return ""
    return f"unknown command: '{command_line.strip()}'\r\n"
