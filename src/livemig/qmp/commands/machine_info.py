"""What machine this is: query-target, query-machines,
query-cpu-definitions, query-cpu-model-expansion,
query-hotpluggable-cpus and query-iothreads, as QEMU 7.2 answers them for a one-vCPU PC.

livemig builds one PC-like machine whatever ``-machine`` type names it
(pc… or q35…); it lists itself under QEMU 7.2's two PC names, so that a
domain written for QEMU names a type livemig reports. ``none`` is the
empty machine libvirt probes with."""

from __future__ import annotations

from typing import Any

from ...errors import QmpError
from ..context import QmpContext
from ..registry import command

_MACHINE = {"cpu-max": 1, "hotpluggable-cpus": False, "numa-mem-supported": False,
            "deprecated": False, "default-cpu-type": "qemu64-x86_64-cpu",
            "default-ram-id": "pc.ram"}

CPU_PATH = "/machine/unattached/device[0]"

# (model, static, migration-safe): livemig's -cpu models.
CPU_MODELS = (("qemu64", False, True), ("qemu32", False, True), ("base", True, True),
              ("max", False, False), ("host", False, False))


@command("query-target")
def query_target(ctx: QmpContext) -> dict[str, str]:
    return {"arch": "x86_64"}


@command("query-machines", {"*compat-props": "bool"})
def query_machines(ctx: QmpContext, compat_props: bool = False) -> list[dict[str, Any]]:
    return [
        {"name": "pc-i440fx-7.2", "alias": "pc", "is-default": True, **_MACHINE},
        {"name": "pc-q35-7.2", "alias": "q35", **_MACHINE},
        {"name": "none", **_MACHINE, "default-cpu-type": "max-x86_64-cpu",
         "default-ram-id": "ram"},
    ]


@command("query-cpu-definitions")
def query_cpu_definitions(ctx: QmpContext) -> list[dict[str, Any]]:
    return [{"name": name, "typename": f"{name}-x86_64-cpu", "unavailable-features": [],
             "static": static, "migration-safe": safe, "deprecated": False}
            for name, static, safe in CPU_MODELS]


@command("query-cpu-model-expansion",
         {"type": ("static", "full"), "model": {"name": "str", "*props": "any"}})
def query_cpu_model_expansion(ctx: QmpContext, type: str,
                              model: dict[str, Any]) -> dict[str, Any]:
    """livemig sets no CPU features of its own (the guest sees the
    accelerator's defaults), so an expansion has no properties to list."""
    name = model["name"]
    if name not in {model_name for model_name, _, _ in CPU_MODELS}:
        raise QmpError(f"The CPU type '{name}' is not a recognized x86_64 CPU type")
    if name == "host" and ctx.machine.accel_name != "kvm":
        raise QmpError("CPU model 'host' requires KVM or HVF")
    return {"model": {"name": "base" if type == "static" else name, "props": {}}}


@command("query-hotpluggable-cpus")
def query_hotpluggable_cpus(ctx: QmpContext) -> list[dict[str, Any]]:
    """The one vCPU, present (nothing can be plugged in beside it)."""
    return [{"type": f"{ctx.machine.config.cpu_model}-x86_64-cpu", "vcpus-count": 1,
             "props": {"socket-id": 0, "core-id": 0, "thread-id": 0},
             "qom-path": CPU_PATH}]


@command("query-iothreads")
def query_iothreads(ctx: QmpContext) -> list[dict[str, Any]]:
    return []  # livemig has no iothreads
