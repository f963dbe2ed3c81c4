"""QMP command handlers, one module per group; importing registers them."""

from . import hmp, introspection, memory, runstate

__all__ = ["hmp", "introspection", "memory", "runstate"]
