"""The workload guest (issue 10): its parameter block, `livemig guest
dirty`, and on every VMM: it boots, dirties at the rate asked, and its RAM
invariant holds, after a migration too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import slowdown
from migration_helpers import migrate, wait_for_status

from livemig.guest.dirty import BLOCK_OFFSET, PAGE, DirtyParams, image, read_block
from livemig.lab import Vm, VmLauncher, VmmKind, wait_until
from livemig.lab.checks import check_dirty_ram, dirty_block, dirty_write_rate, dirty_writes

TSC_HZ = 2_000_000_000.0  # for image tests that do not run the guest


def test_image_carries_its_knobs() -> None:
    params = DirtyParams(wss_mib=16, rate=8, pattern="hotcold", hot_fraction=0.25,
                         write_bytes=4096)
    sector = image(params, tsc_hz=TSC_HZ)
    assert len(sector) == 512 and sector[510:] == b"\x55\xaa"
    block = read_block(sector[BLOCK_OFFSET:])
    assert block.pages == 16 * 256 and block.write_bytes == 4096 and block.pattern == 2
    assert block.hot_pages == 1024
    assert block.table == (1 << 20) + 16 * (1 << 20)
    assert block.ticks == round(TSC_HZ / (8 * (1 << 20) / PAGE))
    assert read_block(image(DirtyParams(), tsc_hz=TSC_HZ)[BLOCK_OFFSET:]).ticks == 0  # max


@pytest.mark.parametrize("knobs, message", [
    ({"write_bytes": 3}, "--write must be 1 or a multiple of 4"),
    ({"write_bytes": 8192}, "--write must be 1 or a multiple of 4"),
    ({"rate": 0}, "--rate must be positive"),
    ({"wss_mib": 0}, "--wss must be"),
    ({"pattern": "zigzag"}, "--pattern must be one of"),
    ({"hot_fraction": 1.5}, "--hot-fraction must be between 0 and 1"),
])
def test_bad_knobs_are_refused(knobs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DirtyParams(**knobs)  # type: ignore[arg-type]


def test_cli_writes_the_image(tmp_path: Path) -> None:
    out = tmp_path / "dirty.img"
    done = subprocess.run([sys.executable, "-m", "livemig.cli.tool", "guest", "dirty",
                           "--wss", "16", "--rate", "8", "--pattern", "random", "--write",
                           "4096", "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "-m 18M or more" in done.stdout
    block = read_block(out.read_bytes()[BLOCK_OFFSET:])
    assert block.pattern == 1 and block.ticks > 0
    bad = subprocess.run([sys.executable, "-m", "livemig.cli.tool", "guest", "dirty",
                          "--write", "3", "-o", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--write must be 1 or a multiple of 4" in bad.stderr


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                    reason="GNU as and ld (binutils) are needed to rebuild the images")
def test_shipped_images_match_their_sources() -> None:
    done = subprocess.run([sys.executable, "-m", "livemig.guest.build", "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def start_dirty(lab: VmLauncher, kind: VmmKind, name: str, params: DirtyParams,
                extra: list[str] | None = None, ram: str | None = None,
                image_name: str = "dirty.img") -> Vm:
    """A VM on the workload guest (``ram``: by default just enough for its
    set and table); VMs given the same ``image_name`` share one image."""
    path = lab.workdir / image_name
    if not path.exists():
        path.write_bytes(image(params))
    ram = ram or f"{-(-params.ram_needed // (1 << 20)) + 4}M"
    return lab.start(kind, name, ram=ram, image=path, extra=extra)


def test_rate_and_invariant(vmm: VmmKind, lab: VmLauncher) -> None:
    """Paced at 8 MiB/s: measured within 15%; stopped, its RAM checks."""
    params = DirtyParams(wss_mib=16, rate=8)
    vm = start_dirty(lab, vmm, "g", params)
    vm.wait_serial(b"A", timeout=60 * slowdown(vmm))
    assert dirty_block(vm).pages == params.pages
    rate = dirty_write_rate(vm, 2.0)
    assert rate == pytest.approx(8, rel=0.15)
    vm.cmd("stop")
    check = check_dirty_ram(vm)
    assert check.ok and check.written > 1000, check.describe()


def test_full_page_writes_survive_migration(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """Random whole-page writes of pseudo-random data, as fast as the guest
    can: after a migration every page's stamp and fill check."""
    kind = vmm_any_accel
    params = DirtyParams(wss_mib=32, pattern="random", write_bytes=4096)
    socket_path = lab.workdir / "mig.sock"
    src = start_dirty(lab, kind, "src", params)
    dst = start_dirty(lab, kind, "dst", params, extra=["-incoming", f"unix:{socket_path}"])
    wait_until(socket_path.exists, 30, "the destination socket")
    src.cmd("migrate-set-parameters", **{"max-bandwidth": 1_000_000_000})
    src.wait_serial(b"A", timeout=60)
    wait_until(lambda: dirty_writes(src) > 500, 30, "the guest to write")
    migrate(src, f"unix:{socket_path}")
    wait_for_status(src, "completed", timeout=120)
    wait_for_status(dst, "completed", timeout=60)
    dst.cmd("stop")
    check = check_dirty_ram(dst)
    if (kind.is_qemu and not check.ok and not check.bad_fill
            and _stale_table_pages_only(check.mismatched)):
        # Seen in CI: 238 stamps, all under table page 0; and again
        # 2026-12-08 on a loaded machine: 157 stamps under table pages 0, 1,
        # 2 and 6. Every page's contents (its fill) arrived right; only hot
        # table pages kept older stamps, i.e. QEMU 7.2 under TCG never
        # resent those pages' last writes. Our reading: a race in its TCG
        # dirty tracking around a bitmap sync leaves a page's TLB entry
        # writable without marking it dirty. Any other pattern of damage is
        # still a failure, and livemig gets no such allowance.
        pytest.xfail(f"QEMU 7.2 TCG lost the writes to hot table pages: {check.describe()}")
    assert check.ok and check.written > 500, check.describe()


def _stale_table_pages_only(mismatched: list[int]) -> bool:
    """True when the mismatches cluster under a few table pages (at most
    one stray: the page being written at the stop), as lost writes to
    those table pages would leave them."""
    by_table_page: dict[int, int] = {}
    for page in mismatched:
        by_table_page[page // (PAGE // 4)] = by_table_page.get(page // (PAGE // 4), 0) + 1
    clustered = [n for n in by_table_page.values() if n > 1]
    strays = sum(n for n in by_table_page.values() if n == 1)
    return len(mismatched) > 1 and 0 < len(clustered) <= 4 and strays <= 1
