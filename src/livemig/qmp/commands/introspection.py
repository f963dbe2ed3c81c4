"""What-is-this commands: query-version, query-commands, query-name,
query-uuid, query-kvm, query-cpus-fast."""

from __future__ import annotations

import os
from typing import Any

from ..context import QmpContext
from ..registry import COMMANDS, command
from ..version import version_info


@command("query-version")
def query_version(ctx: QmpContext) -> dict[str, Any]:
    return version_info()


@command("query-commands")
def query_commands(ctx: QmpContext) -> list[dict[str, str]]:
    return [{"name": name} for name in ["qmp_capabilities", *sorted(COMMANDS)]]


@command("query-name")
def query_name(ctx: QmpContext) -> dict[str, str]:
    name = ctx.machine.config.name
    return {"name": name} if name is not None else {}


@command("query-uuid")
def query_uuid(ctx: QmpContext) -> dict[str, str]:
    """-uuid, or QEMU's all-zero UUID when none was given."""
    return {"UUID": ctx.machine.config.uuid or "00000000-0000-0000-0000-000000000000"}


@command("query-kvm")
def query_kvm(ctx: QmpContext) -> dict[str, bool]:
    return {"enabled": ctx.machine.accel_name == "kvm",
            "present": os.access("/dev/kvm", os.R_OK | os.W_OK)}


@command("query-cpus-fast")
def query_cpus_fast(ctx: QmpContext) -> list[dict[str, Any]]:
    return [{
        "thread-id": ctx.machine.vcpu_thread_id,
        "props": {"core-id": 0, "thread-id": 0, "socket-id": 0},
        "qom-path": "/machine/unattached/device[0]",
        "cpu-index": 0,
        "target": "x86_64",
    }]
