"""livemig's exception tree: one subclass per phase, so a caller can tell
where a failure came from without parsing messages.

    LivemigError
    ├── ConfigError          command line and option values
    ├── BootError            building the machine: RAM, boot image
    ├── AccelError           an accelerator could not start or run
    │   └── KvmError         an ioctl on /dev/kvm failed
    ├── UffdError            userfaultfd / PAGEMAP_SCAN failures
    ├── DeviceError          a device model or its saved state
    ├── MachineError         run-state changes (pause/resume timeouts …)
    ├── ChardevError         character device backends
    ├── MigrationError       the migration job
    │   ├── MigrationSendError     source side
    │   ├── MigrationReceiveError  destination side (a refused stream …)
    │   └── StreamError            a malformed record, either direction (has the offset)
    │       └── StreamTruncated    the stream ended inside a record
    └── QmpError             a QMP command failed; carries the QMP class
"""

from __future__ import annotations


class LivemigError(Exception):
    """Root of every error livemig raises on purpose."""


class ConfigError(LivemigError):
    """A command-line option or option value is wrong."""


class BootError(LivemigError):
    """The machine could not be built (RAM, boot image)."""


class AccelError(LivemigError):
    """An accelerator could not be initialised or failed while running."""


class KvmError(AccelError):
    """An ioctl on /dev/kvm or one of its file descriptors failed."""


class UffdError(LivemigError):
    """userfaultfd or PAGEMAP_SCAN is unavailable or failed."""


class DeviceError(LivemigError):
    """A device model rejected an access or a saved state."""


class MachineError(LivemigError):
    """A run-state change could not be made (e.g. vCPU did not stop in time)."""


class ChardevError(LivemigError):
    """A character device backend could not be opened or used."""


class MigrationError(LivemigError):
    """The migration job failed."""


class MigrationSendError(MigrationError):
    """The source side of a migration failed."""


class MigrationReceiveError(MigrationError):
    """The destination side of a migration failed (bad or broken stream)."""


class StreamError(MigrationError):
    """A migration stream or return-path record is malformed.

    ``offset`` is where in the stream the bad record begins (bytes from the
    start of the channel), when known.
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset

    def __str__(self) -> str:
        if self.offset is None:
            return self.message
        return f"{self.message} (at byte offset {self.offset})"


class StreamTruncated(StreamError):
    """The stream ended (EOF) in the middle of a record, or before one."""


class QmpError(LivemigError):
    """A QMP command failed; ``error_class`` is the QMP error class."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class
