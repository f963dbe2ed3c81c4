"""The device-model protocol shared by every port-mapped device, and the
typed register state each device migrates."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Protocol, Self

from ..errors import DeviceError


def register(bits: int = 8) -> Any:
    """A state field holding an unsigned register value of ``bits`` bits."""
    return field(default=0, metadata={"bits": bits})


@dataclass(frozen=True)
class RegisterState:
    """Base of every device's migratable state: named unsigned registers.

    ``from_dict`` is the only way in from the wire: it checks the exact set
    of names and each value's range, so a bad stream is refused before any
    device changes.
    """

    DEVICE: ClassVar[str] = "device"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise DeviceError(f"{cls.DEVICE}: saved state is not an object")
        names = {f.name: f.metadata["bits"] for f in fields(cls)}
        if set(data) != set(names):
            missing, extra = sorted(set(names) - set(data)), sorted(set(data) - set(names))
            raise DeviceError(f"{cls.DEVICE}: saved state has the wrong fields "
                              f"(missing {missing}, unexpected {extra})")
        for name, bits in names.items():
            value = data[name]
            if not isinstance(value, int) or isinstance(value, bool) \
                    or not 0 <= value < (1 << bits):
                raise DeviceError(f"{cls.DEVICE}: saved {name}={value!r} is not a "
                                  f"{bits}-bit register value")
        return cls(**data)


class PortDevice(Protocol):
    """A device on the I/O port bus.

    ``offset`` is relative to the base port the device was mapped at. Models
    are pure state machines: no threads, no I/O of their own; output and
    interrupts leave through sinks injected by whoever builds the machine.
    """

    name: str
    STATE: type[RegisterState]

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...

    def state(self) -> RegisterState:
        """Everything a destination needs to carry on."""
        ...

    def from_state(self, state: RegisterState) -> None:
        """Adopt a state (already validated: an instance of ``STATE``)."""
        ...

    def reset(self) -> None: ...
