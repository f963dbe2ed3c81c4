"""Character devices: serial output sinks and monitor/qtest connections."""

from .backends import Chardev, FileChardev, NullChardev, SocketClientChardev, SocketServerChardev
from .spec import create, options_from_chardev_arg, options_from_short
from .stream import Stream

__all__ = [
    "Chardev", "FileChardev", "NullChardev", "SocketClientChardev", "SocketServerChardev",
    "Stream", "create", "options_from_chardev_arg", "options_from_short",
]
