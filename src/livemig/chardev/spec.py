"""Turn QEMU's chardev spellings into backends.

Two forms exist: ``-chardev BACKEND,id=ID,key=value,…`` and the short
forms that ``-serial``, ``-qmp`` and ``-qtest`` take (``file:PATH``,
``unix:PATH,server=on,wait=off``, ``tcp:HOST:PORT,…``, ``stdio``, ``null``).
Both end up as the same option dictionary, then one constructor.
"""

from __future__ import annotations

from ..errors import ChardevError
from .backends import (
    Chardev,
    FileChardev,
    NullChardev,
    SocketClientChardev,
    SocketServerChardev,
    StdioChardev,
)

_SOCKET_KEYS = {"id", "backend", "path", "host", "port", "server", "wait", "nodelay",
                "telnet", "reconnect", "ipv4", "ipv6", "logfile", "logappend", "mux",
                "abstract", "tight", "to", "fd"}
_FILE_KEYS = {"id", "backend", "path", "append", "logfile", "logappend", "mux"}
_NULL_KEYS = {"id", "backend", "logfile", "logappend", "mux"}


def parse_bool(key: str, value: str) -> bool:
    if value in ("on", "yes", "true", "y"):
        return True
    if value in ("off", "no", "false", "n"):
        return False
    raise ChardevError(f"Parameter '{key}' expects 'on' or 'off'")


def split_options(text: str) -> list[str]:
    """Split at commas, with ',,' standing for a literal comma (QemuOpts)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def options_from_words(words: list[str]) -> dict[str, str]:
    """``server``, ``nowait``-style flags become ``server=on``, ``wait=off``."""
    opts: dict[str, str] = {}
    for word in words:
        if not word:
            continue
        if "=" in word:
            key, value = word.split("=", 1)
        elif word.startswith("no") and len(word) > 2:
            key, value = word[2:], "off"
        else:
            key, value = word, "on"
        opts[key] = value
    return opts


def options_from_short(text: str, chardev_id: str) -> dict[str, str]:
    """The short forms of ``-serial``/``-qmp``/``-qtest`` as chardev options."""
    words = split_options(text)
    head, rest = words[0], options_from_words(words[1:])
    if head in ("stdio", "null"):
        return {"backend": head, "id": chardev_id, **rest}
    if head.startswith("file:"):
        return {"backend": "file", "id": chardev_id, "path": head[5:], **rest}
    if head.startswith("unix:"):
        return {"backend": "socket", "id": chardev_id, "path": head[5:], **rest}
    if head.startswith("tcp:"):
        host, sep, port = head[4:].rpartition(":")
        if not sep:
            raise ChardevError(f"'{text}': tcp needs HOST:PORT")
        return {"backend": "socket", "id": chardev_id, "host": host.strip("[]"),
                "port": port, **rest}
    raise ChardevError(f"'{text}' is not a valid char driver name")


def options_from_chardev_arg(text: str) -> dict[str, str]:
    """``-chardev BACKEND,id=ID,…``."""
    words = split_options(text)
    opts = options_from_words(words[1:])
    opts["backend"] = words[0]
    if not opts.get("id"):
        raise ChardevError("chardev: no id specified")
    return opts


def create(opts: dict[str, str]) -> Chardev:
    """Build the backend an option dictionary describes."""
    backend, chardev_id = opts["backend"], opts["id"]
    allowed = {"socket": _SOCKET_KEYS, "file": _FILE_KEYS, "null": _NULL_KEYS,
               "stdio": _NULL_KEYS | {"signal"}}.get(backend)
    if allowed is None:
        raise ChardevError(f"'{backend}' is not a valid char driver name")
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ChardevError(f"Invalid parameter '{unknown[0]}'")
    if backend == "null":
        return NullChardev(chardev_id)
    if backend == "stdio":
        return StdioChardev(chardev_id)
    if backend == "file":
        if "path" not in opts:
            raise ChardevError("chardev: file: no filename given")
        append = parse_bool("append", opts.get("append", "off"))
        return FileChardev(chardev_id, opts["path"], append)
    server = parse_bool("server", opts.get("server", "off"))
    path, host, port = opts.get("path"), opts.get("host"), opts.get("port")
    if "fd" in opts:
        if not server or path is not None or host is not None:
            raise ChardevError("chardev: socket fd= needs server=on and no address")
        try:
            fd = int(opts["fd"])
        except ValueError as err:
            raise ChardevError(f"Parameter 'fd' expects a number, not '{opts['fd']}'") from err
        return SocketServerChardev(chardev_id, fd=fd)
    if server:
        wait = parse_bool("wait", opts.get("wait", "on"))
        return SocketServerChardev(chardev_id, path, host, port, wait)
    # A client has nothing to wait for; old QEMU accepted "nowait" here anyway.
    return SocketClientChardev(chardev_id, path, host, port)
