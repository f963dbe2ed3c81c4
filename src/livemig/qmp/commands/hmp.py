"""human-monitor-command: the HMP commands scripts send through QMP, and
qmp-shell's ``-H`` mode. Each HMP word is a QMP command with its arguments
parsed from the line; each ``info`` view formats a query's answer with
:mod:`livemig.hmp_views`, laid out as QEMU 7.2 lays it out. Errors are
QEMU's ``Error: …`` lines, and the command itself always succeeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ... import hmp_views
from ...errors import LivemigError
from ...machine import RunState
from ..context import QmpContext
from ..registry import COMMANDS, call, command
from ..schema import check_arguments


class HmpUsage(Exception):
    """The line does not fit the command: QEMU's two-line usage complaint."""

    def __init__(self, word: str, what: str) -> None:
        super().__init__(f"{what}\r\nTry \"help {word}\" for more information\r\n")


def _qmp(ctx: QmpContext, name: str, args: dict[str, Any] | None = None) -> Any:
    """Run a QMP command as its QMP client would (arguments checked)."""
    cmd = COMMANDS[name]
    return call(cmd, ctx, check_arguments(cmd.schema, args or {}))


# --- info views ---------------------------------------------------------------------


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
    "migrate": lambda ctx: hmp_views.info_migrate(_qmp(ctx, "query-migrate")),
    "migrate_capabilities": lambda ctx: hmp_views.info_migrate_capabilities(
        _qmp(ctx, "query-migrate-capabilities")),
    "migrate_parameters": lambda ctx: hmp_views.info_migrate_parameters(
        _qmp(ctx, "query-migrate-parameters")),
    "dirty_rate": lambda ctx: hmp_views.info_dirty_rate(_qmp(ctx, "query-dirty-rate")),
}


# --- commands -------------------------------------------------------------------------


def _flags(words: list[str], known: str) -> tuple[set[str], list[str]]:
    """Leading ``-x`` flags (from ``known``) and the words after them."""
    flags: set[str] = set()
    rest = list(words)
    while rest and len(rest[0]) == 2 and rest[0][0] == "-" and rest[0][1] in known:
        flags.add(rest.pop(0)[1])
    return flags, rest


def _one_string(word: str, args: list[str]) -> str:
    if not args:
        raise HmpUsage(word, f"{word}: string expected")
    return args[0]


def _migrate(ctx: QmpContext, word: str, args: list[str]) -> str:
    """migrate [-d] [-b] [-i] [-r] URI. Always detached: a monitor that
    waits for the end of a migration is of no use to a QMP client."""
    flags, rest = _flags(args, "dbir")
    _qmp(ctx, "migrate", {"uri": _one_string(word, rest), "blk": "b" in flags,
                          "inc": "i" in flags, "resume": "r" in flags})
    return ""


def _uri_command(qmp_name: str) -> Callable[[QmpContext, str, list[str]], str]:
    def run(ctx: QmpContext, word: str, args: list[str]) -> str:
        _qmp(ctx, qmp_name, {"uri": _one_string(word, args)})
        return ""
    return run


def _bare(qmp_name: str) -> Callable[[QmpContext, str, list[str]], str]:
    def run(ctx: QmpContext, word: str, args: list[str]) -> str:
        _qmp(ctx, qmp_name)
        return ""
    return run


_ON_OFF = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


def _set_capability(ctx: QmpContext, word: str, args: list[str]) -> str:
    if len(args) < 2:
        raise HmpUsage(word, f"{word}: {'string' if not args else 'boolean'} expected")
    name, state = args[0], args[1]
    if state not in ("on", "off"):
        raise HmpUsage(word, "Expected 'on' or 'off'")
    names = {c["capability"] for c in _qmp(ctx, "query-migrate-capabilities")}
    if name not in names:
        raise LivemigError(f"invalid parameter value: {name}")  # QEMU's words
    _qmp(ctx, "migrate-set-capabilities",
         {"capabilities": [{"capability": name, "state": state == "on"}]})
    return ""


