"""QOM introspection: qom-list-types, qom-list-properties and
device-list-properties, answered from livemig's type table (qom_types)."""

from __future__ import annotations

from typing import Any

from ...errors import QmpError
from ..context import QmpContext
from ..qom_types import TYPES, ancestors
from ..registry import command


@command("qom-list-types", {"*implements": "str", "*abstract": "bool"})
def qom_list_types(ctx: QmpContext, implements: str | None = None,
                   abstract: bool = False) -> list[dict[str, Any]]:
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
    return [{"name": prop, "type": typ} for prop, typ in TYPES[name].properties]


@command("qom-list-properties", {"typename": "str"})
def qom_list_properties(ctx: QmpContext, typename: str) -> list[dict[str, Any]]:
    if typename not in TYPES:
        raise QmpError(f"Class '{typename}' not found", "DeviceNotFound")
    return _properties(typename)


@command("device-list-properties", {"typename": "str"})
def device_list_properties(ctx: QmpContext, typename: str) -> list[dict[str, Any]]:
    if typename not in TYPES:
        raise QmpError(f"Device '{typename}' not found", "DeviceNotFound")
    if "device" not in ancestors(typename):
        raise QmpError("Parameter 'typename' expects device")
    if TYPES[typename].abstract:
        raise QmpError("Parameter 'typename' expects non-abstract device type")
    return _properties(typename)
