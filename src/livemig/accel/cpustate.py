"""x86 vCPU state in a form neither accelerator owns.

This is what crosses the migration wire, so a guest saved by the ``kvm``
backend can be loaded by ``tcg`` and the other way round. Segment registers
carry their hidden descriptor part in KVM's field layout (base, limit, type
and flag bits), which is the fullest description either backend can give.
"""

from __future__ import annotations

from typing import Any

from ..errors import AccelError

GPR_NAMES = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)
SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
CR0_PE = 1 << 0
CR0_RESET = 0x60000010  # CD | NW | ET, the value after power-on
RFLAGS_RESET = 0x2


class _Record:
    """Compares and prints by its attributes. The state classes here are
    plain classes, not dataclasses: start-up imports this module, and a
    dataclass costs about a millisecond to create."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"{type(self).__name__}({values})"


class Segment(_Record):
    """A segment register with its hidden part, in KVM's field layout
    (``vars()`` of one gives the fields in that order, ``FIELDS`` names them)."""

    FIELDS = ("selector", "base", "limit", "type", "present", "dpl", "db", "s", "l", "g",
              "avl", "unusable")

    def __init__(self, selector: int = 0, base: int = 0, limit: int = 0xFFFF, type: int = 3,
                 present: int = 1, dpl: int = 0, db: int = 0, s: int = 1,
                 l: int = 0, g: int = 0, avl: int = 0, unusable: int = 0) -> None:  # noqa: E741 (l: the kernel's name)
        self.selector = selector
        self.base = base
        self.limit = limit
        self.type = type
        self.present = present
        self.dpl = dpl
        self.db = db
        self.s = s
        self.l = l  # the kernel's name for the long-mode bit
        self.g = g
        self.avl = avl
        self.unusable = unusable

    @classmethod
    def real_mode(cls, selector: int, code: bool = False) -> Segment:
        """A segment as real mode sees it: base = selector * 16, 64 KiB."""
        return cls(selector=selector, base=selector << 4, limit=0xFFFF, type=0xB if code else 3)

    @classmethod
    def from_descriptor(cls, selector: int, raw: int) -> Segment:
        """Decode an 8-byte GDT/LDT descriptor (Intel SDM vol. 3, 3.4.5)."""
        limit = (raw & 0xFFFF) | ((raw >> 32) & 0xF0000)
        base = ((raw >> 16) & 0xFFFFFF) | ((raw >> 32) & 0xFF000000)
        access = (raw >> 40) & 0xFF
        flags = (raw >> 52) & 0xF
        granular = flags >> 3 & 1
        if granular:
            limit = (limit << 12) | 0xFFF
        return cls(
            selector=selector, base=base, limit=limit, type=access & 0xF,
            present=access >> 7 & 1, dpl=access >> 5 & 3, s=access >> 4 & 1,
            db=flags >> 2 & 1, l=flags >> 1 & 1, g=granular, avl=flags & 1,
        )


def _boot_segments() -> dict[str, Segment]:
    segments = {name: Segment.real_mode(0) for name in SEGMENT_NAMES}
    segments["cs"] = Segment.real_mode(0, code=True)
    segments["tr"] = Segment(type=0xB, s=0)      # busy 32-bit TSS, as at reset
    segments["ldt"] = Segment(type=0x2, s=0)     # LDT
    return segments


class CpuState(_Record):
    """Everything of one x86 vCPU that a migration must carry."""

    def __init__(self, gprs: dict[str, int] | None = None, rip: int = 0,
                 rflags: int = RFLAGS_RESET, segments: dict[str, Segment] | None = None,
                 gdt: tuple[int, int] = (0, 0xFFFF), idt: tuple[int, int] = (0, 0xFFFF),
                 cr0: int = CR0_RESET, cr2: int = 0, cr3: int = 0, cr4: int = 0,
                 efer: int = 0, halted: bool = False) -> None:
        self.gprs = gprs if gprs is not None else dict.fromkeys(GPR_NAMES, 0)
        self.rip = rip
        self.rflags = rflags
        self.segments = segments if segments is not None else _boot_segments()
        self.gdt = gdt   # (base, limit)
        self.idt = idt
        self.cr0 = cr0
        self.cr2 = cr2
        self.cr3 = cr3
        self.cr4 = cr4
        self.efer = efer
        self.halted = halted

    @classmethod
    def boot(cls, rip: int = 0x7C00, dl: int = 0x80) -> CpuState:
        """Real mode at 0000:rip with DL set to the boot drive, as a BIOS leaves it."""
        state = cls(rip=rip)
        state.gprs["rdx"] = dl
        state.gprs["rsp"] = 0x7C00
        return state

    @property
    def protected(self) -> bool:
        return bool(self.cr0 & CR0_PE)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain dicts and lists, nothing shared with this state."""
        data = dict(vars(self))
        data["gprs"] = dict(self.gprs)
        data["segments"] = {name: dict(vars(segment)) for name, segment in self.segments.items()}
        data["gdt"] = list(self.gdt)
        data["idt"] = list(self.idt)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> CpuState:
        """Inverse of :meth:`to_dict`. Every value must be an integer in its
        register's range (booleans for flags): anything else raises AccelError
        before a state object exists."""
        try:
            if not isinstance(data, dict):
                raise AccelError("not an object")
            gprs = _object(data, "gprs")
            segments = _object(data, "segments")
            return cls(
                gprs={name: _uint(gprs, name, 64) for name in GPR_NAMES},
                rip=_uint(data, "rip", 64), rflags=_uint(data, "rflags", 64),
                segments={name: Segment(**{key: _uint(_object(segments, name), key, bits)
                                           for key, bits in _SEGMENT_BITS.items()})
                          for name in SEGMENT_NAMES},
                gdt=_table(data, "gdt"), idt=_table(data, "idt"),
                cr0=_uint(data, "cr0", 64), cr2=_uint(data, "cr2", 64),
                cr3=_uint(data, "cr3", 64), cr4=_uint(data, "cr4", 64),
                efer=_uint(data, "efer", 64), halted=_flag(data, "halted"),
            )
        except AccelError as err:
            raise AccelError(f"malformed vCPU state: {err}") from err


_SEGMENT_BITS = {"selector": 16, "base": 64, "limit": 32, "type": 4, "present": 1, "dpl": 2,
                 "db": 1, "s": 1, "l": 1, "g": 1, "avl": 1, "unusable": 1}


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise AccelError(f"'{key}' is missing or not an object")
    return value


def _uint(data: dict[str, Any], key: str, bits: int) -> int:
    if key not in data:
        raise AccelError(f"'{key}' is missing")
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise AccelError(f"'{key}' = {value!r} is not a {bits}-bit unsigned integer")
    return value


def _flag(data: dict[str, Any], key: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise AccelError(f"'{key}' is missing or not a boolean")
    return value


def _table(data: dict[str, Any], key: str) -> tuple[int, int]:
    """A descriptor-table register: [base (64 bits), limit (16 bits)]."""
    value = data.get(key)
    if not isinstance(value, list) or len(value) != 2:
        raise AccelError(f"'{key}' is missing or not [base, limit]")
    pair = {"base": value[0], "limit": value[1]}
    return _uint(pair, "base", 64), _uint(pair, "limit", 16)
