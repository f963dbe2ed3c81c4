"""calc-dirty-rate and query-dirty-rate (QEMU 7.2's arguments and answer).
Each handler is one call into MigrationManager, which owns the meter."""

from __future__ import annotations

from typing import Any

from ...migration import MigrationManager
from ...migration.dirtyrate import MODES
from ..context import QmpContext
from ..registry import command


def _manager(ctx: QmpContext) -> MigrationManager:
    assert isinstance(ctx.migration, MigrationManager)
    return ctx.migration


@command("calc-dirty-rate", {"calc-time": "int", "*sample-pages": "int", "*mode": MODES})
def calc_dirty_rate(ctx: QmpContext, calc_time: int, sample_pages: int | None = None,
                    mode: str = "page-sampling") -> None:
    _manager(ctx).calc_dirty_rate(calc_time, sample_pages, mode)


@command("query-dirty-rate")
def query_dirty_rate(ctx: QmpContext) -> dict[str, Any]:
    return _manager(ctx).query_dirty_rate()
