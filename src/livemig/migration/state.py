"""What a migration carries besides RAM: typed, versioned machine state.

The state record (codec.State) holds, in stream version 2::

    {"running": bool,
     "vcpus": [{"core": <CpuState>, "sections": {<accelerator>: {<name>: uint64}}}],
     "devices": {<device name>: <that device's register state>}}

``core`` is the accelerator-neutral x86 state both backends load;
``sections`` is room for what only one accelerator can give (MSRs, XSAVE,
the LAPIC, vCPU events): a backend loads the section named after it and a
destination of another accelerator ignores it. Today neither backend
writes a section; a malformed one is still refused.

:func:`decode` validates the whole record into typed objects before
:func:`apply` changes anything, so a bad stream leaves the destination's
machine exactly as it was (the Firecracker habit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..accel import CpuState
from ..devices import RegisterState
from ..errors import AccelError, DeviceError, MigrationReceiveError
from ..machine import Machine

MAX_SECTION_ENTRIES = 4096


def machine_description(machine: Machine) -> dict[str, Any]:
    """What both sides must agree on, independent of the accelerator."""
    return {"machine": "pc", "ram-size": machine.ram.size, "vcpus": 1,
            "devices": sorted(dev.name for dev in machine.bus.devices)}


@dataclass(frozen=True)
class VcpuState:
    core: CpuState
    sections: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"core": self.core.to_dict(), "sections": self.sections}


@dataclass(frozen=True)
class MachineState:
    vcpus: list[VcpuState]
    devices: dict[str, RegisterState]
    running: bool  # did the guest run on the source: the destination then runs it

    def to_wire(self) -> dict[str, Any]:
        return {"running": self.running, "vcpus": [v.to_wire() for v in self.vcpus],
                "devices": {name: dev.to_dict() for name, dev in self.devices.items()}}


def capture(machine: Machine, running: bool) -> MachineState:
    """The machine's state now (its vCPUs stopped)."""
    return MachineState([VcpuState(machine.save_cpu_state())],
                        machine.save_device_states(), running)


def _sections(value: Any) -> dict[str, dict[str, int]]:
    if not isinstance(value, dict):
        raise MigrationReceiveError("malformed vCPU state: 'sections' is not an object")
    for accel, entries in value.items():
        if not isinstance(entries, dict) or len(entries) > MAX_SECTION_ENTRIES:
            raise MigrationReceiveError(f"malformed vCPU state: section '{accel}'")
        for name, number in entries.items():
            if not isinstance(number, int) or isinstance(number, bool) \
                    or not 0 <= number < 1 << 64:
                raise MigrationReceiveError(
                    f"malformed vCPU state: section '{accel}' entry '{name}' is not a uint64")
    return value


def decode(body: dict[str, Any], machine: Machine) -> MachineState:
    """Validate a state record against ``machine``; nothing is applied."""
    running, vcpus, devices = body.get("running"), body.get("vcpus"), body.get("devices")
    if not isinstance(running, bool):
        raise MigrationReceiveError("malformed machine state: 'running' is not a boolean")
    if not isinstance(vcpus, list) or len(vcpus) != 1 or not isinstance(vcpus[0], dict):
        raise MigrationReceiveError("malformed machine state: expected one vCPU")
    try:
        core = CpuState.from_dict(vcpus[0].get("core"))
    except AccelError as err:
        raise MigrationReceiveError(str(err)) from err
    vcpu = VcpuState(core, _sections(vcpus[0].get("sections", {})))
    if not isinstance(devices, dict):
        raise MigrationReceiveError("malformed machine state: 'devices' is not an object")
    types = machine.device_state_types()
    for name in devices:
        if name not in types:
            raise MigrationReceiveError(f"the stream has state for unknown device '{name}'")
    typed: dict[str, RegisterState] = {}
    for name, kind in types.items():
        if name not in devices:
            raise MigrationReceiveError(f"the stream has no state for device '{name}'")
        try:
            typed[name] = kind.from_dict(devices[name])
        except DeviceError as err:
            raise MigrationReceiveError(str(err)) from err
    return MachineState([vcpu], typed, running)


def apply(machine: Machine, state: MachineState) -> None:
    """Load a validated state into ``machine`` (its vCPUs stopped)."""
    machine.load_device_states(state.devices)
    machine.load_cpu_state(state.vcpus[0].core)
