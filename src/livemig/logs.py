"""livemig's loggers, which load the ``logging`` package on their first use.

``logging`` and what it pulls in (traceback, string, weakref, …) cost ~15 ms
of a ~130 ms start-up on the project's machines, and a normal start logs
nothing; so every module takes its logger from :func:`get_logger`, and the
first message configures logging as ``LIVEMIG_LOG`` says (``debug``, ``info``,
``warning`` — the default — or ``error``).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

FORMAT = "%(asctime)s %(threadName)s %(name)s %(levelname)s: %(message)s"

_lock = threading.Lock()
_configured = False


def _real(name: str) -> logging.Logger:
    global _configured
    import logging

    with _lock:
        if not _configured:
            level = os.environ.get("LIVEMIG_LOG", "warning").upper()
            logging.basicConfig(level=getattr(logging, level, logging.WARNING), format=FORMAT)
            _configured = True
    return logging.getLogger(name)


class LazyLogger:
    """Stands for ``logging.getLogger(name)`` until a method is first used."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: logging.Logger | None = None

    def __getattr__(self, attribute: str) -> Any:
        logger = self._logger
        if logger is None:
            logger = self._logger = _real(self._name)
        return getattr(logger, attribute)


def get_logger(name: str) -> logging.Logger:
    """The logger ``name``, loaded when first used."""
    return LazyLogger(name)  # type: ignore[return-value]  # a stand-in with its interface
