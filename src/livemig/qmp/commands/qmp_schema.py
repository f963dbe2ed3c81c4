"""query-qmp-schema: QEMU's introspection format (SchemaInfo), generated
from livemig's own command table and event table.

Each command's arguments and each event's data become an object type;
enums, arrays and the str-or-null alternate get types of their own.
Type names other than the built-ins are numbers, as in QEMU (clients such
as libvirt navigate by command and member names, never by type name).
Commands declare no return schema, so every ``ret-type`` is ``any``.
"""

from __future__ import annotations

import json
from typing import Any

from ..context import QmpContext
from ..events import EVENTS
from ..registry import COMMANDS, command
from ..schema import Schema

# livemig's argument types -> QEMU's built-in types and their JSON types.
BUILTINS = {"str": "string", "int": "int", "number": "number", "bool": "boolean",
            "any": "value", "null": "null", "uint8": "int", "uint32": "int",
            "uint64": "int", "size": "int"}


class _Builder:
    """Collects SchemaInfo entries, one per distinct type."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = [
            {"name": name, "meta-type": "builtin", "json-type": json_type}
            for name, json_type in BUILTINS.items()]
        self._names: dict[str, str] = {}  # a type's canonical JSON -> its name

    def _named(self, key: Any, entry: dict[str, Any], name: str | None = None) -> str:
        canonical = json.dumps(key, sort_keys=True)
        if canonical not in self._names:
            self._names[canonical] = name or str(len(self._names))
            self.entries.append({"name": self._names[canonical], **entry})
        return self._names[canonical]

    def type_of(self, typ: Any) -> str:
        if isinstance(typ, dict):
            return self.object_of(typ)
        if isinstance(typ, list):
            element = self.type_of(typ[0])
            return self._named(["array", element],
                               {"meta-type": "array", "element-type": element},
                               f"[{element}]")
        if isinstance(typ, tuple):
            values = list(typ)
            return self._named(["enum", values], {
                "meta-type": "enum", "values": values,
                "members": [{"name": value} for value in values]})
        if typ == "str-or-null":
            return self._named(["alternate", "str", "null"], {
                "meta-type": "alternate", "members": [{"type": "str"}, {"type": "null"}]})
        if typ not in BUILTINS:
            raise ValueError(f"no QAPI type for argument type {typ!r}")
        return str(typ)

    def object_of(self, schema: Schema) -> str:
        members = []
        for key, typ in schema.items():
            if key == "**":
                continue  # open-ended (object-add's properties): no fixed members
            member: dict[str, Any] = {"name": key.lstrip("*"), "type": self.type_of(typ)}
            if key.startswith("*"):
                member["default"] = None  # QEMU's mark of an optional member
            members.append(member)
        return self._named(["object", members], {"meta-type": "object", "members": members})


def build_schema() -> list[dict[str, Any]]:
    """Every command (qmp_capabilities included) and event, with their types."""
    builder = _Builder()
    commands = {"qmp_capabilities": {"*enable": ["str"]},
                **{name: entry.schema for name, entry in COMMANDS.items()}}
    out: list[dict[str, Any]] = []
    for name in sorted(commands):
        out.append({"name": name, "meta-type": "command",
                    "arg-type": builder.object_of(commands[name]), "ret-type": "any",
                    "allow-oob": False})
    for name in sorted(EVENTS):
        out.append({"name": name, "meta-type": "event",
                    "arg-type": builder.object_of(EVENTS[name])})
    return out + builder.entries


@command("query-qmp-schema")
def query_qmp_schema(ctx: QmpContext) -> list[dict[str, Any]]:
    return build_schema()
