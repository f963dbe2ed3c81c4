"""``livemig demo``: what livemig does, shown on the built-in guest."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .vmm import LIVEMIG_BINARY, LabError, VmLauncher, VmmKind, find_binary


def boot_demo(accel: str = "tcg", ram: str = "150M", seconds: float = 3.0,
              console: Console | None = None, workdir: Path | None = None) -> int:
    """Boot the built-in guest, show its serial output and QMP run state."""
    console = console or Console()
    binary = find_binary(LIVEMIG_BINARY)
    if binary is None:
        console.print(f"[red]{LIVEMIG_BINARY} is not installed[/red]")
        return 1
    lab = VmLauncher(workdir)
    try:
        kind = VmmKind(f"livemig-{accel}", binary, accel)
        console.print(f"[bold]Booting the built-in guest[/bold] ({accel}, {ram} RAM)")
        vm = lab.start(kind, "demo", ram=ram)
        version = vm.cmd("query-version")
        console.print(f"QMP greeting answered: {version['package']}, "
                      f"QEMU-compatible {version['qemu']['major']}.{version['qemu']['minor']}")
        vm.wait_serial(b"A", timeout=60)
        deadline = time.monotonic() + seconds
        with console.status("guest running; reading its serial port") as status:
            while time.monotonic() < deadline:
                status.update(f"serial: {vm.serial().decode(errors='replace')}")
                time.sleep(0.2)
        table = Table(title="query-status")
        for key in ("status", "running", "singlestep"):
            table.add_column(key)
        state = vm.cmd("query-status")
        table.add_row(str(state["status"]), str(state["running"]), str(state["singlestep"]))
        console.print(table)
        serial = vm.serial().decode(errors="replace")
        console.print(f"serial output so far: [green]{serial}[/green]")
        console.print(f"accelerator in use: {'kvm' if vm.cmd('query-kvm')['enabled'] else 'tcg'}")
        vm.quit()
        return 0
    except LabError as err:
        console.print(f"[red]demo failed: {err}[/red]")
        return 1
    finally:
        lab.close()
