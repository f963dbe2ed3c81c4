"""The postcopy source's ending, on a real socket pair, with the destination's
DONE made to arrive before the END send has returned (a race seen in CI: the
source paused for good while the destination had completed)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence

import numpy as np

from livemig.memory import PAGE_SIZE, GuestRam
from livemig.migration.channel import Channel
from livemig.migration.codec import TAG_END, Done, End
from livemig.migration.params import Settings
from livemig.migration.postcopy_source import Done as Finished
from livemig.migration.postcopy_source import PostcopySource
from livemig.migration.stats import RamStats


class SlowEndChannel(Channel):
    """Once END has gone out, wait until the return-path reader has dealt
    with the destination's DONE before returning from send()."""

    source: PostcopySource

    def send(self, buffers: Sequence[bytes | memoryview], zero_copy: bool = False) -> int:
        sent = super().send(buffers, zero_copy)
        if bytes(buffers[-1]) == End().encode():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                reader = self.source._reader  # the thread under test
                if reader is None or not reader.is_alive():
                    break
                reader.join(0.01)
        return sent


def test_done_read_before_the_end_send_returns_still_completes() -> None:
    here, there = socket.socketpair()
    ram = GuestRam(4 * PAGE_SIZE)
    try:
        need = np.zeros(ram.pages, dtype=bool)  # every page already there: END at once
        params = Settings().params
        source = PostcopySource(ram, need, RamStats(), params)
        channel = SlowEndChannel(sock=here)
        channel.source = source

        def destination() -> None:
            assert there.recv(1) == bytes([TAG_END])
            there.sendall(Done().encode())

        peer = threading.Thread(target=destination, daemon=True)
        peer.start()
        source.attach(channel)
        try:
            outcome = source.serve()
        finally:
            source.release()
        peer.join(10)
        assert isinstance(outcome, Finished), outcome
    finally:
        there.close()
        ram.close()
