"""What a machine is built from: the parsed, validated command line."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_RAM = 128 << 20


@dataclass
class DebugExitConfig:
    iobase: int = 0x501
    iosize: int = 0x02


@dataclass
class MachineConfig:
    ram_size: int = DEFAULT_RAM
    accelerators: list[str] = field(default_factory=lambda: ["tcg"])
    boot_sector: bytes | None = None
    name: str | None = None
    start_paused: bool = False
    incoming: bool = False
    debug_exit: DebugExitConfig | None = None
    no_reboot: bool = False
    uuid: str | None = None  # -uuid, lower-case canonical form; None: not set
    kvm_dirty_ring_size: int = 0  # -accel kvm,dirty-ring-size=N (entries per vCPU)
