"""object-add and object-del: each one call into the VM's ObjectRegistry."""

from __future__ import annotations

from typing import Any

from ...objects import ObjectRegistry
from ..context import QmpContext
from ..registry import command


def _objects(ctx: QmpContext) -> ObjectRegistry:
    assert ctx.objects is not None
    return ctx.objects


@command("object-add", {"qom-type": "str", "id": "str", "**": "any"})
def object_add(ctx: QmpContext, qom_type: str, id: str, **props: Any) -> None:
    _objects(ctx).add(qom_type, {"id": id, **{k.replace("_", "-"): v for k, v in props.items()}})


@command("object-del", {"id": "str"})
def object_del(ctx: QmpContext, id: str) -> None:
    _objects(ctx).delete(id)
