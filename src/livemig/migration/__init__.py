"""Live migration: stream, channels, jobs and the manager QMP talks to."""

from .manager import MigrationManager

__all__ = ["MigrationManager"]
