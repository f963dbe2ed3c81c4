"""The QMP server and its commands."""

from . import commands
from .server import QmpServer, QmpSession

__all__ = ["QmpServer", "QmpSession", "commands"]
