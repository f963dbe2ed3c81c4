"""Shared-memory RAM backends (-object memory-backend-memfd / -file,
-machine memory-backend=ID), x-ignore-shared, and a local live upgrade
built on them: on livemig and on QEMU."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import KVM_PROBLEM, LIVEMIG, slowdown
from migration_helpers import (
    check_guests_ram,
    completed_with_ram_intact,
    migrate,
    migrate_end,
    start_dest,
    wait_for_status,
)

from livemig.guest import AB_START
from livemig.lab import Vm, VmLauncher, VmmKind, wait_until

RAM = 150 << 20


@pytest.fixture
def shm_file() -> Iterator[Path]:
    """A path in /dev/shm for a memory-backend-file, removed afterwards."""
    path = Path("/dev/shm") / f"livemig-test-{uuid.uuid4().hex}"
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def file_backend(path: Path) -> list[str]:
    return ["-object", f"memory-backend-file,id=mem,size=150M,mem-path={path},share=on",
            "-machine", "memory-backend=mem"]


MEMFD = ["-object", "memory-backend-memfd,id=mem,size=150M", "-machine", "memory-backend=mem"]


def unthrottled(vm: Vm) -> None:
    """No bandwidth cap (QEMU's default is 128 MiB/s, under this guest's
    dirty rate), and a downtime limit the first pass meets on a loaded machine."""
    vm.cmd("migrate-set-parameters", **{"max-bandwidth": 100_000_000_000,
                                        "downtime-limit": 10_000})


def ignore_shared(*vms: Vm) -> None:
    for vm in vms:
        vm.cmd("migrate-set-capabilities",
               capabilities=[{"capability": "x-ignore-shared", "state": True}])


def test_shared_backends_migrate_like_any_ram(vmm_any_accel: VmmKind, lab: VmLauncher,
                                              shm_file: Path) -> None:
    """Without x-ignore-shared, RAM in a memfd goes to RAM in a shared file
    as it would between anonymous RAMs; a backend in use can't be deleted."""
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(vmm_any_accel, "src", extra=MEMFD)
    dst = start_dest(lab, vmm_any_accel, "dst", uri, file_backend(shm_file))
    refused = src.raw("object-del", {"id": "mem"})
    assert refused["error"]["desc"] == "object 'mem' is in use, can not be deleted"
    unthrottled(src)
    src.wait_serial(b"B", timeout=60 * slowdown(vmm_any_accel))
    migrate(src, uri)
    completed_with_ram_intact(src, dst)
    assert src.cmd("query-migrate")["ram"]["total"] >= RAM   # QEMU adds its ROMs
    assert shm_file.stat().st_size == RAM
    # The guest's pages are in the file: read there, they pass the RAM check too.
    dst.cmd("cont")
    migrate_end(src, dst, True, vmm_any_accel)


def _ignore_shared_hop(lab: VmLauncher, kind: VmmKind, src: Vm, path: Path,
                       name: str) -> tuple[Vm, dict]:  # type: ignore[type-arg]
    """One local migration onto a new process that maps the same file."""
    uri = f"unix:{lab.workdir / (name + '.sock')}"
    dst = start_dest(lab, kind, name, uri, file_backend(path))
    ignore_shared(dst)
    migrate(src, uri)
    info = wait_for_status(src, "completed", timeout=60 * slowdown(kind))
    wait_for_status(dst, "completed", timeout=60 * slowdown(kind))
    return dst, info


