"""Bad peers during postcopy: a fake destination that sends bad return-path
messages to a real source, and a fake source that sends bad pages to a real
destination. The receiving side reports a clear error, writes nothing
outside RAM, keeps the guest, and pauses (QEMU pauses a destination whose
postcopy load fails; for a source, livemig pauses where QEMU 7.2 marks the
return path bad and fails at the end, because the source holds pages the
destination lacks)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import LIVEMIG
from migration_helpers import migrate, start_dest, wait_for_status
from postcopy_helpers import set_capability, set_parameter
from stream_helpers import (
    ADVISE,
    PAGES,
    POSTCOPY_RUN,
    discard,
    drain,
    header,
    run,
    state_record,
)
from test_migration_stream_errors import KIND

from livemig.lab import Vm, VmLauncher, wait_until
from livemig.migration import codec

pytestmark = pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")



@pytest.mark.parametrize("message,expected", [
    (struct.pack("<BQI", 0x41, PAGES - 1, 2), "outside guest RAM"),
    (struct.pack("<BQI", 0x41, 2**63, 1), "outside guest RAM"),
    (b"\x99", "unknown return-path message type 0x99"),
    (struct.pack("<BQ", 0x42, 3) + b"abc", "page bitmap of 3 bytes"),
], ids=["request-past-end", "request-far-outside", "unknown-message", "short-bitmap"])
def test_source_pauses_on_bad_return_path(lab: VmLauncher, message: bytes,
                                          expected: str) -> None:
    path = lab.workdir / "fake-dst.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    src = lab.start(KIND, "src")
    set_capability(src, "postcopy-ram")
    set_parameter(src, "max-bandwidth", 100_000_000_000)
    set_parameter(src, "downtime-limit", 1)
    set_parameter(src, "max-postcopy-bandwidth", 4096)
    src.wait_serial(b"B", timeout=60)
    migrate(src, f"unix:{path}")
    server.settimeout(30)
    conn, _ = server.accept()
    with server, conn:
        drain(conn)
        # At once, not after the first pass: with a destination that drains
        # at memory speed, a guest starved of CPU on a loaded machine can let
        # precopy converge first, and there is then no postcopy to pause.
        src.cmd("migrate-start-postcopy")
        wait_for_status(src, "postcopy-active", timeout=30)
        conn.sendall(message)
        info = wait_for_status(src, "postcopy-paused", timeout=30)
    assert expected in info["error-desc"], info
    assert src.status() == "finish-migrate"      # the guest is kept, stopped
    assert "Traceback" not in src.stderr_text()


PAGE = bytes(range(256)) * 16
FIRST_MISSING = 256  # pages [256, 1280) are discarded, so missing after switchover


@pytest.mark.parametrize("bad,expected", [
    (run(1, FIRST_MISSING, 1) + PAGE, "was sent twice"),
    (run(1, PAGES - 1, 2) + PAGE * 2, "outside guest RAM"),
    (run(2, 2**40, 1), "outside guest RAM"),
    (run(1, FIRST_MISSING + 1, 2048) + PAGE * 2048, "larger than allowed"),
    (b"\x7f", "unknown record type 0x7f"),
    (POSTCOPY_RUN, "unexpected PostcopyRun record in phase 'postcopy'"),
    (state_record(), "unexpected State record in phase 'postcopy'"),
], ids=["page-twice", "page-past-end", "zero-far-outside", "run-too-long", "unknown-record",
        "second-switchover", "state-after-switchover"])
def test_destination_pauses_on_bad_postcopy_page(lab: VmLauncher, bad: bytes,
                                                 expected: str) -> None:
    path = lab.workdir / "in.sock"
    dst = start_dest(lab, KIND, "dst", f"unix:{path}")
    set_capability(dst, "postcopy-ram")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(header())
        info = _switch_then_send_bad(dst, sock, sock, bad)
    assert expected in info["error-desc"], info
    assert dst.status() == "paused"          # the source's guest never ran (-S)
    assert dst.pmem(FIRST_MISSING * 4096, 4096) == PAGE   # placed once, intact
    assert dst.pmem(0, 16) == bytes(16)                     # zero-run page, present
    assert "Traceback" not in dst.stderr_text()


def _switch_then_send_bad(dst: Vm, main: socket.socket, pages: socket.socket,
                          bad: bytes) -> dict:  # type: ignore[type-arg]
    """After the header: precopy (a zero run), switch to postcopy with pages
    [256, 1280) missing, one good page on ``pages``, then ``bad`` on it; the
    destination's query-migrate once it has paused."""
    main.sendall(ADVISE + run(2, 0, PAGES) + discard(FIRST_MISSING, 1024) + state_record()
                 + POSTCOPY_RUN)
    wait_for_status(dst, "postcopy-active", timeout=30)
    pages.sendall(run(1, FIRST_MISSING, 1) + PAGE)          # a good page first
    try:
        pages.sendall(bad)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the destination may drop the channel before it has read it all
    return wait_until(lambda: (i := dst.cmd("query-migrate"))["status"] ==
                      "postcopy-paused" and i, 30, "the destination to pause")


