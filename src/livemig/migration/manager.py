"""The migration layer's front door: what QMP handlers call.

One manager per VM. It owns the parameters and capabilities, the current
outgoing job (source) and the incoming job (destination), and the file
descriptors handed over with ``getfd``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..errors import MigrationError
from ..machine import Machine, RunState
from .incoming import IncomingMigration
from .outgoing import OutgoingMigration
from .params import Settings

EventSink = Callable[[str, dict[str, Any] | None], None]


class MigrationManager:
    def __init__(self, machine: Machine, emit: EventSink,
                 on_incoming_failure: Callable[[str], None]) -> None:
        self.machine = machine
        self.settings = Settings()
        self._emit = emit
        self._on_incoming_failure = on_incoming_failure
        self.outgoing: OutgoingMigration | None = None
        self.incoming: IncomingMigration | None = None
        self.deferred = False
        self.fds: dict[str, int] = {}

    # --- state -------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return any(job is not None and job.active for job in (self.outgoing, self.incoming))

    def _refuse_if_busy(self) -> None:
        if self.busy:
            raise MigrationError("There's a migration process in progress")

    # --- incoming ------------------------------------------------------------------
    def listen(self, uri: str, start: bool = True) -> None:
        """``-incoming URI``, or ``migrate-incoming`` after ``-incoming defer``.

        Binds at once (so a bad address is a startup error); with
        ``start=False`` connections are accepted only after start_incoming().
        """
        if uri == "defer":
            self.deferred = True
            return
        self.incoming = IncomingMigration(self.machine, self.settings, uri, self._emit,
                                          self._on_incoming_failure)
        if start:
            self.incoming.start()

    def start_incoming(self) -> None:
        if self.incoming is not None and self.incoming.status == "none":
            self.incoming.start()

    def migrate_incoming(self, uri: str) -> None:
        if not self.deferred:
            raise MigrationError("'-incoming' was not specified on the command line")
        if self.incoming is not None:
            raise MigrationError("The incoming migration has already been started")
        self.listen(uri)

    # --- outgoing ------------------------------------------------------------------
    def migrate(self, uri: str, resume: bool = False) -> None:
        if self.machine.runstate == RunState.INMIGRATE:
            raise MigrationError("Guest is waiting for an incoming migration")
        if resume:
            raise MigrationError("Cannot resume if there is no paused migration")
        self._refuse_if_busy()
        if self.settings.caps["postcopy-ram"]:
            raise MigrationError("postcopy is not implemented in livemig yet")
        self.outgoing = OutgoingMigration(self.machine, self.settings, uri, self._emit,
                                          self.take_fd)
        self.outgoing.start()

    def cancel(self) -> None:
        if self.outgoing is not None:
            self.outgoing.cancel()

    # --- parameters --------------------------------------------------------------------
    def set_parameters(self, changes: dict[str, Any]) -> None:
        self.settings.set_params(changes)
        if self.outgoing is not None and self.outgoing.active:
            self.outgoing.parameters_changed()

    def set_capabilities(self, changes: list[dict[str, Any]]) -> None:
        self._refuse_if_busy()
        self.settings.set_caps(changes)

    def query(self) -> dict[str, Any]:
        if self.outgoing is not None:
            return self.outgoing.info()
        if self.incoming is not None:
            return self.incoming.info()
        return {}

    # --- file descriptors (getfd / closefd) ------------------------------------------
    def add_fd(self, name: str, fd: int) -> None:
        old = self.fds.pop(name, None)
        if old is not None:
            os.close(old)
        self.fds[name] = fd

    def take_fd(self, name: str) -> int:
        try:
            return self.fds.pop(name)
        except KeyError as err:
            raise MigrationError(f"File descriptor named '{name}' not found") from err

    def close_fd(self, name: str) -> None:
        os.close(self.take_fd(name))

    def close(self) -> None:
        if self.outgoing is not None and self.outgoing.active:
            self.outgoing.cancel()
            self.outgoing.join(5)
        if self.incoming is not None:
            self.incoming.listener.close()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
