"""The migration layer's front door: what QMP handlers call.

One manager per VM. It owns the parameters and capabilities, the current
outgoing job (source) and the incoming job (destination), and the file
descriptors handed over with ``getfd``. Each QMP command is one method
here, which checks what QEMU checks before answering and then calls one
method of the job.

The job modules (and numpy with them) are not imported at start-up, so
the QMP greeting comes quickly. Once the first client has its greeting,
warm_up() imports them on a background thread (and the first
migrate-set-capabilities or -parameters does, if no client was greeted),
so the first migrate does not pay about a quarter of a second for them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import MigrationError
from ..logs import get_logger
from ..machine import Machine, RunState
from ..objects import ObjectRegistry
from .params import Settings
from .status import Status

if TYPE_CHECKING:
    from .dirtyrate import DirtyRateMeter
    from .incoming import IncomingMigration
    from .listener import Listener
    from .outgoing import OutgoingMigration
    from .uri import Uri

CLEANUP_WAIT_S = 10.0

log = get_logger(__name__)


def _import_job_modules() -> None:
    """The warm-up thread's body: never dies silently, never fails a job
    (a migrate imports what it needs itself, and would meet the error)."""
    try:
        # postcopy_dest and preempt too: otherwise a destination imports
        # them at the switch, inside the guest's pause (~5 ms measured).
        from . import incoming, outgoing, postcopy_dest, preempt  # noqa: F401  (the point)
    except Exception:
        log.warning("importing the migration job modules ahead of time failed",
                    exc_info=True)

EventSink = Callable[[str, dict[str, Any] | None], None]

S = Status


class MigrationManager:
    def __init__(self, machine: Machine, emit: EventSink,
                 on_incoming_failure: Callable[[str], None],
                 objects: ObjectRegistry | None = None) -> None:
        self.machine = machine
        self.objects = objects if objects is not None else ObjectRegistry()
        self.settings = Settings()
        self._emit = emit
        self._on_incoming_failure = on_incoming_failure
        self.outgoing: OutgoingMigration | None = None
        self.incoming: IncomingMigration | None = None
        self._bound: tuple[Uri, Listener] | None = None  # -incoming URI, bound, job not made yet
        self.deferred = False
        self.fds: dict[str, int] = {}
        self._dirty_rate: DirtyRateMeter | None = None  # made on first calc-dirty-rate
        self._warming: threading.Thread | None = None

    # --- state -------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return any(job is not None and job.in_progress for job in (self.outgoing, self.incoming))

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
        from .listener import Listener
        from .uri import parse_uri
        parsed = parse_uri(uri)
        self._bound = (parsed, Listener(parsed, self.take_fd))
        if start:
            self.start_incoming()

    def start_incoming(self) -> None:
        """Make the incoming job on the bound listener and start it. At
        start-up this runs once the monitors serve, so loading the job's
        modules (the codec, TLS, machine state) never delays a greeting."""
        if self._bound is not None:
            from .incoming import IncomingMigration
            (uri, listener), self._bound = self._bound, None
            self.incoming = IncomingMigration(self.machine, self.settings, uri, self._emit,
                                              self._on_incoming_failure, self.take_fd,
                                              self.objects, listener)
        if self.incoming is not None:
            self.incoming.start()

    def migrate_incoming(self, uri: str | None, channels: list[Any] | None = None) -> None:
        if (uri is None) == (channels is None):
            raise MigrationError("need either 'uri' or 'channels' argument")  # QEMU's words
        if channels is not None:
            from .uri import parse_channels
            uri, cpr = parse_channels(channels)
            if cpr is not None:
                raise MigrationError("a cpr channel must be given with -incoming on the "
                                     "command line: guest RAM is taken from it before the "
                                     "machine is made")
        if not self.deferred:
            raise MigrationError("'-incoming' was not specified on the command line")
        if self.incoming is not None:
            raise MigrationError("The incoming migration has already been started")
        assert uri is not None
        self.listen(uri)

    # --- outgoing ------------------------------------------------------------------
    def _target(self, uri: str) -> tuple[Uri, int | None]:
        """Parse ``uri`` and take the descriptor an ``fd:`` URI names."""
        from .uri import parse_uri
        parsed = parse_uri(uri)
        return parsed, self.take_fd(parsed.target) if parsed.scheme == "fd" else None

    def migrate(self, uri: str | None, resume: bool = False,
                channels: list[Any] | None = None) -> None:
        """``migrate``: to ``uri``, or to QEMU 8.2's ``channels`` list (a main
        channel, and for cpr-transfer a cpr channel)."""
        if (uri is None) == (channels is None):
            raise MigrationError("need either 'uri' or 'channels' argument")  # QEMU's words
        cpr: Uri | None = None
        if channels is not None:
            from .uri import parse_channels
            uri, cpr = parse_channels(channels)
        assert uri is not None
        if resume:
            job = self.outgoing
            if job is None or job.status.status != S.POSTCOPY_PAUSED:
                raise MigrationError("Cannot resume if there is no paused migration")
            if cpr is not None:
                raise MigrationError("a cpr channel has no place in a postcopy recovery")
            job.resume(*self._target(uri))
            return
        if self.machine.runstate == RunState.INMIGRATE:
            raise MigrationError("Guest is waiting for an incoming migration")
        if self.machine.runstate == RunState.POSTMIGRATE:
            # QEMU's rule and words: this guest lives on elsewhere now; a
            # second copy needs a deliberate `cont` first.
            raise MigrationError("Can't migrate the vm that was paused due to previous "
                                 "migration")
        self._refuse_if_busy()
        self._wait_for_cleanup()
        asked = time.monotonic()  # total-time counts from here, as QEMU's does,
        from .outgoing import OutgoingMigration  # so the first migrate's imports count
        from .tls import TlsConfig

        try:
            self._check_mode(cpr)
            target, fd = self._target(uri)
            tls = TlsConfig.from_params(self.settings.params, self.objects, "client")
        except MigrationError as err:
            job = OutgoingMigration(self.machine, self.settings, None, None, self._emit,
                                    self.take_fd)
            self.outgoing = job
            job.refuse(str(err))  # query-migrate then says failed, as QEMU's does
            raise
        self.outgoing = OutgoingMigration(self.machine, self.settings, target, fd, self._emit,
                                          self.take_fd, tls, cpr)
        self.outgoing.times.start = asked
        self.outgoing.start()

    def _check_mode(self, cpr: Uri | None) -> None:
        """What the migration mode (normal, cpr-reboot, cpr-transfer) needs."""
        mode, caps = self.settings.params["mode"], self.settings.caps
        if mode != "cpr-transfer" and cpr is not None:
            raise MigrationError("a cpr channel is for cpr-transfer: set the mode first "
                                 "(migrate-set-parameters mode=cpr-transfer)")
        if mode == "normal":
            return
        # Both CPR modes stop the guest before anything is saved.
        stopping = ("postcopy-ram", "background-snapshot")
        for cap in (*stopping, "mapped-ram") if mode == "cpr-transfer" else stopping:
            if caps[cap]:
                raise MigrationError(f"{mode} is not compatible with {cap}: the guest is "
                                     "stopped first and its memory "
                                     + ("handed over" if mode == "cpr-transfer" else "saved")
                                     + " at once")
        if mode != "cpr-transfer":
            return
        if cpr is None:
            raise MigrationError("missing 'cpr' migration channel")  # QEMU 10's words
        ram = self.machine.ram
        if not ram.shared or ram.backing is None:
            raise MigrationError("Memory region pc.ram is not compatible with CPR: guest "
                                 "RAM must be a memory-backend-memfd or memory-backend-file "
                                 "with share=on (-machine memory-backend=ID)")

    def _wait_for_cleanup(self) -> None:
        """A job's status turns final before its thread has released the
        dirty tracker and channels: a new job waits for that (briefly), or
        its tracker would find RAM still registered with the old one."""
        job = self.outgoing
        if job is None:
            return
        job.join(CLEANUP_WAIT_S)
        if job.thread_alive:
            raise MigrationError("The previous migration is still cleaning up; try again")

    def cancel(self) -> None:
        if self.outgoing is not None:
            self.outgoing.cancel()

    def migrate_continue(self, state: str) -> None:
        """migrate-continue: release a source paused before switchover."""
        if self.outgoing is None:
            raise MigrationError(f"Migration not in expected state: {S.NONE.value}")
        self.outgoing.continue_switchover(state)

    # --- postcopy ------------------------------------------------------------------------
    def start_postcopy(self) -> None:
        """migrate-start-postcopy: the request lives on the current job (a
        finished one ignores it; the next migrate makes a new job)."""
        if not self.settings.caps["postcopy-ram"]:
            raise MigrationError("Enable postcopy with migrate_set_capability before "
                                 "the start of migration")
        if self.outgoing is None:
            raise MigrationError("Postcopy must be started after migration has been started")
        self.outgoing.request_postcopy()

    def pause(self) -> None:
        """migrate-pause: break the channel of a postcopy migration, either side."""
        pausable = (S.POSTCOPY_ACTIVE, S.POSTCOPY_RECOVER)
        for job in (self.outgoing, self.incoming):
            if job is not None and job.status.status in pausable:
                job.pause()
                return
        raise MigrationError("migrate-pause is currently only supported during "
                             "postcopy-active state")

    def recover(self, uri: str) -> None:
        """migrate-recover on the destination: listen for the source's new channel."""
        if self.incoming is None:
            raise MigrationError("Migrate recover can only be run when postcopy is paused.")
        from .uri import parse_uri
        self.incoming.recover(parse_uri(uri))

    # --- parameters --------------------------------------------------------------------
    def warm_up(self) -> None:
        """Import the job modules in the background, once (module docstring)."""
        if self._warming is None:
            self._warming = threading.Thread(target=_import_job_modules, daemon=True,
                                             name="mig/warm-up")
            self._warming.start()

    def set_parameters(self, changes: dict[str, Any]) -> None:
        self.warm_up()
        self.settings.set_params(changes)
        if self.outgoing is not None and self.outgoing.in_progress:
            self.outgoing.parameters_changed()

    def set_capabilities(self, changes: list[dict[str, Any]]) -> None:
        self.warm_up()
        self._refuse_if_busy()
        wants_postcopy = any(c.get("capability") == "postcopy-ram" and c.get("state")
                             for c in changes)
        if (wants_postcopy and not self.settings.caps["postcopy-ram"]
                and self.machine.runstate == RunState.INMIGRATE):
            # As QEMU: only the destination needs userfaultfd, so only it checks.
            from ..uffd import probe_missing
            why = probe_missing(kernel_faults=self.machine.accel_name == "kvm")
            if why is not None:
                raise MigrationError(f"Postcopy is not supported: {why}")
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
            raise MigrationError(f"File descriptor named '{name}' has not been found") from err

    def close_fd(self, name: str) -> None:
        os.close(self.take_fd(name))

    def close(self) -> None:
        if self._dirty_rate is not None:
            self._dirty_rate.stop()  # a measurement in flight ends now
        job = self.outgoing
        if job is not None and job.in_progress and not job.status.in_postcopy:
            job.cancel()
            job.join(5)
        if self.incoming is not None:
            self.incoming.listener.close()
        if self._bound is not None:  # closed before the job was made
            self._bound[1].close()
            self._bound = None
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    # --- dirty limit (set/cancel/query-vcpu-dirty-limit) ------------------------------
    def _refuse_limit_change(self, verb: str) -> None:
        """QEMU 8.1: a dirty-limit migration owns the limits while it runs."""
        if (self.busy and self.settings.caps["dirty-limit"]
                and self.machine.dirty_limiter.in_service):
            raise MigrationError(f"can't {verb} dirty page rate limit while migration is "
                                 "running")

    def set_vcpu_dirty_limit(self, rate: int, cpu: int | None) -> None:
        limiter = self.machine.dirty_limiter
        if cpu is not None and not limiter.valid_index(cpu):
            raise MigrationError("incorrect cpu index specified")
        self._refuse_limit_change("set")
        if rate == 0:
            limiter.cancel(cpu)  # QEMU: a rate of 0 cancels
        else:
            limiter.set(rate, cpu)

    def cancel_vcpu_dirty_limit(self, cpu: int | None) -> None:
        limiter = self.machine.dirty_limiter
        if cpu is not None and not limiter.valid_index(cpu):
            raise MigrationError("incorrect cpu index specified")
        self._refuse_limit_change("cancel")
        limiter.cancel(cpu)

    def query_vcpu_dirty_limit(self) -> list[dict[str, int]]:
        return self.machine.dirty_limiter.info()

    # --- dirty rate ------------------------------------------------------------------
    def calc_dirty_rate(self, calc_time: int, sample_pages: int | None, mode: str) -> None:
        """calc-dirty-rate: start a measurement (see dirtyrate.py)."""
        from .dirtyrate import DirtyRateMeter

        if self._dirty_rate is None:
            self._dirty_rate = DirtyRateMeter(self.machine)
        self._dirty_rate.start(calc_time, sample_pages, mode)

    def query_dirty_rate(self) -> dict[str, Any]:
        if self._dirty_rate is None:
            return {"status": "unstarted", "sample-pages": 0, "mode": "page-sampling",
                    "start-time": 0, "calc-time": 0}
        return self._dirty_rate.result.to_qmp()
