"""QOM introspection: qom-list-types, qom-list-properties and
device-list-properties, answered from livemig's type table (qom_types,
loaded at the first question: start-up does not need it); qom-list and
qom-get of the vCPU and /machine/peripheral."""

from __future__ import annotations

from typing import Any

from ...errors import QmpError
from ..context import QmpContext
from ..registry import command
from .machine_info import CPU_PATH


@command("qom-list-types", {"*implements": "str", "*abstract": "bool"})
def qom_list_types(ctx: QmpContext, implements: str | None = None,
                   abstract: bool = False) -> list[dict[str, Any]]:
    from ..qom_types import TYPES, ancestors

    out = []
    for name, info in TYPES.items():
        if info.abstract and not abstract:
            continue
        if implements is not None and implements not in ancestors(name):
            continue
        entry: dict[str, Any] = {"name": name}
        if info.parent is not None:
            entry["parent"] = info.parent
        if info.abstract:
            entry["abstract"] = True
        out.append(entry)
    return out


def _properties(name: str) -> list[dict[str, Any]]:
    from ..qom_types import TYPES

    return [{"name": prop, "type": typ} for prop, typ in TYPES[name].properties]


@command("qom-list-properties", {"typename": "str"})
def qom_list_properties(ctx: QmpContext, typename: str) -> list[dict[str, Any]]:
    from ..qom_types import TYPES

    if typename not in TYPES:
        raise QmpError(f"Class '{typename}' not found", "DeviceNotFound")
    return _properties(typename)


@command("device-list-properties", {"typename": "str"})
def device_list_properties(ctx: QmpContext, typename: str) -> list[dict[str, Any]]:
    from ..qom_types import TYPES, ancestors

    if typename not in TYPES:
        raise QmpError(f"Device '{typename}' not found", "DeviceNotFound")
    if "device" not in ancestors(typename):
        raise QmpError("Parameter 'typename' expects device")
    if TYPES[typename].abstract:
        raise QmpError("Parameter 'typename' expects non-abstract device type")
    return _properties(typename)


# The composition tree livemig shows: the vCPU's properties, and the
# user-created devices under /machine/peripheral.
_CPU_PROPERTIES = {"type": "string", "realized": "bool", "hotplugged": "bool",
                   "hotpluggable": "bool", "start-powered-off": "bool"}


def _cpu_values(ctx: QmpContext) -> dict[str, Any]:
    return {"type": f"{ctx.machine.config.cpu_model}-x86_64-cpu", "realized": True,
            "hotplugged": False, "hotpluggable": False, "start-powered-off": False}


@command("qom-list", {"path": "str"})
def qom_list(ctx: QmpContext, path: str) -> list[dict[str, Any]]:
    if path == CPU_PATH:
        return [{"name": name, "type": typ} for name, typ in _CPU_PROPERTIES.items()]
    if path == "/machine/peripheral":
        devices = ctx.inventory.devices if ctx.inventory is not None else []
        return [{"name": "type", "type": "string"}] + [
            {"name": device.id, "type": f"child<{device.driver}>"} for device in devices]
    raise QmpError(f"Device '{path}' not found", "DeviceNotFound")


@command("qom-get", {"path": "str", "property": "str"})
def qom_get(ctx: QmpContext, path: str, property: str) -> Any:
    if path == CPU_PATH:
        values = _cpu_values(ctx)
        if property in values:
            return values[property]
        raise QmpError(f"Property '{values['type']}.{property}' not found")
    if path == "/machine/peripheral" and property == "type":
        return "container"
    if path == "/machine/peripheral":
        raise QmpError(f"Property 'container.{property}' not found")
    raise QmpError(f"Device '{path}' not found", "DeviceNotFound")
