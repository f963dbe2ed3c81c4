"""What guest RAM is mapped from: QEMU's memory backends.

``memory-backend-ram`` is anonymous memory (the default). ``memory-backend-memfd``
and ``memory-backend-file`` give RAM a file descriptor, so that another
process can map the very same pages: with ``share=on`` the mapping is
``MAP_SHARED`` and the guest's writes land in the file (what
``x-ignore-shared`` and a local live upgrade rely on); with ``share=off`` it
is a private copy-on-write view of the file.

A :class:`BackendSpec` is what the user asked for (checked when the object
is created); :meth:`BackendSpec.open` makes the descriptor when the machine
is built.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from ..errors import BootError

KINDS = ("memory-backend-ram", "memory-backend-memfd", "memory-backend-file")


class OpenBacking(NamedTuple):
    """An opened backend: the descriptor to map (owned by the caller) and
    the identity (st_dev, st_ino) by which two processes can tell that
    they map the same memory."""

    fd: int
    shared: bool
    identity: tuple[int, int]
    where: str   # for messages: "memfd 'mem0'", "/dev/shm/guest"


class BackendSpec:
    """One memory backend object's settings."""

    def __init__(self, ident: str, kind: str, size: int, share: bool,
                 mem_path: str | None = None, prealloc: bool = False) -> None:
        self.id = ident
        self.kind = kind
        self.size = size
        self.share = share
        self.mem_path = mem_path
        self.prealloc = prealloc
        # cpr-transfer: the descriptor the old process handed over, mapped
        # instead of a new memfd or the mem-path (the RAM then owns it).
        self.inherited: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.kind == "memory-backend-ram"

    def open(self) -> OpenBacking | None:
        """The descriptor to map, ``size`` bytes long; None for anonymous RAM."""
        if self.anonymous:
            return None
        if self.inherited is not None:
            fd, self.inherited = self.inherited, None
            where = f"{self.kind} '{self.id}' (handed over on the cpr channel)"
            if not self.share:
                os.close(fd)
                raise BootError(f"{where}: share=on is needed to map the old process's "
                                "guest memory")
        elif self.kind == "memory-backend-memfd":
            try:
                fd = os.memfd_create(f"livemig:{self.id}", os.MFD_CLOEXEC)
            except OSError as err:
                raise BootError(f"memory-backend-memfd '{self.id}': memfd_create failed: "
                                f"{err.strerror}") from err
            where = f"memfd '{self.id}'"
        else:
            assert self.mem_path is not None  # the object refused a file backend without
            fd, where = self._open_file(self.mem_path)
        try:
            self._size_file(fd, where)
            info = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return OpenBacking(fd, self.share, (info.st_dev, info.st_ino), where)

    def _open_file(self, path: str) -> tuple[int, str]:
        """mem-path: a file (made if missing), or a directory in which an
        unnamed file is made and unlinked, as QEMU does."""
        try:
            if os.path.isdir(path):
                return os.open(path, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600), path
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), path
        except OSError as err:
            raise BootError(f"can't open backing store {path} for guest RAM: "
                            f"{err.strerror}") from err

    def _size_file(self, fd: int, where: str) -> None:
        """An empty file grows to ``size``; a shorter one is refused (its
        contents are somebody's guest); a longer one is mapped in part."""
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and 0 < info.st_size < self.size:
            raise BootError(f"backing store {where} size {info.st_size:#x} does not match "
                            f"'size' option {self.size:#x}")
        if info.st_size == 0:
            try:
                os.ftruncate(fd, self.size)
            except OSError as err:
                reason = ("not enough space" if err.errno in (errno.ENOSPC, errno.EFBIG)
                          else err.strerror)
                raise BootError(f"could not size {where} to {self.size} bytes: "
                                f"{reason}") from err
