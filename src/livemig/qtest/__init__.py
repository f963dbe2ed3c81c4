"""The qtest protocol server."""

from .server import QtestServer

__all__ = ["QtestServer"]
