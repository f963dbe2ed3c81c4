"""Threads that never die silently.

Every migration thread (the source job, the destination job, the
return-path reader, the fault service) is started with :func:`start`. Its
body runs inside a catch-all: an exception the body did not handle, bug or
not, is logged with its traceback and handed to ``on_crash``, which fails
or pauses the job through its status machine. A thread whose crash handler
itself fails is logged as critical; nothing is swallowed unseen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..logs import get_logger

log = get_logger(__name__)

CrashHandler = Callable[[BaseException], None]


def describe_crash(err: BaseException) -> str:
    """error-desc for a job that died of an unexpected exception."""
    return f"internal error: {type(err).__name__}: {err}"


def start(name: str, body: Callable[[], None], on_crash: CrashHandler) -> threading.Thread:
    """Run ``body`` on a new daemon thread ``name`` inside the catch-all."""

    def main() -> None:
        try:
            body()
        except BaseException as err:  # the catch-all: see the module docstring
            log.error("thread %s: unexpected error", name, exc_info=True)
            try:
                on_crash(err)
            except BaseException:
                log.critical("thread %s: crash handler failed", name, exc_info=True)

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    return thread
