"""What libvirt asks a binary before it trusts it (issue 14): the probe
command line (-no-user-config, -machine none) and the introspection
commands, on livemig and on QEMU with the same assertions where QEMU's
answer is the reference."""

from __future__ import annotations

from typing import Any

import pytest

from livemig.lab import VmLauncher, VmmKind
from livemig.objects.registry import ObjectRegistry
from livemig.qmp.events import EVENTS
from livemig.qmp.qom_types import TYPES, USER_CREATABLE

PROBE_ARGS = ["-S", "-no-user-config", "-machine", "none"]


def _schema_index(schema: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in schema}


def _member_type(index: dict[str, dict[str, Any]], command: str, *path: str) -> dict[str, Any]:
    """Follow command/arg-type/member/... as libvirt's schema queries do."""
    entry = index[index[command]["arg-type"]]
    for name in path:
        while entry["meta-type"] == "array":
            entry = index[entry["element-type"]]
        members = {m["name"]: m for m in entry["members"]}
        entry = index[members[name]["type"]]
    return entry


def test_probe_machine_answers_what_libvirt_asks(vmm_any_accel: VmmKind,
                                                 lab: VmLauncher) -> None:
    vm = lab.start(vmm_any_accel, "probe", boot=False, extra=PROBE_ARGS)
    assert vm.cmd("query-status")["status"] == "prelaunch"
    assert vm.cmd("query-target") == {"arch": "x86_64"}
    machines = {m["name"]: m for m in vm.cmd("query-machines")}
    assert "none" in machines
    default = [m for m in machines.values() if m.get("is-default")]
    assert len(default) == 1 and default[0]["alias"] == "pc"
    assert default[0]["default-ram-id"] == "pc.ram"
    cpus = {c["name"]: c for c in vm.cmd("query-cpu-definitions")}
    assert cpus["qemu64"]["typename"] == "qemu64-x86_64-cpu"
    assert cpus["base"]["static"] is True
    backends = {t["name"] for t in vm.cmd("qom-list-types", implements="memory-backend")}
    assert {"memory-backend-file", "memory-backend-memfd", "memory-backend-ram"} <= backends
    assert "memory-backend" not in backends  # abstract: only listed when asked
    assert "isa-serial" in {t["name"] for t in vm.cmd("qom-list-types", implements="device")}
    props = {p["name"] for p in vm.cmd("qom-list-properties", typename="memory-backend-file")}
    assert {"size", "share", "mem-path"} <= props
    serial = {p["name"] for p in vm.cmd("device-list-properties", typename="isa-serial")}
    assert {"iobase", "chardev"} <= serial
    missing = vm.raw("device-list-properties", {"typename": "no-such-device"})
    assert missing["error"] == {"class": "DeviceNotFound",
                                "desc": "Device 'no-such-device' not found"}
    missing = vm.raw("qom-list-properties", {"typename": "no-such-class"})
    assert missing["error"]["class"] == "DeviceNotFound"
    assert vm.raw("query-command-line-options", {"option": "no-such-option"})["error"][
        "class"] == "GenericError"
    machine_opts = vm.cmd("query-command-line-options", option="machine")
    assert machine_opts[0]["option"] == "machine"
    assert "accel" in {p["name"] for p in machine_opts[0]["parameters"]}
    assert vm.raw("query-sev-capabilities", {})["error"]["class"] == "GenericError"
    expansion = vm.cmd("query-cpu-model-expansion", type="static", model={"name": "max"})
    assert "props" in expansion["model"]
    if not vmm_any_accel.is_qemu:
        # QEMU lists its TPM models; livemig has none.
        assert vm.cmd("query-tpm-models") == [] and vm.cmd("query-tpm-types") == []


def test_qmp_schema_covers_every_command_and_event(vmm_any_accel: VmmKind,
                                                   lab: VmLauncher) -> None:
    vm = lab.start(vmm_any_accel, "probe", boot=False, extra=PROBE_ARGS)
    index = _schema_index(vm.cmd("query-qmp-schema"))
    commands = {c["name"] for c in vm.cmd("query-commands")}
    listed = {name for name, entry in index.items() if entry["meta-type"] == "command"}
    assert commands == listed
    for entry in index.values():  # every type named is defined
        for key in ("arg-type", "ret-type", "element-type"):
            if key in entry:
                assert entry[key] in index, (entry["name"], key)
    # The paths libvirt looks up for migration, on both VMMs.
    caps = _member_type(index, "migrate-set-capabilities", "capabilities", "capability")
    assert caps["meta-type"] == "enum" and "postcopy-ram" in caps["values"]
    status = index[index["MIGRATION"]["arg-type"]]
    assert [m["name"] for m in status["members"]] == ["status"]
    optional = {m["name"]: m for m in index[index["migrate"]["arg-type"]]["members"]}
    assert optional["blk"]["default"] is None  # an optional member's mark
    assert "default" not in index[index["getfd"]["arg-type"]]["members"][0]
    if not vmm_any_accel.is_qemu:
        assert {n for n, e in index.items() if e["meta-type"] == "event"} == set(EVENTS)


def test_type_table_matches_what_object_add_creates() -> None:
    assert set(USER_CREATABLE) == set(ObjectRegistry.factories())
    for name in USER_CREATABLE:
        assert not TYPES[name].abstract


def test_probe_options_parse() -> None:
    from livemig.cli.options import parse

    assert parse(["-machine", "none"]).machine_none
    assert not parse(["-machine", "pc"]).machine_none
    parse(["-no-user-config"])  # accepted: there is no configuration file to skip


def test_an_event_outside_the_table_is_refused() -> None:
    from livemig.qmp.server import QmpServer

    with pytest.raises(RuntimeError, match="not in the event table"):
        QmpServer.emit(None, "NO_SUCH_EVENT")  # type: ignore[arg-type]


def test_the_capabilities_libvirt_sets_are_accepted(vmm_any_accel: VmmKind,
                                                    lab: VmLauncher) -> None:
    """libvirt's destination sets late-block-activate (disks activated only
    at `cont`); livemig never activates a disk, so it accepts it as QEMU does."""
    vm = lab.start(vmm_any_accel, "dst", boot=False, extra=["-incoming", "defer"])
    vm.cmd("migrate-set-capabilities", capabilities=[
        {"capability": "events", "state": True},
        {"capability": "late-block-activate", "state": True}])
    caps = {c["capability"]: c["state"] for c in vm.cmd("query-migrate-capabilities")}
    assert caps["late-block-activate"] is True and caps["events"] is True
