"""The destination side of a migration: precopy records, then maybe postcopy.

Every record comes through the codec (bounds-checked against guest RAM)
and through the receive phases (phases.py: is this record allowed now?)
before it touches anything. The machine state is validated whole when its
record arrives and applied only at the end of precopy, or at switchover.
Before switchover any error makes the status ``failed`` and, as QEMU does,
the process exits non-zero. After switchover the guest runs here and part
of its memory is still on the source, so an error never fails the
migration: it pauses it (``postcopy-paused``) until ``migrate-recover``
brings a new channel. Every status change is a transition of
``self.status``; the job thread ends in a catch-all (jobthread).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import LivemigError, MigrationError, MigrationReceiveError
from ..logs import get_logger
from ..machine import Machine, RunState
from ..memory import PAGE_SIZE
from ..objects import ObjectRegistry
from ..uffd import probe_missing
from . import fault_trace, faults, jobthread, state
from .channel import Channel, Listener, TakeFd
from .codec import (
    DeltaRun,
    Discard,
    Done,
    End,
    Header,
    Limits,
    MultifdFlush,
    PageRun,
    PagesHeld,
    PostcopyAdvise,
    PostcopyRun,
    SharedRamAccepted,
    State,
    Sync,
    ZeroRun,
    read_header,
    read_hello,
    read_preempt_hello,
    read_record,
)
from .mapped_ram import Layout
from .mapped_ram import load as load_mapped
from .params import Settings
from .phases import AFTER_SWITCHOVER, Phase, advance
from .return_path import ReturnPath
from .stats import JobTimes, RamStats
from .status import DESTINATION_TRANSITIONS, IllegalTransition, Status, StatusMachine
from .tls import TlsConfig, TlsError
from .uri import Uri

if TYPE_CHECKING:
    import numpy as np

    from .multifd import MultifdReceiver
    from .postcopy_dest import PostcopyDestination
    from .preempt import PreemptReceiver

log = get_logger(__name__)

S = Status
MULTIFD_ACCEPT_S = 30.0  # how long the announced multifd channels may take to connect
_ERRORS = (LivemigError, OSError, EOFError)


def describe_break(err: BaseException) -> str:
    """error-desc of a postcopy destination that paused on ``err``."""
    if isinstance(err, LivemigError):
        return str(err)
    return "migration channel broken: " + (getattr(err, "strerror", None) or str(err)
                                           or type(err).__name__)


class IncomingMigration:
    def __init__(self, machine: Machine, settings: Settings, uri: Uri,
                 emit: Callable[[str, dict[str, Any] | None], None],
                 on_failure: Callable[[str], None], take_fd: TakeFd,
                 objects: ObjectRegistry | None = None,
                 listener: Listener | None = None) -> None:
        self.machine = machine
        self._objects = objects if objects is not None else ObjectRegistry()
        self._tls: TlsConfig | None = None
        self.settings = settings
        self._emit = emit
        self._on_failure = on_failure
        self.listener = listener if listener is not None else Listener(uri, take_fd)
        self.status = StatusMachine("destination", DESTINATION_TRANSITIONS, self._announce)
        self.phase = Phase.HEADER
        self.error: str | None = None
        self.stats = RamStats(total=machine.ram.size)
        self.times = JobTimes()
        self._limits = Limits(machine.ram.pages)
        self._channel: Channel | None = None
        self._return: ReturnPath | None = None
        self._state: state.MachineState | None = None   # validated, not yet applied
        self._discard: np.ndarray | None = None
        self.postcopy: PostcopyDestination | None = None
        self._cond = threading.Condition()
        self._recover_listener: Listener | None = None
        self._recovery_addresses: list[dict[str, Any]] = []
        self._take_fd = take_fd
        self._thread: threading.Thread | None = None
        self._earlier_bytes = 0  # received on channels before the current one (recovery)
        # Why a helper thread (the fault service, the preempt reader) broke the
        # main channel: the pause reports this, not the broken read it caused.
        self._helper_failure: str | None = None
        self._multifd: MultifdReceiver | None = None
        self._preempt_channel: Channel | None = None   # accepted, not yet read
        self._preempt: PreemptReceiver | None = None     # reading, after switchover
        self.tls_refusals: list[str] = []  # TLS handshakes refused while waiting
        self._stats_lock = threading.Lock()  # multifd threads count pages too

    def _announce(self, status: Status) -> None:
        if self.settings.caps["events"]:
            self._emit("MIGRATION", {"status": status.value})

    def start(self) -> None:
        if self._thread is None:
            # Before the reply to migrate-incoming, as QEMU (StatusMachine.herald).
            self.status.herald(S.SETUP, lambda s: self._emit("MIGRATION", {"status": s.value}))
            self._thread = jobthread.start("migration_incoming", self._run, self._crashed)

    @property
    def in_progress(self) -> bool:
        return self.status.in_progress

    # --- control (QMP thread) ------------------------------------------------------
    def pause(self) -> None:
        """migrate-pause on the destination: break the channel; postcopy pauses."""
        channel = self._channel
        if channel is not None:
            channel.abort()

    def recover(self, uri: Uri) -> None:
        """migrate-recover: listen on ``uri`` for the source's new channel."""
        with self._cond:
            if self.status.status != S.POSTCOPY_PAUSED:
                raise MigrationError("Migrate recover can only be run when postcopy is paused.")
            if self._recover_listener is not None:
                raise MigrationError("Migrate recovery is triggered already")
            self._recover_listener = Listener(uri, self._take_fd)
            self._recovery_addresses += self._recover_listener.socket_address()
            self._cond.notify_all()

    # --- the job ---------------------------------------------------------------------
    @staticmethod
    def _must(moved: bool) -> None:
        if not moved:
            raise IllegalTransition("internal error: the migration status changed under the job")

    def _run(self) -> None:
        try:
            self._tls = TlsConfig.from_params(self.settings.params, self._objects, "server")
            channel = self._accept_main()
            self._channel = channel
            self.times = JobTimes()
            self._must(self.status.transition(S.NONE, S.SETUP))
            header = self._read_header(channel)
            if header.shared_ram is not None and channel.sock is not None:
                # The source stops its guest on this answer, and the stream
                # after it is small: be ready to run the guest first (tcg's
                # engine loads in the background at start-up, ~40 ms).
                self.machine.wait_engine()
                channel.send([SharedRamAccepted().encode()])  # (checked by _read_header)
            self._accept_multifd(header)
            self._preempt_channel = self._accept_preempt(header, self.listener)
            self.listener.close()
            self._must(self.status.transition(S.SETUP, S.ACTIVE))
            self.phase = Phase.PRECOPY_START
            if header.mapped_ram is not None:
                self._load_mapped_ram(channel, header.mapped_ram)
            self._receive(channel)
        except _ERRORS as err:
            if self.postcopy is None:
                multifd = self._multifd
                self._fail(multifd.failure if multifd is not None and multifd.failure
                           else str(err))
                return
            self._close_channel()
            self._recover_loop(describe_break(err))
            return
        finally:
            self.listener.close()
        if self.postcopy is None:
            self._complete_precopy()
        else:
            self._complete_postcopy()

    def _crashed(self, err: BaseException) -> None:
        """The catch-all: fail before switchover (the process exits, as
        QEMU's does on a failed load), pause after it."""
        reason = jobthread.describe_crash(err)
        new = self.status.crash(reason)
        if new == S.FAILED:
            self._fail(reason)
        elif new == S.POSTCOPY_PAUSED:
            self.error = reason
            self._close_channel()
            self._thread = jobthread.start("migration_incoming",
                                           lambda: self._recover_loop(reason), self._crashed)

    def _fail(self, reason: str) -> None:
        self.error = f"load of migration failed: {reason}"
        log.error("%s", self.error)
        self._close_multifd()
        self._close_channel()
        self.status.transition({S.NONE, S.SETUP, S.ACTIVE}, S.FAILED)
        self._on_failure(self.error)

    def _close_channel(self) -> None:
        """Release the current channel(s) (only this side's job thread calls it)."""
        preempt, self._preempt = self._preempt, None
        if preempt is not None:
            preempt.close()
        idle, self._preempt_channel = self._preempt_channel, None
        if idle is not None:
            idle.close()
        channel, self._channel = self._channel, None
        writer, self._return = self._return, None
        if self.postcopy is not None:
            self.postcopy.attach(None)
        if writer is not None:
            writer.close()
        elif channel is not None:
            channel.close()

    def _accept_main(self) -> Channel:
        """The source's main channel. A connection whose TLS handshake (or
        tls-authz check) fails is refused and logged, and the destination
        waits on for a good one: a stray or hostile client cannot end it."""
        while True:
            try:
                return self.listener.accept(tls=self._tls)
            except TlsError as err:
                self.tls_refusals.append(str(err))
                log.error("incoming migration connection refused: %s", err)
                if not self.listener.can_accept_more:
                    raise

    def _close_multifd(self) -> None:
        multifd, self._multifd = self._multifd, None
        if multifd is not None:
            multifd.close()

    def _accept_multifd(self, header: Header) -> None:
        """The multifd channels the header announces, checked against our settings."""
        ours = self.settings.caps["multifd"]
        theirs = header.multifd
        if header.mapped_ram is not None:
            return  # one file: multifd here means threads reading it (_load_mapped_ram)
        if theirs is None:
            if ours:
                raise MigrationReceiveError("the multifd capability is set here but not on "
                                            "the source (set it alike on both sides)")
            return
        count, method = theirs["channels"], theirs["compression"]
        if not ours:
            raise MigrationReceiveError(f"the source sends pages over {count} multifd channels,"
                                        " but the multifd capability is not set here")
        params = self.settings.params
        if count != params["multifd-channels"]:
            raise MigrationReceiveError(
                f"multifd: the source has {count} channels, this destination "
                f"{params['multifd-channels']} (set multifd-channels alike on both sides)")
        if method != params["multifd-compression"]:
            raise MigrationReceiveError(
                f"multifd: the source compresses with {method}, this destination expects "
                f"{params['multifd-compression']} (set multifd-compression alike)")
        if not self.listener.can_accept_more:
            raise MigrationReceiveError("multifd is not supported by current protocol "
                                        "(it needs unix: or tcp:)")
        from .multifd import MultifdReceiver, StreamSettings

        receiver = MultifdReceiver(self.machine.ram, self._limits, StreamSettings(count, method),
                                   self.stats, self._stats_lock, self._multifd_failed,
                                   keep_zero_present=self.settings.caps["postcopy-ram"])
        self._multifd = receiver
        for _ in range(count):
            channel = self.listener.accept(timeout=MULTIFD_ACCEPT_S, tls=self._tls)
            try:
                hello = read_hello(channel.reader)
                if hello.count != count:
                    raise MigrationReceiveError(f"multifd channel {hello.index} says there are "
                                                f"{hello.count} channels, the header {count}")
                receiver.add(hello.index, channel)
            except BaseException:
                channel.close()
                raise

    def _accept_preempt(self, header: Header, listener: Listener) -> Channel | None:
        """postcopy-preempt's channel, when the header announces one."""
        ours = self.settings.caps["postcopy-preempt"]
        if header.preempt != ours:
            side = "the source" if header.preempt else "this destination"
            raise MigrationReceiveError(
                f"postcopy-preempt is set only on {side} (set it on both sides)")
        if not header.preempt:
            return None
        if not listener.can_accept_more:
            raise MigrationReceiveError("postcopy-preempt needs a second connection: "
                                        "use unix: or tcp:")
        channel = listener.accept(postcopy=True, timeout=MULTIFD_ACCEPT_S, tls=self._tls)
        try:
            read_preempt_hello(channel.reader)
        except BaseException:
            channel.close()
            raise
        return channel

    def _start_preempt(self) -> None:
        """After switchover or recovery: read the preempt channel's pages."""
        channel, self._preempt_channel = self._preempt_channel, None
        if channel is None:
            return
        from .preempt import PreemptReceiver  # only here (its import takes ~0.4 ms)

        assert self.postcopy is not None
        main = self._channel

        def broken(reason: str) -> None:  # pause: the job sees its channel break
            self._helper_failure = reason
            if main is not None:
                main.abort()

        self._preempt = PreemptReceiver(channel, self.postcopy, self._limits, self.stats,
                                        self._stats_lock, broken)

    def _multifd_failed(self) -> None:
        """A multifd channel failed: wake the job thread off the main channel."""
        channel = self._channel
        if channel is not None:
            channel.abort()

    def _read_header(self, channel: Channel) -> Header:
        header = read_header(channel.reader)
        self.stats.transferred = channel.reader.offset
        if header.page_size != PAGE_SIZE:
            raise MigrationReceiveError(
                f"page size {header.page_size} differs from ours ({PAGE_SIZE})")
        if header.ram_size != self.machine.ram.size:
            raise MigrationReceiveError(
                f"RAM size differs: the stream has {header.ram_size} bytes, this VM "
                f"{self.machine.ram.size} (start the destination with the same -m)")
        ours = state.machine_description(self.machine)
        if header.machine != ours:
            raise MigrationReceiveError(f"machine differs: source {header.machine}, "
                                        f"destination {ours}")
        self._check_uuid(header.uuid)
        self._check_shared_ram(header.shared_ram)
        return header

    def _load_mapped_ram(self, channel: Channel, wire: dict[str, int]) -> None:
        """A mapped-ram file: every present page straight from its place
        into RAM, then the records after the pages (syncs, state, end)."""
        fd = channel.file_fd
        if fd is None:
            raise MigrationReceiveError("a mapped-ram stream can only be read from a file: "
                                        "URI (its pages are at fixed offsets)")
        base = self.listener.uri.offset
        layout = Layout.from_wire(wire, channel.reader.offset, self.machine.ram.pages, 0)
        caps, params = self.settings.caps, self.settings.params
        threads = params["multifd-channels"] if caps["multifd"] else 1
        pages = load_mapped(fd, base, layout, self.machine.ram, threads)
        with self._stats_lock:  # (transferred: the offset reached in the stream)
            self.stats.normal += pages
        os.lseek(fd, base + layout.records, os.SEEK_SET)
        channel.reader.restart_at(layout.records)
        self.phase = Phase.MAPPED

    def _check_shared_ram(self, theirs: tuple[int, int] | None) -> None:
        """x-ignore-shared: the source sends no RAM, so this VM's must be the
        very memory the source's guest runs in (same backend file or memfd)."""
        if theirs is None:
            return
        ram = self.machine.ram
        backing = ram.backing
        if backing is not None and ram.shared and backing.identity == theirs:
            return
        if backing is None or not ram.shared:
            what = ("not shared memory" if backing is None
                    else f"a private mapping of {backing.where}")
        else:
            what = (f"{backing.where} (device:inode {backing.identity[0]}:"
                    f"{backing.identity[1]})")
        raise MigrationReceiveError(
            "x-ignore-shared: the source sent no RAM, since its RAM is a shared memory "
            f"backend (device:inode {theirs[0]}:{theirs[1]}), but this VM's RAM is {what}: "
            "start the destination with -machine memory-backend= on the same file, "
            "share=on")

    def _check_uuid(self, theirs: str | None) -> None:
        """validate-uuid, as QEMU 7.2: only a source with the capability and a
        UUID sends one; a destination without a UUID accepts any."""
        if theirs is None:
            return
        ours = self.machine.config.uuid
        if ours is None:
            log.warning("UUID is received %s, but local uuid isn't set", theirs)
        elif ours != theirs.lower():
            raise MigrationReceiveError(f"UUID received is {theirs} and local is {ours}")

    def _receive(self, channel: Channel) -> None:
        """Load records until END."""
        reader = channel.reader
        while True:
            offset = reader.offset
            record = read_record(reader, self._limits)
            self.phase = advance(self.phase, record, offset)
            postcopy = self.phase in AFTER_SWITCHOVER
            if not postcopy:
                faults.check("receive-precopy")
            elif isinstance(record, PageRun):
                faults.check("receive-postcopy")
            if isinstance(record, PageRun | ZeroRun):
                if postcopy:
                    self._place(channel, record)
                else:
                    self._load(channel, record)
            elif isinstance(record, DeltaRun):
                from .xbzrle import apply_delta
                apply_delta(self.machine.ram, record, reader)
                self.stats.normal += record.count
            elif isinstance(record, MultifdFlush):
                if self._multifd is None:
                    raise MigrationReceiveError("a multifd flush on a stream without multifd")
                self._multifd.flush(record.barrier)
            elif isinstance(record, Sync):
                self.stats.dirty_sync_count = record.count
            elif isinstance(record, State):
                self._state = state.decode(record.body, self.machine)
            elif isinstance(record, PostcopyAdvise):
                self._advise(channel)
            elif isinstance(record, Discard):
                self._discard = record.mask(self.machine.ram.pages)
            elif isinstance(record, PostcopyRun):
                self._switch_over(channel)
            elif isinstance(record, End):
                if self._preempt is not None:
                    self._preempt.wait_end()
                if self.postcopy is not None and self.postcopy.missing:
                    raise MigrationReceiveError(
                        f"stream ended with {self.postcopy.missing} pages still missing")
                if self._multifd is not None:
                    self._multifd.finish()
                    self._close_multifd()
                self.stats.transferred = self._received(reader.offset)
                return
            self.stats.transferred = self._received(reader.offset)

    def _received(self, main_offset: int) -> int:
        """Bytes received so far on every channel (earlier ones included)."""
        preempt = self._preempt.received if self._preempt is not None else 0
        return self._earlier_bytes + main_offset + self.stats.multifd_bytes + preempt

    def _load(self, channel: Channel, record: PageRun | ZeroRun) -> None:
        """Precopy: straight into RAM (nothing runs on it yet)."""
        ram = self.machine.ram
        start, length = record.first * PAGE_SIZE, record.count * PAGE_SIZE
        if isinstance(record, PageRun):
            channel.reader.readinto(ram.view[start:start + length])
            self.stats.normal += record.count
        else:
            ram.zero(start, length, keep_present=self.settings.caps["postcopy-ram"])
            self.stats.duplicate += record.count

    def _place(self, channel: Channel, record: PageRun | ZeroRun) -> None:
        """Postcopy: through the staging buffer, placed atomically with uffd."""
        postcopy = self.postcopy
        assert postcopy is not None
        fault_trace.mark("received", record.first)
        if isinstance(record, PageRun):
            length = record.count * PAGE_SIZE
            if length > len(postcopy.staging):
                raise MigrationReceiveError(
                    f"postcopy page run of {record.count} pages is larger than allowed")
            channel.reader.readinto(postcopy.staging[:length])
            fault_trace.mark("read", record.first)
            postcopy.place(record.first, record.count)
            with self._stats_lock:  # the preempt thread counts too
                self.stats.normal += record.count
                self.stats.postcopy_bytes += length
        else:
            postcopy.place_zero(record.first, record.count)
            with self._stats_lock:
                self.stats.duplicate += record.count

    # --- the end of precopy ----------------------------------------------------------------
    def _complete_precopy(self) -> None:
        assert self._state is not None  # the phases allow END only after a state record
        state.apply(self.machine, self._state)
        self._close_channel()
        self.times.end = time.monotonic()
        self._must(self.status.transition(S.ACTIVE, S.COMPLETED))
        self._start_guest()

    def _start_guest(self) -> None:
        """Run the guest here if it ran on the source (and no -S), else pause it."""
        assert self._state is not None
        with self.machine.lock:
            if self._state.running and self.machine.autostart:
                self.machine.resume()
            else:
                self.machine.set_runstate(RunState.PAUSED)

    # --- postcopy switchover ---------------------------------------------------------------
    def _advise(self, channel: Channel) -> None:
        if not self.settings.caps["postcopy-ram"]:
            raise MigrationReceiveError(
                "the source may switch to postcopy, but the postcopy-ram capability is "
                "not set here (set it on both sides)")
        if channel.sock is None:
            raise MigrationReceiveError("postcopy needs a socket channel for its return path")
        why = probe_missing(kernel_faults=self.machine.accel_name == "kvm")
        if why is not None:
            raise MigrationReceiveError(f"postcopy needs userfaultfd here: {why}")

    def _switch_over(self, channel: Channel) -> None:
        """Postcopy from here: apply the state, register RAM with userfaultfd,
        run the guest."""
        from .postcopy_dest import PostcopyDestination

        if self._multifd is not None:  # its channels ended at the last flush
            self._multifd.finish()
            self._close_multifd()
        assert self._discard is not None and self._state is not None  # the phases say so
        state.apply(self.machine, self._state)
        postcopy = PostcopyDestination(self.machine, self._discard, self.machine.accel_name,
                                       self._service_crashed)
        postcopy.start()
        self.postcopy = postcopy
        channel.enter_postcopy()
        self._return = ReturnPath(channel)
        postcopy.attach(self._return.send)
        self._start_preempt()
        self._must(self.status.transition(S.ACTIVE, S.POSTCOPY_ACTIVE))
        self._start_guest()

    def _service_crashed(self, reason: str) -> None:
        """The fault service died: pause (the job sees the broken channel)."""
        self._helper_failure = reason
        channel = self._channel
        if channel is not None:
            channel.abort()

    def _complete_postcopy(self) -> None:
        assert self.postcopy is not None and self._return is not None
        self.postcopy.finish()
        self._return.send([Done().encode()])
        self._close_channel()
        self.machine.ram.huge_pages(True)  # off since the switch (postcopy_dest)
        self.times.end = time.monotonic()
        self._must(self.status.transition(S.POSTCOPY_ACTIVE, S.COMPLETED))

    # --- pause and recovery ------------------------------------------------------------------
    def _recover_loop(self, reason: str) -> None:
        """Pause; recover each time migrate-recover brings a channel; until END."""
        while True:
            if self._helper_failure is not None:
                reason, self._helper_failure = self._helper_failure, None
            self.error = reason
            log.warning("postcopy paused: %s", reason)
            self.status.transition({S.POSTCOPY_ACTIVE, S.POSTCOPY_RECOVER}, S.POSTCOPY_PAUSED)
            try:
                channel = self._accept_recovery()
                self._receive(channel)
            except _ERRORS as again:
                self._close_channel()
                reason = describe_break(again)
                continue
            self._complete_postcopy()
            return

    def _accept_recovery(self) -> Channel:
        with self._cond:
            while self._recover_listener is None:
                self._cond.wait()
            listener = self._recover_listener
        try:
            channel = listener.accept(postcopy=True, tls=self._tls)
            self._earlier_bytes = self.stats.transferred
            self._channel = channel
            self._must(self.status.transition(S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER))
            self.phase = Phase.HEADER
            header = self._read_header(channel)
            # With postcopy-preempt both channels are made again, on this listener.
            self._preempt_channel = self._accept_preempt(header, listener)
        finally:
            listener.close()
            with self._cond:
                self._recover_listener = None
        self.phase = Phase.RECOVERY
        offset = channel.reader.offset
        self.phase = advance(self.phase, read_record(channel.reader, self._limits), offset)
        assert self.postcopy is not None
        self._return = ReturnPath(channel)
        if not self._return.send([PagesHeld.from_mask(self.postcopy.placed).encode()]):
            raise MigrationReceiveError("could not tell the source which pages are here")
        self.postcopy.attach(self._return.send)
        self._start_preempt()
        self.postcopy.rerequest()
        self.error = None
        self._must(self.status.transition(S.POSTCOPY_RECOVER, S.POSTCOPY_ACTIVE))
        return channel

    # --- query-migrate ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        status = self.status.status
        info: dict[str, Any] = {"status": status.value}
        # As QEMU: every address listened on, the recovery listener's last.
        info["socket-address"] = [*self.listener.socket_address(), *self._recovery_addresses]
        if status == S.NONE:
            return info
        info["total-time"] = self.times.total_ms()
        if self.error is not None and status in (S.FAILED, S.POSTCOPY_PAUSED):
            info["error-desc"] = self.error
        info["ram"] = self.stats.to_qmp()
        if self.postcopy is not None and self.settings.caps["postcopy-blocktime"]:
            total, per_vcpu = self.postcopy.latency.blocktime_ms()
            info["postcopy-blocktime"] = total
            info["postcopy-vcpu-blocktime"] = per_vcpu
        if self.postcopy is not None:
            info["livemig-fault-latency"] = self.postcopy.latency.summary()
        return info


