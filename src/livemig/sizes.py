"""QEMU's size syntax: a number with an optional binary suffix."""

from __future__ import annotations

import re

from .errors import ConfigError

_SUFFIX = {"": None, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
           "p": 1 << 50, "e": 1 << 60}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|0x[0-9a-fA-F]+)\s*([bBkKmMgGtTpPeE]?)\s*$")


def parse_size(text: str, default_unit: int = 1) -> int:
    """``150M`` → 157286400; a bare number is in ``default_unit`` bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"'{text}' is not a size (use a number with an optional "
                          "K, M, G or T suffix)")
    number, suffix = match.groups()
    unit = _SUFFIX[suffix.lower()] or default_unit
    value = int(number, 16) if number.startswith("0x") else float(number)
    size = int(value * unit)
    if size >= 1 << 64:
        raise ConfigError(f"'{text}' is too large")
    return size
