"""What a QMP handler is given: the objects it may call into."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..machine import Machine
from ..migration import MigrationManager

if TYPE_CHECKING:
    from .server import QmpServer, QmpSession


@dataclass
class QmpContext:
    machine: Machine
    server: QmpServer
    session: QmpSession
    migration: MigrationManager | None = None
