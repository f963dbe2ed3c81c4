"""The reference test's postcopy building blocks, for any QEMU-compatible VMM."""

from __future__ import annotations

from collections.abc import Callable

from conftest import slowdown
from migration_helpers import (
    migrate,
    migrate_end,
    start_pair,
    wait_for_migration_pass,
    wait_for_status,
)

from livemig.lab import Vm, VmLauncher, VmmKind


def set_capability(vm: Vm, name: str, state: bool = True) -> None:
    vm.cmd("migrate-set-capabilities", capabilities=[{"capability": name, "state": state}])


def set_parameter(vm: Vm, name: str, value: int) -> None:
    vm.cmd("migrate-set-parameters", **{name: value})
    assert vm.cmd("query-migrate-parameters")[name] == value


def enable_postcopy(src: Vm, dst: Vm) -> None:
    set_capability(src, "postcopy-ram")
    set_capability(dst, "postcopy-ram")
    set_capability(dst, "postcopy-blocktime")


def postcopy_prepare(lab: VmLauncher, kind: VmmKind, uri: str | None = None,
                     src_extra: list[str] | None = None,
                     dst_extra: list[str] | None = None,
                     before_migrate: Callable[[Vm, Vm], None] | None = None,
                     first_output: bytes = b"B",
                     src_env: dict[str, str] | None = None) -> tuple[Vm, Vm, str]:
    """migrate_postcopy_prepare: both capabilities, a precopy that cannot
    converge (1 ms downtime), one full pass done. ``before_migrate``: more
    settings for both sides (capabilities such as postcopy-preempt).
    ``first_output``: what the guest prints before migrate starts (the
    reference waits for a 'B'; under nested KVM a 'B' takes 16 s)."""
    uri = uri or f"unix:{lab.workdir / 'migsocket'}"
    src, dst = start_pair(lab, kind, uri, src_extra, dst_extra, src_env)
    enable_postcopy(src, dst)
    if before_migrate is not None:
        before_migrate(src, dst)
    set_parameter(src, "max-bandwidth", 100_000_000)
    set_parameter(src, "downtime-limit", 1)
    src.wait_serial(first_output, timeout=60 * slowdown(kind))
    migrate(src, uri)
    wait_for_migration_pass(src, timeout=120 * slowdown(kind))
    return src, dst, uri


def postcopy_start(src: Vm, dst: Vm, kind: VmmKind) -> None:
    src.cmd("migrate-start-postcopy")
    src.wait_event("STOP", timeout=60 * slowdown(kind))
    dst.wait_event("RESUME", timeout=60 * slowdown(kind))


def postcopy_complete(src: Vm, dst: Vm, kind: VmmKind) -> dict:  # type: ignore[type-arg]
    """migrate_postcopy_complete: completed, a 'B' on the destination,
    block time reported there, then the RAM check. Returns the
    destination's last query-migrate."""
    slow = slowdown(kind)
    wait_for_status(src, "completed", timeout=120 * slow)
    before = dst.serial().count(b"B")
    dst.wait_serial(b"B", count=before + 1, timeout=60 * slow)
    info = wait_for_status(dst, "completed", timeout=60 * slow)
    assert "postcopy-blocktime" in info, info
    assert src.status() == "postmigrate"
    assert dst.status() == "running"
    migrate_end(src, dst, True, kind)
    return info