_BAD_NUMBER = ("Parameter '{}' expects a non-negative number below 2^64\r\nOptional suffix "
               "k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\r\nand exabytes, "
               "respectively.")


def _parameter_value(name: str, kind: Any, text: str) -> Any:
    """An HMP parameter value, typed by the parameter's QMP schema type."""
    if kind == "size":
        from ...sizes import parse_size
        try:
            return parse_size(text)
        except LivemigError as err:
            raise LivemigError(f"Invalid size {text}") from err
    if kind in ("uint8", "uint32", "uint64"):
        if not text.isdigit():
            raise LivemigError(_BAD_NUMBER.format(name))
        return int(text)
    if kind == "bool":
        if text not in _ON_OFF:
            raise LivemigError(f"Parameter '{name}' expects 'on' or 'off'")
        return _ON_OFF[text]
    return text  # str, str-or-null, an enum: the QMP check has the words


def _set_parameter(ctx: QmpContext, word: str, args: list[str]) -> str:
    if len(args) < 2:
        raise HmpUsage(word, f"{word}: string expected")
    name, text = args[0], " ".join(args[1:])
    schema = COMMANDS["migrate-set-parameters"].schema
    kind = schema.get("*" + name)
    if kind is None:
        raise LivemigError(f"invalid parameter value: {name}")  # QEMU's words
    _qmp(ctx, "migrate-set-parameters", {name: _parameter_value(name, kind, text)})
    return ""


def _calc_dirty_rate(ctx: QmpContext, word: str, args: list[str]) -> str:
    """calc_dirty_rate [-r] [-b] SECONDS [SAMPLE_PAGES]"""
    flags, rest = _flags(args, "rb")
    if not rest:
        raise HmpUsage(word, "unexpected end of expression")
    if flags == {"r", "b"}:
        raise LivemigError("Either dirty ring or dirty bitmap can be specified!")
    if not all(w.isdigit() for w in rest[:2]):
        raise HmpUsage(word, "invalid number")
    mode = "dirty-ring" if "r" in flags else "dirty-bitmap" if "b" in flags else "page-sampling"
    request: dict[str, Any] = {"calc-time": int(rest[0]), "mode": mode}
    if len(rest) > 1:
        request["sample-pages"] = int(rest[1])
    _qmp(ctx, "calc-dirty-rate", request)
    return (f"Starting dirty rate measurement with period {int(rest[0])} seconds\r\n"
            "[Please use 'info dirty_rate' to check results]\r\n")


HMP: dict[str, Callable[[QmpContext, str, list[str]], str]] = {
    "stop": _bare("stop"), "cont": _bare("cont"), "c": _bare("cont"),
    "system_reset": _bare("system_reset"), "q": _bare("quit"), "quit": _bare("quit"),
    "migrate": _migrate,
    "migrate_cancel": _bare("migrate_cancel"),
    "migrate_incoming": _uri_command("migrate-incoming"),
    "migrate_recover": _uri_command("migrate-recover"),
    "migrate_start_postcopy": _bare("migrate-start-postcopy"),
    "migrate_pause": _bare("migrate-pause"),
    "migrate_set_capability": _set_capability,
    "migrate_set_parameter": _set_parameter,
    "calc_dirty_rate": _calc_dirty_rate,
}


@command("human-monitor-command", {"command-line": "str", "*cpu-index": "int"})
def human_monitor_command(ctx: QmpContext, command_line: str, cpu_index: int = 0) -> str:
    words = command_line.split()
    if not words:
        return ""
    word, args = words[0], words[1:]
    try:
        if word == "info":
            if len(args) == 1 and args[0] in INFO:
                return INFO[args[0]](ctx)
            raise HmpUsage("info", "info: unknown or unsupported view" if args else
                           "info: a view name is needed")
        if word in HMP:
            return HMP[word](ctx, word, args)
    except HmpUsage as usage:
        return str(usage)
    except LivemigError as err:
        return f"Error: {err}\r\n"
    return f"unknown command: '{command_line.strip()}'\r\n"
