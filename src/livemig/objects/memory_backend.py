"""memory-backend-ram, -memfd and -file: QEMU's objects that say what guest
RAM is mapped from. Each checks its properties when created; the machine
named by ``-machine memory-backend=ID`` maps it (memory/backing.py)."""

from __future__ import annotations

from typing import Any

from ..errors import LivemigError
from ..memory.backing import KINDS, BackendSpec
from ..sizes import parse_size
from .registry import Factory, ObjectError, boolean, reject_unknown, string

PAGE = 4096


def _size(value: Any) -> int:
    """'size': bytes, as a JSON number or QEMU's size text (150M)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ObjectError("Parameter 'size' expects uint64")
    if isinstance(value, str):
        try:
            value = parse_size(value)
        except LivemigError as err:
            raise ObjectError(f"Parameter 'size' expects a non-negative number below 2^64 "
                              f"({err})") from err
    if value < 0 or value >= 1 << 64:
        raise ObjectError("Parameter 'size' expects uint64")  # QEMU's words
    if value == 0:
        raise ObjectError("property 'size' of memory-backend not set or zero")
    if value % PAGE:
        raise ObjectError(f"memory backend size {value} is not a multiple of the page "
                          f"size ({PAGE})")
    return value


class MemoryBackend:
    """One memory backend object; ``in_use`` once a machine maps it."""

    def __init__(self, spec: BackendSpec) -> None:
        self.id = spec.id
        self.spec = spec
        self.in_use = False

    @classmethod
    def factory(cls, kind: str) -> Factory:
        def create(ident: str, props: dict[str, Any]) -> MemoryBackend:
            reject_unknown(props, {name for name, _type in PROPERTIES[kind]})
            if "size" not in props:
                raise ObjectError("property 'size' of memory-backend not set or zero")
            size = _size(props["size"])
            # memfd is made to be shared: QEMU defaults its share to on.
            share = boolean("share", props.get("share", kind == "memory-backend-memfd"))
            prealloc = boolean("prealloc", props.get("prealloc", False))
            if share and kind == "memory-backend-ram":
                raise ObjectError("share=on for memory-backend-ram is not supported by "
                                  "livemig: use memory-backend-memfd, which another "
                                  "process can map too")
            mem_path = None
            if kind == "memory-backend-file":
                if "mem-path" not in props:
                    raise ObjectError("property 'mem-path' is required")
                mem_path = string("mem-path", props["mem-path"])
                if not mem_path:
                    raise ObjectError("property 'mem-path' is required")
            return cls(BackendSpec(ident, kind, size, share, mem_path, prealloc))
        return create


# The properties each kind takes, with their QOM types (qom-list-properties).
_COMMON = (("size", "size"), ("share", "bool"), ("prealloc", "bool"))
PROPERTIES: dict[str, tuple[tuple[str, str], ...]] = {
    kind: (*_COMMON, ("mem-path", "string")) if kind == "memory-backend-file" else _COMMON
    for kind in KINDS}

FACTORIES = {kind: MemoryBackend.factory(kind) for kind in KINDS}
