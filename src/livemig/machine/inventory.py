"""What the command line put into the machine, as QEMU's query commands
describe it: devices by id, block nodes, character devices. Filled in by
the command line (cli.system), read by query-block, query-named-block-nodes,
qom-list and query-chardev."""

from __future__ import annotations

import os
from typing import NamedTuple


class BlockNode(NamedTuple):
    name: str            # node-name
    driver: str          # file or raw
    filename: str        # the host file at the bottom
    child: str | None    # a raw node's file node


class Device(NamedTuple):
    id: str
    driver: str          # isa-serial, ide-hd, isa-debug-exit
    drive: str | None = None  # ide-hd: the node or -drive id it shows


class Inventory:
    def __init__(self) -> None:
        self.devices: list[Device] = []
        self.block_nodes: list[BlockNode] = []
        self.chardevs: dict[str, str] = {}  # label -> query-chardev's filename

    @staticmethod
    def size(node: BlockNode) -> int:
        try:
            return os.path.getsize(node.filename)
        except OSError:
            return 0
