"""set-vcpu-dirty-limit, cancel-vcpu-dirty-limit, query-vcpu-dirty-limit
(QEMU 8.1's arguments and answer). Each handler is one call into
MigrationManager, which checks what QEMU checks and drives the machine's
dirty limiter (machine/dirty_limit.py)."""

from __future__ import annotations

from typing import Any

from ...migration import MigrationManager
from ..context import QmpContext
from ..registry import command


def _manager(ctx: QmpContext) -> MigrationManager:
    assert isinstance(ctx.migration, MigrationManager)
    return ctx.migration


@command("set-vcpu-dirty-limit", {"*cpu-index": "int", "dirty-rate": "uint64"})
def set_vcpu_dirty_limit(ctx: QmpContext, dirty_rate: int, cpu_index: int | None = None) -> None:
    _manager(ctx).set_vcpu_dirty_limit(dirty_rate, cpu_index)


@command("cancel-vcpu-dirty-limit", {"*cpu-index": "int"})
def cancel_vcpu_dirty_limit(ctx: QmpContext, cpu_index: int | None = None) -> None:
    _manager(ctx).cancel_vcpu_dirty_limit(cpu_index)


@command("query-vcpu-dirty-limit")
def query_vcpu_dirty_limit(ctx: QmpContext) -> list[dict[str, Any]]:
    return _manager(ctx).query_vcpu_dirty_limit()
