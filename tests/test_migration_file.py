"""Migration to and from a file: ``file:PATH[,offset=N]`` and mapped-ram.

QEMU 7.2 has no ``file:`` URI: its side of the scenario saves with
``exec:cat > FILE`` and restores with ``-incoming 'exec:cat FILE'``, the
way its users did before QEMU 9."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LIVEMIG, slowdown
from migration_helpers import check_guests_ram, migrate, wait_for_status

from livemig.lab import Vm, VmLauncher, VmmKind, set_mapped_ram, wait_until

RAM = 150 << 20


def _save(vm: Vm, uri: str, passes: int = 1) -> dict:  # type: ignore[type-arg]
    """Migrate the running guest into a file; ``passes``: hold it iterating
    (a 1 ms downtime limit) until that many dirty syncs went by."""
    vm.cmd("migrate-set-parameters", **{"max-bandwidth": 100_000_000_000,
                                        "downtime-limit": 1 if passes > 1 else 10_000})
    vm.wait_serial(b"B", timeout=60 * slowdown(vm.kind))
    migrate(vm, uri)
    if passes > 1:
        wait_until(lambda: vm.cmd("query-migrate").get("ram", {}).get("dirty-sync-count", 0)
                   >= passes or vm.cmd("query-migrate")["status"] == "completed", 60,
                   f"{passes} dirty syncs")
        vm.cmd("migrate-set-parameters", **{"downtime-limit": 10_000})
    info = wait_for_status(vm, "completed", timeout=60 * slowdown(vm.kind))
    assert vm.status() == "postmigrate"
    vm.quit()
    return info


def _restored(lab: VmLauncher, kind: VmmKind, name: str, uri: str, threads: int = 0) -> Vm:
    """A fresh process loads the file; its guest runs on and passes the RAM
    check. ``threads``: set mapped-ram and multifd first (-incoming defer)."""
    vm = lab.start(kind, name, extra=["-incoming", "defer" if threads else uri])
    if threads:
        set_mapped_ram(vm, threads)
        vm.cmd("migrate-incoming", uri=uri)
    wait_for_status(vm, "completed", timeout=60 * slowdown(kind))
    vm.wait_event("RESUME", timeout=30)
    before = vm.serial().count(b"B")
    vm.wait_serial(b"B", timeout=60 * slowdown(kind), count=before + 1)
    vm.cmd("stop")
    check_guests_ram(vm)
    return vm


def test_save_to_a_file_and_restore(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    kind = vmm_any_accel
    image = lab.workdir / "guest.img"
    if kind.is_qemu:
        save, restore = f"exec:cat > {image}", f"exec:cat {image}"
    else:
        save = restore = f"file:{image}"
    src = lab.start(kind, "src")
    _save(src, save)
    assert image.stat().st_size > 100 << 20   # every page the guest wrote
    _restored(lab, kind, "dst", restore).quit()


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
@pytest.mark.parametrize("mapped,threads", [(False, 0), (True, 0), (True, 3)],
                         ids=["stream", "mapped-ram", "mapped-ram-multifd"])
def test_offset_andset_mapped_ram(livemig_tcg: VmmKind, lab: VmLauncher, mapped: bool,
                               threads: int) -> None:
    """The stream may begin N bytes into the file (what is before stays
    zeros); with mapped-ram the file stays under RAM + 2 MiB however many
    passes were written, and restoring reads only the pages present; with
    multifd, that many threads write and read it."""
    image = lab.workdir / "guest.img"
    uri = f"file:{image},offset=1M"
    src = lab.start(livemig_tcg, "src")
    if mapped:
        set_mapped_ram(src, threads)
    info = _save(src, uri, passes=4)
    size = image.stat().st_size
    assert image.read_bytes()[:1 << 20] == bytes(1 << 20)
    if mapped:
        assert info["ram"]["transferred"] > RAM        # more than one pass went…
        assert size <= (1 << 20) + RAM + (2 << 20)     # …into one place per page
    else:
        assert size > (1 << 20) + RAM
    report = _analyze(image, 1 << 20)
    assert report["records"]["End"]["count"] == 1 and report["size"] == size - (1 << 20)
    if mapped:
        assert report["records"]["MappedPages"]["pages"] > 25_000   # the guest's pages
        assert "PageRun" not in report["records"]
    dst = _restored(lab, livemig_tcg, "dst", uri, threads)
    assert dst.cmd("query-migrate")["status"] == "completed"
    dst.quit()


def _analyze(image: Path, offset: int) -> dict:  # type: ignore[type-arg]
    done = subprocess.run([sys.executable, "-m", "livemig.cli.tool", "analyze-migration",
                           str(image), "--offset", str(offset), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
def test_mapped_ram_refusals(livemig_tcg: VmmKind, lab: VmLauncher) -> None:
    """mapped-ram needs a file (QEMU 9's rule) and excludes what sends pages
    other than whole and in place (xbzrle, postcopy, multifd compression)."""
    vm = lab.start(livemig_tcg, "vm")
    for other in ("xbzrle", "postcopy-ram"):
        answer = vm.raw("migrate-set-capabilities", {"capabilities": [
            {"capability": "mapped-ram", "state": True}, {"capability": other, "state": True}]})
        assert "Mapped-ram migration is incompatible with" in answer["error"]["desc"]
    vm.cmd("migrate-set-capabilities", capabilities=[{"capability": "mapped-ram",
                                                      "state": True}])
    migrate(vm, f"unix:{lab.workdir / 'nobody.sock'}")
    wait_until(lambda: vm.cmd("query-migrate")["status"] == "failed", 30, "the refusal")
    assert "mapped-ram needs a file: URI" in vm.cmd("query-migrate")["error-desc"]
    set_mapped_ram(vm, 2)
    vm.cmd("migrate-set-parameters", **{"multifd-compression": "zlib"})
    migrate(vm, f"file:{lab.workdir / 'x.img'}")
    wait_until(lambda: vm.cmd("query-migrate")["status"] == "failed", 30, "the refusal")
    assert "incompatible with multifd compression" in vm.cmd("query-migrate")["error-desc"]
    assert vm.status() == "running"


def _refused(lab: VmLauncher, kind: VmmKind, name: str, uri: str, words: str,
             extra: list[str] | None = None) -> None:
    # Not connected: the process may end before a QMP session could open.
    dst = lab.start(kind, name, extra=["-incoming", uri, *(extra or [])], connect=False)
    assert dst.wait_exit(30) == 1
    err = dst.stderr_text()
    assert words in err and "Traceback" not in err, err


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
@pytest.mark.parametrize("mapped", [False, True], ids=["stream", "mapped-ram"])
def test_bad_files(livemig_tcg: VmmKind, lab: VmLauncher, mapped: bool) -> None:
    """Truncated, corrupted, for another RAM size, missing, unwritable: a
    clean error naming the cause (and the offset), never a guest run on
    half a file; the source guest runs on after a failed save."""
    kind = livemig_tcg
    image = lab.workdir / "guest.img"
    src = lab.start(kind, "src")
    if mapped:
        src.cmd("migrate-set-capabilities",
                capabilities=[{"capability": "mapped-ram", "state": True}])
    nowhere = lab.workdir / "no" / "such" / "dir" / "guest.img"
    migrate(src, f"file:{nowhere}")
    wait_until(lambda: src.cmd("query-migrate")["status"] == "failed", 30, "the failed save")
    assert f"Could not open '{nowhere}'" in src.cmd("query-migrate")["error-desc"]
    assert src.status() == "running"
    _save(src, f"file:{image}")
    data = image.read_bytes()
    header_end = 22 + int.from_bytes(data[18:22], "little")
    # The first record after the header: with mapped-ram, after the pages.
    first = (json.loads(data[22:header_end])["mapped-ram"]["records"] if mapped
             else header_end)
    cases = [
        ("truncated.img", data[:len(data) // 2],
         "mapped-ram file ends inside page" if mapped else "migration stream ended early"),
        ("no-end.img", data[:-1], "migration stream ended early"),
        ("bad-magic.img", b"XXXX" + data[4:], "not a livemig migration stream"),
        ("bad-record.img", data[:first] + b"\x7f" + data[first + 1:],
         f"unknown record type 0x7f (at byte offset {first})"),
    ]
    for name, content, words in cases:
        (lab.workdir / name).write_bytes(content)
        _refused(lab, kind, name.split(".")[0], f"file:{lab.workdir / name}", words)
    _refused(lab, kind, "small", f"file:{image}", "RAM size differs", extra=["-m", "64M"])
    started = time.monotonic()
    missing = lab.spawn([str(LIVEMIG), "-display", "none", "-nodefaults",
                         "-incoming", f"file:{lab.workdir / 'absent.img'}"], "missing")
    assert missing.wait(30) == 1 and time.monotonic() - started < 30
    err = (lab.workdir / "missing.stderr").read_text()
    assert "Could not open" in err and "absent.img" in err, err
