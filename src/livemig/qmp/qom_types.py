"""livemig's QOM type tree as QEMU's introspection commands report it
(qom-list-types, qom-list-properties, device-list-properties).

livemig has no QOM; this table names its pieces the way QEMU names the
same pieces, so that a client probing for a type (libvirt does, for every
device and object it may use) finds what livemig has and nothing else.
The user-creatable object types must match what ``-object`` and
``object-add`` accept (objects.ObjectRegistry; a test checks it)."""

from __future__ import annotations

from typing import NamedTuple

from ..objects.memory_backend import PROPERTIES as BACKEND_PROPERTIES

# One property: its name and QOM type name.
Prop = tuple[str, str]


class QomType(NamedTuple):
    parent: str | None
    abstract: bool = False
    properties: tuple[Prop, ...] = ()


_CPU_PROPS: tuple[Prop, ...] = (("migratable", "bool"), ("enforce", "bool"),
                                ("check", "bool"), ("vendor", "string"),
                                ("model-id", "string"), ("family", "int"), ("model", "int"),
                                ("stepping", "int"))

TYPES: dict[str, QomType] = {
    "object": QomType(None),
    "machine": QomType("object", True, (("memory-backend", "link<memory-backend>"),
                                        ("accel", "string"))),
    "x86-machine": QomType("machine", True),
    "generic-pc-machine": QomType("x86-machine", True),
    "pc-i440fx-7.2-machine": QomType("generic-pc-machine"),
    "pc-q35-7.2-machine": QomType("generic-pc-machine"),
    "none-machine": QomType("machine"),
    "accel": QomType("object", True),
    "kvm-accel": QomType("accel", False, (("dirty-ring-size", "uint32"),)),
    "tcg-accel": QomType("accel", False, (("tb-size", "int"), ("thread", "string"))),
    "qtest-accel": QomType("accel"),
    "device": QomType("object", True),
    "cpu": QomType("device", True),
    "x86_64-cpu": QomType("cpu", True, _CPU_PROPS),
    "qemu64-x86_64-cpu": QomType("x86_64-cpu", False, _CPU_PROPS),
    "qemu32-x86_64-cpu": QomType("x86_64-cpu", False, _CPU_PROPS),
    "base-x86_64-cpu": QomType("x86_64-cpu", False, _CPU_PROPS),
    "max-x86_64-cpu": QomType("x86_64-cpu", False, _CPU_PROPS),
    "host-x86_64-cpu": QomType("max-x86_64-cpu", False, _CPU_PROPS),
    "isa-device": QomType("device", True),
    "ide-device": QomType("device", True),
    "ide-hd": QomType("ide-device", False, (("drive", "str"), ("bootindex", "int32"),
                                            ("unit", "uint32"))),
    "isa-serial": QomType("isa-device", False, (("index", "uint32"), ("iobase", "uint32"),
                                                ("irq", "uint32"), ("chardev", "str"))),
    "isa-debug-exit": QomType("isa-device", False, (("iobase", "uint32"),
                                                    ("iosize", "uint32"))),
    "memory-backend": QomType("object", True, BACKEND_PROPERTIES["memory-backend-ram"]),
    **{kind: QomType("memory-backend", False, props)
       for kind, props in BACKEND_PROPERTIES.items()},
    "tls-creds": QomType("object", True, (("dir", "string"), ("endpoint", "string"),
                                          ("verify-peer", "bool"))),
    "tls-creds-x509": QomType("tls-creds", False, (("dir", "string"), ("endpoint", "string"),
                                                   ("verify-peer", "bool"))),
    "tls-creds-psk": QomType("tls-creds", False, (("dir", "string"), ("endpoint", "string"),
                                                  ("username", "string"))),
    "secret": QomType("object", False, (("data", "string"), ("file", "string"),
                                        ("format", "QCryptoSecretFormat"))),
    "authz": QomType("object", True),
    "authz-simple": QomType("authz", False, (("identity", "string"),)),
    "authz-list": QomType("authz", False, (("policy", "QAuthZListPolicy"),
                                           ("rules", "QAuthZListRule"))),
}

USER_CREATABLE = ("memory-backend-ram", "memory-backend-memfd", "memory-backend-file",
                  "tls-creds-x509", "tls-creds-psk", "authz-simple", "authz-list", "secret")


def ancestors(name: str) -> list[str]:
    """``name`` and every type above it, nearest first."""
    chain = []
    current: str | None = name
    while current is not None:
        chain.append(current)
        current = TYPES[current].parent
    return chain
