"""Argument checking with QEMU's error messages.

A command's argument schema maps names to type names; a leading ``*``
marks an optional argument (QAPI's own spelling). Types:

``str`` ``int`` ``number`` ``bool`` ``any``; the unsigned integers
``uint8`` ``uint32`` ``uint64`` and ``size`` (QEMU's visitor takes any
JSON integer that fits 64 bits, wrapping negatives, then checks the
width); ``str-or-null``; a tuple of strings for an enum; ``[T]`` for a
list of T, and a nested dict for an object.
"""

from __future__ import annotations

from typing import Any

from ..errors import QmpError

Schema = dict[str, Any]

_EXPECTED = {"str": "string", "int": "integer", "number": "number", "bool": "boolean"}
_U64 = 1 << 64
_WIDTH = {"uint8": (8, "uint8_t"), "uint32": (32, "uint32_t"), "uint64": (64, ""),
          "size": (64, "")}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(name: str, typ: Any, value: Any) -> Any:
    if isinstance(typ, dict):
        if not isinstance(value, dict):
            raise QmpError(f"Invalid parameter type for '{name}', expected: object")
        return check_arguments(typ, value)
    if isinstance(typ, list):
        if not isinstance(value, list):
            raise QmpError(f"Invalid parameter type for '{name}', expected: array")
        return [_check(name, typ[0], item) for item in value]
    if isinstance(typ, tuple):  # an enum
        if not isinstance(value, str):
            raise QmpError(f"Invalid parameter type for '{name}', expected: string")
        if value not in typ:
            raise QmpError(f"Parameter '{name}' does not accept value '{value}'")
        return value
    if typ == "any":
        return value
    if typ == "str-or-null":
        if value is not None and not isinstance(value, str):
            raise QmpError(f"Invalid parameter type for '{name}', expected: StrOrNull")
        return value
    if typ in _WIDTH:
        # QEMU's visitor takes any JSON integer in range and wraps negatives.
        if not _is_int(value) or not -(1 << 63) <= value < _U64:
            raise QmpError(f"Parameter '{name}' expects uint64")
        bits, c_name = _WIDTH[typ]
        value %= _U64
        if value >= 1 << bits:
            raise QmpError(f"Parameter '{name}' expects {c_name}")
        return value
    ok = {
        "str": isinstance(value, str),
        "int": _is_int(value),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
    }[typ]
    if not ok:
        raise QmpError(f"Invalid parameter type for '{name}', expected: {_EXPECTED[typ]}")
    return value


def check_arguments(schema: Schema, args: dict[str, Any]) -> dict[str, Any]:
    """Validate ``args`` against ``schema``; return them with Python names."""
    out: dict[str, Any] = {}
    known: dict[str, tuple[Any, bool]] = {}
    open_ended = "**" in schema  # any further argument is passed on as it came
    for key, typ in schema.items():
        if key == "**":
            continue
        optional = key.startswith("*")
        known[key.lstrip("*")] = (typ, optional)
    for name, (typ, optional) in known.items():
        if name not in args:
            if not optional:
                raise QmpError(f"Parameter '{name}' is missing")
            continue
        out[name] = _check(name, typ, args[name])
    for name in args:
        if name not in known:
            if not open_ended:
                raise QmpError(f"Parameter '{name}' is unexpected")
            out[name] = args[name]
    return out
