"""QMP command handlers, one module per group; importing registers them."""

from . import dirtylimit, dirtyrate, hmp, introspection, memory, migration, objects, runstate

__all__ = ["dirtylimit", "dirtyrate", "hmp", "introspection", "memory", "migration", "objects",
           "runstate"]
