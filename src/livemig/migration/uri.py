"""Migration URIs: ``unix:PATH``, ``tcp:HOST:PORT``, ``fd:NAME``, ``exec:CMD``
and ``file:PATH[,offset=N]`` (QEMU 9's: the stream begins N bytes into the file).

:func:`parse_uri` is called before ``migrate``, ``migrate-incoming`` or
``migrate-recover`` answers, so a URI QEMU refuses at once is refused at
once here too, with QEMU 7.2's words (checked against it by
tests/test_migration_transports.py). What only a connection can tell (a
refused port, a name that does not resolve) fails the job later, as in
QEMU.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import LivemigError, MigrationError

SCHEMES = ("unix", "tcp", "fd", "exec", "file")


class Uri(NamedTuple):
    """A parsed URI (a NamedTuple: ``-incoming URI`` parses one at start-up)."""

    scheme: str            # unix | tcp | fd | exec | file
    target: str            # path, HOST:PORT, fd name or number, command
    host: str = ""
    port: str = ""
    offset: int = 0        # file: where in the file the stream begins

    @property
    def address(self) -> str:
        """The peer as QEMU names it in errors: the path, or HOST:PORT."""
        if self.scheme == "tcp":
            return f"{self.host}:{self.port}"
        return self.target


def parse_uri(uri: str) -> Uri:
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme not in SCHEMES:
        raise MigrationError("Parameter 'uri' expects a valid migration protocol")
    if scheme == "unix":
        if not rest:
            raise MigrationError("invalid Unix socket address")
        return Uri("unix", rest)
    if scheme in ("fd", "exec"):
        return Uri(scheme, rest)
    if scheme == "file":
        return _file_uri(rest)
    host, sep, port = rest.rpartition(":")
    if not sep:
        raise MigrationError(f"error parsing address '{rest}'")
    if not port:
        raise MigrationError(f"error parsing port in address '{rest}'")
    return Uri("tcp", rest, host.removeprefix("[").removesuffix("]"), port)


def _file_uri(rest: str) -> Uri:
    path, sep, offset_text = rest.rpartition(",offset=")
    if not sep:
        path, offset_text = rest, ""
    if not path:
        raise MigrationError("file URI needs a path: file:PATH[,offset=N]")
    offset = 0
    if sep:
        from ..sizes import parse_size
        try:
            offset = parse_size(offset_text)
        except LivemigError as err:
            raise MigrationError(f"file URI has bad offset {offset_text}") from err
    return Uri("file", path, offset=offset)
