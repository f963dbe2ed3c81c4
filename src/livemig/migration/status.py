"""The migration status machines: one per side, the only writers of a status.

Each side of a migration (the source job, the destination job) owns one
:class:`StatusMachine`. A status changes only through
:meth:`StatusMachine.transition`, which compares and sets under a lock and
announces the change (the ``MIGRATION`` event) in the same step, so two
threads racing to change it (``migrate_cancel`` against completion, say)
never both win, and the events a client sees are in the order the status
took. The allowed moves are the tables below (drawn in docs/migration.md);
a move that is not in the table is a bug in livemig and raises
:class:`IllegalTransition`, which the job's catch-all turns into a loud
failure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from enum import StrEnum

from ..errors import MigrationError
from ..logs import get_logger

log = get_logger(__name__)


class Status(StrEnum):
    """QEMU's MigrationStatus names, as query-migrate and MIGRATION show them."""

    NONE = "none"
    SETUP = "setup"
    ACTIVE = "active"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"
    POSTCOPY_ACTIVE = "postcopy-active"
    POSTCOPY_PAUSED = "postcopy-paused"
    POSTCOPY_RECOVER = "postcopy-recover"
    PRE_SWITCHOVER = "pre-switchover"   # pause-before-switchover: stopped, waiting
    DEVICE = "device"                   # after migrate-continue: the last of the state


S = Status

# Where each status may go next. Terminal statuses have no entry.
SOURCE_TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.NONE: frozenset({S.SETUP}),
    S.SETUP: frozenset({S.ACTIVE, S.CANCELLING, S.FAILED}),
    S.ACTIVE: frozenset({S.CANCELLING, S.COMPLETED, S.FAILED, S.POSTCOPY_ACTIVE,
                         S.PRE_SWITCHOVER}),
    S.PRE_SWITCHOVER: frozenset({S.DEVICE, S.POSTCOPY_ACTIVE, S.CANCELLING, S.FAILED}),
    S.DEVICE: frozenset({S.COMPLETED, S.CANCELLING, S.FAILED}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED}),
    S.POSTCOPY_ACTIVE: frozenset({S.POSTCOPY_PAUSED, S.COMPLETED}),
    S.POSTCOPY_PAUSED: frozenset({S.POSTCOPY_RECOVER}),
    S.POSTCOPY_RECOVER: frozenset({S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED}),
}

DESTINATION_TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.NONE: frozenset({S.SETUP, S.FAILED}),
    S.SETUP: frozenset({S.ACTIVE, S.FAILED}),
    S.ACTIVE: frozenset({S.COMPLETED, S.FAILED, S.POSTCOPY_ACTIVE}),
    S.POSTCOPY_ACTIVE: frozenset({S.POSTCOPY_PAUSED, S.COMPLETED}),
    S.POSTCOPY_PAUSED: frozenset({S.POSTCOPY_RECOVER}),
    S.POSTCOPY_RECOVER: frozenset({S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED}),
}

# A job in one of these holds the migration: no other may start.
IN_PROGRESS = frozenset({S.SETUP, S.ACTIVE, S.CANCELLING, S.POSTCOPY_ACTIVE,
                         S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER, S.PRE_SWITCHOVER, S.DEVICE})
# After switchover: the guest runs on the destination, part of its RAM is
# still on the source. Such a job never fails; it pauses.
POSTCOPY = frozenset({S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER})
TERMINAL = frozenset({S.CANCELLED, S.COMPLETED, S.FAILED})


class IllegalTransition(MigrationError):
    """A status change the table does not allow: a bug in livemig."""


Announce = Callable[[Status], None]


class StatusMachine:
    """The status of one side of one migration."""

    def __init__(self, side: str, table: dict[Status, frozenset[Status]],
                 announce: Announce) -> None:
        self.side = side
        self._table = table
        self._announce = announce
        self._status = S.NONE
        self._cond = threading.Condition()
        # Source only: once the last record has gone out, a cancel is too late
        # (the destination may already run the guest): see commit().
        self._committed = False
        # A status said ahead of the move (see herald()): the move is then silent.
        self._heralded: Status | None = None

    @property
    def status(self) -> Status:
        return self._status

    @property
    def in_progress(self) -> bool:
        return self._status in IN_PROGRESS

    @property
    def in_postcopy(self) -> bool:
        return self._status in POSTCOPY

    def _check(self, current: Status, new: Status) -> None:
        if new not in self._table.get(current, frozenset()):
            raise IllegalTransition(
                f"internal error: {self.side} migration status cannot go from "
                f"'{current}' to '{new}'")

    def transition(self, expected: Status | Collection[Status], new: Status) -> bool:
        """Move to ``new`` if the status is ``expected`` (one or a set of
        statuses). False: another thread changed it first. A move the table
        does not allow raises IllegalTransition."""
        allowed = {expected} if isinstance(expected, Status) else set(expected)
        with self._cond:
            current = self._status
            if current not in allowed:
                return False
            self._check(current, new)
            if new == S.CANCELLING and self._committed:
                return False
            self._set(new)
            return True

    def commit(self) -> bool:
        """The source is about to send its last record: from now on a cancel
        is refused (the migration completes or fails). False if a cancel
        came first."""
        with self._cond:
            if self._status not in (S.ACTIVE, S.DEVICE):
                return False
            self._committed = True
            return True

    def herald(self, upcoming: Status, say: Announce) -> None:
        """Say ``upcoming`` now, through ``say``, though the status takes it
        later; the move itself is then not announced again.

        The destination's case: QEMU announces 'setup' as it starts to
        listen, before its reply to migrate-incoming and whether or not the
        events capability is on, and libvirt's restore waits on exactly
        that; the status itself becomes 'setup' when a source connects."""
        with self._cond:
            self._check(self._status, upcoming)
            self._heralded = upcoming
            try:
                say(upcoming)
            except Exception:  # as in _set: an unsent event changes nothing
                log.exception("could not announce migration status %s", upcoming)

    def crash(self, reason: str) -> Status:
        """The job hit a bug: fail it, or pause it after switchover. The one
        move that ignores the table; it never raises."""
        with self._cond:
            current = self._status
            if current in TERMINAL:
                return current
            new = S.POSTCOPY_PAUSED if current in POSTCOPY else S.FAILED
            if new != current:
                log.error("%s migration: %s: '%s' -> '%s'", self.side, reason, current, new)
                self._set(new)
            return new

    def _set(self, new: Status) -> None:
        """With _cond held: record and announce (the announcer must not block)."""
        self._status = new
        heralded, self._heralded = self._heralded, None
        try:
            if new != heralded:
                self._announce(new)
        except Exception:  # an event that cannot be sent must not change the job
            log.exception("could not announce migration status %s", new)
        self._cond.notify_all()
