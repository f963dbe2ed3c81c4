"""QMP command handlers, one module per group; importing registers them."""

from . import hmp, introspection, memory, migration, objects, runstate

__all__ = ["hmp", "introspection", "memory", "migration", "objects", "runstate"]
