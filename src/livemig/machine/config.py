"""What a machine is built from: the parsed, validated command line.

Plain classes rather than dataclasses: start-up imports this module, and
creating a dataclass costs about a millisecond here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ..memory.backing import BackendSpec

DEFAULT_RAM = 128 << 20


class DebugExitConfig(NamedTuple):
    iobase: int = 0x501
    iosize: int = 0x02


class MachineConfig:
    def __init__(self, ram_size: int = DEFAULT_RAM, accelerators: list[str] | None = None,
                 boot_sector: bytes | None = None, name: str | None = None,
                 start_paused: bool = False, incoming: bool = False,
                 debug_exit: DebugExitConfig | None = None, no_reboot: bool = False,
                 uuid: str | None = None, kvm_dirty_ring_size: int = 0,
                 mem_prealloc: bool = False, ram_backend: BackendSpec | None = None,
                 cpu_model: str = "qemu64") -> None:
        self.ram_size = ram_size
        self.accelerators = accelerators if accelerators is not None else ["tcg"]
        self.boot_sector = boot_sector
        self.name = name
        self.start_paused = start_paused
        self.incoming = incoming
        self.debug_exit = debug_exit
        self.no_reboot = no_reboot
        self.uuid = uuid  # -uuid, lower-case canonical form; None: not set
        self.kvm_dirty_ring_size = kvm_dirty_ring_size  # -accel kvm,dirty-ring-size=N
        self.mem_prealloc = mem_prealloc  # -mem-prealloc: back all RAM at start-up
        self.ram_backend = ram_backend  # -machine memory-backend=ID; None: anonymous RAM
        self.cpu_model = cpu_model  # -cpu: the name QMP reports (the vCPU is the same)

    def __repr__(self) -> str:
        return f"MachineConfig({vars(self)!r})"