def test_x_ignore_shared_sends_almost_no_ram(vmm_any_accel: VmmKind, lab: VmLauncher,
                                            shm_file: Path) -> None:
    """Source and destination map one file: the stream carries state, not
    RAM, and the guest goes on from where it was."""
    kind = vmm_any_accel
    src = lab.start(kind, "src", extra=file_backend(shm_file))
    ignore_shared(src)
    src.wait_serial(b"B", timeout=60 * slowdown(kind))
    dst, info = _ignore_shared_hop(lab, kind, src, shm_file, "dst")
    ram = info["ram"]
    assert ram["transferred"] < 1 << 20, ram   # QEMU 7.2: ~200 kB; livemig: a few kB
    assert ram["normal"] < 256 and ram["total"] < 1 << 20, ram   # QEMU: its ROMs
    assert dst.status() == "running"
    dst.wait_serial(b"B", timeout=60 * slowdown(kind))   # its serial goes on
    migrate_end(src, dst, True, kind)


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
def test_local_upgrade_ten_times_in_a_row(livemig_tcg: VmmKind, lab: VmLauncher,
                                          shm_file: Path) -> None:
    """A running guest moves to a new livemig process on the same RAM ten
    times; each old process exits; the serial output continues each time."""
    kind = livemig_tcg
    vm = lab.start(kind, "vm0", extra=file_backend(shm_file))
    ignore_shared(vm)
    vm.wait_serial(b"B", timeout=60)
    for hop in range(1, 11):
        new, info = _ignore_shared_hop(lab, kind, vm, shm_file, f"vm{hop}")
        assert info["ram"]["transferred"] < 1 << 20
        assert info["downtime"] < 1000, info   # a stop, a state record, a start
        assert vm.quit() == 0
        ignore_shared(new)
        new.wait_serial(b"B", timeout=60)
        vm = new
    vm.cmd("stop")
    check_guests_ram(vm)


@pytest.mark.skipif(KVM_PROBLEM is not None, reason=f"KVM unusable: {KVM_PROBLEM}")
@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
def test_x_ignore_shared_under_kvm(lab: VmLauncher, shm_file: Path) -> None:
    """The same hop with KVM: its memory slot is the shared mapping. (The
    nested guest sweeps RAM slowly here, so the test watches its counter
    move instead of waiting for a whole pass.)"""
    kind = VmmKind("livemig-kvm", LIVEMIG or "", "kvm")
    src = lab.start(kind, "src", extra=file_backend(shm_file))
    ignore_shared(src)
    first = src.pmem(AB_START, 1)
    wait_until(lambda: src.pmem(AB_START, 1) != first, 60, "the kvm guest to run")
    dst, info = _ignore_shared_hop(lab, kind, src, shm_file, "dst")
    assert info["ram"]["transferred"] < 1 << 20
    src.quit()
    moved = dst.pmem(AB_START, 1)
    wait_until(lambda: dst.pmem(AB_START, 1) != moved, 60, "the guest to run on")
    dst.cmd("stop")
    check_guests_ram(dst)


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
def test_x_ignore_shared_refusals(livemig_tcg: VmmKind, lab: VmLauncher,
                                  shm_file: Path) -> None:
    """A destination whose RAM is not the source's refuses the stream with
    the reason (QEMU 7.2 cannot tell, and runs a guest on the wrong RAM);
    postcopy has nothing to fetch. The source guest runs on each time."""
    kind = livemig_tcg
    src = lab.start(kind, "src", extra=file_backend(shm_file))
    ignore_shared(src)
    src.wait_serial(b"B", timeout=60)
    other = lab.workdir / "other.ram"
    for name, extra in (("anon", []), ("memfd", MEMFD), ("private", [
            "-object", f"memory-backend-file,id=mem,size=150M,mem-path={shm_file},share=off",
            "-machine", "memory-backend=mem"]), ("other", file_backend(other))):
        uri = f"unix:{lab.workdir / (name + '.sock')}"
        dst = start_dest(lab, kind, name, uri, extra)
        migrate(src, uri)
        wait_until(lambda: src.cmd("query-migrate")["status"] == "failed", 30,
                   "the source to see the refusal")
        assert dst.wait_exit(30) == 1
        assert "x-ignore-shared: the source sent no RAM" in dst.stderr_text(), name
        assert src.status() == "running"
    src.cmd("migrate-set-capabilities",
            capabilities=[{"capability": "postcopy-ram", "state": True}])
    uri = f"unix:{lab.workdir / 'postcopy.sock'}"
    start_dest(lab, kind, "postcopy", uri, file_backend(shm_file))
    migrate(src, uri)
    wait_until(lambda: src.cmd("query-migrate")["status"] == "failed", 30, "the refusal")
    assert "no page would be left to fetch" in src.cmd("query-migrate")["error-desc"]
    assert src.status() == "running"
    before = src.serial().count(b"B")
    src.wait_serial(b"B", timeout=60, count=before + 1)
