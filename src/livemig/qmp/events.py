"""The table of QMP events livemig sends, with the members of each one's
``data``, in the argument-schema notation of :mod:`.schema`. The server
refuses to send an event that is not here, so query-qmp-schema (generated
from this table and the command table) lists every event a client can see."""

from __future__ import annotations

from ..migration.status import Status
from .schema import Schema

SHUTDOWN_CAUSES = ("none", "host-error", "host-qmp-quit", "host-qmp-system-reset",
                   "host-signal", "host-ui", "guest-shutdown", "guest-reset", "guest-panic",
                   "subsystem-reset", "snapshot-load")

EVENTS: dict[str, Schema] = {
    "STOP": {},
    "RESUME": {},
    "RESET": {"guest": "bool", "reason": SHUTDOWN_CAUSES},
    "SHUTDOWN": {"guest": "bool", "reason": SHUTDOWN_CAUSES},
    "MIGRATION": {"status": tuple(status.value for status in Status)},
    "MIGRATION_PASS": {"pass": "int"},
}
