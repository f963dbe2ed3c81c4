"""QMP command handlers, one module per group; importing registers them."""

from . import (
    block,
    chardev,
    command_line_options,
    confidential,
    dirtylimit,
    dirtyrate,
    hmp,
    introspection,
    machine_info,
    memory,
    migration,
    objects,
    qmp_schema,
    qom,
    runstate,
    tpm,
)

__all__ = ["block", "chardev", "command_line_options", "confidential", "dirtylimit",
           "dirtyrate", "hmp", "introspection", "machine_info", "memory", "migration",
           "objects", "qmp_schema", "qom", "runstate", "tpm"]
