"""File-descriptor sets: ``-add-fd set=N,fd=M`` and the ``/dev/fdset/N``
paths that name them (QEMU's monitor/fds.c, in use by libvirt, which
opens files itself and hands the descriptors over).

A path ``/dev/fdset/N`` opens as a duplicate of a descriptor of set N
whose access mode allows the open, so the caller owns (and closes) what
it gets and the set keeps its own."""

from __future__ import annotations

import os
import threading

from .errors import LivemigError

PREFIX = "/dev/fdset/"

_sets: dict[int, list[tuple[int, str | None]]] = {}
_lock = threading.Lock()


class FdsetError(LivemigError):
    pass


def add(set_id: int, fd: int, opaque: str | None = None) -> None:
    """Put the inherited descriptor ``fd`` into set ``set_id``."""
    import fcntl  # here, not at start-up: most runs have no fd sets

    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as err:
        raise FdsetError(f"-add-fd: fd {fd} is not open: {err.strerror}") from err
    if fd in (0, 1, 2):
        raise FdsetError("fd cannot be a standard I/O stream")
    with _lock:
        _sets.setdefault(set_id, []).append((fd, opaque))


def query() -> list[dict[str, object]]:
    """query-fdsets' answer."""
    with _lock:
        return [{"fdset-id": set_id,
                 "fds": [{"fd": fd, **({"opaque": opaque} if opaque else {})}
                         for fd, opaque in fds]}
                for set_id, fds in sorted(_sets.items())]


def _access_ok(fd: int, flags: int) -> bool:
    import fcntl

    have = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    want = flags & os.O_ACCMODE
    return have == os.O_RDWR or have == want


def open_path(path: str, flags: int, mode: int = 0o666) -> int:
    """os.open, except that /dev/fdset/N duplicates a descriptor of set N."""
    if not path.startswith(PREFIX):
        return os.open(path, flags, mode)
    try:
        set_id = int(path[len(PREFIX):])
    except ValueError as err:
        raise FdsetError(f"'{path}' does not name an fd set") from err
    with _lock:
        fds = list(_sets.get(set_id, []))
    if not fds:
        raise FdsetError(f"Could not open '{path}': no such fd set")
    for fd, _opaque in fds:
        if _access_ok(fd, flags):
            duplicate = os.dup(fd)  # close-on-exec, as Python makes every new fd
            if flags & os.O_APPEND:
                import fcntl


                status = fcntl.fcntl(duplicate, fcntl.F_GETFL)
                fcntl.fcntl(duplicate, fcntl.F_SETFL, status | os.O_APPEND)
            return duplicate
    raise FdsetError(f"Could not open '{path}': no descriptor of set {set_id} "
                     "allows that access")
