"""What a QMP handler is given: the objects it may call into.

The session is seen through :class:`Session`, the one thing handlers need
of it, so this module (imported by every handler) does not import the
server: the registry, the handlers and the server form no import cycle.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from ..chardev import Stream
from ..machine import Machine
from ..machine.inventory import Inventory
from ..migration import MigrationManager
from ..objects import ObjectRegistry


class Session(Protocol):
    """A client connection, as a handler sees it."""

    stream: Stream


class QmpContext(NamedTuple):
    machine: Machine
    session: Session
    migration: MigrationManager | None = None
    objects: ObjectRegistry | None = None
    inventory: Inventory | None = None
