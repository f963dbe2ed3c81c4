"""The destination's writer on the return path (destination to source).

One :class:`ReturnPath` per channel, owning the channel's write lock: the
fault service (page requests) and the receiving thread (completion,
recovery bitmaps) both write through it. A failed write breaks the channel
(the receiving thread then sees it and pauses) and is reported as False,
never raised into the writer's thread. Only the receiving thread closes
the channel, through :meth:`close`, which waits for a write in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..logs import get_logger
from .channel import Channel

log = get_logger(__name__)


class ReturnPath:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._lock = threading.Lock()
        self._closed = False

    def send(self, buffers: Sequence[bytes | memoryview]) -> bool:
        with self._lock:
            if self._closed:
                return False
            try:
                self.channel.send(buffers)
                return True
            except OSError as err:
                log.warning("postcopy return path: %s", err.strerror or err)
                self.channel.abort()
                return False

    def close(self) -> None:
        """Close the channel once no write is in flight (its owner only)."""
        with self._lock:
            self._closed = True
        self.channel.close()