def _preempt_destination(lab: VmLauncher) -> tuple[Vm, str]:
    """A destination with postcopy-ram and postcopy-preempt, and its socket."""
    path = lab.workdir / "in.sock"
    dst = start_dest(lab, KIND, "dst", f"unix:{path}")
    set_capability(dst, "postcopy-ram")
    set_capability(dst, "postcopy-preempt")
    return dst, str(path)


@contextmanager
def _two_connections(path: str, greeting: bytes) -> Iterator[tuple[socket.socket,
                                                                   socket.socket]]:
    """A fake source's main connection (header with preempt set) and its
    second one, begun with ``greeting``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as main, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as preempt:
        main.connect(path)
        main.sendall(header(preempt=True))
        preempt.connect(path)
        preempt.sendall(greeting)
        yield main, preempt


@pytest.mark.parametrize("bad,expected", [
    (run(1, FIRST_MISSING, 1) + PAGE, "was sent twice"),
    (run(1, PAGES - 1, 2) + PAGE * 2, "outside guest RAM"),
    (run(1, FIRST_MISSING + 1, 2048) + PAGE * 2048, "larger than allowed"),
    (b"\x7f", "unknown record type 0x7f"),
    (state_record(), "State record at byte offset 4113: only pages may come"),
], ids=["page-twice", "page-past-end", "run-too-long", "unknown-record", "state-record"])
def test_destination_pauses_on_bad_preempt_page(lab: VmLauncher, bad: bytes,
                                                expected: str) -> None:
    """The same, on postcopy-preempt's second connection: the main channel is
    good, the requested-page channel lies; the destination pauses (both
    channels are then made again at recovery)."""
    dst, path = _preempt_destination(lab)
    with _two_connections(path, codec.encode_preempt_hello()) as (main, preempt):
        info = _switch_then_send_bad(dst, main, preempt, bad)
    assert "postcopy-preempt channel" in info["error-desc"], info
    assert expected in info["error-desc"], info
    assert dst.status() == "paused"
    assert dst.pmem(FIRST_MISSING * 4096, 4096) == PAGE   # placed once, intact
    assert "Traceback" not in dst.stderr_text()


def test_a_preempt_channel_with_a_bad_greeting_fails_the_load(lab: VmLauncher) -> None:
    """Before switchover a bad second connection is a failed load: a clear
    error and exit status 1, as for a bad main stream."""
    dst, path = _preempt_destination(lab)
    with _two_connections(path, b"LVMG"):  # a main channel's magic on the second
        assert dst.wait_exit(30) == 1
    err = dst.stderr_text()
    assert "load of migration failed: not a livemig postcopy-preempt channel" in err, err
    assert "Traceback" not in err
