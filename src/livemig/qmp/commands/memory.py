"""Memory dumps: pmemsave (guest-physical) and memsave (guest-virtual);
query-memory-size-summary, how much RAM the guest has.

livemig's guests run without paging, so a virtual address is its physical
address; memsave refuses a CPU index other than 0, the only vCPU.
"""

from __future__ import annotations

from ...errors import LivemigError, QmpError
from ..context import QmpContext
from ..registry import command


def _save(ctx: QmpContext, address: int, size: int, filename: str) -> None:
    ram = ctx.machine.ram
    if not ram.contains(address, size):
        raise QmpError(f"Invalid addr 0x{address:016x}/size {size} specified")
    try:
        ram.prepare_access(address, size)
    except LivemigError as err:
        raise QmpError(str(err)) from err
    try:
        with open(filename, "wb") as out:
            out.write(ram.view[address:address + size])
    except OSError as err:
        raise QmpError(f"Could not open '{filename}': {err.strerror}") from err


@command("pmemsave", {"val": "int", "size": "int", "filename": "str"})
def pmemsave(ctx: QmpContext, val: int, size: int, filename: str) -> None:
    _save(ctx, val, size, filename)


@command("memsave", {"val": "int", "size": "int", "filename": "str", "*cpu-index": "int"})
def memsave(ctx: QmpContext, val: int, size: int, filename: str, cpu_index: int = 0) -> None:
    if cpu_index != 0:
        raise QmpError(f"CPU {cpu_index} is not present", "DeviceNotFound")
    _save(ctx, val, size, filename)


@command("query-memory-size-summary")
def query_memory_size_summary(ctx: QmpContext) -> dict[str, int]:
    """QEMU's answer: boot RAM; livemig has no hot-plugged memory, so 0 plugged."""
    return {"base-memory": ctx.machine.ram.size, "plugged-memory": 0}
