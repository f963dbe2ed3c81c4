"""livemig analyze-migration on a real saved stream, and on broken ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LIVEMIG
from migration_helpers import migrate, wait_for_status

from livemig.lab import VmLauncher, VmmKind

pytestmark = pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livemig.cli.tool", *args],
                          capture_output=True, text=True, timeout=120)


def _saved_stream(lab: VmLauncher) -> Path:
    image = lab.workdir / "saved.bin"
    vm = lab.start(VmmKind("livemig-tcg", LIVEMIG or "", "tcg"), "src")
    # A downtime limit no pass can miss: one pass, then switchover. (With
    # QEMU's 300 ms, a loaded machine kept this guest iterating into the
    # file at ~400 MB/s for a minute, and reading it back ran out of memory.)
    vm.cmd("migrate-set-parameters", **{"max-bandwidth": 100_000_000_000,
                                        "downtime-limit": 60_000})
    vm.wait_serial(b"B", timeout=60)
    migrate(vm, f"exec:cat > {image}")
    wait_for_status(vm, "completed", timeout=120)
    vm.quit()
    assert image.stat().st_size < 4 * (150 << 20), "more than a few passes went to the file"
    return image


def test_analyze_a_saved_stream_and_refuse_broken_ones(lab: VmLauncher) -> None:
    image = _saved_stream(lab)
    done = _tool("analyze-migration", str(image), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["header"]["ram-size"] == 150 << 20
    assert report["size"] == image.stat().st_size
    records = report["records"]
    assert records["End"]["count"] == 1 and records["State"]["count"] == 1
    assert records["PageRun"]["pages"] + records.get("ZeroRun", {}).get("pages", 0) \
        >= (150 << 20) // 4096   # every page went at least once
    state = report["states"][0]
    assert state["running"] is True and set(state["devices"]) == {"port92", "serial0"}
    text = _tool("analyze-migration", str(image))
    assert text.returncode == 0 and "machine state 1:" in text.stdout
    data = image.read_bytes()
    truncated = lab.workdir / "truncated.bin"
    truncated.write_bytes(data[:len(data) // 2])
    first_record = 22 + int.from_bytes(data[18:22], "little")  # after the header
    broken = lab.workdir / "broken.bin"
    broken.write_bytes(data[:first_record] + b"\x7f" + data[first_record + 1:])
    for path, words in ((truncated, "ended early"),
                        (broken, f"unknown record type 0x7f (at byte offset {first_record})")):
        done = _tool("analyze-migration", str(path))
        assert done.returncode == 1
        assert "malformed stream" in done.stderr and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
