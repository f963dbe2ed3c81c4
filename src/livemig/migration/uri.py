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

from typing import Any, NamedTuple

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


# --- QEMU 8.2's channel lists (``migrate channels=…``, JSON ``-incoming``) ------------

CHANNEL_TYPES = ("main", "cpr")


def _member(obj: dict[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in obj:
        raise MigrationError(f"Parameter '{where}{name}' is missing")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = {str: "string", int: "integer", list: "array", dict: "object"}[kind]
        raise MigrationError(f"Invalid parameter type for '{where}{name}', "
                             f"expected: {expected}")
    return value


def _address_uri(addr: dict[str, Any], where: str) -> str:
    """A MigrationAddress as the URI that says the same, so one parser
    (parse_uri) reads both spellings."""
    transport = _member(addr, "transport", str, where)
    if transport == "socket":
        kind = _member(addr, "type", str, where)
        if kind == "unix":
            return "unix:" + _member(addr, "path", str, where)
        if kind == "inet":
            host = _member(addr, "host", str, where)
            port = _member(addr, "port", str, where)
            return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"
        if kind == "fd":
            return "fd:" + _member(addr, "str", str, where)
        if kind == "vsock":
            raise MigrationError("vsock migration is not supported by livemig")
        raise MigrationError(f"Parameter '{where}type' does not accept value '{kind}'")
    if transport == "exec":
        args = _member(addr, "args", list, where)
        if not args or not all(isinstance(arg, str) for arg in args):
            raise MigrationError(f"Parameter '{where}args' expects a non-empty list of "
                                 "strings")
        import shlex
        return "exec:" + shlex.join(args)
    if transport == "file":
        name = _member(addr, "filename", str, where)
        offset = addr.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise MigrationError(f"Parameter '{where}offset' expects uint64")
        return f"file:{name},offset={offset}" if offset else f"file:{name}"
    if transport == "rdma":
        raise MigrationError("RDMA migration is not supported by livemig")
    raise MigrationError(f"Parameter '{where}transport' does not accept value '{transport}'")


def channel_uri(channel: Any) -> tuple[str, str]:
    """One MigrationChannel (``{"channel-type": …, "addr": {…}}``): its type
    and the URI of its address."""
    if not isinstance(channel, dict):
        raise MigrationError("Invalid parameter type for 'channels', expected: object")
    unknown = set(channel) - {"channel-type", "addr"}
    if unknown:
        raise MigrationError(f"Parameter '{sorted(unknown)[0]}' is unexpected")
    kind = _member(channel, "channel-type", str, "")
    if kind not in CHANNEL_TYPES:
        raise MigrationError(f"Parameter 'channel-type' does not accept value '{kind}'")
    return kind, _address_uri(_member(channel, "addr", dict, ""), "addr.")


def parse_channels(channels: list[Any]) -> tuple[str, Uri | None]:
    """``migrate``'s or ``migrate-incoming``'s channel list: the main
    channel's URI (text, parsed as any URI is) and the cpr channel, if any,
    which must be a unix socket (descriptors travel on it)."""
    found: dict[str, str] = {}
    for channel in channels:
        kind, uri = channel_uri(channel)
        if kind in found:
            raise MigrationError(f"Channel list has more than one {kind} entry")
        found[kind] = uri
    if "main" not in found:
        raise MigrationError("Channel list has no main entry")
    cpr = found.get("cpr")
    return found["main"], cpr_uri(cpr) if cpr is not None else None


def cpr_uri(text: str) -> Uri:
    uri = parse_uri(text)
    if uri.scheme != "unix":
        raise MigrationError("the cpr channel must be a unix socket (file descriptors "
                             f"are passed on it), not {uri.scheme}:")
    return uri
