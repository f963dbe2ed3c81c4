"""Guest pages sent by reference (migration/splice.py): the bytes that
arrive are the bytes sent, in order, whatever mix of small headers and
large RAM buffers a send carries; large writable buffers really take the
splice path; read-only ones and TLS-free fallbacks never do; a peer that
goes away mid-send is an ordinary OSError. At the end, a whole migration
(a precopy pass, then postcopy) on livemig with zero copy on and off, each
checked by the reference test's RAM check."""

from __future__ import annotations

import mmap
import os
import select
import socket
import threading
from pathlib import Path

import pytest
from conftest import ALL_VMMS
from hypothesis import given, settings
from hypothesis import strategies as st
from postcopy_helpers import postcopy_complete, postcopy_prepare, postcopy_start

from livemig.lab import VmLauncher, VmmKind
from livemig.migration import splice
from livemig.migration.channel import Channel

needs_splice = pytest.mark.skipif(splice.probe() is not None,
                                  reason=f"no vmsplice/splice here: {splice.probe()}")


def _receive_all(sock: socket.socket, size: int, out: bytearray) -> None:
    while len(out) < size:
        data = sock.recv(min(1 << 20, size - len(out)))
        if not data:
            return
        out += data


def _send_and_collect(buffers: list[bytes | memoryview],
                      zero_copy: bool = True) -> tuple[int, bytes]:
    expected = sum(len(b) for b in buffers)
    a, b = socket.socketpair()
    writer = Channel(a)
    got = bytearray()
    reader = threading.Thread(target=_receive_all, args=(b, expected, got))
    reader.start()
    try:
        sent = writer.send(buffers, zero_copy=zero_copy)
    finally:
        reader.join(30)
        writer.close()
        b.close()
    return sent, bytes(got)


def _ram(size: int, fill: int) -> memoryview:
    """An anonymous mapping, as guest RAM is."""
    area = mmap.mmap(-1, max(size, 1))
    area.write(bytes([fill]) * size)
    return memoryview(area)[:size]


@needs_splice
@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["header", "ram", "bytes"]),
                          st.integers(min_value=0, max_value=3 << 20),
                          st.integers(min_value=1, max_value=255)),
                min_size=1, max_size=12))
def test_spliced_sends_arrive_whole_and_in_order(parts: list[tuple[str, int, int]]) -> None:
    buffers: list[bytes | memoryview] = []
    for kind, size, fill in parts:
        if kind == "header":
            buffers.append(bytes([fill]) * min(size, 64))
        elif kind == "ram":
            buffers.append(_ram(size, fill))
        else:
            buffers.append(bytes([fill]) * size)
    sent, got = _send_and_collect(buffers)
    expected = b"".join(bytes(b) for b in buffers)
    assert sent == len(expected)
    assert got == expected


@needs_splice
def test_large_ram_buffers_are_spliced_and_the_rest_is_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spliced: list[int] = []
    original = splice.PageSplicer.send

    def counting(self: splice.PageSplicer, address: int, length: int) -> int:
        spliced.append(length)
        return original(self, address, length)

    monkeypatch.setattr(splice.PageSplicer, "send", counting)
    ram = _ram(4 << 20, 0x5A)
    small = _ram(splice.MIN_SPLICE - 1, 0x11)
    readonly = bytes(splice.MIN_SPLICE * 2)
    sent, got = _send_and_collect([b"head", ram, small, readonly, ram[:splice.MIN_SPLICE]])
    assert got == b"head" + bytes(ram) + bytes(small) + readonly + bytes(ram[:splice.MIN_SPLICE])
    assert sent == len(got)
    assert spliced == [4 << 20, splice.MIN_SPLICE]   # only the large writable buffers
    spliced.clear()
    _send_and_collect([ram], zero_copy=False)        # the caller did not allow it
    assert spliced == []


@needs_splice
def test_without_splicing_the_same_bytes_go_by_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Channel, "_page_splicer", lambda self: None)
    ram = _ram(3 << 20, 0x77)
    sent, got = _send_and_collect([b"h", ram, b"t"])
    assert sent == len(got) == (3 << 20) + 2 and got[1:-1] == bytes(ram)


@needs_splice
def test_a_peer_that_goes_away_mid_send_is_an_oserror() -> None:
    a, b = socket.socketpair()
    writer = Channel(a)
    ram = _ram(64 << 20, 0x42)   # far more than both socket buffers hold

    def close_once_sending() -> None:
        select.select([b], [], [], 30)   # the first bytes are there: mid-send
        b.close()

    closer = threading.Thread(target=close_once_sending)
    closer.start()
    try:
        with pytest.raises(OSError):
            writer.send([ram], zero_copy=True)
    finally:
        closer.join(30)
        writer.close()


def _pipes(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("pipe:"))


@pytest.mark.parametrize("kind", [p for p in ALL_VMMS if p.id.startswith("livemig")])
@pytest.mark.parametrize("zero_copy", ["1", "0"], ids=["zero-copy", "copied"])
def test_migration_with_and_without_zero_copy(kind: VmmKind, zero_copy: str,
                                              lab: VmLauncher) -> None:
    """A running guest's first pass goes by precopy, the rest by postcopy;
    the destination's RAM holds, whichever way the source sent its pages."""
    src, dst, _uri = postcopy_prepare(lab, kind, src_env={splice.ENV: zero_copy})
    # The splicing pipe exists only where pages went by reference (a source
    # opens no other pipe): a job that stopped asking for zero copy fails here.
    pipes = _pipes(src.process.pid)
    assert pipes >= 2 if zero_copy == "1" else pipes == 0, pipes
    postcopy_start(src, dst, kind)
    postcopy_complete(src, dst, kind)
