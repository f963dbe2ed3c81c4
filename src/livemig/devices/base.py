"""The device-model protocol shared by every port-mapped device, and the
typed register state each device migrates."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, Self

from ..errors import DeviceError


class _Register:
    """Declares one register of a :class:`RegisterState` and its width."""

    __slots__ = ("bits",)

    def __init__(self, bits: int) -> None:
        self.bits = bits


def register(bits: int = 8) -> Any:
    """A state field holding an unsigned register value of ``bits`` bits (0 by default)."""
    return _Register(bits)


class RegisterState:
    """Base of every device's migratable state: named unsigned registers.

    A subclass declares ``name: int = register(bits)`` for each register;
    instances are immutable and compare by value. ``from_dict`` is the only
    way in from the wire: it checks the exact set of names and each value's
    range, so a bad stream is refused before any device changes. (Not a
    dataclass: start-up defines every device's state class, and a dataclass
    costs about a millisecond to create.)
    """

    DEVICE: ClassVar[str] = "device"
    REGISTERS: ClassVar[dict[str, int]] = {}  # name → width in bits, in declaration order

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = {name: value.bits for name, value in vars(cls).items()
                    if isinstance(value, _Register)}
        cls.REGISTERS = {**cls.REGISTERS, **declared}
        for name in declared:  # instances hold the values; the class no defaults
            delattr(cls, name)

    def __init__(self, *args: int, **values: int) -> None:
        """Registers by position (in declaration order) or by name; 0 if not given."""
        names = list(self.REGISTERS)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} has {len(names)} registers, "
                            f"{len(args)} values given")
        given = dict(zip(names, args, strict=False))
        unknown = set(values) - set(names)
        if unknown or set(given) & set(values):
            raise TypeError(f"{type(self).__name__}: unknown or repeated registers "
                            f"{sorted(unknown | (set(given) & set(values)))}")
        given.update(values)
        for name in names:
            object.__setattr__(self, name, given.get(name, 0))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), tuple(vars(self).values())))

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value:#x}" for name, value in vars(self).items())
        return f"{type(self).__name__}({values})"

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise DeviceError(f"{cls.DEVICE}: saved state is not an object")
        names = cls.REGISTERS
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
