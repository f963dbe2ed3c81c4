"""A test-only hook for injecting internal errors at named points.

``LIVEMIG_INJECT_FAULT=point[,point…]`` in a livemig process's environment
makes :func:`check` raise :class:`InjectedFault` the first time each named
point is reached. It exists so that tests can prove every job thread ends
in its catch-all (status ``failed`` or ``postcopy-paused``, error-desc
"internal error: …") instead of dying silently. The points:

- ``source-pass``: the source, between two chunks of a precopy pass;
- ``receive-precopy``: the destination, on a record before switchover;
- ``receive-postcopy``: the destination, on a page record after switchover;
- ``fault-service``: the destination's userfaultfd fault service;
- ``return-path``: the source's return-path reader, on a message.

Without the variable, :func:`check` is one set lookup.
"""

from __future__ import annotations

import os
import threading

from ..logs import get_logger

ENV = "LIVEMIG_INJECT_FAULT"
POINTS = frozenset({"source-pass", "receive-precopy", "receive-postcopy", "fault-service",
                    "return-path"})

_armed = {p for p in os.environ.get(ENV, "").split(",") if p}
_lock = threading.Lock()
if _armed - POINTS:  # a misspelt point would silently never fire
    get_logger(__name__).warning("%s: unknown fault points %s (known: %s)", ENV,
                                        sorted(_armed - POINTS), sorted(POINTS))


class InjectedFault(RuntimeError):
    """Raised at an armed point: deliberately not a LivemigError, so it takes
    the path an unexpected bug would."""


def check(point: str) -> None:
    """Raise InjectedFault if ``point`` is armed (once per process)."""
    if _armed and point in _armed:
        with _lock:
            if point not in _armed:
                return
            _armed.discard(point)
        raise InjectedFault(f"injected fault at {point}")
