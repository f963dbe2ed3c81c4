"""query-chardev: the character devices and what each is connected to."""

from __future__ import annotations

from typing import Any

from ..context import QmpContext
from ..registry import command


@command("query-chardev")
def query_chardev(ctx: QmpContext) -> list[dict[str, Any]]:
    chardevs = ctx.inventory.chardevs if ctx.inventory is not None else {}
    return [{"label": label, "filename": filename, "frontend-open": True}
            for label, filename in chardevs.items()]
