"""query-block and query-named-block-nodes: the raw disks the command line
gave (-blockdev nodes under -device ide-hd, or -drive), laid out as QEMU
7.2 reports them."""

from __future__ import annotations

from typing import Any

from ...machine.inventory import BlockNode, Inventory
from ..context import QmpContext
from ..registry import command


def _inventory(ctx: QmpContext) -> Inventory:
    return ctx.inventory if ctx.inventory is not None else Inventory()


def _node_info(inventory: Inventory, node: BlockNode) -> dict[str, Any]:
    size = inventory.size(node)
    return {
        "node-name": node.name, "drv": node.driver, "file": node.filename,
        "ro": False, "encrypted": False, "encryption_key_missing": False,
        "detect_zeroes": "off", "backing_file_depth": 0, "write_threshold": 0,
        "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
        "cache": {"writeback": True, "direct": False, "no-flush": False},
        "image": {"filename": node.filename, "format": node.driver, "virtual-size": size,
                  "actual-size": size, "dirty-flag": False},
    }


@command("query-named-block-nodes", {"*flat": "bool"})
def query_named_block_nodes(ctx: QmpContext, flat: bool = False) -> list[dict[str, Any]]:
    inventory = _inventory(ctx)
    return [_node_info(inventory, node) for node in inventory.block_nodes]


@command("query-block")
def query_block(ctx: QmpContext) -> list[dict[str, Any]]:
    inventory = _inventory(ctx)
    nodes = {node.name: node for node in inventory.block_nodes}
    out = []
    for device in inventory.devices:
        if device.driver != "ide-hd":
            continue
        entry: dict[str, Any] = {"device": "", "qdev": device.id, "locked": False,
                                 "removable": False, "type": "unknown"}
        node = nodes.get(device.drive or "")
        if node is not None:
            entry["inserted"] = _node_info(inventory, node)
        out.append(entry)
    return out
