"""The destination side of postcopy: missing pages, on demand.

After switchover the guest runs here while some of its pages are still on
the source. Guest RAM is registered with userfaultfd in missing mode, so a
vCPU that touches such a page blocks in the kernel. The fault service
thread reads those faults (with the faulting thread's id), asks the source
for the pages over the return path, and the receiving thread places pages
with UFFDIO_COPY / UFFDIO_ZEROPAGE, which wakes the vCPU. ``placed`` (one
bool per page) is the single truth of what is here: a page is placed once,
never twice.

Block time is measured per fault, from the moment the fault service reads
the fault to the moment its page is placed; userfaultfd gives no earlier
timestamp, so the figure leaves out the kernel's few microseconds before
the read.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import MachineError, MigrationReceiveError, UffdError
from ..logs import get_logger
from ..machine import Machine
from ..memory import PAGE_SHIFT, PAGE_SIZE
from ..uffd import Userfaultfd
from ..uffd import abi as uffd_abi
from . import fault_trace, faults, jobthread
from .codec import POSTCOPY_MAX_RUN, PageRequest
from .pages import runs

log = get_logger(__name__)

# How long VMM code (qtest, pmemsave) waits for a page that has not arrived.
ACCESS_WAIT_S = 30.0

ReturnSend = Callable[[Sequence[bytes | memoryview]], bool]
CrashSink = Callable[[str], None]


def open_userfaultfd(accel: str) -> Userfaultfd:
    """A missing-mode userfaultfd that also sees faults taken in the kernel
    (KVM's). TCG touches guest RAM only from user mode, so where the kernel
    allows only that (vm.unprivileged_userfaultfd=0, no privilege), it
    makes do with it."""
    features = uffd_abi.UFFD_FEATURE_THREAD_ID
    try:
        return Userfaultfd(features, nonblocking=True, kernel_faults=True)
    except UffdError:
        if accel == "kvm":
            raise
        return Userfaultfd(features, nonblocking=True, kernel_faults=False)


class FaultLatency:
    """Fault-to-placed times, in seconds, and block time per vCPU."""

    def __init__(self, vcpu_tids: list[int]) -> None:
        self.vcpu_tids = vcpu_tids
        self.samples: list[np.ndarray] = []
        self.vcpu_blocked = [0.0] * len(vcpu_tids)

    def add(self, latencies: np.ndarray, tids: np.ndarray) -> None:
        self.samples.append(latencies)
        for index, tid in enumerate(self.vcpu_tids):
            mine = tids == tid
            if mine.any():
                self.vcpu_blocked[index] += float(latencies[mine].sum())

    def blocktime_ms(self) -> tuple[int, list[int]]:
        """(postcopy-blocktime, postcopy-vcpu-blocktime). With one vCPU, the
        time all vCPUs were blocked at once is that vCPU's block time."""
        per_vcpu = [round(t * 1000) for t in self.vcpu_blocked]
        return (min(per_vcpu) if per_vcpu else 0), per_vcpu

    def summary(self) -> dict[str, float | int]:
        values = np.concatenate(self.samples) if self.samples else np.empty(0)
        if not len(values):
            return {"count": 0}
        us = np.sort(values) * 1e6
        return {"count": len(us), "mean-us": round(float(us.mean()), 1),
                "p50-us": round(quantile(us, 0.50), 1),
                "p99-us": round(quantile(us, 0.99), 1),
                "max-us": round(float(us[-1]), 1)}


def quantile(ordered: np.ndarray, q: float) -> float:
    """The ``q`` quantile of sorted values, interpolated linearly between
    the two nearest (numpy's default method). Not ``np.percentile``: its
    first call imports numpy.ma (7-12 ms, measured) and each call costs
    ~0.15 ms, all under the GIL, and query-migrate asks for it while the
    guest waits on pages."""
    position = q * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return float(ordered[below] + (ordered[above] - ordered[below]) * (position - below))


class Staging:
    """Where one receiving thread reads a postcopy page run before
    UFFDIO_COPY places it (a page must arrive whole before a vCPU sees it).

    An anonymous mapping, not a bytearray: it is made at the switch, inside
    the guest's pause, and a bytearray of 4 MiB is cleared byte by byte
    when made (2.7 ms measured); a mapping's pages come when first used."""

    def __init__(self) -> None:
        self._buffer = mmap.mmap(-1, POSTCOPY_MAX_RUN * PAGE_SIZE)
        # Safe: the mapping is never resized or closed while self lives.
        self.address = ctypes.addressof(
            (ctypes.c_char * len(self._buffer)).from_buffer(self._buffer))
        self.view = memoryview(self._buffer)


class PostcopyDestination:
    """Placement and the fault service. The incoming job owns the status;
    this reports a dead fault service through ``on_crash`` (the job then
    pauses) and starts a new one when a recovered channel is attached."""

    def __init__(self, machine: Machine, discard: np.ndarray, accel: str,
                 on_crash: CrashSink) -> None:
        self.machine = machine
        self.ram = machine.ram
        self.placed = ~discard
        self._requested = np.zeros(self.ram.pages, dtype=bool)
        self._fault_at = np.full(self.ram.pages, np.nan)
        self._fault_tid = np.zeros(self.ram.pages, dtype=np.uint32)
        self._cond = threading.Condition()
        self._send: ReturnSend | None = None
        vcpu = getattr(machine, "vcpu", None)
        self.latency = FaultLatency([vcpu.native_id] if vcpu is not None else [])
        self._uffd = open_userfaultfd(accel)
        self._stop_r, self._stop_w = os.pipe()
        self._main_staging = Staging()   # the main channel's receiving thread's
        self.staging = self._main_staging.view
        self._on_crash = on_crash
        self._thread: threading.Thread | None = None

    # --- switchover ---------------------------------------------------------------
    def start(self) -> None:
        """Drop the stale pages, register RAM, start the fault service."""
        ram = self.ram
        # As QEMU: from here pages arrive one by one, and a huge page would
        # only be split again. Dropping the stale ones while still huge
        # frees whole 2 MiB pages: 0.5 ms for 99 MiB, against 8-11 ms for
        # the same range in small pages (docs/benchmarks.md).
        ram.huge_pages(False)
        starts, lengths = runs(~self.placed)
        for first, count in zip(starts.tolist(), lengths.tolist(), strict=True):
            ram.discard(first * PAGE_SIZE, count * PAGE_SIZE)
        self._uffd.register(ram.address, ram.size, uffd_abi.UFFDIO_REGISTER_MODE_MISSING)
        ram.access_guard = self.ensure_present
        self._start_service()

    def _start_service(self) -> None:
        self._thread = jobthread.start("mig/dst/fault", self._serve_faults, self._service_crashed)

    def _service_crashed(self, err: BaseException) -> None:
        self._on_crash(jobthread.describe_crash(err))

    @property
    def missing(self) -> int:
        return int((~self.placed).sum())

    def attach(self, send: ReturnSend | None) -> None:
        """Use ``send`` for return-path messages (None while paused); a fault
        service that died is started again with a new channel."""
        with self._cond:
            self._send = send
        if send is not None and self._thread is not None and not self._thread.is_alive():
            self._start_service()

    def rerequest(self) -> None:
        """After recovery: ask again for every page a thread still waits on."""
        with self._cond:
            pending = np.flatnonzero(self._requested & ~self.placed)
        self._request(pending)

    # --- placing pages (the receiving thread) -------------------------------------
    def _check_new(self, first: int, count: int) -> None:
        """A page is placed once. (That the run lies inside RAM, the codec
        checked before the record reached us.)"""
        with self._cond:
            again = np.flatnonzero(self.placed[first:first + count])
        if len(again):
            raise MigrationReceiveError(
                f"page {first + int(again[0])} was sent twice during postcopy")

    def place(self, first: int, count: int, staging: Staging | None = None) -> None:
        """Place ``count`` pages from ``staging`` (the main channel's by
        default) at page ``first``. Two receiving threads may place at once
        (postcopy-preempt): the source sends each page once, on one channel."""
        self._check_new(first, count)
        fault_trace.mark("checked", first)
        source = staging if staging is not None else self._main_staging
        self._uffd.copy(self.ram.address + (first << PAGE_SHIFT), source.address,
                        count * PAGE_SIZE)
        fault_trace.mark("placed", first)
        self._placed(first, count)

    def place_zero(self, first: int, count: int) -> None:
        self._check_new(first, count)
        self._uffd.zeropage(self.ram.address + (first << PAGE_SHIFT), count * PAGE_SIZE)
        fault_trace.mark("placed", first)
        self._placed(first, count)

    def _placed(self, first: int, count: int) -> None:
        now = time.monotonic()
        end = first + count
        with self._cond:
            self.placed[first:end] = True
            started = self._fault_at[first:end]
            waiting = np.flatnonzero(~np.isnan(started))
            if len(waiting):
                self.latency.add(now - started[waiting], self._fault_tid[first:end][waiting])
                started[waiting] = np.nan
            self._cond.notify_all()

    # --- the fault service -----------------------------------------------------------
    def _serve_faults(self) -> None:
        poller = select.poll()
        poller.register(self._uffd.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        base, pages = self.ram.address, self.ram.pages
        while True:
            events = dict(poller.poll())
            if self._stop_r in events:
                return
            faults.check("fault-service")
            addresses, tids = self._uffd.read_faults(256)  # an error: the crash path
            if not len(addresses):
                continue
            now = time.monotonic()
            page_numbers = ((addresses - base) >> PAGE_SHIFT).astype(np.int64)
            if page_numbers.max() >= pages:  # not ours: only RAM is registered
                inside = page_numbers < pages
                page_numbers, tids = page_numbers[inside], tids[inside]
            with self._cond:
                waiting = ~self.placed[page_numbers]
                page_numbers, tids = page_numbers[waiting], tids[waiting]
                fresh = np.isnan(self._fault_at[page_numbers])
                self._fault_at[page_numbers[fresh]] = now
                self._fault_tid[page_numbers[fresh]] = tids[fresh]
                wanted = page_numbers[~self._requested[page_numbers]]
            if len(wanted) > 1:
                wanted = np.unique(wanted)
            if fault_trace.enabled:
                for page in wanted.tolist():
                    fault_trace.mark("fault", page)
            if len(wanted):
                self._request(wanted)

    def _request(self, wanted: np.ndarray) -> None:
        """Ask the source for ``wanted`` (sorted page numbers), in runs."""
        if not len(wanted):
            return
        if len(wanted) == 1:  # the usual case: one vCPU, one fault
            starts, lengths = wanted, np.ones(1, dtype=np.int64)
        else:
            breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
            starts = wanted[np.concatenate(([0], breaks))]
            lengths = np.diff(np.concatenate(([0], breaks, [len(wanted)])))
        with self._cond:
            self._requested[wanted] = True
            send = self._send
        if send is None:
            return  # paused: rerequest() asks again after recovery
        send([PageRequest(int(first), int(count)).encode()
              for first, count in zip(starts, lengths, strict=True)])
        if fault_trace.enabled:
            for first in starts.tolist():
                fault_trace.mark("request", first)

    # --- VMM access (qtest, pmemsave …) -------------------------------------------------
    def ensure_present(self, address: int, length: int) -> None:
        first, last = address >> PAGE_SHIFT, (address + length - 1) >> PAGE_SHIFT
        with self._cond:
            lacking = ~self.placed[first:last + 1]
            if not lacking.any():
                return
            wanted = first + np.flatnonzero(lacking & ~self._requested[first:last + 1])
        self._request(wanted)
        deadline = time.monotonic() + ACCESS_WAIT_S
        with self._cond:
            while not self.placed[first:last + 1].all():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MachineError(
                        f"guest memory {address:#x}+{length:#x} has not arrived from the "
                        "migration source yet (postcopy is paused or slow)")
                self._cond.wait(left)

    # --- completion -----------------------------------------------------------------------
    def finish(self) -> None:
        """Every page is here: unregister, stop the fault service."""
        ram = self.ram
        ram.access_guard = None
        fault_trace.flush()
        try:
            self._uffd.unregister(ram.address, ram.size)
        finally:
            os.write(self._stop_w, b"x")
            if self._thread is not None:
                self._thread.join(5)
            self._uffd.close()
            for fd in (self._stop_r, self._stop_w):
                try:
                    os.close(fd)
                except OSError as err:
                    if err.errno != errno.EBADF:
                        raise
