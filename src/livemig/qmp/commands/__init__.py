"""QMP command handlers, one module per group; importing registers them."""

from . import dirtyrate, hmp, introspection, memory, migration, objects, runstate

__all__ = ["dirtyrate", "hmp", "introspection", "memory", "migration", "objects", "runstate"]
